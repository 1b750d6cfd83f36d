//! `DockerWorker`: consumes one prefix (`bus.docker`, `bus.podman`, or
//! `bus.containers` standalone) as the contract's delivery column says —
//! runs unicast in group `workers`; input/delete broadcast and answered
//! only for runs it holds; status and runner requests answered for the
//! router's gather — runs each request in a `ContainerSession`, publishes
//! heartbeats, and applies the effective-owner rule to every request.
//!
//! On a durable work queue (NATS with JetStream) a run request comes with
//! an acknowledgement: the worker claims it (compare-and-set) before the
//! run starts, keeps the claim and the delivery alive while it runs, and
//! acknowledges it once the reply is out. A redelivered request whose
//! claim belongs to a worker that is gone (or to this worker before a
//! restart) is answered `lost`, never run again; one it cannot take now
//! (stopping, at capacity, no engine) goes back to the queue.

use super::pool::{self as warm, PoolConfig, WarmPool};
use super::runner::{self, ListLive, Runner, RunnerConfig, RunnerState};
use super::session::{Cancel, ContainerSession, SessionContext, SessionNote, WriteInput};
use crate::actors::bus::requester::Requester;
use crate::actors::bus::subscription::{self, Delivered, Subscription};
use crate::broker::{run_id_of_envelope, BrokerError, Event, SharedBroker, SubscribeSpec};
use crate::contract::owner::effective_owner;
use crate::contract::{error_payload, static_answers, Kind, HEARTBEAT_EVERY, WORKER_GROUP};
use crate::contract::{now_rfc3339, ErrorDetail, ErrorType, Publication};
use crate::planning::plan::{plan_run, RunPlan, RunRequest, WorkerSettings};
use crate::runtime::SharedRuntime;
use actix::prelude::*;
use durable::{settle, Task};
use serde_json::{json, Value};

mod durable;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

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
        }
    }

    fn worker_id(&self) -> &str {
        &self.settings.worker_id
    }
}

struct Live {
    addr: Addr<ContainerSession>,
    owner: String,
    correlation_id: Option<String>,
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
    runner: Option<Addr<Runner>>,
    runner_state: Option<watch::Receiver<RunnerState>>,
    /// Idle containers per profile, when any profile has `pool_size`.
    pool: Option<Addr<WarmPool>>,
    pool_config: PoolConfig,
    engine_version: Option<String>,
    subscriptions: Vec<Addr<Subscription>>,
    stopping: bool,
    on_stopped: Vec<tokio::sync::oneshot::Sender<()>>,
}

