//! Durable run requests (a JetStream work queue): claim before start,
//! keep claim and delivery alive while running, settle after the reply,
//! and answer `lost` for a redelivered run whose worker is gone.
//!
//! At most once: a run starts only under a claim this process won (or
//! its own claim whose confirmation was lost). Answered once: the claim
//! is marked done by compare-and-set before the reply goes out, and a
//! worker declares a run lost only by compare-and-set on a claim revision
//! that stood still for the ack wait (measured on its own clock, so clock
//! skew does not matter), so the two never both succeed.

use super::DockerWorker;
use crate::actors::bus::Meta;
use crate::actors::container_session::Cancel;
use crate::broker::{claim_key, Ack, BrokerError, Claim, ClaimRecord, SharedBroker};
use crate::contract::{run_deadline, ErrorType, Kind, Publication, Reply, RunRequest, RunResult};
use crate::planning::plan::RunPlan;
use actix::prelude::*;
use futures::future::LocalBoxFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A durable run request in hand: its delivery, and the claim when taken.
pub(super) struct Task {
    pub ack: Arc<dyn Ack>,
    pub claim: Option<Held>,
}

/// A claim this process holds.
pub(super) struct Held {
    pub key: String,
    pub record: ClaimRecord,
    pub revision: u64,
}

/// Runs an acknowledgement (or other settle step) to completion, logging
/// a failure.
pub(super) fn settle(what: &'static str, fut: LocalBoxFuture<'static, Result<(), BrokerError>>) {
    actix_rt::spawn(async move {
        if let Err(e) = fut.await {
            tracing::warn!(error = %e, "could not {what}");
        }
    });
}

/// When the requester stops waiting: the router's `deadline_at`, else
/// the run's deadline from when it was published.
fn past_deadline(meta: &Meta, request: &RunRequest, plan: &RunPlan) -> bool {
    let rfc = &time::format_description::well_known::Rfc3339;
    let now = time::OffsetDateTime::now_utc();
    if let Some(at) = request
        .deadline_at
        .as_deref()
        .and_then(|t| time::OffsetDateTime::parse(t, rfc).ok())
    {
        return now > at;
    }
    match time::OffsetDateTime::parse(&meta.time, rfc) {
        Ok(published) => {
            now - published > run_deadline(Some(plan.timeout.as_secs() as i64), Duration::MAX)
        }
        Err(_) => false,
    }
}

/// Marks a held claim done. A keep-alive write may have moved its
/// revision meanwhile: then the claim is read again, and written if it is
/// still this process's and not done. `false` when another worker
/// recorded the run lost first (its answer is out: this one is not sent).
pub(super) async fn mark_done(
    broker: &SharedBroker,
    key: &str,
    record: &ClaimRecord,
    revision: u64,
) -> bool {
    let done = ClaimRecord {
        done: true,
        ..record.clone()
    };
    let mut expected = revision;
    for _ in 0..8 {
        match broker.update_claim(key, done.clone(), Some(expected)).await {
            Ok(Some(_)) => return true,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not mark a claim done");
                return true;
            }
        }
        match broker.claim(key, done.clone()).await {
            Ok(Claim::Held {
                record: now,
                revision,
            }) if now.instance == record.instance && !now.done => expected = revision,
            Ok(Claim::Held { .. }) => {
                tracing::warn!(run_id = %record.run_id, "another worker recorded this run lost meanwhile; its result is not sent");
                return false;
            }
            // Gone (expired): nobody else answered.
            Ok(Claim::Won { .. }) => return true,
            Err(e) => {
                tracing::warn!(error = %e, "could not read a claim");
                return true;
            }
        }
    }
    true
}

impl DockerWorker {
    fn ack_wait(&self) -> Duration {
        self.durable.unwrap_or(Duration::from_secs(30))
    }

