//! `bus api-provider containers`: the containers REST API.

use super::failure::Failure;
use super::process::{connect, hostname, stop_signal, BusArgs};
use crate::actors::api_provider::backend::{Backend, BusBackend, RunReply, StaticBackend};
use crate::actors::api_provider::billing::{Billing, BILLING_EVENT};
use crate::actors::api_provider::usage::Usage;
use crate::actors::api_provider::{Adopt, ApiProvider, ProviderConfig, ProviderMetrics};
use crate::actors::bus::dispatcher::ReplyMetrics;
use crate::actors::bus::edge::events;
use crate::actors::bus::requester::{reply_name, Requester};
use crate::actors::bus::subscription::Subscription;
use crate::auth::{Secrets, Verifier, AUDIENCE_API, AUDIENCE_INTERNAL};
use crate::broker::SubscribeSpec;
use crate::contract::{
    Kind, ResultPart, RouterHeartbeat, RunAccepted, RunOutput, RunStarted, WorkerHeartbeat,
    PUBLIC_PREFIX,
};
use crate::http::containers::ContainersApi;
use crate::http::probes::{Probes, ReadyCheck};
use crate::http::request_metrics::RequestMetrics;
use crate::http::server;
use crate::http::stream_slots::StreamSlots;
use crate::metrics::Metrics;
use crate::parse::parse_duration;
use crate::store::artifacts::{DirArtifacts, ObjectArtifacts, SharedArtifacts};
use crate::store::sqlite::SqliteStore;
use crate::store::{Retention, SharedStore};
use actix::Actor;
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, Default, ValueEnum, PartialEq, Eq)]
pub enum ApiBackend {
    /// Deterministic static answers, no bus.
    #[default]
    Static,
    /// Requests on the bus (router or a standalone worker).
    Events,
}

#[derive(Debug, Clone, Copy, Default, ValueEnum, PartialEq, Eq)]
pub enum UsageBackend {
    #[default]
    None,
    Events,
    Memory,
}

#[derive(Debug, Clone, Copy, Default, ValueEnum, PartialEq, Eq)]
pub enum BillingBackend {
    #[default]
    None,
    Events,
}

#[derive(Debug, Args)]
pub struct ContainersServerArgs {
    /// Listen address.
    #[arg(long, env = "BUS_CONTAINERS_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: String,
    #[arg(long, env = "BUS_CONTAINERS_BACKEND", value_enum, default_value_t)]
    pub backend: ApiBackend,
    /// Events API origin (with --backend events, --usage-backend events or
    /// --billing-backend events).
    #[arg(
        long,
        env = "BUS_EVENTS_API_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub events_url: String,
    #[arg(long, value_enum, default_value_t)]
    pub usage_backend: UsageBackend,
    #[arg(long, value_enum, default_value_t)]
    pub billing_backend: BillingBackend,
    /// Longest a run may wait for its result (Go duration).
    #[arg(long, env = "BUS_CONTAINERS_REQUEST_TIMEOUT", default_value = "30m", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// The run ledger: a SQLite file (default: <data-dir>/runs.sqlite).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Where the ledger lives (default: $XDG_DATA_HOME/bus or ~/.local/share/bus).
    #[arg(long, env = "BUS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Stable id of this provider (default: the host name).
    #[arg(long, env = "BUS_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Concurrent runs per account on this instance (0: no limit).
    #[arg(long, default_value_t = 16)]
    pub max_concurrent_runs: usize,
    /// Finished records older than this are removed (Go duration).
    #[arg(long, default_value = "720h", value_parser = parse_duration)]
    pub retention_max_age: Duration,
    /// At most this many records are kept.
    #[arg(long, default_value_t = 100_000)]
    pub retention_max_runs: usize,
    /// Output kept per run and stream for log followers.
    #[arg(long, default_value_t = 1 << 20)]
    pub output_cap_bytes: usize,
    /// Largest request body (default: room for --max-files-bytes of
    /// files in base64, and 1 MiB more).
    #[arg(long)]
    pub max_body_bytes: Option<usize>,
    /// The most bytes of a run's `files`, decoded, in all: more is 413
    /// `payload_too_large`.
    #[arg(long, env = "BUS_MAX_FILES_BYTES", default_value_t = crate::config::DEFAULT_MAX_FILES_BYTES)]
    pub max_files_bytes: usize,
    /// Heartbeat on log streams.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// Open log follows allowed in total; more are 429.
    #[arg(long, default_value_t = crate::http::stream_slots::MAX_STREAMS)]
    pub max_streams: usize,
    /// Open log follows allowed per token identity (sub); more are 429.
    #[arg(long, default_value_t = crate::http::stream_slots::MAX_STREAMS_PER_IDENTITY)]
    pub max_streams_per_identity: usize,
    /// HTTP worker threads (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
}

