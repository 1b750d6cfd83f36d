//! The wire: the shapes every program on the bus speaks — the event
//! envelope, event names, the error body, and the container-events
//! contract (`spec/container-events.md`): request kinds and their names,
//! one type per payload ([`run`], [`replies`], [`events`]), run and
//! runner states, the effective-owner rule and the static provider's
//! answers. Actors decode payloads into these types at the edge
//! (`actors::bus::edge`) and never pass raw JSON between each other.
//!
//! These are the contract other BusDK programs speak: input is lenient
//! where the spec says so, output exact.

pub mod bytes;
mod envelope;
mod error;
pub mod events;
mod kinds;
mod lenient;
pub mod owner;
pub mod parts;
pub mod replies;
pub mod run;
mod run_state;
pub mod static_answers;
pub mod wire;

pub use bytes::OutputEncoding;
pub use envelope::*;
pub use error::*;
pub use events::{
    OutputStream, ResultPart, RouterHeartbeat, RunAccepted, RunOutput, RunRecorded, RunStarted,
    WorkerHeartbeat,
};
pub use kinds::*;
pub use replies::{decode, encode, Malformed, Reply, RunnerState, WorkerReply};
pub use run::{RunRequest, RunResult, RunSpec};
pub use run_state::RunState;
pub use wire::WireRequest;
