//! At start-up, the runs this instance left `running` (it crashed, or was
//! killed) are not simply recorded lost: each is taken back into the run
//! table and, once the workers have had time to be heard from, asked of
//! its worker — a result it kept is recorded, a run still going is
//! awaited, and only one nobody has is `lost` (or, never accepted,
//! refused).

use super::table::LiveRun;
use super::ApiProvider;
use crate::store::RunRecord;
use actix::prelude::*;
use std::time::{Duration, Instant};

/// How long after start-up adopted runs are asked of their workers (the
/// routers' and workers' heartbeats arrive meanwhile).
pub const VERIFY_AFTER: Duration = Duration::from_secs(4);

/// Takes these records back into the run table.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Adopt(pub Vec<RunRecord>);

impl Handler<Adopt> for ApiProvider {
    type Result = usize;

    fn handle(&mut self, Adopt(records): Adopt, _: &mut Self::Context) -> usize {
        let now = Instant::now();
        let n = records.len();
        for r in records {
            let mut run = LiveRun::new(
                &r.owner_account_id,
                String::new(),
                now + self.config.request_timeout,
            );
            if let Some(w) = &r.worker_id {
                run.accepted(w);
            }
            run.verify_at = Some(now + VERIFY_AFTER);
            self.metrics.in_flight.inc();
            self.status_cache.forget(&r.owner_account_id);
            // Its `container_run_requested` may have been in the usage
            // queue the last process lost: sent again unless the ledger
            // says the bus took it (its event_id is stable, so a
            // consumer that had it counts it once).
            self.usage.resend(&r, &self.metrics.usage_failures);
            self.runs.insert(r.run_id, run);
        }
        n
    }
}
