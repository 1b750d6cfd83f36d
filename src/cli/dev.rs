//! `bus dev`: the whole stack in one process on the embedded broker —
//! containers API, router, Docker worker, and (optionally) an Events API
//! for outside workers — with a dev signing secret and token set up on
//! first start.

use super::failure::Failure;
use super::process::stop_signal;
use super::serve_containers::{
    self, default_data_dir, ApiBackend, BillingBackend, ContainersOptions, UsageBackend,
};
use crate::actors::bus::dispatcher::ReplyMetrics;
use crate::actors::bus::requester::{BusIdentity, Requester};
use crate::actors::docker_worker::metrics::WorkerMetrics;
use crate::actors::docker_worker::{DockerWorker, Engine, Shutdown, WorkerConfig};
use crate::actors::router::{self, Router, RouterBackend, RouterConfig, RouterMetrics};
use crate::auth::{
    issue_token, Acl, IssueRequest, Secrets, Verifier, AUDIENCE_API, AUDIENCE_INTERNAL,
    LOCAL_ACCOUNT,
};
use crate::broker::memory::{HubConfig, MemoryBroker};
use crate::broker::SharedBroker;
use crate::config::Config;
use crate::credentials::{api_token_file, config_dir, write_secret_file};
use crate::http::events::{EventsApi, HEARTBEAT, MAX_PAYLOAD};
use crate::http::probes::Probes;
use crate::http::server;
use crate::metrics::{BusMetrics, Metrics};
use crate::planning::WorkerSettings;
use crate::runtime::docker::{docker_host, DockerRuntime};
use crate::runtime::{ContainerRuntime, SharedRuntime};
use crate::store::sqlite::SqliteStore;
use crate::store::Retention;
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DevProvider {
    /// Real containers on the local Docker engine.
    Docker,
    /// Deterministic static answers, no engine.
    Static,
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// The configuration file (default: ./config.toml, then
    /// $BUS_CONFIG_DIR/config.toml, then built-in defaults).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Containers API address (default 127.0.0.1:8080).
    #[arg(long, env = "BUS_DEV_ADDR")]
    pub addr: Option<String>,
    /// Also serve the Events API here, for outside workers (off by default).
    #[arg(long, env = "BUS_DEV_EVENTS_ADDR")]
    pub events_addr: Option<String>,
    /// docker (default) or static.
    #[arg(long, env = "BUS_DEV_PROVIDER", value_enum)]
    pub provider: Option<DevProvider>,
    /// Image of the codex profile.
    #[arg(long, env = "DOCKER_CONTAINER_CODEX_IMAGE")]
    pub container_codex_image: Option<String>,
    /// Where the run ledger lives.
    #[arg(long, env = "BUS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Keep this many started, idle containers per profile, so a profile
    /// run execs instead of starting a container (overrides every
    /// profile's `pool_size`; 0: none).
    #[arg(long, env = "BUS_POOL_SIZE")]
    pub pool_size: Option<usize>,
    /// The largest archive of a run's artifacts, in bytes (overrides
    /// `worker.max_artifact_bytes`; default 64 MiB): past it the archive
    /// stops and the result says `truncated`. At most 128 MiB.
    #[arg(long, env = "BUS_MAX_ARTIFACT_BYTES", value_parser = crate::config::parse_artifact_limit)]
    pub max_artifact_bytes: Option<usize>,
    /// The most bytes of a run's `files`, decoded, in all (overrides
    /// `worker.max_files_bytes`; default 8 MiB): more is 413
    /// `payload_too_large`.
    /// Also the API provider's limit, whose request body limit grows
    /// with it.
    #[arg(long, env = "BUS_MAX_FILES_BYTES")]
    pub max_files_bytes: Option<usize>,
    /// The worker's stable id, which labels its containers (default:
    /// `dev-` and a hash of the data directory, so two stacks on one
    /// engine never take each other's containers).
    #[arg(long, env = "BUS_WORKER_ID")]
    pub worker_id: Option<String>,
}

