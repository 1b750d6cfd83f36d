//! `Router`: serves the public `bus.containers.*` requests by forwarding
//! them to one backend prefix (`bus.docker`, `bus.podman`) — or, with the
//! static backend, answering them itself — and republishes each reply
//! under the public name with the request's original correlation id.
//!
//! Runs go to one worker (unicast); `input`/`delete` are broadcast and
//! answered by the worker named in `worker_id`; `status` and `runner.*` are
//! gathered from every live worker (known from heartbeats, [`workers`])
//! and merged ([`merge`]); one request's way is [`forward`]. The router
//! never leaves a requester hanging: every path ends in a reply, a
//! `timeout` error at the latest.
//!
//! Messages: every public request arrives decoded as
//! `Incoming<Result<Q, crate::contract::Malformed>>` for its [`WireRequest`] type `Q`; the
//! backend's `run.started`/`run.output` as `Incoming<RunStarted>` and
//! `Incoming<RunOutput>` (republished in order through a [`Relay`]);
//! heartbeats go to the [`workers::WorkerRegistry`] seat.

pub mod forward;
pub mod merge;
mod relays;
mod routed;
#[cfg(test)]
mod tests;
pub mod workers;

use crate::actors::bus::dispatcher::ReplyMetrics;
use crate::actors::bus::edge::events;
use crate::actors::bus::relay::Relay;
use crate::actors::bus::requester::{BusIdentity, Requester};
use crate::actors::bus::subscription::{self, Subscription};
use crate::actors::bus::Incoming;
use crate::broker::{BrokerError, SharedBroker, SubscribeSpec};
use crate::contract::replies::{DeleteRequest, InputRequest, RunQuery, StatusRequest};
use crate::contract::wire::{RunnerDeleteRequest, RunnerStartRequest, RunnerStatusRequest};
use crate::contract::{
    encode, Kind, Publication, ResultPart, RouterHeartbeat, RunAccepted, RunOutput, RunRecorded,
    RunRequest, RunResult, RunStarted, WorkerHeartbeat, WorkerReply, DEFAULT_REQUEST_TIMEOUT,
    PUBLIC_PREFIX, ROUTER_GROUP, ROUTER_HEARTBEAT_EVERY, WORKER_TTL,
};
use crate::metrics::Metrics;
use actix::prelude::*;
use prometheus::IntCounter;
pub use relays::RunAnswer;
pub use routed::Routed;
use routed::{subscribe_requests, unsigned};
use std::time::Duration;
use workers::{Live, WorkerRegistry};

/// Where requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouterBackend {
    /// Answer every request with the static provider.
    Static,
    /// Forward to workers on this prefix (`bus.docker`).
    Events { prefix: String },
}

/// Settings of a router.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub backend: RouterBackend,
    /// Cap of a run's deadline (`--request-timeout`).
    pub request_timeout: Duration,
    /// Deadline of every other request.
    pub default_timeout: Duration,
    /// A worker without a heartbeat for this long is gone.
    pub worker_ttl: Duration,
    /// After start, how long a request waits for a first heartbeat when no
    /// worker is known yet.
    pub discovery_wait: Duration,
}

impl RouterConfig {
    pub fn new(backend: RouterBackend) -> Self {
        RouterConfig {
            backend,
            request_timeout: Duration::from_secs(30 * 60),
            default_timeout: DEFAULT_REQUEST_TIMEOUT,
            worker_ttl: WORKER_TTL,
            discovery_wait: Duration::from_secs(6),
        }
    }
}

/// Counters of the router.
#[derive(Clone)]
pub struct RouterMetrics {
    pub requests: IntCounter,
    pub malformed: IntCounter,
    pub replies: ReplyMetrics,
}

impl RouterMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        RouterMetrics {
            requests: metrics.counter("bus_router_requests_total", "Public requests handled."),
            malformed: metrics.counter(
                "bus_router_malformed_replies_total",
                "Backend replies refused as malformed.",
            ),
            replies: ReplyMetrics::register(metrics, "bus_router"),
        }
    }
}

