//! What the router does with each kind beyond forwarding it (its reply
//! deadline, how a run waits in a durable queue), and subscribing to a
//! kind's requests.

use super::merge::Gathered;
use super::RouterConfig;
use crate::actors::bus::edge::requests;
use crate::actors::bus::subscription::{self, Subscription};
use crate::actors::bus::Incoming;
use crate::broker::{run_id_of_envelope, BrokerError, SharedBroker, SubscribeSpec};
use crate::contract::replies::{DeleteRequest, InputRequest, RunQuery, StatusRequest};
use crate::contract::wire::{RunnerDeleteRequest, RunnerStartRequest, RunnerStatusRequest};
use crate::contract::{run_deadline, Reply, RunRequest, WireRequest, WorkerReply, QUERY_TIMEOUT};
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