/// `$BUS_DATA_DIR`, else `$XDG_DATA_HOME/bus`, else `~/.local/share/bus`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("bus");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local").join("share").join("bus")
}

/// Opens the run ledger and the artifact archives beside it: a SQLite
/// file and a directory `artifacts` next to it, or a JetStream KV bucket
/// and an object store bucket for `--store nats://host:4222` (shared by
/// several providers).
async fn open_store(
    args: &ContainersServerArgs,
) -> Result<(SharedStore, SharedArtifacts), Failure> {
    if let Some(url) = args
        .store
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p.starts_with("nats://"))
    {
        let store = crate::store::kv::KvStore::open(&url, crate::store::kv::BUCKET)
            .await
            .map_err(|e| Failure::error(e.to_string()))?;
        tracing::info!(bucket = crate::store::kv::BUCKET, "run ledger on NATS KV");
        let artifacts = ObjectArtifacts::open(&url)
            .await
            .map_err(|e| Failure::error(e.to_string()))?;
        tracing::info!(
            bucket = crate::store::artifacts::BUCKET,
            "artifacts in a NATS object store"
        );
        return Ok((Arc::new(store), Arc::new(artifacts)));
    }
    let path = match &args.store {
        Some(p) => p.clone(),
        None => args
            .data_dir
            .clone()
            .unwrap_or_else(default_data_dir)
            .join("runs.sqlite"),
    };
    let store = SqliteStore::open(&path).map_err(|e| Failure::error(e.to_string()))?;
    tracing::info!(path = %path.display(), "run ledger open");
    let dir = crate::store::artifacts::dir_beside(&path);
    let artifacts = DirArtifacts::open(dir).map_err(|e| Failure::error(e.to_string()))?;
    Ok((Arc::new(store), Arc::new(artifacts)))
}

/// The request body limit that carries `max_files_bytes` of files (as
/// base64), and 1 MiB for the rest of the request.
pub fn body_limit_for(max_files_bytes: usize) -> usize {
    max_files_bytes
        .saturating_mul(4)
        .div_ceil(3)
        .saturating_add(1 << 20)
}

/// Everything `start` needs, from flags or from a caller such as `bus dev`.
#[derive(Clone)]
pub struct ContainersOptions {
    pub backend: ApiBackend,
    pub usage_backend: UsageBackend,
    pub billing_backend: BillingBackend,
    pub request_timeout: Duration,
    pub instance_id: String,
    pub max_concurrent_runs: usize,
    pub retention: Retention,
    pub output_cap_bytes: usize,
    pub max_body_bytes: usize,
    pub max_files_bytes: usize,
    pub heartbeat: Duration,
    pub streams: StreamSlots,
    pub workers: usize,
}

/// A running containers API.
pub struct ContainersServer {
    pub server: actix_web::dev::Server,
    pub addr: std::net::SocketAddr,
    pub metrics: Metrics,
    pub usage: Usage,
}

