//! `ApiProvider`: the actor behind the containers REST API (the HTTP
//! facade's actor). HTTP handlers authenticate, parse and send it one of
//! the [`messages`]; it owns everything else:
//!
//! - validation of run requests, ownership of runs (a run of another
//!   account is 403, an unknown one 404);
//! - the run table: each run in flight here, its worker (from
//!   `run.started`), its output so far (from `run.output`, kept up to the
//!   cap per stream), who waits for it and who follows its log, and how
//!   many each account has (the concurrent-run limit) — [`logs`];
//! - the ledger writes, in order: `running` before the request is
//!   published, the end after — and the usage and billing order around
//!   them ([`create`], [`usage`], [`billing`]);
//! - deadlines: a run's reply deadline (`contract::run_deadline`), after
//!   which it is cancelled on its worker and recorded `lost`;
//! - the other endpoints: [`runs`] (read, list, delete, input, wait) and
//!   [`status`] (status and the runner).
//!
//! Requests go to the [`backend::Backend`] seat (the bus, the static
//! provider, or a mock); failures are one [`error::ProviderError`].
//! Everything a request needs runs on this actor's arbiter.

mod adopt;
pub mod backend;
pub mod billing;
mod create;
pub mod error;
mod ledger;
mod liveness;
pub mod logs;
pub use adopt::Adopt;
pub mod messages;
mod outcome;
mod payload;
mod runs;
mod status;
mod status_cache;
mod table;
#[cfg(test)]
mod tests;
mod tracking;
pub mod usage;

use crate::metrics::Metrics;
use crate::store::SharedStore;
use actix::prelude::*;
use backend::Backend;
use billing::Billing;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use table::LiveRun;
use usage::Usage;

pub use error::ProviderError;

/// Settings of a provider.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub instance_id: String,
    /// Cap of a run's deadline.
    pub request_timeout: Duration,
    /// Deadline of non-run requests.
    pub default_timeout: Duration,
    /// Concurrent runs per account on this instance (0: no limit).
    pub max_concurrent_runs: usize,
    /// Output kept per run and stream for log followers.
    pub output_cap: usize,
    /// The most bytes of a run's `files` (decoded, in all): more is 413.
    pub max_files_bytes: usize,
    /// A run must be accepted by a worker this soon (its `accept_by`);
    /// `contract::ACCEPT_WITHIN` but in tests.
    pub accept_within: Duration,
    /// Past a run's timeout, how long its result may take
    /// (`contract::RUN_GRACE` but in tests).
    pub run_grace: Duration,
}

/// Counters of the provider.
#[derive(Clone)]
pub struct ProviderMetrics {
    pub runs: IntCounterVec,
    pub in_flight: IntGauge,
    pub usage_failures: IntCounter,
    pub late_results: IntCounter,
}

impl ProviderMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let runs = IntCounterVec::new(
            Opts::new("bus_api_runs_total", "Runs that ended, by state."),
            &["state"],
        )
        .expect("valid");
        let _ = metrics.registry().register(Box::new(runs.clone()));
        ProviderMetrics {
            runs,
            in_flight: metrics.gauge("bus_api_runs_in_flight", "Runs accepted and not yet ended."),
            usage_failures: metrics.counter(
                "bus_api_usage_failures_total",
                "Usage records that could not be published.",
            ),
            late_results: metrics.counter(
                "bus_api_late_results_total",
                "Results that came after the run was deleted or recorded lost.",
            ),
        }
    }
}

/// The provider actor.
pub struct ApiProvider {
    backend: Backend,
    store: SharedStore,
    usage: Usage,
    billing: Billing,
    config: ProviderConfig,
    metrics: ProviderMetrics,
    /// The runs in flight on this instance.
    runs: HashMap<String, LiveRun>,
    /// Which workers are alive, as heartbeats say.
    liveness: liveness::Liveness,
    /// The ledger takes writes (for `/readyz`).
    ledger_health: Arc<AtomicBool>,
    /// This provider's bus connection is up.
    bus_ready: ReadyCheck,
    /// Runs ended here lately (owner, worker), to acknowledge a result
    /// sent again.
    ended: HashMap<String, (String, Option<String>)>,
    ended_order: VecDeque<String>,
    /// What `status` answered lately.
    status_cache: status_cache::StatusCache,
    /// Where runs' artifact archives are kept (none: not kept).
    artifacts: Option<crate::store::artifacts::SharedArtifacts>,
}

/// Says whether something this actor depends on is up.
pub type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// How many ended runs are remembered.
const END_REMEMBERED: usize = 16_384;

impl ApiProvider {
    pub fn new(
        backend: Backend,
        store: SharedStore,
        usage: Usage,
        billing: Billing,
        config: ProviderConfig,
        metrics: ProviderMetrics,
    ) -> Self {
        ApiProvider {
            backend,
            store,
            usage,
            billing,
            config,
            metrics,
            runs: HashMap::new(),
            liveness: Default::default(),
            ledger_health: Arc::new(AtomicBool::new(true)),
            bus_ready: Arc::new(|| Ok(())),
            ended: HashMap::new(),
            ended_order: VecDeque::new(),
            status_cache: Default::default(),
            artifacts: None,
        }
    }

    /// Keeps runs' artifact archives in `artifacts`.
    pub fn with_artifacts(mut self, artifacts: crate::store::artifacts::SharedArtifacts) -> Self {
        self.artifacts = Some(artifacts);
        self
    }

    /// Judges its bus connection by `ready` (a worker's silence means
    /// something only while it is up).
    pub fn with_bus(mut self, ready: ReadyCheck) -> Self {
        self.bus_ready = ready;
        self
    }

    /// Whether the ledger takes writes (shared with `/readyz`).
    pub fn ledger_health(&self) -> Arc<AtomicBool> {
        self.ledger_health.clone()
    }
}

impl Actor for ApiProvider {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
        ctx.run_interval(std::time::Duration::from_millis(500), |act, ctx| {
            act.check_runs(ctx)
        });
        ctx.run_interval(ledger::PROBE_EVERY, |act, ctx| {
            let ledger = ledger::Ledger::new(act.store.clone(), act.ledger_health.clone());
            ctx.spawn(async move { ledger.probe().await }.into_actor(act));
        });
    }
}