impl Router {
    /// Says that this router lives, and which workers it knows are alive
    /// (`bus.containers.router.heartbeat`): the API provider tells a
    /// departed worker from a broken path by it.
    fn heartbeat(&self) {
        // Until every live worker has had time to beat once, a list of
        // the workers heard would leave some out — and the provider takes
        // a worker a live router does not list for gone.
        if self.born.elapsed() < self.config.discovery_wait {
            return;
        }
        let (registry, requester, router_id) = (
            self.registry.clone(),
            self.requester.clone(),
            self.router_id.clone(),
        );
        actix_rt::spawn(async move {
            let Ok(live) = registry.send(Live).await else {
                return;
            };
            let beat = RouterHeartbeat {
                router_id,
                workers: live.beats,
            };
            let publication =
                Publication::new(format!("{PUBLIC_PREFIX}.router.heartbeat"), encode(&beat));
            if let Err(e) = requester.publish(publication).await {
                tracing::debug!(error = %e, "router heartbeat not published");
            }
        });
    }
}

/// Stops the router and its subscriptions; in-flight forwards are dropped
/// (their requesters time out).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// The live workers the router knows (for tests and probes).
#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub struct LiveWorkers;

#[derive(Message)]
#[rtype(result = "()")]
struct Subscribed(Vec<Recipient<subscription::Stop>>);

/// The router actor.
pub struct Router {
    config: RouterConfig,
    requester: Requester,
    metrics: RouterMetrics,
    /// Who is alive (a [`WorkerRegistry`], or a mock in a test).
    registry: Recipient<Live>,
    /// Backend runs are a durable work queue: forwarded even while no
    /// worker is up (one will take them).
    durable_runs: bool,
    subscriptions: Vec<Recipient<subscription::Stop>>,
    /// `run.started`/`run.output` to republish, in arrival order.
    relay: Relay,
    /// This router (its bus identity and a fresh id per start).
    router_id: String,
    /// When it started: it says which workers live only once it can know.
    born: std::time::Instant,
}

impl Router {
    /// Starts a router on the current arbiter, with its own worker
    /// registry, and subscribes it; returns once every subscription is in
    /// place.
    pub async fn start(
        broker: SharedBroker,
        identity: BusIdentity,
        config: RouterConfig,
        metrics: RouterMetrics,
    ) -> Result<Addr<Router>, BrokerError> {
        let registry = WorkerRegistry::new(config.worker_ttl, config.discovery_wait).start();
        let router = Router::start_with(
            broker.clone(),
            identity,
            config.clone(),
            metrics,
            registry.clone().recipient(),
        )
        .await?;
        if let RouterBackend::Events { prefix } = &config.backend {
            let beats = Subscription::start_decoded(
                broker,
                SubscribeSpec::broadcast(format!("{prefix}.worker.heartbeat")).consumer("router"),
                events::<WorkerHeartbeat>(),
                registry.recipient(),
            )
            .await?;
            router.do_send(Subscribed(vec![beats.recipient()]));
        }
        Ok(router)
    }