/// Starts the containers API on `listener` inside the current actix
/// System: marks this instance's leftover `running` records lost, starts
/// retention, wires the backend, usage and billing, and serves.
pub async fn start(
    opts: ContainersOptions,
    secrets: Secrets,
    store: SharedStore,
    artifacts: Option<SharedArtifacts>,
    bus: Option<(
        crate::broker::SharedBroker,
        crate::actors::bus::requester::BusIdentity,
    )>,
    listener: std::net::TcpListener,
    metrics: Metrics,
) -> Result<ContainersServer, Failure> {
    let addr = server::local_addr(&listener);
    let instance_id = opts.instance_id.clone();
    // Runs this instance left running are asked of their workers (not
    // simply recorded lost).
    let left_running = store
        .running(&instance_id)
        .await
        .map_err(|e| Failure::error(e.to_string()))?;
    let retention = opts.retention;
    let swept = artifacts.clone();
    let prune = move |store: SharedStore| {
        let swept = swept.clone();
        async move {
            match store.prune(retention).await {
                Ok(n) if n > 0 => tracing::info!(removed = n, "run ledger retention"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "run ledger retention failed"),
            }
            // Archives go with their records.
            if let Some(artifacts) = swept {
                match crate::store::artifacts::sweep(&artifacts, &store).await {
                    Ok(n) if n > 0 => {
                        tracing::info!(removed = n, "artifacts of removed runs removed")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "artifact retention failed"),
                }
            }
        }
    };
    // Once before serving (so nothing past retention is ever listed),
    // then hourly.
    prune(store.clone()).await;
    let prune_store = store.clone();
    actix_rt::spawn(async move {
        loop {
            actix_rt::time::sleep(Duration::from_secs(3600)).await;
            prune(prune_store.clone()).await;
        }
    });
    let pmetrics = ProviderMetrics::register(&metrics);
    let requester = bus.as_ref().map(|(broker, identity)| {
        Requester::new(
            broker.clone(),
            identity.clone(),
            ReplyMetrics::register(&metrics, "bus_api"),
        )
    });
    let needs_bus = opts.backend == ApiBackend::Events
        || opts.usage_backend == UsageBackend::Events
        || opts.billing_backend == BillingBackend::Events;
    if needs_bus && requester.is_none() {
        return Err(Failure::usage(
            "the events backends need a connection to the bus",
        ));
    }
    let (backend, ready): (Backend, ReadyCheck) = match (&opts.backend, &requester) {
        (ApiBackend::Events, Some(r)) => {
            // A run's reply comes to the provider by its own subscription.
            for kind in Kind::ALL.into_iter().filter(|k| *k != Kind::Run) {
                r.listen(&kind.response(PUBLIC_PREFIX)).await?;
            }
            let broker = r.broker().clone();
            let durable = broker.durable(&Kind::Run.request(PUBLIC_PREFIX)).is_some();
            let backend = BusBackend::new(r.clone()).start();
            // The worker that takes a run sent in parts asks for them.
            Subscription::start_decoded(
                broker.clone(),
                SubscribeSpec::broadcast(format!("{PUBLIC_PREFIX}.run.payload.pull"))
                    .consumer(format!("api-{instance_id}")),
                events::<crate::contract::parts::PayloadPull>(),
                backend.clone().recipient(),
            )
            .await?;
            (
                Backend::of("events", durable, backend),
                Arc::new(move || broker.ready().map_err(|e| e.to_string())),
            )
        }
        _ => (
            Backend::of("static", false, StaticBackend.start()),
            Arc::new(|| Ok(())),
        ),
    };
    let usage = match (opts.usage_backend, &requester) {
        (UsageBackend::Events, Some(r)) => {
            let usage = Usage::events(r.clone(), pmetrics.usage_failures.clone(), store.clone());
            // The ledger is the usage outbox: what the last process of
            // this instance never got out goes now.
            let unsent = store
                .usage_unsent(&instance_id)
                .await
                .map_err(|e| Failure::error(e.to_string()))?;
            if !unsent.is_empty() {
                tracing::warn!(
                    runs = unsent.len(),
                    "usage records the last process did not get out are sent again"
                );
            }
            let (backlog, failures) = (usage.clone(), pmetrics.usage_failures.clone());
            actix_rt::spawn(async move {
                for record in &unsent {
                    backlog.room(2).await;
                    backlog.resend(record, &failures);
                }
            });
            usage
        }
        (UsageBackend::Memory, _) => Usage::Memory(Default::default()),
        _ => Usage::None,
    };
    let billing = match (opts.billing_backend, &requester) {
        (BillingBackend::Events, Some(r)) => {
            r.listen(&reply_name(BILLING_EVENT)).await?;
            Billing::Events(r.clone())
        }
        _ => Billing::None,
    };
    let config = ProviderConfig {
        instance_id: instance_id.clone(),
        request_timeout: opts.request_timeout,
        default_timeout: crate::contract::DEFAULT_REQUEST_TIMEOUT,
        max_concurrent_runs: opts.max_concurrent_runs,
        output_cap: opts.output_cap_bytes,
        max_files_bytes: opts.max_files_bytes,
        accept_within: crate::contract::ACCEPT_WITHIN,
        run_grace: crate::contract::RUN_GRACE,
    };
    let mut provider = ApiProvider::new(backend, store, usage.clone(), billing, config, pmetrics)
        .with_bus(ready.clone());
    if let Some(artifacts) = artifacts {
        provider = provider.with_artifacts(artifacts);
    }
    let ledger = provider.ledger_health();
    let provider = provider.start();
    if let (ApiBackend::Events, Some(r)) = (&opts.backend, &requester) {
        let spec = |event: &str| {
            SubscribeSpec::broadcast(format!("{PUBLIC_PREFIX}.{event}"))
                .consumer(format!("api-{instance_id}"))
        };
        Subscription::start_decoded(
            r.broker().clone(),
            spec("run.started"),
            events::<RunStarted>(),
            provider.clone().recipient(),
        )
        .await?;
        Subscription::start_decoded(
            r.broker().clone(),
            spec("run.output"),
            events::<RunOutput>(),
            provider.clone().recipient(),
        )
        .await?;
        Subscription::start_decoded(
            r.broker().clone(),
            spec("run.accepted"),
            events::<RunAccepted>(),
            provider.clone().recipient(),
        )
        .await?;
        Subscription::start_decoded(
            r.broker().clone(),
            spec("run.result.part"),
            events::<ResultPart>(),
            provider.clone().recipient(),
        )
        .await?;
        Subscription::start_decoded(
            r.broker().clone(),
            spec("run.response"),
            Box::new(|e| {
                Some(RunReply(crate::actors::bus::Incoming {
                    meta: crate::actors::bus::Meta::of(&e),
                    body: crate::contract::WorkerReply::decode(&e.payload),
                }))
            }),
            provider.clone().recipient(),
        )
        .await?;
        Subscription::start_decoded(
            r.broker().clone(),
            spec("router.heartbeat"),
            events::<RouterHeartbeat>(),
            provider.clone().recipient(),
        )
        .await?;
        Subscription::start_decoded(
            r.broker().clone(),
            spec("worker.heartbeat"),
            events::<WorkerHeartbeat>(),
            provider.clone().recipient(),
        )
        .await?;
    }
    if !left_running.is_empty() {
        let n = provider.send(Adopt(left_running)).await.unwrap_or(0);
        tracing::warn!(runs = n, instance_id = %instance_id, "runs this instance left running are asked of their workers");
    }
    let api = ContainersApi {
        provider,
        public: Verifier::new(&secrets, AUDIENCE_API),
        internal: Verifier::new(&secrets, AUDIENCE_INTERNAL),
        max_body: opts.max_body_bytes,
        heartbeat: opts.heartbeat,
        wait_cap: opts.request_timeout,
        streams: opts.streams.clone(),
    };
    let probes = Probes {
        ready: Arc::new(move || {
            if !ledger.load(std::sync::atomic::Ordering::Relaxed) {
                return Err("the run ledger cannot be written".into());
            }
            ready()
        }),
        metrics: metrics.clone(),
    };
    let request_metrics = RequestMetrics::register(&metrics, "bus_api");
    let server = server::start_containers(listener, api, probes, request_metrics, opts.workers)?;
    tracing::info!(%addr, backend = ?opts.backend, instance_id = %instance_id, "containers API listening");
    Ok(ContainersServer {
        server,
        addr,
        metrics,
        usage,
    })
}

