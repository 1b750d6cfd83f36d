//! A run request: planned, admitted or refused (stopping, no engine, at
//! capacity — on a durable queue it goes back instead), then started in
//! a session, in a warm-pool container when one of its profile is ready.

use super::durable::{settle, Task};
use super::Engine;
use super::{DockerWorker, Live};
use crate::actors::bus::Incoming;
use crate::actors::container_session::SessionContext;
use crate::actors::warm_pool;
use crate::broker::run_id_of_envelope;
use crate::contract::WireRequest;
use crate::contract::{
    encode, now_rfc3339, ErrorType, Kind, Publication, Reply, RunAccepted, RunRequest, RunResult,
    RunnerState,
};
use crate::planning::{plan_run, RunPlan};
use actix::prelude::*;
use std::time::Duration;

/// Whether an RFC 3339 time is past (on this host's clock).
fn past(at: Option<&str>) -> bool {
    let rfc = &time::format_description::well_known::Rfc3339;
    at.and_then(|t| time::OffsetDateTime::parse(t, rfc).ok())
        .is_some_and(|t| time::OffsetDateTime::now_utc() > t)
}

impl Handler<Incoming<Result<RunRequest, crate::contract::Malformed>>> for DockerWorker {
    type Result = ();

    fn handle(
        &mut self,
        msg: Incoming<Result<RunRequest, crate::contract::Malformed>>,
        ctx: &mut Self::Context,
    ) {
        let Some((msg, owner)) = self.admit_request(msg, ctx) else {
            return;
        };
        self.on_run(msg, owner, ctx);
    }
}

impl DockerWorker {
    /// The gate of every request: the effective owner, a payload that
    /// decodes, and the static engine's answers. `Some` when the request
    /// is this worker's to handle.
    pub(super) fn admit_request<Q: WireRequest>(
        &mut self,
        msg: Incoming<Result<Q, crate::contract::Malformed>>,
        ctx: &mut Context<Self>,
    ) -> Option<(Incoming<Q>, String)> {
        let corr = msg.meta.correlation_id.clone();
        let elsewhere = msg
            .body
            .as_ref()
            .ok()
            .and_then(|q| q.worker_id())
            .is_some_and(|w| w != self.config.worker_id());
        let owner = msg.owner();
        let body = match msg.body {
            Ok(body) => body,
            Err(why) => {
                if let Some(ack) = &msg.meta.ack {
                    settle("acknowledge a durable request", ack.done());
                }
                let reply = Reply::error(
                    crate::contract::ErrorType::BadRequest,
                    format!("invalid {} request: {why}", Q::KIND.segment()),
                );
                self.reply::<Q>(corr, reply, ctx);
                return None;
            }
        };
        let owner = match owner {
            Ok(o) => o,
            Err(e) => {
                if let Some(ack) = &msg.meta.ack {
                    settle("acknowledge a durable request", ack.done());
                }
                // A per-run request for another worker is not ours to refuse.
                if !elsewhere {
                    self.reply::<Q>(corr, Reply::Err(e), ctx);
                }
                return None;
            }
        };
        if let Engine::Static = self.engine {
            if let Some(ack) = &msg.meta.ack {
                settle("acknowledge a durable request", ack.done());
            }
            if !elsewhere {
                let reply = body.static_answer(&owner, self.config.worker_id());
                self.reply::<Q>(corr, reply, ctx);
            }
            return None;
        }
        Some((
            Incoming {
                meta: msg.meta,
                body,
            },
            owner,
        ))
    }

    /// A run's final answer; a durable request is acknowledged with it.
    pub(super) fn answer(
        &mut self,
        corr: Option<String>,
        reply: Reply<RunResult>,
        ack: Option<std::sync::Arc<dyn crate::broker::Ack>>,
        ctx: &mut Context<Self>,
    ) {
        let task = ack.map(|ack| Task { ack, claim: None });
        self.reply_then(Kind::Run, corr, reply, task, ctx);
    }

