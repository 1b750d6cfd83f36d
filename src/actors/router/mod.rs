//! `Router`: serves the public `bus.containers.*` requests by forwarding
//! them to one backend prefix (`bus.docker`, `bus.podman`) — or, with the
//! static backend, answering them itself — and republishes each reply
//! under the public name with the request's original correlation id.
//!
//! Runs go to one worker (unicast); `input`/`delete` are broadcast and
//! answered by the worker named in `worker_id`; `status` and `runner.*` are
//! gathered from every live worker (known from heartbeats) and merged. The
//! router never leaves a requester hanging: every path ends in a reply, a
//! `timeout` error at the latest.

pub mod replies;

use crate::actors::bus::dispatcher::ReplyMetrics;
use crate::actors::bus::requester::{BusIdentity, Request, Requester};
use crate::actors::bus::subscription::{self, Delivered, Subscription};
use crate::actors::bus::waiter::{Expect, Outcome};
use crate::broker::{run_id_of_envelope, BrokerError, SharedBroker, SubscribeSpec};
use crate::contract::owner::effective_owner;
use crate::contract::{
    error_payload, static_answers, Addressing, Kind, DEFAULT_REQUEST_TIMEOUT, PUBLIC_PREFIX,
    ROUTER_GROUP, RUN_GRACE, WORKER_TTL,
};
use crate::contract::{ErrorDetail, ErrorType, Publication};
use crate::metrics::Metrics;
use actix::prelude::*;
use prometheus::IntCounter;
use replies::Part;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};
use tokio::sync::watch;

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

struct Worker {
    seen: Instant,
    state: String,
}

/// The router actor.
pub struct Router {
    config: RouterConfig,
    requester: Requester,
    metrics: RouterMetrics,
    workers: HashMap<String, Worker>,
    started: Instant,
    known_workers: watch::Sender<usize>,
    /// Backend runs are a durable work queue: forwarded even while no
    /// worker is up (one will take them).
    durable_runs: bool,
    subscriptions: Vec<Addr<Subscription>>,
    /// `run.started`/`run.output` to republish, in arrival order.
    relay: tokio::sync::mpsc::Sender<Publication>,
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

impl Router {
    /// Starts a router on the current arbiter and subscribes it; returns
    /// once every subscription is in place.
    pub async fn start(
        broker: SharedBroker,
        identity: BusIdentity,
        config: RouterConfig,
        metrics: RouterMetrics,
    ) -> Result<Addr<Router>, BrokerError> {
        let requester = Requester::new(broker.clone(), identity, metrics.replies.clone());
        let (relay, mut relayed) = tokio::sync::mpsc::channel::<Publication>(4096);
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
            workers: HashMap::new(),
            started: Instant::now(),
            known_workers: watch::channel(0).0,
            subscriptions: Vec::new(),
            relay,
        }
        .start();
        let relay_requester = requester.clone();
        actix_rt::spawn(async move {
            // One publish at a time keeps each run's output in order.
            while let Some(publication) = relayed.recv().await {
                let name = publication.name.clone();
                if let Err(e) = relay_requester.publish(publication).await {
                    tracing::warn!(event = %name, error = %e, "could not forward");
                }
            }
        });
        let target = router.clone().recipient::<Delivered>();
        let mut specs: Vec<SubscribeSpec> = Kind::ALL
            .iter()
            .map(|k| {
                SubscribeSpec::unicast(k.request(PUBLIC_PREFIX), ROUTER_GROUP).consumer("router")
            })
            .collect();
        if let RouterBackend::Events { prefix } = &config.backend {
            for event in ["run.started", "run.output"] {
                specs.push(
                    SubscribeSpec::unicast(format!("{prefix}.{event}"), ROUTER_GROUP)
                        .consumer("router"),
                );
            }
            specs.push(
                SubscribeSpec::broadcast(format!("{prefix}.worker.heartbeat")).consumer("router"),
            );
            for k in Kind::ALL {
                requester.listen(&k.response(prefix)).await?;
            }
        }
        let mut subs = Vec::new();
        for spec in specs {
            subs.push(Subscription::start(broker.clone(), spec, target.clone()).await?);
        }
        router.do_send(Subscribed(subs));
        Ok(router)
    }

    fn live(&mut self) -> BTreeSet<String> {
        let ttl = self.config.worker_ttl;
        self.workers
            .retain(|_, w| w.seen.elapsed() < ttl && w.state != "stopped");
        self.workers.keys().cloned().collect()
    }

    fn on_heartbeat(&mut self, payload: &Value) {
        let Some(id) = payload
            .get("worker_id")
            .and_then(Value::as_str)
            .filter(|w| !w.is_empty())
        else {
            return;
        };
        let state = payload
            .get("state")
            .and_then(Value::as_str)
            .unwrap_or("ready")
            .to_owned();
        if !self.workers.contains_key(id) {
            tracing::info!(worker_id = id, state = %state, "worker joined");
        }
        self.workers.insert(
            id.to_owned(),
            Worker {
                seen: Instant::now(),
                state,
            },
        );
        let live = self.live().len();
        self.known_workers.send_replace(live);
    }

