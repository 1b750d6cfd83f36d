//! Creating a run: validate → billing check → a place in the run table
//! (the per-account limit) → the ledger record `running` → usage
//! `container_run_requested` → the run sent, with its accept-by time →
//! (its fate is [`super::tracking`]'s) → the answer once its end is
//! recorded. The run goes on whatever happens to the HTTP request.

use super::backend::{NotSent, Submit};
use super::messages::{CreateRun, Created};
use super::table::LiveRun;
use super::{ApiProvider, ProviderError};
use crate::contract::run::new_run_id;
use crate::contract::{
    now_rfc3339, run_deadline, ErrorDetail, ErrorType, Reply, RunRequest, RunState,
};
use crate::store::RunRecord;
use actix::prelude::*;
use std::time::Instant;

impl Handler<CreateRun> for ApiProvider {
    type Result = ResponseActFuture<Self, Result<Created, ProviderError>>;

    fn handle(&mut self, msg: CreateRun, _: &mut Self::Context) -> Self::Result {
        if let Err(e) = msg.spec.check() {
            return Box::pin(fut::ready(Err(e.into())));
        }
        let (size, most) = (msg.spec.files_size(), self.config.max_files_bytes);
        if size > most {
            let e = ErrorDetail::new(
                ErrorType::PayloadTooLarge,
                format!("files: {size} bytes in all; at most {most} (--max-files-bytes)"),
            );
            return Box::pin(fut::ready(Err(e.into())));
        }
        let billing = self.billing.clone();
        let owner = msg.owner.clone();
        let wait = msg.wait;
        Box::pin(
            async move { billing.check(&owner).await }
                .into_actor(self)
                .then(move |allowed, act, _| {
                    let begun = allowed.and_then(|()| act.admit(&msg));
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
                        // Outside an outbox, nothing will mark it sent.
                        usage_sent: if act.usage.is_outbox() {
                            0
                        } else {
                            crate::store::USAGE_SETTLED
                        },
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
                        let ended = act.await_end(&run_id);
                        act.submit(&run_id, msg, ctx);
                        Ok((run_id, ended))
                    })
                })
                .then(move |started, act, _| {
                    async move {
                        let (run_id, ended) = started?;
                        if !wait {
                            return Ok(Created::Accepted(run_id));
                        }
                        match ended {
                            Some(rx) => match rx.await {
                                Ok(Reply::Ok(result)) => Ok(Created::Done(result)),
                                Ok(Reply::Err(e)) => Err(ProviderError::Refused(e)),
                                Err(_) => Err(ProviderError::unavailable(
                                    "the run's task ended without an answer",
                                )),
                            },
                            None => Err(ProviderError::unavailable("the run ended unrecorded")),
                        }
                    }
                    .into_actor(act)
                }),
        )
    }
}

impl ApiProvider {
    /// A run id and a place in the run table, or 429.
    fn admit(&mut self, msg: &CreateRun) -> Result<String, ProviderError> {
        let run_id = new_run_id();
        let deadline =
            Instant::now() + run_deadline(msg.spec.timeout_seconds, self.config.request_timeout);
        let corr = uuid::Uuid::new_v4().to_string();
        let mut run = LiveRun::new(&msg.owner, corr, deadline);
        if !self.backend.durable {
            run.accept_by = Some(Instant::now() + self.config.accept_within);
        }
        match self.begin(&run_id, run) {
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

    /// Sends a recorded run on its way. A send the bus refused ends the
    /// run at once; one that may or may not have gone out is left to the
    /// accept-by time (on a durable queue: withdrawn, then refused).
    fn submit(&mut self, run_id: &str, msg: CreateRun, ctx: &mut Context<Self>) {
        let Some(run) = self.runs.get(run_id) else {
            return;
        };
        let accept_by = run.accept_by.map(|at| {
            let left = at.saturating_duration_since(Instant::now());
            let when = time::OffsetDateTime::now_utc() + left;
            when.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        });
        let request = RunRequest {
            run_id: Some(run_id.to_owned()),
            owner_account_id: Some(msg.owner),
            spec: msg.spec,
            deadline_at: None,
            accept_by,
            request_parts: None,
        };
        let submit = Submit {
            request,
            correlation_id: run.correlation_id.clone(),
            reply_to: ctx.address().recipient(),
        };
        let run_id = run_id.to_owned();
        ctx.spawn(
            self.backend
                .submit
                .send(submit)
                .into_actor(self)
                .map(move |sent, act, ctx| {
                    let failed = match sent {
                        Ok(Ok(())) => return,
                        Ok(Err(not_sent)) => not_sent,
                        Err(_) => NotSent {
                            error: ErrorDetail::new(ErrorType::Unavailable, "the backend stopped"),
                            definite: false,
                        },
                    };
                    if failed.definite {
                        tracing::warn!(run_id = %run_id, error = %failed.error, "the bus refused the run");
                        let error = match failed.error.kind {
                            ErrorType::PayloadTooLarge => ErrorDetail::new(
                                ErrorType::PayloadTooLarge,
                                format!(
                                    "the run request is larger than the bus carries: {}",
                                    failed.error.message
                                ),
                            ),
                            _ => failed.error,
                        };
                        act.finish(&run_id, RunState::Error, Reply::Err(error), ctx);
                        return;
                    }
                    tracing::warn!(run_id = %run_id, error = %failed.error, "the run may not have been sent; its acceptance decides");
                    if act.backend.durable {
                        // A copy may wait in the queue: withdraw it now.
                        if let Some(run) = act.runs.get_mut(&run_id) {
                            run.accept_by = Some(Instant::now());
                        }
                    }
                }),
        );
    }
}