/// `dev-` and 8 hex digits of the data directory's absolute path
/// (FNV-1a: stable across builds, unlike std's hasher).
fn dev_worker_id(data_dir: &Path) -> String {
    let path = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let hash = path
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("dev-{:08x}", hash as u32 ^ (hash >> 32) as u32)
}

fn load_config(args: &DevArgs) -> Result<(Config, String), Failure> {
    if let Some(path) = &args.config {
        return Ok((
            Config::load(path).map_err(Failure::usage)?,
            path.display().to_string(),
        ));
    }
    for candidate in [
        PathBuf::from("config.toml"),
        config_dir().join("config.toml"),
    ] {
        if candidate.is_file() {
            return Ok((
                Config::load(&candidate).map_err(Failure::usage)?,
                candidate.display().to_string(),
            ));
        }
    }
    Ok((Config::builtin(), "built-in defaults".to_owned()))
}

/// The dev signing secret: created (mode 0600) on first start.
fn dev_secret(auth: &Path) -> Result<Vec<u8>, Failure> {
    let path = auth.join("dev-secret");
    if !path.is_file() {
        use base64::Engine;
        let mut bytes = [0u8; 32];
        for chunk in bytes.chunks_mut(16) {
            chunk.copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        }
        let value = format!(
            "base64:{}\n",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        );
        write_secret_file(&path, value.as_bytes())
            .map_err(|e| Failure::error(format!("cannot write {}: {e}", path.display())))?;
        println!("created a dev signing secret in {}", path.display());
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Failure::error(format!("cannot read {}: {e}", path.display())))?;
    crate::auth::decode_secret(text.trim()).map_err(Failure::usage)
}

fn mint(secret: &[u8], audience: &str, scopes: &[&str]) -> Result<String, Failure> {
    let request = IssueRequest {
        subject: LOCAL_ACCOUNT.into(),
        audience: audience.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        ttl: Duration::from_secs(30 * 24 * 3600),
    };
    Ok(issue_token(secret, &request).map_err(Failure::error)?.0)
}

/// Writes the dev token unless a foreign one is there; returns what the
/// user should know.
fn dev_tokens(secret: &[u8], auth: &Path) -> Result<(), Failure> {
    let user = mint(
        secret,
        AUDIENCE_API,
        &[
            "container:read",
            "container:run",
            "container:delete",
            "events:send",
            "events:listen",
        ],
    )?;
    let operator = mint(secret, AUDIENCE_INTERNAL, &["container:admin"])?;
    let write = |name: &str, token: &str| {
        let path = auth.join(name);
        write_secret_file(&path, format!("{token}\n").as_bytes())
            .map_err(|e| Failure::error(format!("cannot write {}: {e}", path.display())))
    };
    write("dev-token", &user)?;
    write("dev-operator-token", &operator)?;
    let api_token = api_token_file();
    let verifier = Verifier::new(&Secrets::new(secret.to_vec(), None), AUDIENCE_API);
    match std::fs::read_to_string(&api_token) {
        Err(_) => {
            write_secret_file(&api_token, format!("{user}\n").as_bytes()).map_err(|e| {
                Failure::error(format!("cannot write {}: {e}", api_token.display()))
            })?;
            println!("wrote a dev token to {}", api_token.display());
        }
        Ok(existing) if verifier.verify(existing.trim()).is_ok() => {
            // Ours: refresh it so it does not expire under a long-lived setup.
            write_secret_file(&api_token, format!("{user}\n").as_bytes())?;
        }
        Ok(_) => {
            let dev = auth.join("dev-token");
            println!(
                "note: {} holds a token this dev stack did not sign; it was left alone.\n      Use the dev token instead:\n        export BUS_API_TOKEN=\"$(cat {})\"\n      or pass --token-file {} to bus containers.",
                api_token.display(),
                dev.display(),
                dev.display()
            );
        }
    }
    Ok(())
}

