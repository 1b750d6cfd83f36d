//! What becomes of a run after it is sent when no reply comes
//! (`container-events.md`, "Delivery guarantees"; a reply is
//! [`super::outcome`]'s):
//!
//! - `run.accepted` says which worker took it. None by its accept-by
//!   time (plus a margin): its workers are asked (`run.query`), and if
//!   nobody has it, it is refused `unavailable` — no worker starts it
//!   after its accept-by time, so a refused run never runs;
//! - its worker gone (a router heard from does not list it, see
//!   [`super::liveness`]): the worker is asked, and with no answer or
//!   `unknown` the run is `lost` — within 20 s of the worker vanishing;
//! - its deadline passed: asked once more, then cancelled on its worker
//!   and `lost`;
//! - on a durable queue, a refusal first withdraws it (a claim no worker
//!   may start it under).

use super::backend::{ask, Withdraw, Withdrawn};
use super::ApiProvider;
use crate::contract::replies::{DeleteRequest, RunFate, RunQuery};
use crate::contract::{ErrorType, Reply, RunState, ACCEPT_MARGIN, QUERY_TIMEOUT};
use actix::prelude::*;
use std::time::{Duration, Instant};

/// Why a query was made (what its silence means).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    /// Nobody said they took it by its accept-by time.
    Unaccepted,
    /// Its worker is gone.
    WorkerGone,
    /// Its deadline passed.
    Deadline,
    /// Adopted after a restart of this provider.
    Adopted,
}

impl ApiProvider {
    /// Checks every run in flight: acceptance, its worker, its deadline.
    pub(super) fn check_runs(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let bus_up = self.bus_up();
        let mut asks = Vec::new();
        for (run_id, run) in self.runs.iter() {
            if run.finishing || run.querying {
                continue;
            }
            let why = if run.verify_at.is_some_and(|t| now >= t) {
                Some(Asked::Adopted)
            } else if now >= run.deadline {
                Some(Asked::Deadline)
            } else if run.accepted_at.is_none()
                && run.accept_by.is_some_and(|t| now >= t + ACCEPT_MARGIN)
            {
                Some(Asked::Unaccepted)
            } else {
                match (&run.worker_id, run.accepted_at) {
                    (Some(w), Some(at))
                        if at.elapsed() > Duration::from_secs(3)
                            && self.liveness.gone(w, bus_up) =>
                    {
                        Some(Asked::WorkerGone)
                    }
                    _ => None,
                }
            };
            if let Some(why) = why {
                asks.push((run_id.clone(), why));
            }
        }
        for (run_id, why) in asks {
            self.query(run_id, why, ctx);
        }
    }

    /// Whether this provider's own bus connection is up.
    fn bus_up(&self) -> bool {
        (self.bus_ready)().is_ok()
    }

    /// Asks the run's worker (or every worker) what became of it.
    fn query(&mut self, run_id: String, why: Asked, ctx: &mut Context<Self>) {
        let Some(run) = self.runs.get_mut(&run_id) else {
            return;
        };
        run.querying = true;
        run.verify_at = None;
        let q = RunQuery {
            run_id: run_id.clone(),
            owner_account_id: run.owner.clone(),
            worker_id: run.worker_id.clone(),
        };
        let owner = run.owner.clone();
        let seat = self.backend.query.clone();
        tracing::info!(run_id = %run_id, ?why, worker = ?q.worker_id, "asking what became of a run");
        let asked =
            async move { ask(&seat, q, &owner, QUERY_TIMEOUT + Duration::from_millis(500)).await };
        ctx.spawn(asked.into_actor(self).map(move |answer, act, ctx| {
            let bus_up = act.bus_up();
            let Some(run) = act.runs.get_mut(&run_id) else {
                return;
            };
            run.querying = false;
            if run.finishing {
                return;
            }
            match answer {
                Ok(Reply::Ok(a)) if a.fate == RunFate::Running => {
                    if why == Asked::Unaccepted {
                        // Its acceptance was lost on the way: it runs.
                        run.accept_by = None;
                    }
                    if why == Asked::Deadline {
                        act.cancel_lost(&run_id, "no result before the run's deadline; it was cancelled on its worker and recorded lost", ctx);
                    }
                }
                Ok(Reply::Ok(a)) if a.fate == RunFate::Finished => {
                    if let Some(result) = a.result {
                        let corr = run.correlation_id.clone();
                        act.on_result(&run_id, &corr, *result, None, ctx);
                    }
                }
                // Nobody has it: unknown to its worker, or no worker
                // answered while the path to them works.
                Ok(_) => act.nobody_has_it(&run_id, why, ctx),
                Err(e) if e.kind == ErrorType::NotFound => act.nobody_has_it(&run_id, why, ctx),
                Err(_) if bus_up && (why != Asked::WorkerGone || act.liveness.router_alive()) => {
                    act.nobody_has_it(&run_id, why, ctx)
                }
                Err(e) => {
                    tracing::info!(run_id = %run_id, error = %e, "a run's worker could not be asked; asking again later");
                    if why == Asked::Adopted {
                        if let Some(run) = act.runs.get_mut(&run_id) {
                            run.verify_at = Some(Instant::now() + Duration::from_secs(2));
                        }
                    }
                }
            }
        }));
    }

