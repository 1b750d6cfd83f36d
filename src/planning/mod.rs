//! The worker's logic apart from its actors: turning a run request into a
//! container plan (profiles, allowed images, limits, hardening, mounts),
//! its sandbox (an internal network and an egress proxy sidecar), and the
//! run result it answers with.

pub mod outcome;
pub mod plan;
pub mod sandbox;
pub mod utf8;

pub use plan::{plan_run, RunPlan, WorkerSettings};
