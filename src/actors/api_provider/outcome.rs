//! A run's end as it reaches the provider: its reply (`run.response`,
//! matched by run id or correlation id, again and again if its worker
//! sends it again; a large one assembled from its `run.result.part`s),
//! `run.accepted` (which worker took it), and recording the end —
//! ledger first (retried until it takes it), then usage, the worker's
//! `run.recorded`, and everyone waiting. A reply for a run that ended
//! here lately is acknowledged again; one for no run here is another
//! instance's.

use super::backend::{Recorded, RunReply};
use super::ledger::Ledger;
use super::{ApiProvider, END_REMEMBERED};
use crate::actors::bus::Incoming;
use crate::contract::{
    ErrorType, Reply, ResultPart, RunAccepted, RunRecorded, RunResult, RunState, WorkerReply,
};
use actix::prelude::*;
use base64::Engine;

/// The most bytes of parts kept for one run's result.
const MAX_PARTS_BYTES: usize = 256 << 20;

impl ApiProvider {
    /// A run's reply (or a query's answer): its end, unless it came in
    /// parts that are not all here yet.
    pub(super) fn on_result(
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
        let artifacts = self.artifacts.clone();
        ctx.spawn(
            async move {
                // The archive is kept first, so a recorded result's
                // artifacts can be downloaded; the record never holds it.
                let reply = keep_artifacts(artifacts.clone(), &run_id, reply).await;
                let present = ledger.complete(&run_id, state, &reply).await;
                if let (false, Some(store)) = (present.1, &artifacts) {
                    // Deleted meanwhile: its archive goes with it.
                    let _ = store.remove(&run_id).await;
                }
                (present, reply)
            }
            .into_actor(self)
            .map(move |(present, reply), act, _| {
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
        self.taken(
            msg.meta.service,
            &e.run_id,
            &e.owner_account_id,
            &e.worker_id,
            ctx,
        );
        // A run without its own timeout waits as long as its worker lets
        // it run (the profile's timeout), not the --request-timeout cap.
        if let Some(t) = e.timeout_seconds.filter(|t| *t > 0) {
            let grace = self.config.run_grace;
            if let Some(run) = self.live_run(msg.meta.service, &e.run_id, &e.owner_account_id) {
                let by = std::time::Instant::now() + std::time::Duration::from_secs(t) + grace;
                if by < run.deadline {
                    run.deadline = by;
                }
            }
        }
    }
}

impl ApiProvider {
    /// A worker has the run (`run.accepted`, `run.started`): the run table
    /// and the ledger learn which.
    pub(super) fn taken(
        &mut self,
        service: bool,
        run_id: &str,
        owner: &str,
        worker_id: &str,
        ctx: &mut Context<Self>,
    ) {
        if worker_id.is_empty() {
            return;
        }
        let Some(run) = self.live_run(service, run_id, owner) else {
            return;
        };
        run.accepted(worker_id);
        let owner = run.owner.clone();
        self.status_cache.forget(&owner);
        let (store, run_id, worker_id) =
            (self.store.clone(), run_id.to_owned(), worker_id.to_owned());
        ctx.spawn(
            async move {
                if let Err(err) = store.set_worker(&run_id, &worker_id).await {
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
        // A part sent again (the worker resends until the end is
        // recorded) replaces itself; it is counted once.
        let replaced = run.parts.get(&p.part).map_or(0, Vec::len);
        if run.parts_bytes - replaced + bytes.len() > MAX_PARTS_BYTES {
            tracing::warn!(run_id = %p.run_id, "a run's result parts are over the limit; a part is dropped");
            return;
        }
        run.parts_bytes = run.parts_bytes - replaced + bytes.len();
        run.parts.insert(p.part, bytes);
        if let Some(whole) = assemble_if_ready(run) {
            let (run_id, corr) = (p.run_id.clone(), run.correlation_id.clone());
            let worker = Some(p.worker_id).filter(|w| !w.is_empty());
            self.on_result(&run_id, &corr, whole, worker, ctx);
        }
    }
}

/// Takes a result's archive out of it and keeps it in `artifacts`
/// (saying in `artifacts.error` when it could not be kept).
async fn keep_artifacts(
    artifacts: Option<crate::store::artifacts::SharedArtifacts>,
    run_id: &str,
    mut reply: Reply<RunResult>,
) -> Reply<RunResult> {
    let Reply::Ok(result) = &mut reply else {
        return reply;
    };
    let Some(b64) = result.artifacts_tar_base64.take() else {
        return reply;
    };
    let kept = match (
        artifacts,
        base64::engine::general_purpose::STANDARD.decode(b64),
    ) {
        (None, _) => Err("this API provider keeps no artifacts".to_owned()),
        (_, Err(e)) => Err(format!("the archive was not base64: {e}")),
        (Some(store), Ok(tar)) => {
            let mut wait = std::time::Duration::from_millis(250);
            let mut tries = 0;
            loop {
                match store.put(run_id, tar.clone()).await {
                    Ok(()) => break Ok(()),
                    Err(e) if tries >= 4 => {
                        break Err(format!("the archive could not be kept: {e}"))
                    }
                    Err(e) => {
                        tracing::warn!(run_id, error = %e, "could not keep a run's artifacts; retrying");
                        tries += 1;
                        actix_rt::time::sleep(wait).await;
                        wait *= 2;
                    }
                }
            }
        }
    };
    if let Err(why) = kept {
        tracing::error!(run_id, error = %why, "a run's artifacts were not kept");
        if let Some(summary) = &mut result.artifacts {
            summary.error = Some(why);
        }
    }
    reply
}

fn assemble_if_ready(run: &mut super::table::LiveRun) -> Option<Reply<RunResult>> {
    run.summary.as_ref()?;
    assemble(run)
}