/// Pulls missing profile images with a progress bar; says what to do when
/// no registry can be reached.
async fn ensure_images(runtime: &DockerRuntime, config: &Config) {
    let images: std::collections::BTreeSet<String> = config
        .profiles
        .values()
        .filter_map(|p| p.image.clone())
        .collect();
    let sandboxed = config.profiles.values().any(|p| !p.egress.is_empty());
    let egress = &config.worker.egress_image;
    if sandboxed && !runtime.image_present(egress).await.unwrap_or(false) {
        println!(
            "warning: the egress proxy image {egress} is missing: sandboxed profiles (egress = [...]) cannot run.\n         Build it offline: scripts/build-egress-image target/release/bus {egress}"
        );
    }
    for image in images {
        if runtime.image_present(&image).await.unwrap_or(false) {
            continue;
        }
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(format!("pulling {image}"));
        bar.enable_steady_tick(Duration::from_millis(100));
        let shown = bar.clone();
        let result = runtime
            .pull(&image, Box::new(move |line| shown.set_message(line)))
            .await;
        bar.finish_and_clear();
        match result {
            Ok(()) => println!("pulled {image}"),
            Err(e) => println!(
                "warning: image {image} is missing and could not be pulled ({e}).\n         Where no registry can be reached, build it offline: scripts/build-test-image {image}"
            ),
        }
    }
}

