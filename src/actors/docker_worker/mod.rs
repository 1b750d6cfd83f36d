//! `DockerWorker`: consumes one prefix (`bus.docker`, `bus.podman`, or
//! `bus.containers` standalone) as the contract's delivery column says —
//! runs unicast in group `workers`; input/delete broadcast and answered
//! only for runs it holds; status and runner requests answered for the
//! router's gather — runs each request in a `ContainerSession`, publishes
//! heartbeats, and applies the effective-owner rule to every request.
//!
//! The worker, by concern:
//! - [`admit`]: a run request: planned, admitted (or refused), given a
//!   warm-pool container or started cold in a session
//! - [`payload`]: a run request that came in parts: fetched from its
//!   API provider before it goes on
//! - [`per_run`]: input and delete for the runs it holds
//! - [`runner_requests`]: status and `runner.*`
//! - [`lifecycle`]: heartbeats and a graceful shutdown
//! - [`durable`]: run requests on a durable work queue (NATS with
//!   JetStream): claim before start, keep alive, settle after the reply,
//!   answer `lost` for a redelivered run whose worker is gone
//! - [`seats`]: session, runner and pool reached through `Recipient`s
//!
//! Messages in: each request kind decoded as `Incoming<Result<Q, crate::contract::Malformed>>`;
//! [`SessionNote`] from its sessions; [`ListLive`] from its runner's
//! reaper; [`Shutdown`], [`PoolIdle`], [`LiveCount`].

mod admit;
mod durable;
mod lifecycle;
pub mod metrics;
mod payload;
mod per_run;
mod results;
mod runner_requests;
pub mod seats;
#[cfg(test)]
mod tests;

use crate::actors::bus::edge::{events, requests};
use crate::actors::bus::requester::Requester;
use crate::actors::bus::subscription::{self, Subscription};
use crate::actors::bus::Incoming;
use crate::actors::container_session::SessionNote;
use crate::actors::runner::{ListLive, RunnerConfig};
use crate::actors::warm_pool::{self, PoolConfig};
use crate::broker::{BrokerError, SharedBroker, SubscribeSpec};
use crate::contract::replies::{DeleteRequest, InputRequest, RunQuery, StatusRequest};
use crate::contract::wire::{RunnerDeleteRequest, RunnerStartRequest, RunnerStatusRequest};
use crate::contract::{
    now_rfc3339, Kind, Reply, RunRecorded, RunRequest, RunnerState, WireRequest, WorkerReply,
    HEARTBEAT_EVERY, WORKER_GROUP,
};
use crate::planning::WorkerSettings;
use crate::runtime::SharedRuntime;
use actix::prelude::*;
use durable::Task;
use seats::{PoolSeat, RunnerSeat, Seats, SessionSeat};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

pub use lifecycle::Shutdown;

/// How the worker runs things.
#[derive(Clone)]
pub enum Engine {
    /// Real containers through a runtime (`docker`, `podman`).
    Containers(SharedRuntime),
    /// Deterministic static answers, no engine.
    Static,
}

/// Settings of a worker.
#[derive(Clone)]
pub struct WorkerConfig {
    pub settings: Arc<WorkerSettings>,
    /// The prefix consumed: `bus.docker`, or `bus.containers` standalone.
    pub prefix: String,
    pub runner_name: String,
    pub heartbeat_every: Duration,
    pub ping_every: Duration,
    pub reap_every: Duration,
    /// Where its helpers sit (real actors unless a test seats mocks).
    pub seats: Seats,
    /// How long a final result is kept for the API provider to record.
    pub result_retention: Duration,
    pub metrics: metrics::WorkerMetrics,
}

impl WorkerConfig {
    pub fn new(settings: WorkerSettings, prefix: &str) -> Self {
        WorkerConfig {
            settings: Arc::new(settings),
            prefix: prefix.to_owned(),
            runner_name: "docker".into(),
            heartbeat_every: HEARTBEAT_EVERY,
            ping_every: Duration::from_secs(10),
            reap_every: Duration::from_secs(60),
            seats: Seats::real(),
            result_retention: Duration::from_secs(600),
            metrics: metrics::WorkerMetrics::default(),
        }
    }

    fn worker_id(&self) -> &str {
        &self.settings.worker_id
    }
}

/// A run this worker holds.
struct Live {
    seat: SessionSeat,
    admitted: std::time::Instant,
    owner: String,
    /// Everyone who asked for this run (a retry, a redelivery).
    correlation_ids: Vec<String>,
    started_at: String,
    container_id: Option<String>,
    task: Option<Task>,
}