/// The containers API's secrets: `BUS_CONTAINERS_JWT_SECRET`, falling back
/// to `BUS_API_JWT_SECRET`, then, as BusDK's local flows set them,
/// `BUS_EVENTS_JWT_SECRET` and `BUS_AUTH_HS256_SECRET` (and the first two's
/// `_PREVIOUS` for rotation).
pub fn secrets_from_env() -> Result<Secrets, Failure> {
    let previous = if std::env::var_os("BUS_CONTAINERS_JWT_SECRET_PREVIOUS").is_some() {
        "BUS_CONTAINERS_JWT_SECRET_PREVIOUS"
    } else {
        "BUS_API_JWT_SECRET_PREVIOUS"
    };
    Secrets::from_env(
        &[
            "BUS_CONTAINERS_JWT_SECRET",
            "BUS_API_JWT_SECRET",
            "BUS_EVENTS_JWT_SECRET",
            "BUS_AUTH_HS256_SECRET",
        ],
        previous,
    )
    .map_err(Failure::usage)
}

pub fn run(args: ContainersServerArgs) -> Result<(), Failure> {
    let secrets = secrets_from_env()?;
    if args.max_streams == 0 || args.max_streams_per_identity == 0 {
        return Err(Failure::usage(
            "--max-streams and --max-streams-per-identity must be greater than zero",
        ));
    }
    if args.request_timeout.is_zero() || args.heartbeat.is_zero() {
        return Err(Failure::usage(
            "--request-timeout and --heartbeat must be greater than zero",
        ));
    }
    let needs_bus = args.backend == ApiBackend::Events
        || args.usage_backend == UsageBackend::Events
        || args.billing_backend == BillingBackend::Events;
    let bus = if needs_bus {
        Some(connect(&BusArgs {
            events_url: args.events_url.clone(),
            addr: None,
            // It publishes run requests and consumes none.
            nats_ack_wait: std::time::Duration::from_secs(30),
        })?)
    } else {
        None
    };
    let listener = server::listen(&args.addr)?;
    let opts = ContainersOptions {
        backend: args.backend,
        usage_backend: args.usage_backend,
        billing_backend: args.billing_backend,
        request_timeout: args.request_timeout,
        instance_id: args.instance_id.clone().unwrap_or_else(hostname),
        max_concurrent_runs: args.max_concurrent_runs,
        retention: Retention {
            max_age: args.retention_max_age,
            max_runs: args.retention_max_runs,
        },
        output_cap_bytes: args.output_cap_bytes,
        max_body_bytes: args
            .max_body_bytes
            .unwrap_or_else(|| body_limit_for(args.max_files_bytes)),
        max_files_bytes: args.max_files_bytes,
        heartbeat: args.heartbeat,
        streams: StreamSlots::new(args.max_streams, args.max_streams_per_identity),
        workers: args.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }),
    };
    actix_rt::System::new().block_on(async move {
        let (store, artifacts) = open_store(&args).await?;
        let bus = match bus {
            Some(b) => Some((b.open().await?, b.identity.clone())),
            None => None,
        };
        let started = start(
            opts,
            secrets,
            store,
            Some(artifacts),
            bus,
            listener,
            Metrics::new(),
        )
        .await?;
        let handle = started.server.handle();
        actix_rt::spawn(async move {
            stop_signal().await;
            handle.stop(true).await;
        });
        started.server.await.map_err(Failure::from)
    })
}
