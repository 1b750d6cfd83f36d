//! The actors, in the order a run request meets them:
//!
//! 1. [`api_provider`]: the HTTP facade's actor — validation, the run
//!    table, ledger writes, usage and billing order, deadlines
//! 2. [`bus`]: subscriptions (decoding events at the edge), the
//!    requester with its reply dispatcher and correlation waiters, the
//!    ordered relay
//! 3. [`router`]: public `bus.containers.*` requests → a backend prefix,
//!    with the worker registry and the merge of gathered replies
//! 4. [`docker_worker`]: a worker's requests — admission, per-run
//!    requests, runner requests, heartbeats, durable claims
//! 5. [`container_session`]: one run's container from create to remove
//!
//! and beside the worker: [`runner`] (engine state, images, the orphan
//! reaper), [`warm_pool`] (idle containers per profile) and
//! [`egress_sandbox`] (a sandboxed run's network and egress proxy).
//!
//! Actors exchange typed messages (payloads are `crate::contract`
//! types), and hold their peers as `Recipient<M>` seats where a test may
//! put a mock.

pub mod api_provider;
pub mod bus;
pub mod container_session;
pub mod docker_worker;
pub mod egress_sandbox;
pub mod router;
pub mod runner;
pub mod warm_pool;

pub use bus::{Delivered, Subscription};