    /// No worker has the run.
    fn nobody_has_it(&mut self, run_id: &str, why: Asked, ctx: &mut Context<Self>) {
        let Some(run) = self.runs.get(run_id) else {
            return;
        };
        let never_taken = run.accepted_at.is_none();
        match why {
            Asked::Unaccepted | Asked::Deadline | Asked::Adopted if never_taken => {
                let message = match why {
                    Asked::Unaccepted => "no worker accepted the run in time; it was not started and never will be",
                    Asked::Deadline => "the run was not started before its deadline; it never will be",
                    _ => "the API provider restarted before any worker accepted the run; it was not started and never will be",
                };
                self.refuse(run_id, message, ctx);
            }
            _ => {
                let worker = run.worker_id.clone().unwrap_or_default();
                tracing::warn!(run_id, worker = %worker, "the run's worker is gone or does not know it; recorded lost");
                let e = Reply::error(
                    ErrorType::Unavailable,
                    format!("the run's worker {worker} is gone (or does not know the run); its outcome is unknown and it is not run again"),
                );
                self.finish(run_id, RunState::Lost, e, ctx);
            }
        }
    }

    /// Refuses a run that never started: withdrawn first where a queue
    /// could still hold it (a worker that took it meanwhile wins: then it
    /// runs, and answers).
    fn refuse(&mut self, run_id: &str, message: &'static str, ctx: &mut Context<Self>) {
        let Some(run) = self.runs.get_mut(run_id) else {
            return;
        };
        run.querying = true;
        let withdraw = Withdraw {
            run_id: run_id.to_owned(),
            owner: run.owner.clone(),
        };
        let seat = self.backend.withdraw.clone();
        let run_id = run_id.to_owned();
        ctx.spawn(
            async move {
                let mut wait = Duration::from_millis(500);
                loop {
                    match seat.send(withdraw.clone()).await {
                        Ok(Ok(w)) => return w,
                        Ok(Err(e)) => tracing::warn!(run_id = %withdraw.run_id, error = %e, "could not withdraw a refused run yet; retrying"),
                        Err(_) => return Withdrawn::Done,
                    }
                    actix_rt::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
            }
            .into_actor(self)
            .map(move |withdrawn, act, ctx| {
                let Some(run) = act.runs.get_mut(&run_id) else {
                    return;
                };
                run.querying = false;
                match withdrawn {
                    Withdrawn::Done => {
                        let e = Reply::error(ErrorType::Unavailable, message);
                        act.finish(&run_id, RunState::Error, e, ctx);
                    }
                    Withdrawn::Taken => {
                        tracing::info!(run_id = %run_id, "a worker took the run before it was withdrawn: waiting for its result");
                        run.accept_by = None;
                        run.accepted_at.get_or_insert_with(Instant::now);
                    }
                }
            }),
        );
    }

    /// The deadline passed with the run still going: cancel it where it
    /// runs, and record it lost.
    fn cancel_lost(&mut self, run_id: &str, message: &'static str, ctx: &mut Context<Self>) {
        let Some(run) = self.runs.get(run_id) else {
            return;
        };
        let cancel = DeleteRequest {
            run_id: run_id.to_owned(),
            owner_account_id: run.owner.clone(),
            worker_id: run.worker_id.clone(),
        };
        let (seat, timeout, owner) = (
            self.backend.delete.clone(),
            self.config.default_timeout,
            run.owner.clone(),
        );
        actix_rt::spawn(async move {
            let _ = ask(&seat, cancel, &owner, timeout).await;
        });
        tracing::warn!(
            run_id,
            "no result before the deadline; the run is recorded lost"
        );
        self.finish(
            run_id,
            RunState::Lost,
            Reply::error(ErrorType::Unavailable, message),
            ctx,
        );
    }
}
