//! `WarmPool`: started, idle containers per profile, ready for a run to
//! exec into. Each serves exactly one run (its session removes it after)
//! and the pool refills in the background. A pooled container is made
//! exactly as a cold run of the profile would be (image, hardening,
//! limits, network, mounts, profile environment) but runs an idle
//! command; it carries the `bus.pooled` label with this pool's instance
//! id, so the orphan reaper leaves it alone while this process lives.
//! One idle longer than `pool_max_idle_seconds` is replaced.

use crate::contract::{RunRequest, RunSpec};
use crate::planning::plan::{plan_run, WorkerSettings};
use crate::runtime::{labels, ContainerSpec, SharedRuntime};
use actix::prelude::*;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What an idle pooled container runs until a run execs into it.
const IDLE_COMMAND: [&str; 2] = ["sleep", "2147483647"];
/// After a failed start, a profile's refill waits this long.
const BACKOFF: Duration = Duration::from_secs(5);

/// Settings of a pool.
#[derive(Clone)]
pub struct PoolConfig {
    /// profile → containers kept idle.
    pub sizes: BTreeMap<String, usize>,
    pub max_idle: Duration,
    /// This process's pool instance (the `bus.pooled` label value).
    pub instance: String,
}

impl PoolConfig {
    /// The sizes the worker's profiles ask for (`--pool-size` already
    /// applied to the settings).
    pub fn from_settings(settings: &WorkerSettings, instance: String) -> Self {
        PoolConfig {
            sizes: settings
                .config
                .profiles
                .iter()
                .filter(|(_, p)| p.pool_size > 0 && p.image.is_some() && p.egress.is_empty())
                .map(|(name, p)| (name.clone(), p.pool_size))
                .collect(),
            max_idle: Duration::from_secs(settings.config.worker.pool_max_idle_seconds),
            instance,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sizes.is_empty()
    }
}

struct Idle {
    id: String,
    since: Instant,
}

#[derive(Default)]
struct Slot {
    idle: VecDeque<Idle>,
    starting: usize,
    retry_at: Option<Instant>,
}

/// The pool actor.
pub struct WarmPool {
    runtime: SharedRuntime,
    settings: Arc<WorkerSettings>,
    config: PoolConfig,
    slots: HashMap<String, Slot>,
    draining: bool,
    /// Removals in flight (a drain waits for them).
    removing: usize,
    /// Told when, draining, the last container still starting is removed.
    drained: Vec<tokio::sync::oneshot::Sender<()>>,
}

/// Takes an idle container of `profile`, if one is ready.
#[derive(Message)]
#[rtype(result = "Option<String>")]
pub struct Take(pub String);

/// Idle containers per profile (status, tests).
#[derive(Message)]
#[rtype(result = "BTreeMap<String, usize>")]
pub struct IdleCounts;

/// Stops refilling and removes every idle container; resolves when done.
/// Containers still starting are removed as they come up.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

impl WarmPool {
    pub fn new(runtime: SharedRuntime, settings: Arc<WorkerSettings>, config: PoolConfig) -> Self {
        WarmPool {
            runtime,
            settings,
            slots: config
                .sizes
                .keys()
                .map(|p| (p.clone(), Slot::default()))
                .collect(),
            config,
            draining: false,
            removing: 0,
            drained: Vec::new(),
        }
    }