/// The worker actor.
pub struct DockerWorker {
    config: WorkerConfig,
    engine: Engine,
    publisher: Requester,
    sessions: HashMap<String, Live>,
    /// Final results kept until the API provider has recorded them.
    retained: HashMap<String, results::Retained>,
    /// Runs whose request's parts are being fetched (they count in
    /// `pending`).
    fetching: HashMap<String, payload::Fetching>,
    /// Runs being claimed or given a pooled container (they count
    /// against capacity).
    pending: usize,
    /// The ack wait of durable run requests, when they are.
    durable: Option<Duration>,
    /// This process (a fresh id per start): claims and pool containers
    /// name it.
    instance: String,
    /// Claims of durable runs being made (no second delivery races them).
    claiming: HashSet<String>,
    /// Runs whose reply is being settled, and how many settles are in
    /// flight (a stop waits for them).
    settling: HashSet<String>,
    settles: usize,
    /// Claims of other processes seen on redelivery: key → (revision,
    /// first seen at it). One that stands still for the ack wait is lost.
    suspects: HashMap<String, (u64, std::time::Instant)>,
    runner: Option<RunnerSeat>,
    /// Idle containers per profile, when any profile has `pool_size`.
    pool: Option<PoolSeat>,
    pool_config: PoolConfig,
    engine_version: Option<String>,
    subscriptions: Vec<Recipient<subscription::Stop>>,
    stopping: bool,
    on_stopped: Vec<tokio::sync::oneshot::Sender<()>>,
}

/// Idle warm-pool containers per profile (empty without a pool).
#[derive(Message)]
#[rtype(result = "BTreeMap<String, usize>")]
pub struct PoolIdle;

/// How many runs the worker holds (tests, probes).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct LiveCount;

#[derive(Message)]
#[rtype(result = "()")]
struct Subscribed(Vec<Recipient<subscription::Stop>>);

/// Subscribes the worker to the requests of `Q` on its prefix.
async fn subscribe<Q: WireRequest>(
    broker: &SharedBroker,
    spec: SubscribeSpec,
    worker: &Addr<DockerWorker>,
) -> Result<Recipient<subscription::Stop>, BrokerError>
where
    DockerWorker: Handler<Incoming<Result<Q, crate::contract::Malformed>>>,
{
    let sub = Subscription::start_decoded(
        broker.clone(),
        spec,
        requests::<Q>(),
        worker.clone().recipient(),
    )
    .await?;
    Ok(sub.recipient())
}

impl DockerWorker {
    /// Starts a worker on the current arbiter and subscribes it to its
    /// prefix; returns once every subscription is in place.
    pub async fn start(
        broker: SharedBroker,
        publisher: Requester,
        engine: Engine,
        config: WorkerConfig,
    ) -> Result<Addr<DockerWorker>, BrokerError> {
        let prefix = config.prefix.clone();
        let worker_id = config.worker_id().to_owned();
        let durable = broker.durable(&Kind::Run.request(&prefix));
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let pool_config = PoolConfig::from_settings(&config.settings, instance.clone());
        let addr = DockerWorker {
            config,
            engine,
            publisher,
            sessions: HashMap::new(),
            retained: HashMap::new(),
            fetching: HashMap::new(),
            pending: 0,
            durable,
            instance,
            claiming: HashSet::new(),
            settling: HashSet::new(),
            settles: 0,
            suspects: HashMap::new(),
            pool: None,
            pool_config,
            runner: None,
            engine_version: None,
            subscriptions: Vec::new(),
            stopping: false,
            on_stopped: Vec::new(),
        }
        .start();
        let spec = |k: Kind| {
            let spec = if k == Kind::Run {
                SubscribeSpec::unicast(k.request(&prefix), WORKER_GROUP)
            } else {
                SubscribeSpec::broadcast(k.request(&prefix))
            };
            spec.consumer(worker_id.clone())
        };
        let subs = vec![
            subscribe::<RunRequest>(&broker, spec(Kind::Run), &addr).await?,
            subscribe::<InputRequest>(&broker, spec(Kind::Input), &addr).await?,
            subscribe::<DeleteRequest>(&broker, spec(Kind::Delete), &addr).await?,
            subscribe::<StatusRequest>(&broker, spec(Kind::Status), &addr).await?,
            subscribe::<RunnerStatusRequest>(&broker, spec(Kind::RunnerStatus), &addr).await?,
            subscribe::<RunnerStartRequest>(&broker, spec(Kind::RunnerStart), &addr).await?,
            subscribe::<RunnerDeleteRequest>(&broker, spec(Kind::RunnerDelete), &addr).await?,
            subscribe::<RunQuery>(&broker, spec(Kind::RunQuery), &addr).await?,
            Subscription::start_decoded(
                broker.clone(),
                SubscribeSpec::broadcast(format!("{prefix}.run.recorded"))
                    .consumer(worker_id.clone()),
                events::<RunRecorded>(),
                addr.clone().recipient(),
            )
            .await?
            .recipient(),
            Subscription::start_decoded(
                broker.clone(),
                SubscribeSpec::broadcast(format!("{prefix}.run.payload.part"))
                    .consumer(worker_id.clone()),
                events::<crate::contract::parts::PayloadPart>(),
                addr.clone().recipient(),
            )
            .await?
            .recipient(),
        ];
        addr.do_send(Subscribed(subs));
        Ok(addr)
    }