    fn on_run(&mut self, msg: Incoming<RunRequest>, owner: String, ctx: &mut Context<Self>) {
        let Incoming {
            meta,
            body: mut request,
        } = msg;
        let ack = meta.ack.clone();
        let corr = meta.correlation_id.clone();
        if corr.is_none() {
            tracing::warn!(from = %meta.identity_id, "run request without a correlation id ignored");
            if let Some(ack) = &ack {
                settle("acknowledge a durable request", ack.done());
            }
            return;
        }
        if ack.is_some() && request.run_id.as_deref().is_none_or(str::is_empty) {
            // Every delivery of this request must name the same run.
            request.run_id = Some(run_id_of_envelope(&meta.id));
        }
        // Every copy of a run (a retried publish, a redelivery, a second
        // router's forward) is that run: it waits for its one result.
        if let (Some(run_id), Some(c)) = (request.run_id.clone(), corr.as_deref()) {
            // A copy of a run whose request is being fetched waits for
            // it (a durable one stays unacknowledged: it is that request).
            let fetching = self.join_fetch(&run_id, &owner, &meta);
            let joined = match fetching {
                Some(joined) => Some(joined),
                None => self.join_copy(&run_id, &owner, c, ctx),
            };
            match joined {
                Some(Ok(())) => {
                    if let (Some(ack), None) = (&ack, fetching) {
                        settle("acknowledge a durable request", ack.done());
                    }
                    return;
                }
                Some(Err(())) => {
                    let reply = Reply::error(
                        ErrorType::Forbidden,
                        format!("run {run_id} belongs to another account"),
                    );
                    return self.answer(corr, reply, ack, ctx);
                }
                None => {}
            }
        }
        match (request.request_parts, request.run_id.clone()) {
            // Its summary: the rest is fetched once it may be taken.
            (Some(parts), Some(run_id)) => {
                if self.refuse(&run_id, &request, &ack, &corr, ctx) {
                    return;
                }
                self.fetch_payload(meta, request, owner, parts, ctx)
            }
            (Some(_), None) => {
                let reply = Reply::error(
                    ErrorType::BadRequest,
                    "a run request in parts must name its run_id",
                );
                self.answer(corr, reply, ack, ctx)
            }
            (None, _) => self.on_whole_run(meta, request, owner, ctx),
        }
    }

    /// A whole run request: planned, then taken (or refused).
    pub(super) fn on_whole_run(
        &mut self,
        meta: crate::actors::bus::Meta,
        request: RunRequest,
        owner: String,
        ctx: &mut Context<Self>,
    ) {
        let ack = meta.ack.clone();
        let corr = meta.correlation_id.clone();
        let plan = match plan_run(&request, &owner, &self.config.settings) {
            Ok(p) => p,
            Err(e) => return self.answer(corr, Reply::Err(e), ack, ctx),
        };
        if self.refuse(&plan.run_id, &request, &ack, &corr, ctx) {
            return;
        }
        match ack {
            Some(ack) => self.claim_run(&meta, &request, plan, owner, corr, ack, ctx),
            None => self.start_session(plan, owner, corr, None, ctx),
        }
    }

    /// Refuses a run that came too late or finds the worker unable to
    /// take it (on a durable queue it goes back instead); `true` when it
    /// was.
    fn refuse(
        &mut self,
        run_id: &str,
        request: &RunRequest,
        ack: &Option<std::sync::Arc<dyn crate::broker::Ack>>,
        corr: &Option<String>,
        ctx: &mut Context<Self>,
    ) -> bool {
        let corr = corr.clone();
        if ack.is_none() && past(request.accept_by.as_deref()) {
            // Its requester has stopped waiting for an acceptance (and
            // answered it `unavailable`): it must never run.
            tracing::warn!(run_id = %run_id, accept_by = ?request.accept_by, "a run request came after its accept-by time; not starting it");
            let reply = Reply::error(
                ErrorType::Unavailable,
                "the run request reached the worker after its accept-by time; it was not started",
            );
            self.answer(corr, reply, None, ctx);
            return true;
        }
        let busy = if self.stopping {
            Some("the worker is stopping".to_owned())
        } else if self.state() == RunnerState::Unavailable {
            Some("the container engine is unreachable".to_owned())
        } else if self.sessions.len() + self.pending >= self.config.settings.config.worker.capacity
        {
            Some(format!("worker {} is at capacity", self.config.worker_id()))
        } else {
            None
        };
        let Some(why) = busy else {
            return false;
        };
        if let Some(ack) = ack {
            // Back to the queue, for another worker or a later try.
            let delay = if self.stopping {
                Duration::ZERO
            } else {
                Duration::from_secs(1)
            };
            tracing::debug!(run_id = %run_id, reason = %why, "durable run left in the queue");
            settle("return a durable request", ack.retry_later(delay));
            return true;
        }
        self.answer(corr, Reply::error(ErrorType::Unavailable, why), None, ctx);
        true
    }

