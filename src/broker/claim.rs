//! Claims: how durable tasks run at most once. A worker claims a durable
//! run request (compare-and-set: only the first claim of a key wins)
//! before it starts the run, keeps the claim fresh while the run lasts,
//! and marks it done once the reply is out. A redelivered request finds
//! the claim and is never run again.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What a claim holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRecord {
    /// The worker that claimed it.
    pub holder: String,
    /// The run the task is.
    #[serde(default)]
    pub run_id: String,
    /// The reply has been sent.
    #[serde(default)]
    pub done: bool,
}

/// The outcome of claiming a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This claim won: go ahead.
    Won,
    /// Somebody claimed it first; `age` is the time since the claim was
    /// last written (a live holder keeps it fresh).
    Held { record: ClaimRecord, age: Duration },
}

/// The key of a durable task's claim: the envelope id, kept to the
/// characters every key-value store accepts.
pub fn claim_key(envelope_id: &str) -> String {
    let clean: String = envelope_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("task.{clean}")
}