    /// Starts a router whose knowledge of live workers comes from
    /// `registry` (a test seats a mock here).
    pub async fn start_with(
        broker: SharedBroker,
        identity: BusIdentity,
        config: RouterConfig,
        metrics: RouterMetrics,
        registry: Recipient<Live>,
    ) -> Result<Addr<Router>, BrokerError> {
        let requester = Requester::new(broker.clone(), identity, metrics.replies.clone());
        let durable_runs = match &config.backend {
            RouterBackend::Events { prefix } => {
                broker.durable(&Kind::Run.request(prefix)).is_some()
            }
            RouterBackend::Static => false,
        };
        let router = Router {
            durable_runs,
            config: config.clone(),
            requester: requester.clone(),
            metrics,
            registry,
            subscriptions: Vec::new(),
            relay: Relay::start(requester.clone(), 4096),
            born: std::time::Instant::now(),
            router_id: format!(
                "{}-{}",
                requester.identity().sub,
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
        }
        .start();
        let public = |k: Kind| {
            SubscribeSpec::unicast(k.request(PUBLIC_PREFIX), ROUTER_GROUP).consumer("router")
        };
        let mut subs = vec![
            subscribe_requests::<RunRequest, _>(&broker, public(Kind::Run), &router).await?,
            subscribe_requests::<InputRequest, _>(&broker, public(Kind::Input), &router).await?,
            subscribe_requests::<DeleteRequest, _>(&broker, public(Kind::Delete), &router).await?,
            subscribe_requests::<StatusRequest, _>(&broker, public(Kind::Status), &router).await?,
            subscribe_requests::<RunnerStatusRequest, _>(
                &broker,
                public(Kind::RunnerStatus),
                &router,
            )
            .await?,
            subscribe_requests::<RunnerStartRequest, _>(
                &broker,
                public(Kind::RunnerStart),
                &router,
            )
            .await?,
            subscribe_requests::<RunnerDeleteRequest, _>(
                &broker,
                public(Kind::RunnerDelete),
                &router,
            )
            .await?,
            subscribe_requests::<RunQuery, _>(&broker, public(Kind::RunQuery), &router).await?,
        ];
        if let RouterBackend::Events { prefix } = &config.backend {
            let event = |name: &str| {
                SubscribeSpec::unicast(format!("{prefix}.{name}"), ROUTER_GROUP).consumer("router")
            };
            let started = Subscription::start_decoded(
                broker.clone(),
                event("run.started"),
                events::<RunStarted>(),
                router.clone().recipient(),
            )
            .await?;
            let output = Subscription::start_decoded(
                broker.clone(),
                event("run.output"),
                events::<RunOutput>(),
                router.clone().recipient(),
            )
            .await?;
            subs.push(started.recipient());
            subs.push(output.recipient());
            let accepted = Subscription::start_decoded(
                broker.clone(),
                event("run.accepted"),
                events::<RunAccepted>(),
                router.clone().recipient(),
            )
            .await?;
            let parts = Subscription::start_decoded(
                broker.clone(),
                event("run.result.part"),
                events::<ResultPart>(),
                router.clone().recipient(),
            )
            .await?;
            // Runs are answered by their worker under the public request's
            // correlation id; whichever router takes the answer relays it.
            let results = Subscription::start_decoded(
                broker.clone(),
                event("run.response"),
                Box::new(|e| {
                    Some(RunAnswer(Incoming {
                        meta: crate::actors::bus::Meta::of(&e),
                        body: WorkerReply::<RunResult>::decode(&e.payload),
                    }))
                }),
                router.clone().recipient(),
            )
            .await?;
            let recorded = Subscription::start_decoded(
                broker.clone(),
                SubscribeSpec::unicast(format!("{PUBLIC_PREFIX}.run.recorded"), ROUTER_GROUP)
                    .consumer("router"),
                events::<RunRecorded>(),
                router.clone().recipient(),
            )
            .await?;
            // A run request in parts: its worker's pull goes to the
            // providers, the parts come back to the backend's prefix.
            let pulls = Subscription::start_decoded(
                broker.clone(),
                event("run.payload.pull"),
                events::<crate::contract::parts::PayloadPull>(),
                router.clone().recipient(),
            )
            .await?;
            let payload_parts = Subscription::start_decoded(
                broker.clone(),
                SubscribeSpec::unicast(format!("{PUBLIC_PREFIX}.run.payload.part"), ROUTER_GROUP)
                    .consumer("router"),
                events::<crate::contract::parts::PayloadPart>(),
                router.clone().recipient(),
            )
            .await?;
            subs.extend([
                accepted.recipient(),
                parts.recipient(),
                results.recipient(),
                recorded.recipient(),
                pulls.recipient(),
                payload_parts.recipient(),
            ]);
            for k in Kind::ALL.into_iter().filter(|k| *k != Kind::Run) {
                requester.listen(&k.response(prefix)).await?;
            }
        }
        router.do_send(Subscribed(subs));
        Ok(router)
    }
}

impl Actor for Router {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
        ctx.run_interval(ROUTER_HEARTBEAT_EVERY, |act, _| act.heartbeat());
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        for s in self.subscriptions.drain(..) {
            s.do_send(subscription::Stop);
        }
    }
}

impl Handler<Subscribed> for Router {
    type Result = ();
    fn handle(&mut self, msg: Subscribed, _: &mut Self::Context) {
        self.subscriptions.extend(msg.0);
    }
}

impl Handler<Shutdown> for Router {
    type Result = ();
    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<LiveWorkers> for Router {
    type Result = ResponseFuture<Vec<String>>;
    fn handle(&mut self, _: LiveWorkers, _: &mut Self::Context) -> Self::Result {
        let registry = self.registry.clone();
        Box::pin(async move {
            registry
                .send(Live)
                .await
                .map(|l| l.live.into_iter().collect())
                .unwrap_or_default()
        })
    }
}
