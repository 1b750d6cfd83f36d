//! Claims: how durable tasks run at most once. A worker claims a durable
//! run request (compare-and-set: only the first claim of a key wins)
//! before it starts the run, rewrites the claim while the run lasts (so
//! its revision keeps moving), and marks it done (compare-and-set) before
//! the reply goes out. A redelivered request finds the claim and is never
//! run again; one whose claim has stopped moving for the ack wait belongs
//! to a worker that is gone, and is answered `lost` (compare-and-set, so
//! only one worker says so, and never for a claim that is still moving).

use serde::{Deserialize, Serialize};

/// What a claim holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRecord {
    /// The worker that claimed it.
    pub holder: String,
    /// The worker process (a fresh id per start): a restarted worker, or
    /// two processes sharing a worker id, are told apart.
    #[serde(default)]
    pub instance: String,
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
    /// This claim won: go ahead. `revision` is the claim's version, for
    /// the holder's compare-and-set rewrites.
    Won { revision: u64 },
    /// Somebody claimed it first (perhaps this very process, when the
    /// confirmation of its own write was lost).
    Held { record: ClaimRecord, revision: u64 },
}

/// `text` kept to letters, digits, '-' and '_' (anything else becomes
/// '_'): safe in a key-value key and in a JetStream consumer name.
pub(crate) fn clean(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The key of a run's claim: its owner and run id, kept to the characters
/// every key-value store accepts. Every copy of one run (a redelivery, a
/// second router's forward) has the same key.
pub fn claim_key(owner: &str, run_id: &str) -> String {
    format!("run.{}.{}", clean(owner), clean(run_id))
}

/// A run id that every delivery of one envelope agrees on, for requests
/// that name none.
pub fn run_id_of_envelope(envelope_id: &str) -> String {
    format!("run_{}", clean(envelope_id))
}