    /// `run.accepted`: this worker has the run (and enforces `timeout`).
    pub(super) fn say_accepted(&self, run_id: &str, owner: &str, timeout: Option<u64>) {
        let accepted = RunAccepted {
            run_id: run_id.to_owned(),
            owner_account_id: owner.to_owned(),
            worker_id: self.config.worker_id().to_owned(),
            timeout_seconds: timeout,
        };
        let publication = Publication::new(
            format!("{}.run.accepted", self.config.prefix),
            encode(&accepted),
        );
        let publisher = self.publisher.clone();
        actix_rt::spawn(async move {
            if let Err(e) = publisher.publish(publication).await {
                tracing::debug!(error = %e, "run.accepted not published");
            }
        });
    }

    pub(super) fn start_session(
        &mut self,
        plan: RunPlan,
        owner: String,
        corr: Option<String>,
        task: Option<Task>,
        ctx: &mut Context<Self>,
    ) {
        // A profile run takes an idle pooled container when one is ready
        // (the pool is made per profile; explicit-image runs go cold, and
        // so do runs with files, written before the start, and with
        // artifacts, archived from per-run volumes after the exit).
        let poolable = plan.profile.as_ref().filter(|p| {
            self.pool_config.sizes.contains_key(*p)
                && !plan.spec.command.is_empty()
                && plan.sandbox.is_none()
                && plan.files.is_empty()
                && plan.artifacts.is_empty()
        });
        if let (Some(profile), Some(pool)) = (poolable, &self.pool) {
            self.pending += 1;
            let take = pool.take.send(warm_pool::Take(profile.clone()));
            ctx.spawn(take.into_actor(self).map(move |taken, act, ctx| {
                act.pending -= 1;
                let taken = taken.ok().flatten();
                let m = &act.config.metrics;
                if taken.is_some() {
                    &m.pool_hits
                } else {
                    &m.pool_misses
                }
                .inc();
                act.open_session(plan, owner, corr, task, taken, ctx);
            }));
            return;
        }
        self.open_session(plan, owner, corr, task, None, ctx);
    }

    fn open_session(
        &mut self,
        plan: RunPlan,
        owner: String,
        corr: Option<String>,
        task: Option<Task>,
        pooled: Option<String>,
        ctx: &mut Context<Self>,
    ) {
        let Some(runtime) = self.runtime().cloned() else {
            return;
        };
        let cx = SessionContext {
            runtime,
            worker_id: self.config.worker_id().to_owned(),
            runner_name: self.config.runner_name.clone(),
            engine_version: self.engine_version.clone(),
            output_cap: self.config.settings.config.worker.output_cap_bytes,
            artifact_cap: self.config.settings.config.worker.max_artifact_bytes,
            publisher: self.publisher.clone(),
            prefix: self.config.prefix.clone(),
            sandbox: self.config.seats.sandbox.clone(),
        };
        let run_id = plan.run_id.clone();
        tracing::info!(run_id = %run_id, owner = %owner, image = %plan.image, durable = task.is_some(), pooled = pooled.is_some(), "run accepted");
        self.say_accepted(&run_id, &owner, Some(plan.timeout.as_secs()));
        let seat = (self.config.seats.session)(plan, cx, ctx.address().recipient(), pooled);
        self.sessions.insert(
            run_id,
            Live {
                seat,
                admitted: std::time::Instant::now(),
                owner,
                correlation_ids: corr.into_iter().collect(),
                started_at: now_rfc3339(),
                container_id: None,
                task,
            },
        );
        self.config
            .metrics
            .live_sessions
            .set(self.sessions.len() as i64);
    }
}