/// Cancels every run, waits for their containers to be removed (bounded),
/// publishes a last `stopped` heartbeat and stops the worker.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

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
struct Subscribed(Vec<Addr<Subscription>>);

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
            runner_state: None,
            engine_version: None,
            subscriptions: Vec::new(),
            stopping: false,
            on_stopped: Vec::new(),
        }
        .start();
        let target = addr.clone().recipient::<Delivered>();
        let mut subs = Vec::new();
        for kind in Kind::ALL {
            let spec = if kind == Kind::Run {
                SubscribeSpec::unicast(kind.request(&prefix), WORKER_GROUP)
            } else {
                SubscribeSpec::broadcast(kind.request(&prefix))
            };
            subs.push(
                Subscription::start(
                    broker.clone(),
                    spec.consumer(worker_id.clone()),
                    target.clone(),
                )
                .await?,
            );
        }
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
        self.runner_state
            .as_ref()
            .map(|s| *s.borrow())
            .unwrap_or(RunnerState::Ready)
    }

    fn heartbeat(&self) {
        let payload = json!({
            "worker_id": self.config.worker_id(),
            "provider": self.runtime().map(|r| r.provider()).unwrap_or("static"),
            "state": self.state().as_str(),
            "runs": self.sessions.len(),
            "capacity": self.config.settings.config.worker.capacity,
        });
        let publication =
            Publication::new(format!("{}.worker.heartbeat", self.config.prefix), payload);
        let publisher = self.publisher.clone();
        actix_rt::spawn(async move {
            if let Err(e) = publisher.publish(publication).await {
                tracing::debug!(error = %e, "heartbeat not published");
            }
        });
    }

    fn reply(
        &mut self,
        kind: Kind,
        correlation_id: Option<String>,
        payload: Value,
        ctx: &mut Context<Self>,
    ) {
        let Some(correlation_id) = correlation_id else {
            return;
        };
        self.reply_then(kind, Some(correlation_id), payload, None, ctx);
    }

    /// A run's final answer; a durable request is acknowledged with it.
    fn answer(
        &mut self,
        corr: Option<String>,
        reply: Value,
        ack: Option<std::sync::Arc<dyn crate::broker::Ack>>,
        ctx: &mut Context<Self>,
    ) {
        let task = ack.map(|ack| Task { ack, claim: None });
        self.reply_then(Kind::Run, corr, reply, task, ctx);
    }

    fn on_request(&mut self, kind: Kind, event: &Event, ctx: &mut Context<Self>) {
        let corr = event.correlation_id.clone();
        if let (Kind::Run, Engine::Static, Some(ack)) = (kind, &self.engine, event.ack()) {
            settle("acknowledge a durable request", ack.done());
        }
        let owner = match effective_owner(event, kind) {
            Ok(o) => o,
            Err(e) => {
                if let (Kind::Run, Some(ack)) = (kind, event.ack()) {
                    settle("acknowledge a durable request", ack.done());
                }
                // A per-run request for another worker is not ours to refuse.
                if !self.addressed_elsewhere(kind, &event.payload) {
                    self.reply(kind, corr, error_payload(&e), ctx);
                }
                return;
            }
        };
        if let Engine::Static = self.engine {
            if !self.addressed_elsewhere(kind, &event.payload) {
                let reply =
                    static_answers::answer(kind, &event.payload, &owner, self.config.worker_id());
                self.reply(kind, corr, reply, ctx);
            }
            return;
        }
        match kind {
            Kind::Run => self.on_run(event, owner, corr, ctx),
            Kind::Input | Kind::Delete => {
                self.on_run_request(kind, &event.payload, owner, corr, ctx)
            }
            Kind::Status => {
                let items: Vec<Value> = self
                    .sessions
                    .iter()
                    .filter(|(_, l)| l.owner == owner)
                    .map(|(id, l)| {
                        json!({"id": id, "state": "running", "owner_account_id": l.owner,
                               "details": {"worker_id": self.config.worker_id(), "started_at": l.started_at, "container_id": l.container_id}})
                    })
                    .collect();
                self.reply(kind, corr, json!({"items": items}), ctx);
            }
            Kind::RunnerStatus | Kind::RunnerStart | Kind::RunnerDelete => {
                self.on_runner(kind, corr, ctx)
            }
        }
    }

    /// A per-run request naming another worker.
    fn addressed_elsewhere(&self, kind: Kind, payload: &Value) -> bool {
        matches!(kind, Kind::Input | Kind::Delete)
            && payload
                .get("worker_id")
                .and_then(Value::as_str)
                .is_some_and(|w| !w.is_empty() && w != self.config.worker_id())
    }

    fn on_run(
        &mut self,
        event: &Event,
        owner: String,
        corr: Option<String>,
        ctx: &mut Context<Self>,
    ) {
        let ack = event.ack().cloned();
        let refuse = |kind, msg: String| error_payload(&ErrorDetail::new(kind, msg));
        if corr.is_none() {
            tracing::warn!(from = %event.identity_id, "run request without a correlation id ignored");
            if let Some(ack) = &ack {
                settle("acknowledge a durable request", ack.done());
            }
            return;
        }
        let mut request: RunRequest = match serde_json::from_value(event.payload.clone()) {
            Ok(r) => r,
            Err(e) => {
                let reply = refuse(ErrorType::BadRequest, format!("invalid run request: {e}"));
                return self.answer(corr, reply, ack, ctx);
            }
        };
        if ack.is_some() && request.run_id.as_deref().is_none_or(str::is_empty) {
            // Every delivery of this request must name the same run.
            request.run_id = Some(run_id_of_envelope(&event.id));
        }
        let plan = match plan_run(&request, &owner, &self.config.settings) {
            Ok(p) => p,
            Err(e) => return self.answer(corr, error_payload(&e), ack, ctx),
        };
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
        if let Some(why) = busy {
            if let Some(ack) = &ack {
                // Back to the queue, for another worker or a later try.
                let delay = if self.stopping {
                    Duration::ZERO
                } else {
                    Duration::from_secs(1)
                };
                tracing::debug!(run_id = %plan.run_id, reason = %why, "durable run left in the queue");
                settle("return a durable request", ack.retry_later(delay));
                return;
            }
            return self.answer(corr, refuse(ErrorType::Unavailable, why), None, ctx);
        }
        match ack {
            Some(ack) => self.claim_run(event, plan, owner, corr, ack, ctx),
            None if self.sessions.contains_key(&plan.run_id) => {
                let reply = refuse(
                    ErrorType::BadRequest,
                    format!("run {} is already running", plan.run_id),
                );
                self.answer(corr, reply, None, ctx)
            }
            None => self.start_session(plan, owner, corr, None, ctx),
        }
    }

    fn start_session(
        &mut self,
        plan: RunPlan,
        owner: String,
        corr: Option<String>,
        task: Option<Task>,
        ctx: &mut Context<Self>,
    ) {
        // A profile run takes an idle pooled container when one is ready
        // (the pool is made per profile; explicit-image runs go cold).
        let poolable = plan.profile.as_ref().filter(|p| {
            self.pool_config.sizes.contains_key(*p)
                && !plan.spec.command.is_empty()
                && plan.sandbox.is_none()
        });
        if let (Some(profile), Some(pool)) = (poolable, &self.pool) {
            self.pending += 1;
            let take = pool.send(warm::Take(profile.clone()));
            ctx.spawn(take.into_actor(self).map(move |taken, act, ctx| {
                act.pending -= 1;
                act.open_session(plan, owner, corr, task, taken.ok().flatten(), ctx);
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
            publisher: self.publisher.clone(),
            prefix: self.config.prefix.clone(),
        };
        let run_id = plan.run_id.clone();
        tracing::info!(run_id = %run_id, owner = %owner, image = %plan.image, durable = task.is_some(), pooled = pooled.is_some(), "run accepted");
        let mut session = ContainerSession::new(plan, cx, ctx.address().recipient());
        if let Some(container) = pooled {
            session = session.pooled(container);
        }
        let addr = session.start();
        self.sessions.insert(
            run_id,
            Live {
                addr,
                owner,
                correlation_id: corr,
                started_at: now_rfc3339(),
                container_id: None,
                task,
            },
        );
    }

    fn on_run_request(
        &mut self,
        kind: Kind,
        payload: &Value,
        owner: String,
        corr: Option<String>,
        ctx: &mut Context<Self>,
    ) {
        let run_id = payload
            .get("run_id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let named_me =
            payload.get("worker_id").and_then(Value::as_str) == Some(self.config.worker_id());
        let Some(live) = self.sessions.get(&run_id) else {
            // Only the addressed worker answers; others stay silent.
            if named_me {
                let e = ErrorDetail::new(
                    ErrorType::NotFound,
                    format!("no live run {run_id} on worker {}", self.config.worker_id()),
                );
                self.reply(kind, corr, error_payload(&e), ctx);
            }
            return;
        };
        if live.owner != owner {
            let e = ErrorDetail::new(
                ErrorType::Forbidden,
                format!("run {run_id} belongs to another account"),
            );
            return self.reply(kind, corr, error_payload(&e), ctx);
        }
        let addr = live.addr.clone();
        if kind == Kind::Delete {
            addr.do_send(Cancel);
            let reply = json!({"deleted": true, "run_id": run_id, "owner_account_id": owner});
            return self.reply(kind, corr, reply, ctx);
        }
        let write = WriteInput {
            data: payload
                .get("data")
                .and_then(Value::as_str)
                .map(str::to_owned),
            eof: payload.get("eof").and_then(Value::as_bool).unwrap_or(false),
        };
        ctx.spawn(addr.send(write).into_actor(self).map(move |res, act, ctx| {
            let reply = match res {
                Ok(Ok(bytes)) => json!({"accepted": true, "run_id": run_id, "bytes": bytes}),
                Ok(Err(e)) => error_payload(&e),
                Err(_) => error_payload(&ErrorDetail::new(
                    ErrorType::NotFound,
                    format!("run {run_id} has ended"),
                )),
            };
            act.reply(kind, corr, reply, ctx);
        }));
    }

    fn on_runner(&mut self, kind: Kind, corr: Option<String>, ctx: &mut Context<Self>) {
        let Some(runner) = self.runner.clone() else {
            return;
        };
        if kind == Kind::RunnerDelete {
            for live in self.sessions.values() {
                live.addr.do_send(Cancel);
            }
        }
        let fut = async move {
            match kind {
                Kind::RunnerStatus => runner.send(runner::Status).await.map_err(|e| e.to_string()),
                Kind::RunnerStart => match runner.send(runner::Start).await {
                    Ok(r) => Ok(r.unwrap_or_else(|e| error_payload(&e))),
                    Err(e) => Err(e.to_string()),
                },
                _ => match runner.send(runner::RemoveAll).await {
                    Ok(r) => Ok(r
                        .map(|_| json!({"deleted": true}))
                        .unwrap_or_else(|e| error_payload(&e))),
                    Err(e) => Err(e.to_string()),
                },
            }
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            let reply =
                res.unwrap_or_else(|e| error_payload(&ErrorDetail::new(ErrorType::Unavailable, e)));
            act.reply(kind, corr, reply, ctx);
        }));
    }
}

impl Actor for DockerWorker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
        if let Engine::Containers(runtime) = &self.engine {
            let config = &self.config.settings.config;
            let mut images: BTreeMap<String, String> = config
                .profiles
                .iter()
                .filter_map(|(name, p)| p.image.clone().map(|i| (name.clone(), i)))
                .collect();
            // Sandboxed profiles need the proxy's image too (the key is no
            // profile name: those have no spaces).
            if config.profiles.values().any(|p| !p.egress.is_empty()) {
                images.insert("egress proxy".into(), config.worker.egress_image.clone());
            }
            let config = RunnerConfig {
                worker_id: self.config.worker_id().to_owned(),
                images,
                ping_every: self.config.ping_every,
                reap_every: self.config.reap_every,
                pool_instance: self.pool_config.instance.clone(),
            };
            let (runner, state) = Runner::new(runtime.clone(), config, ctx.address().recipient());
            self.runner = Some(runner.start());
            self.runner_state = Some(state);
            if !self.pool_config.is_empty() {
                let pool = WarmPool::new(
                    runtime.clone(),
                    self.config.settings.clone(),
                    self.pool_config.clone(),
                );
                self.pool = Some(pool.start());
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
        // First heartbeat once the engine state is known.
        ctx.run_later(Duration::from_millis(300), |act, _| act.heartbeat());
        ctx.run_interval(self.config.heartbeat_every, |act, _| act.heartbeat());
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

impl Handler<Delivered> for DockerWorker {
    type Result = ();

    fn handle(&mut self, Delivered(event): Delivered, ctx: &mut Self::Context) {
        if let Some(kind) = Kind::of_request(&self.config.prefix, &event.name) {
            self.on_request(kind, &event, ctx);
        }
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
                }
            }
            SessionNote::Finished { run_id, reply } => {
                if let Some(live) = self.sessions.remove(&run_id) {
                    self.reply_then(Kind::Run, live.correlation_id, reply, live.task, ctx);
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
                Some(p) => p.send(warm::IdleCounts).await.unwrap_or_default(),
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

impl Handler<Shutdown> for DockerWorker {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.on_stopped.push(tx);
        if !self.stopping {
            self.stopping = true;
            for s in self.subscriptions.drain(..) {
                s.do_send(subscription::Stop);
            }
            for live in self.sessions.values() {
                live.addr.do_send(Cancel);
            }
            if let Some(r) = &self.runner {
                r.do_send(runner::MarkStopped);
            }
            // Wait (bounded) for the cancelled sessions to remove their
            // containers, then empty the warm pool.
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            let mut done = false;
            ctx.run_interval(Duration::from_millis(50), move |act, ctx| {
                let idle = act.sessions.is_empty() && act.settles == 0 && act.pending == 0;
                if done || !(idle || std::time::Instant::now() >= deadline) {
                    return;
                }
                done = true;
                act.heartbeat();
                match act.pool.take() {
                    Some(pool) => ctx.wait(
                        pool.send(warm::Drain)
                            .into_actor(act)
                            .map(|_, _, ctx| ctx.stop()),
                    ),
                    None => ctx.stop(),
                }
            });
        }
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}