    fn deadline(&self, kind: Kind, payload: &Value) -> Duration {
        if kind != Kind::Run {
            return self.config.default_timeout;
        }
        match payload.get("timeout_seconds").and_then(Value::as_u64) {
            Some(secs) if secs > 0 => {
                (Duration::from_secs(secs) + RUN_GRACE).min(self.config.request_timeout)
            }
            _ => self.config.request_timeout,
        }
    }

    fn on_request(&mut self, kind: Kind, event: &crate::broker::Event, ctx: &mut Context<Self>) {
        self.metrics.requests.inc();
        if let Some(ack) = event.ack() {
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
        let Some(correlation_id) = event.correlation_id.clone() else {
            tracing::warn!(event = %event.name, from = %event.identity_id, "request without a correlation id dropped: nobody could match a reply");
            return;
        };
        let requester = self.requester.clone();
        let reply_to = kind.response(PUBLIC_PREFIX);
        let answer = move |payload: Value| {
            let requester = requester.clone();
            let publication = Publication::new(reply_to.clone(), payload)
                .with_correlation(correlation_id.clone());
            async move {
                if let Err(e) = requester.publish(publication).await {
                    tracing::error!(error = %e, "could not publish a reply");
                }
            }
        };
        let owner = match effective_owner(event, kind) {
            Ok(owner) => owner,
            Err(e) => {
                ctx.spawn(answer(error_payload(&e)).into_actor(self));
                return;
            }
        };
        let prefix = match &self.config.backend {
            RouterBackend::Static => {
                let reply = static_answers::answer(kind, &event.payload, &owner, "static");
                ctx.spawn(answer(reply).into_actor(self));
                return;
            }
            RouterBackend::Events { prefix } => prefix.clone(),
        };
        let mut payload = event.payload.clone();
        if !kind.is_runner() {
            if let Some(obj) = payload.as_object_mut() {
                obj.insert("owner_account_id".into(), json!(owner));
            }
        }
        let deadline = self.deadline(kind, &payload);
        if kind == Kind::Run && self.durable_runs {
            if let Some(obj) = payload.as_object_mut() {
                // Every copy of this run (a redelivery, another router's
                // forward) names the same run, so a worker's claim covers
                // them all; and a worker does not start it once its
                // requester has stopped waiting.
                let named = obj
                    .get("run_id")
                    .and_then(Value::as_str)
                    .is_some_and(|r| !r.is_empty());
                if !named {
                    obj.insert("run_id".into(), json!(run_id_of_envelope(&event.id)));
                }
                let until = time::OffsetDateTime::now_utc() + deadline;
                if let Ok(at) = until.format(&time::format_description::well_known::Rfc3339) {
                    obj.insert("deadline_at".into(), json!(at));
                }
            }
        }
        let forward = Forward {
            requester: self.requester.clone(),
            metrics: self.metrics.clone(),
            prefix,
            kind,
            deadline,
            payload,
            owner,
            live: self.live(),
            durable: kind == Kind::Run && self.durable_runs,
            discovery: self
                .config
                .discovery_wait
                .checked_sub(self.started.elapsed())
                .map(|left| (left, self.known_workers.subscribe())),
        };
        ctx.spawn(
            async move {
                let reply = forward.run().await;
                answer(reply).await;
            }
            .into_actor(self),
        );
    }
}

/// One request on its way to the backend.
struct Forward {
    requester: Requester,
    metrics: RouterMetrics,
    prefix: String,
    kind: Kind,
    deadline: Duration,
    payload: Value,
    owner: String,
    live: BTreeSet<String>,
    /// A durable run: it waits in the work queue for a worker.
    durable: bool,
    /// Time left to wait for a first worker, and the worker count to watch.
    discovery: Option<(Duration, watch::Receiver<usize>)>,
}

fn err(kind: ErrorType, message: impl Into<String>) -> Value {
    error_payload(&ErrorDetail::new(kind, message))
}

impl Forward {
    async fn run(mut self) -> Value {
        let mut any_worker = !self.live.is_empty() || self.durable;
        if !any_worker {
            if let Some((left, mut known)) = self.discovery.take() {
                // Just started: give workers one heartbeat to make themselves known.
                let _ = actix_rt::time::timeout(left, known.wait_for(|n| *n > 0)).await;
                any_worker = *known.borrow() > 0;
            }
        }
        let name = self.kind.request(&self.prefix);
        let provider = self
            .prefix
            .rsplit('.')
            .next()
            .unwrap_or("docker")
            .to_owned();
        match self.kind.addressing() {
            Addressing::One => {
                if !any_worker {
                    // Nobody would take it: a run on this bus is not queued
                    // (on NATS with JetStream, it is: see `durable`).
                    return err(
                        ErrorType::Unavailable,
                        format!(
                            "no live worker on {} (no heartbeat for {}s)",
                            self.prefix,
                            WORKER_TTL.as_secs()
                        ),
                    );
                }
                let request = Request::new(&name, self.payload.clone(), self.deadline);
                match self.requester.request(request).await {
                    Err(e) => error_payload(&e),
                    Ok(out) => self.single(out, ErrorType::Timeout),
                }
            }
            Addressing::Targeted => {
                let worker = self
                    .payload
                    .get("worker_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let expect = match &worker {
                    Some(w) if !w.is_empty() => Expect::FromWorker(w.clone()),
                    _ => Expect::First,
                };
                if let Expect::FromWorker(w) = &expect {
                    if !self.live.contains(w) {
                        let run = self
                            .payload
                            .get("run_id")
                            .and_then(Value::as_str)
                            .unwrap_or("?");
                        return err(
                            ErrorType::NotFound,
                            format!("run {run}: its worker {w} is not alive"),
                        );
                    }
                }
                let request =
                    Request::new(&name, self.payload.clone(), self.deadline).expect(expect);
                match self.requester.request(request).await {
                    Err(e) => error_payload(&e),
                    Ok(out) => self.single(out, ErrorType::NotFound),
                }
            }
            Addressing::Gathered => {
                let request = Request::new(&name, self.payload.clone(), self.deadline)
                    .expect(Expect::Gather(self.live.clone()));
                let out = match self.requester.request(request).await {
                    Err(e) => return error_payload(&e),
                    Ok(out) => out,
                };
                let mut parts = Vec::new();
                let mut malformed = Vec::new();
                for reply in &out.replies {
                    let worker_id = reply
                        .payload
                        .get("worker_id")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned();
                    match replies::validate(self.kind, &reply.payload, &self.owner) {
                        Ok(()) => parts.push(Part {
                            worker_id,
                            payload: reply.payload.clone(),
                        }),
                        Err(why) => {
                            self.metrics.malformed.inc();
                            tracing::warn!(worker_id = %worker_id, kind = self.kind.segment(), reason = %why, "malformed gathered reply skipped");
                            malformed.push(why);
                        }
                    }
                }
                if parts.is_empty() && !malformed.is_empty() {
                    return err(ErrorType::MalformedResponse, malformed.join("; "));
                }
                replies::merge(self.kind, &parts, &out.missing, &provider)
            }
        }
    }

