//! Creating a run: validate → billing check → a place in the run table
//! (the per-account limit) → the ledger record `running` → usage
//! `container_run_requested` → the backend's run, bounded by the run's
//! deadline → the ledger's end → usage `container_run_finished|failed` →
//! the answer. The run goes on whatever happens to the HTTP request.

use super::backend::ask;
use super::messages::{CreateRun, Created};
use super::{ApiProvider, ProviderError};
use crate::contract::replies::DeleteRequest;
use crate::contract::run::new_run_id;
use crate::contract::{
    encode, now_rfc3339, run_deadline, ErrorType, Reply, RunRequest, RunResult, RunState,
};
use crate::store::RunRecord;
use actix::prelude::*;
use tokio::sync::oneshot;

impl Handler<CreateRun> for ApiProvider {
    type Result = ResponseActFuture<Self, Result<Created, ProviderError>>;

    fn handle(&mut self, msg: CreateRun, _: &mut Self::Context) -> Self::Result {
        if let Err(e) = msg.spec.check() {
            return Box::pin(fut::ready(Err(e.into())));
        }
        let billing = self.billing.clone();
        let owner = msg.owner.clone();
        let wait = msg.wait;
        Box::pin(
            async move { billing.check(&owner).await }
                .into_actor(self)
                .then(move |allowed, act, _| {
                    let begun = allowed.and_then(|()| act.admit(&msg.owner));
                    let record = begun.as_ref().ok().map(|run_id| RunRecord {
                        run_id: run_id.clone(),
                        owner_account_id: msg.owner.clone(),
                        state: RunState::Running,
                        instance_id: act.config.instance_id.clone(),
                        worker_id: None,
                        profile: msg.spec.profile.clone(),
                        image: msg.spec.image.clone(),
                        args: msg.spec.words(),
                        created_at: now_rfc3339(),
                        finished_at: None,
                        result: None,
                    });
                    let store = act.store.clone();
                    async move {
                        let run_id = begun?;
                        let record = record.expect("a record is made for every begun run");
                        Ok::<_, ProviderError>((run_id, store.insert(record).await))
                    }
                    .into_actor(act)
                    .map(move |step, act, ctx| {
                        let (run_id, inserted) = step?;
                        if let Err(e) = inserted {
                            // Recorded nowhere: it never was.
                            act.runs.remove(&run_id);
                            return Err(ProviderError::from(e));
                        }
                        act.metrics.in_flight.inc();
                        act.usage.requested(
                            &run_id,
                            &msg.owner,
                            msg.spec.profile.clone(),
                            msg.spec.image.clone(),
                            &act.metrics.usage_failures,
                        );
                        let request = RunRequest {
                            run_id: Some(run_id.clone()),
                            owner_account_id: Some(msg.owner.clone()),
                            spec: msg.spec,
                            deadline_at: None,
                        };
                        Ok((run_id, act.drive(request, msg.owner, ctx)))
                    })
                })
                .then(move |started, act, _| {
                    async move {
                        let (run_id, ended) = started?;
                        if !wait {
                            return Ok(Created::Accepted(run_id));
                        }
                        match ended.await {
                            Ok(Reply::Ok(result)) => Ok(Created::Done(result)),
                            Ok(Reply::Err(e)) => Err(ProviderError::Refused(e)),
                            Err(_) => Err(ProviderError::unavailable(
                                "the run's task ended without an answer",
                            )),
                        }
                    }
                    .into_actor(act)
                }),
        )
    }
}

impl ApiProvider {
    /// A run id and a place in the run table, or 429.
    fn admit(&mut self, owner: &str) -> Result<String, ProviderError> {
        let run_id = new_run_id();
        match self.begin(&run_id, owner) {
            Ok(()) => Ok(run_id),
            Err(n) => Err(ProviderError::RateLimited {
                message: format!(
                    "this account already has {n} runs in flight (limit {}); retry when one ends",
                    self.config.max_concurrent_runs
                ),
                retry_after: 1,
            }),
        }
    }