pub fn run(args: DevArgs) -> Result<(), Failure> {
    let (mut config, config_origin) = load_config(&args)?;
    let dev = config.dev.clone();
    if let Some(image) = &args.container_codex_image {
        config.profiles.entry("codex".into()).or_default().image = Some(image.clone());
    }
    if let Some(n) = args.pool_size {
        config.set_pool_size(n);
    }
    if let Some(n) = args.max_artifact_bytes {
        config.worker.max_artifact_bytes = n;
    }
    if let Some(n) = args.max_files_bytes {
        config.worker.max_files_bytes = n;
    }
    let provider = match (args.provider, dev.provider.as_deref()) {
        (Some(p), _) => p,
        (None, None) | (None, Some("docker")) => DevProvider::Docker,
        (None, Some("static")) => DevProvider::Static,
        (None, Some(other)) => {
            return Err(Failure::usage(format!(
                "[dev] provider = {other:?}: use \"docker\" or \"static\""
            )))
        }
    };
    let addr = args
        .addr
        .clone()
        .or(dev.addr.clone())
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let events_addr = args.events_addr.clone().or(dev.events_addr.clone());
    let data_dir = args
        .data_dir
        .clone()
        .or(dev.data_dir.clone().map(PathBuf::from))
        .unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| Failure::error(format!("cannot create {}: {e}", data_dir.display())))?;
    let worker_id = super::worker::check_worker_id(
        args.worker_id
            .clone()
            .unwrap_or_else(|| dev_worker_id(&data_dir)),
    )?;
    let auth = config_dir().join("auth");
    let secret = dev_secret(&auth)?;
    dev_tokens(&secret, &auth)?;
    let runtime = Arc::new(DockerRuntime::new("docker", &docker_host()));
    let listener = server::listen(&addr)?;
    let events_listener = events_addr.as_deref().map(server::listen).transpose()?;
    let ledger = data_dir.join("runs.sqlite");
    let store = Arc::new(SqliteStore::open(&ledger).map_err(|e| Failure::error(e.to_string()))?);
    let artifacts: crate::store::artifacts::SharedArtifacts = Arc::new(
        crate::store::artifacts::DirArtifacts::open(crate::store::artifacts::dir_beside(&ledger))
            .map_err(|e| Failure::error(e.to_string()))?,
    );
    println!("configuration: {config_origin}");
    actix_rt::System::new().block_on(async move {
        if provider == DevProvider::Docker {
            if let Err(e) = runtime.ping().await {
                return Err(Failure::error(format!(
                    "no Docker engine is reachable at {} ({e}).\nStart Docker (`docker info` should work), or try the stack without containers:\n  bus dev --provider static",
                    runtime.host()
                )));
            }
            ensure_images(&runtime, &config).await;
        }
        let metrics = Metrics::new();
        let broker: SharedBroker = Arc::new(MemoryBroker::start(HubConfig::default(), BusMetrics::register(&metrics)));
        let secrets = Secrets::new(secret.clone(), None);
        if let Some(listener) = events_listener {
            let bound = server::local_addr(&listener);
            let api = EventsApi {
                broker: broker.clone(),
                verifier: Verifier::new(&secrets, AUDIENCE_API),
                acl: Acl::default(),
                heartbeat: HEARTBEAT,
                max_payload: MAX_PAYLOAD,
                streams: Default::default(),
            };
            let ready = broker.clone();
            let probes = Probes { ready: Arc::new(move || ready.ready().map_err(|e| e.to_string())), metrics: metrics.clone() };
            actix_rt::spawn(server::start_events(listener, api, probes, 1)?);
            println!("events API (for outside workers, prefix bus.docker): http://{bound}");
        }
        let router = Router::start(
            broker.clone(),
            BusIdentity::service("dev-router"),
            RouterConfig::new(RouterBackend::Events { prefix: "bus.docker".into() }),
            RouterMetrics::register(&metrics),
        )
        .await?;
        let engine = match provider {
            DevProvider::Docker => {
                super::guard::spawn(&worker_id, "docker", runtime.host());
                let shared: SharedRuntime = runtime.clone();
                Engine::Containers(shared)
            }
            DevProvider::Static => Engine::Static,
        };
        if config.worker.allowed_images.is_empty() {
            // In dev, explicit-image runs may use any image present locally.
            config.worker.allowed_images = vec!["*".into()];
        }
        let settings = WorkerSettings { worker_id: worker_id.clone(), config: config.clone(), codex_mounts: vec![], codex_env: vec![] };
        let publisher = Requester::new(broker.clone(), BusIdentity::service("dev-worker"), ReplyMetrics::register(&metrics, "bus_worker"));
        let mut worker_config = WorkerConfig::new(settings, "bus.docker");
        worker_config.metrics = WorkerMetrics::register(&metrics);
        let worker = DockerWorker::start(broker.clone(), publisher, engine, worker_config).await?;
        let opts = ContainersOptions {
            backend: ApiBackend::Events,
            usage_backend: UsageBackend::Memory,
            billing_backend: BillingBackend::None,
            request_timeout: Duration::from_secs(30 * 60),
            instance_id: "dev".into(),
            max_concurrent_runs: dev.max_concurrent_runs.unwrap_or(16),
            retention: Retention { max_age: Duration::from_secs(30 * 24 * 3600), max_runs: 100_000 },
            output_cap_bytes: config.worker.output_cap_bytes,
            max_body_bytes: super::serve_containers::body_limit_for(config.worker.max_files_bytes),
            max_files_bytes: config.worker.max_files_bytes,
            heartbeat: HEARTBEAT,
            streams: Default::default(),
            workers: 2,
        };
        // One registry for the whole stack: /metrics shows the bus, the
        // router, the worker and the provider.
        let api = serve_containers::start(opts, secrets, store, Some(artifacts), Some((broker.clone(), BusIdentity::service("dev-api"))), listener, metrics.clone()).await?;
        let url = format!("http://{}", api.addr);
        let handle = api.server.handle();
        actix_rt::spawn(api.server);
        println!("worker id: {worker_id} (its containers carry the label bus.worker_id={worker_id})");
        println!("bus dev is up ({} provider): {url}", match provider { DevProvider::Docker => "docker", DevProvider::Static => "static" });
        println!("try:\n  bus containers --api-url {url} run --profile codex -- sh -c 'printf OK'");
        println!("Ctrl-C stops it (runs in flight are cancelled and their containers removed).");
        stop_signal().await;
        println!("stopping: cancelling runs in flight…");
        let _ = actix_rt::time::timeout(Duration::from_secs(20), worker.send(Shutdown)).await;
        let _ = router.send(router::Shutdown).await;
        handle.stop(true).await;
        println!("stopped");
        Ok(())
    })
}