    /// The reply of a one-answer request, checked.
    fn single(&self, out: Outcome, on_timeout: ErrorType) -> Value {
        let Some(reply) = out.replies.into_iter().next() else {
            let what = match on_timeout {
                ErrorType::NotFound => "the run's worker did not answer",
                _ => "the backend did not answer",
            };
            return err(
                on_timeout,
                format!(
                    "{what} within {}",
                    crate::parse::format_duration(self.deadline)
                ),
            );
        };
        match replies::validate(self.kind, &reply.payload, &self.owner) {
            Ok(()) => reply.payload.clone(),
            Err(why) => {
                self.metrics.malformed.inc();
                tracing::warn!(kind = self.kind.segment(), reason = %why, "malformed backend reply");
                err(
                    ErrorType::MalformedResponse,
                    format!("malformed backend reply: {why}"),
                )
            }
        }
    }
}

impl Actor for Router {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        for s in self.subscriptions.drain(..) {
            s.do_send(subscription::Stop);
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Subscribed(Vec<Addr<Subscription>>);

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
    type Result = MessageResult<LiveWorkers>;
    fn handle(&mut self, _: LiveWorkers, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.live().into_iter().collect())
    }
}

impl Handler<Delivered> for Router {
    type Result = ();

    fn handle(&mut self, Delivered(event): Delivered, ctx: &mut Self::Context) {
        if let Some(kind) = Kind::of_request(PUBLIC_PREFIX, &event.name) {
            return self.on_request(kind, &event, ctx);
        }
        let RouterBackend::Events { prefix } = &self.config.backend else {
            return;
        };
        let Some(rest) = event
            .name
            .strip_prefix(prefix.as_str())
            .and_then(|r| r.strip_prefix('.'))
        else {
            return;
        };
        match rest {
            "worker.heartbeat" => self.on_heartbeat(&event.payload),
            "run.started" | "run.output" => {
                let mut publication =
                    Publication::new(format!("{PUBLIC_PREFIX}.{rest}"), event.payload.clone());
                publication.correlation_id = event.correlation_id.clone();
                if let Err(tokio::sync::mpsc::error::TrySendError::Full(publication)) =
                    self.relay.try_send(publication)
                {
                    // Hold further deliveries until the relay has room.
                    let relay = self.relay.clone();
                    ctx.wait(
                        async move {
                            let _ = relay.send(publication).await;
                        }
                        .into_actor(self),
                    );
                }
            }
            _ => {}
        }
    }
}