    fn runtime(&self) -> Option<&SharedRuntime> {
        match &self.engine {
            Engine::Containers(r) => Some(r),
            Engine::Static => None,
        }
    }

    fn state(&self) -> RunnerState {
        if self.stopping {
            return RunnerState::Stopped;
        }
        self.runner
            .as_ref()
            .map(|r| *r.state.borrow())
            .unwrap_or(RunnerState::Ready)
    }

    /// Answers a request (nothing without a correlation id: nobody could
    /// match it).
    fn reply<Q: WireRequest>(
        &mut self,
        correlation_id: Option<String>,
        reply: Reply<Q::Reply>,
        ctx: &mut Context<Self>,
    ) {
        if correlation_id.is_none() {
            return;
        }
        self.reply_then::<Q::Reply>(Q::KIND, correlation_id, reply, None, ctx);
    }

    /// A reply as this worker sends it: the payload, and its own id.
    fn signed<R: serde::Serialize>(&self, reply: Reply<R>) -> serde_json::Value {
        WorkerReply {
            worker_id: Some(self.config.worker_id().to_owned()),
            reply,
        }
        .to_payload()
    }
}

impl Actor for DockerWorker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
        if let Engine::Containers(runtime) = &self.engine {
            let config = &self.config.settings.config;
            let images = config.images();
            let runner_config = RunnerConfig {
                worker_id: self.config.worker_id().to_owned(),
                images,
                ping_every: self.config.ping_every,
                reap_every: self.config.reap_every,
                pool_instance: self.pool_config.instance.clone(),
            };
            self.runner = Some((self.config.seats.runner)(
                runtime.clone(),
                runner_config,
                ctx.address().recipient(),
            ));
            if !self.pool_config.is_empty() {
                self.pool = Some((self.config.seats.pool)(
                    runtime.clone(),
                    self.config.settings.clone(),
                    self.pool_config.clone(),
                ));
            }
            let runtime = runtime.clone();
            ctx.spawn(
                async move { runtime.ping().await.ok() }
                    .into_actor(self)
                    .map(|info, act, _| {
                        act.engine_version = info.map(|i| i.version);
                    }),
            );
        }
        self.start_heartbeats(ctx);
        ctx.run_interval(Duration::from_secs(1), |act, ctx| act.resend_due(ctx));
        if let Some(ack_wait) = self.durable {
            ctx.run_interval(ack_wait / 3, |act, ctx| act.keep_alive(ctx));
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        for s in self.subscriptions.drain(..) {
            s.do_send(subscription::Stop);
        }
        for tx in self.on_stopped.drain(..) {
            let _ = tx.send(());
        }
    }
}

impl Handler<Subscribed> for DockerWorker {
    type Result = ();
    fn handle(&mut self, msg: Subscribed, _: &mut Self::Context) {
        self.subscriptions.extend(msg.0);
    }
}

impl Handler<SessionNote> for DockerWorker {
    type Result = ();

    fn handle(&mut self, note: SessionNote, ctx: &mut Self::Context) {
        match note {
            SessionNote::Started {
                run_id,
                container_id,
            } => {
                if let Some(live) = self.sessions.get_mut(&run_id) {
                    live.container_id = Some(container_id);
                    live.started_at = now_rfc3339();
                    self.config
                        .metrics
                        .start_seconds
                        .observe(live.admitted.elapsed().as_secs_f64());
                }
            }
            SessionNote::Finished { run_id, reply } => {
                if let Some(live) = self.sessions.remove(&run_id) {
                    self.config
                        .metrics
                        .live_sessions
                        .set(self.sessions.len() as i64);
                    self.finish_run(
                        run_id,
                        live.owner,
                        live.correlation_ids,
                        reply,
                        live.task,
                        ctx,
                    );
                }
            }
        }
    }
}

impl Handler<ListLive> for DockerWorker {
    type Result = MessageResult<ListLive>;
    fn handle(&mut self, _: ListLive, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.sessions.keys().cloned().collect::<HashSet<_>>())
    }
}

impl Handler<PoolIdle> for DockerWorker {
    type Result = ResponseFuture<BTreeMap<String, usize>>;
    fn handle(&mut self, _: PoolIdle, _: &mut Self::Context) -> Self::Result {
        let pool = self.pool.clone();
        Box::pin(async move {
            match pool {
                Some(p) => p.idle.send(warm_pool::IdleCounts).await.unwrap_or_default(),
                None => BTreeMap::new(),
            }
        })
    }
}

impl Handler<LiveCount> for DockerWorker {
    type Result = usize;
    fn handle(&mut self, _: LiveCount, _: &mut Self::Context) -> usize {
        self.sessions.len()
    }
}
