//! The wire: the shapes every program on the bus speaks — the event
//! envelope, event names, the error body, and the container-events
//! contract (`spec/container-events.md`): request kinds and their names,
//! run states, the effective-owner rule and the static provider's answers.
//!
//! These are the contract other BusDK programs speak: input is lenient
//! where the spec says so, output exact.

mod envelope;
mod error;
mod kinds;
pub mod owner;
mod run_state;
pub mod static_answers;

pub use envelope::*;
pub use error::*;
pub use kinds::*;
pub use run_state::RunState;
