//! Writing a run's end to the ledger until the ledger takes it: a write
//! that fails (a full disk, a ledger away) is tried again with backoff,
//! the run's answer waits for it — so the REST answer, the ledger record
//! and the usage record always agree — and `/readyz` is 503 meanwhile
//! (and whenever the periodic probe write fails).

use crate::contract::{encode, Reply, RunResult, RunState};
use crate::store::SharedStore;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the ledger is probed with a write.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

/// The ledger, as the provider writes run ends to it.
pub(super) struct Ledger {
    store: SharedStore,
    health: Arc<AtomicBool>,
}

impl Ledger {
    pub fn new(store: SharedStore, health: Arc<AtomicBool>) -> Self {
        Ledger { store, health }
    }

    /// Completes the run's record, retrying until the ledger takes it;
    /// the run id, and whether the record was there (a deleted run's is
    /// not).
    pub async fn complete(
        &self,
        run_id: &str,
        state: RunState,
        reply: &Reply<RunResult>,
    ) -> (String, bool) {
        let value = encode(reply);
        let mut wait = Duration::from_millis(250);
        loop {
            match self.store.complete(run_id, state, value.clone()).await {
                Ok(present) => {
                    self.health.store(true, Ordering::Relaxed);
                    return (run_id.to_owned(), present);
                }
                Err(e) => {
                    self.health.store(false, Ordering::Relaxed);
                    tracing::error!(run_id, error = %e, retry_in = ?wait, "could not record the run's end; retrying (the answer waits)");
                    actix_rt::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// A probe write: updates the health `/readyz` reports.
    pub async fn probe(&self) {
        match self.store.probe().await {
            Ok(()) => self.health.store(true, Ordering::Relaxed),
            Err(e) => {
                if self.health.swap(false, Ordering::Relaxed) {
                    tracing::error!(error = %e, "the run ledger cannot be written");
                }
            }
        }
    }
}
