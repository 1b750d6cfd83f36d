//! A public request, as the router handles every kind: the owner rule, a
//! payload that decodes, the static backend's answer, then its
//! [`Forward`]; what each kind needs beyond that (its reply deadline, how
//! a run waits in a durable queue); and subscribing to a kind's requests.

use super::forward::Forward;
use super::merge::Gathered;
use super::workers::Live;
use super::{Router, RouterBackend, RouterConfig};
use crate::actors::bus::edge::requests;
use crate::actors::bus::subscription::{self, Subscription};
use crate::actors::bus::Incoming;
use crate::broker::{run_id_of_envelope, BrokerError, SharedBroker, SubscribeSpec};
use crate::contract::replies::{DeleteRequest, InputRequest, RunQuery, StatusRequest};
use crate::contract::wire::{RunnerDeleteRequest, RunnerStartRequest, RunnerStatusRequest};
use crate::contract::{run_deadline, Reply, RunRequest, WireRequest, WorkerReply, QUERY_TIMEOUT};
use crate::contract::{ErrorType, Kind, Publication, PUBLIC_PREFIX};
use actix::prelude::*;
use std::time::Duration;

pub(super) fn unsigned<R>(reply: Reply<R>) -> WorkerReply<R> {
    WorkerReply {
        worker_id: None,
        reply,
    }
}

/// What the router does with a kind beyond forwarding it.
pub trait Routed: Gathered {
    /// How long the router waits for the reply.
    fn deadline(&self, config: &RouterConfig) -> Duration {
        config.default_timeout
    }
    /// Prepares a request that waits in a durable queue.
    fn queue(&mut self, _envelope_id: &str, _until: time::OffsetDateTime) {}
}

impl Routed for RunRequest {
    fn deadline(&self, config: &RouterConfig) -> Duration {
        run_deadline(self.spec.timeout_seconds, config.request_timeout)
    }

    /// Every copy of this run (a redelivery, another router's forward)
    /// names the same run, so a worker's claim covers them all; and a
    /// worker does not start it once its requester has stopped waiting.
    fn queue(&mut self, envelope_id: &str, until: time::OffsetDateTime) {
        if self.run_id.as_deref().is_none_or(str::is_empty) {
            self.run_id = Some(run_id_of_envelope(envelope_id));
        }
        if let Ok(at) = until.format(&time::format_description::well_known::Rfc3339) {
            self.deadline_at = Some(at);
        }
    }
}

impl Routed for RunQuery {
    /// A query is answered at once by whoever holds the run.
    fn deadline(&self, _: &RouterConfig) -> Duration {
        QUERY_TIMEOUT
    }
}

impl Routed for InputRequest {}

impl Routed for DeleteRequest {}

impl Routed for StatusRequest {}

impl Routed for RunnerStatusRequest {}

impl Routed for RunnerStartRequest {}

impl Routed for RunnerDeleteRequest {}

/// Subscribes `target` to the requests of `Q` on `prefix`.
pub(super) async fn subscribe_requests<Q, A>(
    broker: &SharedBroker,
    spec: SubscribeSpec,
    target: &Addr<A>,
) -> Result<Recipient<subscription::Stop>, BrokerError>
where
    Q: WireRequest,
    A: Actor<Context = Context<A>> + Handler<Incoming<Result<Q, crate::contract::Malformed>>>,
{
    let sub = Subscription::start_decoded(
        broker.clone(),
        spec,
        requests::<Q>(),
        target.clone().recipient(),
    )
    .await?;
    Ok(sub.recipient())
}

impl<Q: Routed> Handler<Incoming<Result<Q, crate::contract::Malformed>>> for Router {
    type Result = ();

    fn handle(
        &mut self,
        msg: Incoming<Result<Q, crate::contract::Malformed>>,
        ctx: &mut Self::Context,
    ) {
        self.metrics.requests.inc();
        if let Some(ack) = &msg.meta.ack {
            // Taken: a router forwards a request at most once, so a router
            // that dies now loses it (its requester records it lost)
            // rather than a second router running it twice.
            let done = ack.done();
            actix_rt::spawn(async move {
                if let Err(e) = done.await {
                    tracing::warn!(error = %e, "could not acknowledge a durable request");
                }
            });
        }
        let Some(correlation_id) = msg.meta.correlation_id.clone() else {
            tracing::warn!(event = %msg.meta.name, from = %msg.meta.identity_id, "request without a correlation id dropped: nobody could match a reply");
            return;
        };
        let requester = self.requester.clone();
        let forwarded_as = correlation_id.clone();
        let answer = move |reply: WorkerReply<Q::Reply>| {
            let publication = Publication::new(Q::KIND.response(PUBLIC_PREFIX), reply.to_payload())
                .with_correlation(correlation_id);
            async move {
                if let Err(e) = requester.publish(publication).await {
                    tracing::error!(error = %e, "could not publish a reply");
                }
            }
        };
        let owner = msg.owner();
        let mut body = match msg.body {
            Ok(body) => body,
            Err(why) => {
                let reply = Reply::error(
                    ErrorType::BadRequest,
                    format!("invalid {} request: {why}", Q::KIND.segment()),
                );
                ctx.spawn(answer(unsigned(reply)).into_actor(self));
                return;
            }
        };
        let owner = match owner {
            Ok(owner) => owner,
            Err(e) => {
                ctx.spawn(answer(unsigned(Reply::Err(e))).into_actor(self));
                return;
            }
        };
        let prefix = match &self.config.backend {
            RouterBackend::Static => {
                let reply = WorkerReply {
                    worker_id: Some("static".into()),
                    reply: body.static_answer(&owner, "static"),
                };
                ctx.spawn(answer(reply).into_actor(self));
                return;
            }
            RouterBackend::Events { prefix } => prefix.clone(),
        };
        if !Q::KIND.is_runner() {
            body.set_owner(&owner);
        }
        let deadline = body.deadline(&self.config);
        let durable = Q::KIND == Kind::Run && self.durable_runs;
        if durable {
            body.queue(&msg.meta.id, time::OffsetDateTime::now_utc() + deadline);
        }
        let (requester, malformed) = (self.requester.clone(), self.metrics.malformed.clone());
        let registry = self.registry.clone();
        ctx.spawn(
            async move {
                let reply = match registry.send(Live).await {
                    Ok(live) => {
                        let forward = Forward {
                            requester,
                            malformed,
                            prefix,
                            body,
                            owner,
                            deadline,
                            live,
                            durable,
                            correlation_id: forwarded_as,
                        };
                        forward.run().await
                    }
                    Err(_) => Some(unsigned(Reply::error(
                        ErrorType::Unavailable,
                        "the router is stopping",
                    ))),
                };
                if let Some(reply) = reply {
                    answer(reply).await;
                }
            }
            .into_actor(self),
        );
    }
}
