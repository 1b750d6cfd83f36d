//! What becomes of a run after it is sent, and how the provider learns it
//! (`container-events.md`, "Delivery guarantees"):
//!
//! - its reply (`run.response`, matched by run id or correlation id,
//!   again and again if the worker resends it; a large one assembled from
//!   its `run.result.part`s) ends it — once;
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

use super::backend::{ask, Recorded, RunReply, Withdraw, Withdrawn};
use super::ledger::Ledger;
use super::{ApiProvider, END_REMEMBERED};
use crate::actors::bus::Incoming;
use crate::contract::replies::{DeleteRequest, RunFate, RunQuery};
use crate::contract::{
    ErrorType, Reply, ResultPart, RunAccepted, RunRecorded, RunResult, RunState, WorkerReply,
    ACCEPT_MARGIN, QUERY_TIMEOUT,
};
use actix::prelude::*;
use base64::Engine;
use std::time::{Duration, Instant};

/// The most bytes of parts kept for one run's result.
const MAX_PARTS_BYTES: usize = 256 << 20;

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

    /// A run's reply (or a query's answer): its end, unless it came in
    /// parts that are not all here yet.
    fn on_result(
        &mut self,
        run_id: &str,
        corr: &str,
        reply: Reply<RunResult>,
        worker: Option<String>,
        ctx: &mut Context<Self>,
    ) {
        let Some(run) = self.runs.get_mut(run_id) else {
            return;
        };
        if run.finishing {
            return;
        }
        let reply = match reply {
            Reply::Ok(r) if r.owner_account_id != run.owner => {
                tracing::warn!(run_id, owner = %r.owner_account_id, "a reply for another owner is ignored");
                return;
            }
            Reply::Ok(r) if r.result_parts.is_some() => {
                let parts = r.result_parts.unwrap_or(0);
                run.summary = Some((parts, worker.clone()));
                match assemble(run) {
                    Some(whole) => whole,
                    None => return, // The rest of its parts are on their way.
                }
            }
            other => other,
        };
        if let Some(w) = &worker {
            run.worker_id.get_or_insert_with(|| w.clone());
        }
        let _ = corr;
        let (state, reply) = match reply {
            Reply::Ok(r) if r.state == RunState::Lost => {
                // A redelivered request found its worker gone.
                let why = r
                    .reason
                    .clone()
                    .unwrap_or_else(|| "the run's worker stopped mid-run; outcome unknown".into());
                tracing::warn!(run_id, reason = %why, "run recorded lost");
                (RunState::Lost, Reply::error(ErrorType::Unavailable, why))
            }
            Reply::Ok(r) => (r.state, Reply::Ok(r)),
            Reply::Err(e) => (RunState::Error, Reply::Err(e)),
        };
        self.finish(run_id, state, reply, ctx);
    }

    /// Records a run's end (retrying the ledger until it takes it), then
    /// usage, its worker's acknowledgement, and everyone waiting.
    pub(super) fn finish(
        &mut self,
        run_id: &str,
        state: RunState,
        reply: Reply<RunResult>,
        ctx: &mut Context<Self>,
    ) {
        let Some(run) = self.runs.get_mut(run_id) else {
            return;
        };
        if run.finishing {
            return;
        }
        run.finishing = true;
        let (owner, worker) = (run.owner.clone(), run.worker_id.clone());
        let ledger = Ledger::new(self.store.clone(), self.ledger_health.clone());
        let run_id = run_id.to_owned();
        let recorded = reply.clone();
        ctx.spawn(
            async move { ledger.complete(&run_id, state, &recorded).await }
                .into_actor(self)
                .map(move |present, act, _| {
                    let run_id = present.0;
                    if !present.1 {
                        act.metrics.late_results.inc();
                        tracing::info!(run_id = %run_id, state = %state, "result for a deleted run not recorded");
                    }
                    act.metrics.runs.with_label_values(&[state.as_str()]).inc();
                    act.metrics.in_flight.dec();
                    act.usage
                        .ended(&run_id, &owner, state, &reply, &act.metrics.usage_failures);
                    act.backend.recorded.do_send(Recorded(RunRecorded {
                        run_id: run_id.clone(),
                        owner_account_id: owner.clone(),
                        worker_id: worker.clone(),
                    }));
                    act.remember_end(&run_id, &owner, worker);
                    act.end(&run_id, &reply);
                }),
        );
    }

    /// Ended here lately: a result sent again is acknowledged again.
    fn remember_end(&mut self, run_id: &str, owner: &str, worker: Option<String>) {
        if self.ended.len() >= END_REMEMBERED {
            if let Some(old) = self.ended_order.pop_front() {
                self.ended.remove(&old);
            }
        }
        self.ended_order.push_back(run_id.to_owned());
        self.ended
            .insert(run_id.to_owned(), (owner.to_owned(), worker));
    }

    /// A reply for no run in flight here: acknowledged when its run has
    /// ended (so its worker stops sending it), else another instance's.
    fn late_reply(
        &mut self,
        reply: &Reply<RunResult>,
        worker: Option<String>,
        ctx: &mut Context<Self>,
    ) {
        let Reply::Ok(r) = reply else { return };
        let ack = |act: &mut Self, owner: String, worker: Option<String>, run_id: String| {
            act.backend.recorded.do_send(Recorded(RunRecorded {
                run_id,
                owner_account_id: owner,
                worker_id: worker,
            }));
        };
        if let Some((owner, w)) = self.ended.get(&r.run_id).cloned() {
            if owner == r.owner_account_id {
                ack(self, owner, w.or(worker), r.run_id.clone());
            }
            return;
        }
        let store = self.store.clone();
        let (run_id, owner) = (r.run_id.clone(), r.owner_account_id.clone());
        ctx.spawn(
            async move { store.get(&run_id).await.map(|rec| (run_id, rec)) }
                .into_actor(self)
                .map(move |found, act, _| match found {
                    Ok((run_id, None)) => ack(act, owner, worker, run_id),
                    Ok((run_id, Some(rec)))
                        if rec.state != RunState::Running && rec.owner_account_id == owner =>
                    {
                        act.metrics.late_results.inc();
                        ack(act, owner, worker, run_id)
                    }
                    _ => {}
                }),
        );
    }
}