    /// The container a cold run of `profile` would get, idling instead.
    fn spec(&self, profile: &str) -> Option<ContainerSpec> {
        let request = RunRequest {
            spec: RunSpec {
                profile: Some(profile.to_owned()),
                command: Some(IDLE_COMMAND.iter().map(|s| s.to_string()).collect()),
                ..Default::default()
            },
            ..Default::default()
        };
        let plan = match plan_run(&request, "", &self.settings) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(profile, error = %e.message, "no warm pool for this profile");
                return None;
            }
        };
        let mut spec = plan.spec;
        let slot = format!("pool_{}", uuid::Uuid::new_v4().simple());
        spec.name = Some(format!("bus-{slot}"));
        spec.stdin = false;
        spec.labels.remove(labels::OWNER);
        // Idle until a run takes it: no run deadline.
        spec.labels.remove(labels::DEADLINE);
        spec.labels.insert(labels::RUN_ID.to_owned(), slot);
        spec.labels
            .insert(labels::POOLED.to_owned(), self.config.instance.clone());
        spec.labels
            .insert(labels::PROFILE.to_owned(), profile.to_owned());
        Some(spec)
    }

    fn refill(&mut self, ctx: &mut Context<Self>) {
        if self.draining {
            return;
        }
        let now = Instant::now();
        let wanted: Vec<(String, usize)> = self
            .config
            .sizes
            .iter()
            .filter_map(|(profile, size)| {
                let slot = self.slots.get(profile)?;
                if slot.retry_at.is_some_and(|t| t > now) {
                    return None;
                }
                let have = slot.idle.len() + slot.starting;
                (have < *size).then(|| (profile.clone(), size - have))
            })
            .collect();
        for (profile, missing) in wanted {
            for _ in 0..missing {
                let Some(spec) = self.spec(&profile) else {
                    if let Some(slot) = self.slots.get_mut(&profile) {
                        slot.retry_at = Some(Instant::now() + BACKOFF * 12);
                    }
                    break;
                };
                if let Some(slot) = self.slots.get_mut(&profile) {
                    slot.starting += 1;
                }
                let runtime = self.runtime.clone();
                let profile = profile.clone();
                ctx.spawn(
                    async move {
                        let id = runtime.create(&spec).await?;
                        if let Err(e) = runtime.start(&id).await {
                            let _ = runtime.remove(&id).await;
                            return Err(e);
                        }
                        Ok(id)
                    }
                    .into_actor(self)
                    .map(move |res, act, ctx| act.started_one(&profile, res, ctx)),
                );
            }
        }
    }

    fn started_one(
        &mut self,
        profile: &str,
        res: Result<String, crate::runtime::RuntimeError>,
        ctx: &mut Context<Self>,
    ) {
        let Some(slot) = self.slots.get_mut(profile) else {
            return;
        };
        slot.starting = slot.starting.saturating_sub(1);
        match res {
            Ok(id) if self.draining => self.remove(id, ctx),
            Ok(id) => slot.idle.push_back(Idle {
                id,
                since: Instant::now(),
            }),
            Err(_) if self.draining => self.tell_drained(),
            Err(e) => {
                tracing::warn!(profile, error = %e, "could not start a warm-pool container; retrying in {}s", BACKOFF.as_secs());
                slot.retry_at = Some(Instant::now() + BACKOFF);
                ctx.run_later(BACKOFF, |act, ctx| act.refill(ctx));
            }
        }
    }

    fn starting(&self) -> usize {
        self.slots.values().map(|s| s.starting).sum()
    }

    fn tell_drained(&mut self) {
        if self.draining && self.starting() == 0 && self.removing == 0 {
            for tx in self.drained.drain(..) {
                let _ = tx.send(());
            }
        }
    }

    fn remove(&mut self, id: String, ctx: &mut Context<Self>) {
        self.removing += 1;
        let runtime = self.runtime.clone();
        ctx.spawn(
            async move {
                if let Err(e) = runtime.remove(&id).await {
                    tracing::warn!(container = %id, error = %e, "could not remove a warm-pool container");
                }
            }
            .into_actor(self)
            .map(|_, act, _| {
                act.removing -= 1;
                act.tell_drained();
            }),
        );
    }

    /// Replaces containers idle past the limit.
    fn expire(&mut self, ctx: &mut Context<Self>) {
        let max = self.config.max_idle;
        let mut stale = Vec::new();
        for slot in self.slots.values_mut() {
            while slot.idle.front().is_some_and(|c| c.since.elapsed() >= max) {
                stale.extend(slot.idle.pop_front().map(|c| c.id));
            }
        }
        for id in stale {
            tracing::debug!(container = %id, "replacing an idle warm-pool container");
            self.remove(id, ctx);
        }
        self.refill(ctx);
    }
}

impl Actor for WarmPool {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::info!(sizes = ?self.config.sizes, "warm pool filling");
        self.refill(ctx);
        let every =
            (self.config.max_idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
        ctx.run_interval(every, |act, ctx| act.expire(ctx));
    }
}

impl Handler<Take> for WarmPool {
    type Result = Option<String>;

    fn handle(&mut self, Take(profile): Take, ctx: &mut Self::Context) -> Option<String> {
        if self.draining {
            return None;
        }
        let max = self.config.max_idle;
        let slot = self.slots.get_mut(&profile)?;
        let mut stale = Vec::new();
        let taken = loop {
            match slot.idle.pop_front() {
                Some(c) if c.since.elapsed() < max => break Some(c.id),
                Some(c) => stale.push(c.id),
                None => break None,
            }
        };
        for id in stale {
            self.remove(id, ctx);
        }
        self.refill(ctx);
        taken
    }
}

impl Handler<IdleCounts> for WarmPool {
    type Result = MessageResult<IdleCounts>;

    fn handle(&mut self, _: IdleCounts, _: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.slots
                .iter()
                .map(|(p, s)| (p.clone(), s.idle.len()))
                .collect(),
        )
    }
}

impl Handler<Drain> for WarmPool {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, ctx: &mut Self::Context) -> Self::Result {
        self.draining = true;
        let ids: Vec<String> = self
            .slots
            .values_mut()
            .flat_map(|s| s.idle.drain(..).map(|c| c.id))
            .collect();
        for id in ids {
            self.remove(id, ctx);
        }
        // Containers still starting are removed as they come up.
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.drained.push(tx);
        self.tell_drained();
        Box::pin(async move {
            let _ = actix_rt::time::timeout(Duration::from_secs(20), rx).await;
        })
    }
}