    /// Publishes a reply and settles its durable request: the claim is
    /// marked done first (compare-and-set; if another worker recorded the
    /// run lost meanwhile, this result is not sent), then the reply goes
    /// out, then the delivery is acknowledged.
    pub(super) fn reply_then<R: serde::Serialize>(
        &mut self,
        kind: Kind,
        correlation_id: Option<String>,
        reply: Reply<R>,
        task: Option<Task>,
        ctx: &mut Context<Self>,
    ) {
        // Every reply names its worker (the router's gather needs it); a
        // `lost` result names the run's worker itself.
        let payload = self.signed(reply);
        let run_id = task
            .as_ref()
            .and_then(|t| t.claim.as_ref())
            .map(|h| h.record.run_id.clone());
        if let Some(r) = &run_id {
            self.settling.insert(r.clone());
        }
        self.settles += 1;
        let publication = correlation_id.map(|c| {
            Publication::new(kind.response(&self.config.prefix), payload).with_correlation(c)
        });
        let publisher = self.publisher.clone();
        let broker = publisher.broker().clone();
        ctx.spawn(
            async move {
                let mut send = true;
                if let Some(Held {
                    key,
                    record,
                    revision,
                }) = task.as_ref().and_then(|t| t.claim.as_ref())
                {
                    send = mark_done(&broker, key, record, *revision).await;
                }
                if let (true, Some(publication)) = (send, publication) {
                    if let Err(e) = publisher.publish(publication).await {
                        tracing::error!(error = %e, "could not publish a reply");
                    }
                }
                if let Some(task) = task {
                    if let Err(e) = task.ack.done().await {
                        tracing::warn!(error = %e, "could not acknowledge a durable request");
                    }
                }
            }
            .into_actor(self)
            .map(move |_, act, _| {
                act.settles -= 1;
                if let Some(r) = run_id {
                    act.settling.remove(&r);
                }
            }),
        );
    }