/// A run's whole reply from its parts, once all are here.
fn assemble(run: &mut super::table::LiveRun) -> Option<Reply<RunResult>> {
    let (parts, _) = run.summary.clone()?;
    if (0..parts).any(|i| !run.parts.contains_key(&i)) {
        return None;
    }
    let bytes: Vec<u8> = (0..parts).flat_map(|i| run.parts[&i].clone()).collect();
    let whole = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| WorkerReply::<RunResult>::decode(&v).ok());
    run.parts.clear();
    run.parts_bytes = 0;
    run.summary = None;
    Some(match whole {
        Some(r) => r.reply,
        None => Reply::error(
            ErrorType::MalformedResponse,
            "the parts of the run's result do not make a result",
        ),
    })
}

impl Handler<RunReply> for ApiProvider {
    type Result = ();

    fn handle(&mut self, RunReply(msg): RunReply, ctx: &mut Self::Context) {
        if !msg.meta.service {
            return;
        }
        let corr = msg.meta.correlation_id.clone().unwrap_or_default();
        let by_corr = self
            .runs
            .iter()
            .find(|(_, r)| !corr.is_empty() && r.correlation_id == corr)
            .map(|(id, _)| id.clone());
        match msg.body {
            Ok(WorkerReply { worker_id, reply }) => {
                let run_id = match &reply {
                    Reply::Ok(r) if self.runs.contains_key(&r.run_id) => Some(r.run_id.clone()),
                    _ => by_corr,
                };
                match run_id {
                    Some(run_id) => self.on_result(&run_id, &corr, reply, worker_id, ctx),
                    None => self.late_reply(&reply, worker_id, ctx),
                }
            }
            Err(why) => {
                if let Some(run_id) = by_corr {
                    tracing::warn!(run_id = %run_id, reason = %why, "a malformed run reply");
                    let e = Reply::error(
                        ErrorType::MalformedResponse,
                        format!("malformed backend reply: {why}"),
                    );
                    self.on_result(&run_id, &corr, e, None, ctx);
                }
            }
        }
    }
}

impl Handler<Incoming<RunAccepted>> for ApiProvider {
    type Result = ();

    fn handle(&mut self, msg: Incoming<RunAccepted>, ctx: &mut Self::Context) {
        let e = msg.body;
        if e.worker_id.is_empty() {
            return;
        }
        let Some(run) = self.live_run(msg.meta.service, &e.run_id, &e.owner_account_id) else {
            return;
        };
        run.accepted(&e.worker_id);
        let store = self.store.clone();
        ctx.spawn(
            async move {
                if let Err(err) = store.set_worker(&e.run_id, &e.worker_id).await {
                    tracing::warn!(error = %err, "could not record the run's worker");
                }
            }
            .into_actor(self),
        );
    }
}

impl Handler<Incoming<ResultPart>> for ApiProvider {
    type Result = ();

    fn handle(&mut self, msg: Incoming<ResultPart>, ctx: &mut Self::Context) {
        let p = msg.body;
        let Some(run) = self.live_run(msg.meta.service, &p.run_id, &p.owner_account_id) else {
            return;
        };
        if run.finishing || p.part >= p.parts {
            return;
        }
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&p.data_base64) else {
            return;
        };
        if run.parts_bytes + bytes.len() > MAX_PARTS_BYTES {
            return;
        }
        run.parts_bytes += bytes.len();
        run.parts.insert(p.part, bytes);
        if let Some(whole) = assemble_if_ready(run) {
            let (run_id, corr) = (p.run_id.clone(), run.correlation_id.clone());
            let worker = Some(p.worker_id).filter(|w| !w.is_empty());
            self.on_result(&run_id, &corr, whole, worker, ctx);
        }
    }
}

fn assemble_if_ready(run: &mut super::table::LiveRun) -> Option<Reply<RunResult>> {
    run.summary.as_ref()?;
    assemble(run)
}