    /// Runs `request` on the backend and records how it ended; the answer
    /// comes on the receiver.
    fn drive(
        &mut self,
        request: RunRequest,
        owner: String,
        ctx: &mut Context<Self>,
    ) -> oneshot::Receiver<Reply<RunResult>> {
        let (tx, rx) = oneshot::channel();
        let run_id = request.run_id.clone().unwrap_or_default();
        let deadline = run_deadline(request.spec.timeout_seconds, self.config.request_timeout);
        let seat = self.backend.run.clone();
        let asked = {
            let owner = owner.clone();
            async move { ask(&seat, request, &owner, deadline).await }
        };
        ctx.spawn(asked.into_actor(self).then(move |reply, act, _| {
            let timed_out = match &reply {
                Ok(Reply::Err(e)) | Err(e) => e.kind == ErrorType::Timeout,
                Ok(Reply::Ok(_)) => false,
            };
            let lost = timed_out.then(|| act.cancel_lost(&run_id, &owner));
            let (store, metrics) = (act.store.clone(), act.metrics.clone());
            let rid = run_id.clone();
            async move {
                let (state, result) = match (reply, lost) {
                    (_, Some(cancel)) => cancel.await,
                    (Ok(Reply::Ok(r)), _) if r.state == RunState::Lost => {
                        // A redelivered request found its worker gone.
                        let why = r.reason.clone().unwrap_or_else(|| {
                            "the run's worker stopped mid-run; outcome unknown".into()
                        });
                        tracing::warn!(run_id = %rid, reason = %why, "run recorded lost");
                        (RunState::Lost, Reply::error(ErrorType::Unavailable, why))
                    }
                    (Ok(Reply::Ok(r)), _) => (r.state, Reply::Ok(r)),
                    (Ok(Reply::Err(e)), _) | (Err(e), _) => (RunState::Error, Reply::Err(e)),
                };
                match store.complete(&rid, state, encode(&result)).await {
                    Ok(true) => {}
                    Ok(false) => {
                        metrics.late_results.inc();
                        tracing::info!(run_id = %rid, state = %state, "result for a deleted run not recorded");
                    }
                    Err(e) => tracing::error!(run_id = %rid, error = %e, "could not record the run's result"),
                }
                (state, result)
            }
            .into_actor(act)
            .map(move |(state, result), act, _| {
                act.metrics.runs.with_label_values(&[state.as_str()]).inc();
                act.metrics.in_flight.dec();
                act.usage
                    .ended(&run_id, &owner, state, &result, &act.metrics.usage_failures);
                act.end(&run_id, &result);
                let _ = tx.send(result);
            })
        }));
        rx
    }

    /// The deadline passed: cancel the run on its worker, record it lost.
    fn cancel_lost(
        &self,
        run_id: &str,
        owner: &str,
    ) -> futures::future::LocalBoxFuture<'static, (RunState, Reply<RunResult>)> {
        let worker = self.live_worker(run_id).flatten();
        let (seat, timeout) = (self.backend.delete.clone(), self.config.default_timeout);
        let (run_id, owner) = (run_id.to_owned(), owner.to_owned());
        Box::pin(async move {
            if let Some(worker_id) = &worker {
                let cancel = DeleteRequest {
                    run_id: run_id.clone(),
                    owner_account_id: owner.clone(),
                    worker_id: Some(worker_id.clone()),
                };
                let _ = ask(&seat, cancel, &owner, timeout).await;
            }
            tracing::warn!(run_id = %run_id, worker = ?worker, "no result before the deadline; the run is recorded lost");
            (
                RunState::Lost,
                Reply::error(
                    ErrorType::Unavailable,
                    "no result before the run's deadline; it was cancelled on its worker and recorded lost",
                ),
            )
        })
    }
}