    /// A durable run request that passed planning: claim it, then run it
    /// (or find out who has it).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn claim_run(
        &mut self,
        meta: &Meta,
        request: &RunRequest,
        plan: RunPlan,
        owner: String,
        corr: Option<String>,
        ack: Arc<dyn Ack>,
        ctx: &mut Context<Self>,
    ) {
        let key = claim_key(&owner, &plan.run_id);
        if self.claiming.contains(&key)
            || self.sessions.contains_key(&plan.run_id)
            || self.settling.contains(&plan.run_id)
        {
            // Another delivery of a run in hand here: that one settles it,
            // and this copy finds the claim done when it comes back.
            return;
        }
        let record = ClaimRecord {
            holder: self.config.worker_id().to_owned(),
            instance: self.instance.clone(),
            run_id: plan.run_id.clone(),
            done: false,
        };
        let late = past_deadline(meta, request, &plan);
        let request = request.clone();
        self.pending += 1;
        self.claiming.insert(key.clone());
        let claiming = self.publisher.broker().claim(&key, record.clone());
        ctx.spawn(claiming.into_actor(self).map(move |res, act, ctx| {
            act.pending -= 1;
            act.claiming.remove(&key);
            let revision = match res {
                Ok(Claim::Won { revision }) => revision,
                Ok(Claim::Held {
                    record: held,
                    revision,
                }) if held.instance == act.instance && !held.done => {
                    // Our own claim whose confirmation was lost.
                    revision
                }
                Ok(Claim::Held {
                    record: held,
                    revision,
                }) => return act.on_claimed(key, held, revision, ack, &request, owner, corr, ctx),
                Err(e) => {
                    tracing::warn!(run_id = %plan.run_id, error = %e, "could not claim a durable run; it stays queued");
                    return settle(
                        "return a durable request",
                        ack.retry_later(Duration::from_secs(1)),
                    );
                }
            };
            let task = Task {
                ack,
                claim: Some(Held {
                    key,
                    record,
                    revision,
                }),
            };
            let refusal = if act.stopping {
                Some(Reply::<RunResult>::error(
                    ErrorType::Unavailable,
                    "the worker is stopping",
                ))
            } else if late {
                tracing::warn!(run_id = %plan.run_id, "a queued run outlived its requester's deadline; not starting it");
                Some(Reply::error(
                    ErrorType::Timeout,
                    "the run waited in the queue past its deadline and was not started",
                ))
            } else {
                None
            };
            match refusal {
                Some(reply) => act.reply_then(Kind::Run, corr, reply, Some(task), ctx),
                None => act.start_session(plan, owner, corr, Some(task), ctx),
            }
        }));
    }

    /// A durable run another process claimed: answered already, still
    /// running there (its claim keeps moving), or lost with it (its claim
    /// stood still for the ack wait).
    #[allow(clippy::too_many_arguments)]
    fn on_claimed(
        &mut self,
        key: String,
        held: ClaimRecord,
        revision: u64,
        ack: Arc<dyn Ack>,
        request: &RunRequest,
        owner: String,
        corr: Option<String>,
        ctx: &mut Context<Self>,
    ) {
        if held.done {
            self.suspects.remove(&key);
            return settle("acknowledge a durable request", ack.done());
        }
        let ack_wait = self.ack_wait();
        let still = match self.suspects.get(&key) {
            Some((seen, since)) if *seen == revision => since.elapsed() >= ack_wait,
            _ => {
                self.suspects
                    .insert(key.clone(), (revision, Instant::now()));
                false
            }
        };
        if !still {
            return settle("return a durable request", ack.retry_later(ack_wait / 2));
        }
        let marked = ClaimRecord {
            done: true,
            ..held.clone()
        };
        let mut lost = RunResult::lost(request, &held.run_id, &owner, &held.holder);
        lost.runner_name = self.config.runner_name.clone();
        lost.runtime.provider = self
            .runtime()
            .map(|r| r.provider())
            .unwrap_or("static")
            .to_owned();
        let reply = Reply::Ok(lost);
        let marking = self
            .publisher
            .broker()
            .update_claim(&key, marked, Some(revision));
        ctx.spawn(marking.into_actor(self).map(move |res, act, ctx| {
            act.suspects.remove(&key);
            match res {
                Ok(Some(_)) => {
                    tracing::warn!(run_id = %held.run_id, worker_id = %held.holder, "a claimed run's worker is gone; recorded lost (never re-run)");
                    let task = Task { ack, claim: None };
                    let corrs = corr.into_iter().collect();
                    act.finish_run(held.run_id.clone(), owner, corrs, reply, Some(task), ctx);
                }
                // It moved after all: its worker lives.
                Ok(None) => settle(
                    "return a durable request",
                    ack.retry_later(act.ack_wait() / 2),
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "could not record a run lost; it stays queued");
                    settle(
                        "return a durable request",
                        ack.retry_later(Duration::from_secs(1)),
                    )
                }
            }
        }));
    }

    /// Keeps the claims and deliveries of running durable runs alive, and
    /// forgets old suspicions.
    pub(super) fn keep_alive(&mut self, ctx: &mut Context<Self>) {
        let forget = self.ack_wait() * 10;
        self.suspects
            .retain(|_, (_, since)| since.elapsed() < forget);
        self.keep_fetches_alive();
        let broker = self.publisher.broker().clone();
        for (run_id, live) in &self.sessions {
            let Some(Task {
                ack,
                claim: Some(held),
            }) = &live.task
            else {
                continue;
            };
            settle("extend a durable request", ack.working());
            let write = broker.update_claim(&held.key, held.record.clone(), Some(held.revision));
            let run_id = run_id.clone();
            ctx.spawn(write.into_actor(self).map(move |res, act, _| {
                let Some(live) = act.sessions.get_mut(&run_id) else {
                    return;
                };
                match res {
                    Ok(Some(revision)) => {
                        if let Some(Task { claim: Some(held), .. }) = &mut live.task {
                            held.revision = revision;
                        }
                    }
                    Ok(None) => {
                        // Another worker recorded it lost: its answer is out.
                        tracing::warn!(run_id = %run_id, "this run was recorded lost by another worker; cancelling it");
                        live.seat.cancel.do_send(Cancel);
                    }
                    Err(e) => tracing::warn!(run_id = %run_id, error = %e, "could not refresh a claim"),
                }
            }));
        }
    }
}
