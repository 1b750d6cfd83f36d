//! `bus integration docker` and `bus integration podman`: the worker.

use super::failure::Failure;
use super::process::{connect, hostname, serve_probes, stop_signal, BusArgs};
use crate::actors::bus::dispatcher::ReplyMetrics;
use crate::actors::bus::requester::Requester;
use crate::actors::docker_worker::{DockerWorker, Engine, Shutdown, WorkerConfig};
use crate::config::{Config, Profile};
use crate::contract::validate_name;
use crate::contract::RunRequest;
use crate::contract::{static_answers, PUBLIC_PREFIX};
use crate::metrics::Metrics;
use crate::parse::{parse_bool, parse_duration};
use crate::planning::plan::{plan_run, WorkerSettings};
use crate::runtime::docker::{docker_host, DockerRuntime};
use crate::runtime::MountSpec;
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WorkerProvider {
    /// Deterministic static answers, no engine.
    Static,
    /// Docker Engine API.
    Docker,
    /// Podman's Docker-compatible API.
    Podman,
}

/// Which command this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Docker,
    Podman,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub bus: BusArgs,
    /// Engine: static, docker (bus integration docker) or podman.
    #[arg(long, value_enum)]
    pub provider: Option<WorkerProvider>,
    /// Prefix to consume (bus.docker, bus.podman); unset: consume
    /// bus.containers.* directly (standalone, one worker). Env
    /// BUS_DOCKER_EVENT_PREFIX (BUS_PODMAN_EVENT_PREFIX for podman).
    #[arg(long)]
    pub event_prefix: Option<String>,
    /// Stable id of this worker (default: the host name).
    #[arg(long, env = "BUS_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Image of the codex profile. Env DOCKER_CONTAINER_CODEX_IMAGE
    /// (PODMAN_CONTAINER_CODEX_IMAGE for podman).
    #[arg(long)]
    pub container_codex_image: Option<String>,
    /// Codex home on the host, mounted read-only at /root/.codex (CODEX_HOME),
    /// where BusDK documents it.
    #[arg(long, env = "BUS_DOCKER_CODEX_HOME_HOST")]
    pub codex_home_host_path: Option<PathBuf>,
    /// Mount the Codex home read-write (opt-in).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool)]
    pub codex_home_writable: Option<bool>,
    /// Workspace on the host, mounted read-write.
    #[arg(long, env = "BUS_DOCKER_CODEX_WORKSPACE_HOST")]
    pub codex_workspace_host_path: Option<PathBuf>,
    /// Where the workspace appears in the container.
    #[arg(
        long,
        env = "BUS_DOCKER_CODEX_WORKSPACE_CONTAINER",
        default_value = "/workspace"
    )]
    pub codex_workspace_container_path: String,
    /// SSH directory on the host, mounted read-only at /codex-ssh.
    #[arg(long, env = "BUS_DOCKER_CODEX_SSH_HOST")]
    pub codex_ssh_host_path: Option<PathBuf>,
    /// SSH agent socket on the host, mounted at /ssh-agent.sock
    /// (SSH_AUTH_SOCK is set).
    #[arg(long, env = "BUS_DOCKER_CODEX_SSH_AGENT_HOST")]
    pub codex_ssh_agent_host_path: Option<PathBuf>,
    /// GIT_SSH_COMMAND inside codex runs.
    #[arg(long, env = "BUS_DOCKER_CODEX_GIT_SSH_COMMAND")]
    pub codex_git_ssh_command: Option<String>,
    /// Profiles and limits (TOML; see config.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The image whose `bus egress-proxy` is a sandboxed run's sidecar
    /// (overrides `worker.egress_image`).
    #[arg(long, env = "BUS_EGRESS_IMAGE")]
    pub egress_image: Option<String>,
    /// How often the orphan reaper looks for leftovers.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub reap_interval: Duration,
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
    #[arg(long, env = "BUS_MAX_FILES_BYTES")]
    pub max_files_bytes: Option<usize>,
    /// Check the configuration (and the engine, unless static), print
    /// `bus-integration-<name> self-test OK` and exit.
    #[arg(long)]
    pub self_test: bool,
}

/// Where the codex home appears in a codex run (BusDK's path).
pub const CODEX_HOME: &str = "/root/.codex";

fn absolute(p: &std::path::Path, flag: &str) -> Result<String, Failure> {
    let s = p.to_string_lossy().into_owned();
    if !s.starts_with('/') {
        return Err(Failure::usage(format!("{flag} must be an absolute path")));
    }
    Ok(s)
}

/// The worker's settings from its flags, config file and environment.
pub fn settings(args: &WorkerArgs, flavour: Flavour) -> Result<WorkerSettings, Failure> {
    let mut config = match &args.config {
        Some(path) => Config::load(path).map_err(Failure::usage)?,
        None => Config::builtin(),
    };
    if let Some(n) = args.pool_size {
        config.set_pool_size(n);
    }
    if let Some(n) = args.max_artifact_bytes {
        config.worker.max_artifact_bytes = n;
    }
    if let Some(n) = args.max_files_bytes {
        config.worker.max_files_bytes = n;
    }
    if let Some(image) = args.egress_image.clone().filter(|i| !i.trim().is_empty()) {
        config.worker.egress_image = image;
    }
    let image_env = match flavour {
        Flavour::Docker => "DOCKER_CONTAINER_CODEX_IMAGE",
        Flavour::Podman => "PODMAN_CONTAINER_CODEX_IMAGE",
    };
    let image = args
        .container_codex_image
        .clone()
        .or_else(|| std::env::var(image_env).ok().filter(|v| !v.is_empty()));
    if let Some(image) = image {
        config
            .profiles
            .entry("codex".into())
            .or_insert_with(Profile::default)
            .image = Some(image);
    }
    let writable = match args.codex_home_writable {
        Some(w) => w,
        None => crate::parse::env_bool("BUS_DOCKER_CODEX_HOME_WRITABLE").map_err(Failure::usage)?,
    };
    let mut mounts = Vec::new();
    let mut env = Vec::new();
    if let Some(home) = &args.codex_home_host_path {
        mounts.push(MountSpec {
            source: absolute(home, "--codex-home-host-path")?,
            target: CODEX_HOME.into(),
            read_only: !writable,
        });
        env.push(("CODEX_HOME".to_owned(), CODEX_HOME.to_owned()));
    }
    if let Some(ws) = &args.codex_workspace_host_path {
        if !args.codex_workspace_container_path.starts_with('/') {
            return Err(Failure::usage(
                "--codex-workspace-container-path must be absolute",
            ));
        }
        mounts.push(MountSpec {
            source: absolute(ws, "--codex-workspace-host-path")?,
            target: args.codex_workspace_container_path.clone(),
            read_only: false,
        });
    }
    if let Some(ssh) = &args.codex_ssh_host_path {
        mounts.push(MountSpec {
            source: absolute(ssh, "--codex-ssh-host-path")?,
            target: "/codex-ssh".into(),
            read_only: true,
        });
    }
    if let Some(agent) = &args.codex_ssh_agent_host_path {
        mounts.push(MountSpec {
            source: absolute(agent, "--codex-ssh-agent-host-path")?,
            target: "/ssh-agent.sock".into(),
            read_only: false,
        });
        env.push(("SSH_AUTH_SOCK".to_owned(), "/ssh-agent.sock".to_owned()));
    }
    if let Some(cmd) = &args.codex_git_ssh_command {
        env.push(("GIT_SSH_COMMAND".to_owned(), cmd.clone()));
    }
    let worker_id = check_worker_id(args.worker_id.clone().unwrap_or_else(hostname))?;
    Ok(WorkerSettings {
        worker_id,
        config,
        codex_mounts: mounts,
        codex_env: env,
    })
}

/// A worker id as labels, claims and consumer names can carry it.
pub fn check_worker_id(worker_id: String) -> Result<String, Failure> {
    if worker_id.is_empty()
        || worker_id.len() > 128
        || !worker_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(Failure::usage(
            "--worker-id may only use letters, digits, '-', '_' and '.' (at most 128)",
        ));
    }
    Ok(worker_id)
}

fn prefix(args: &WorkerArgs, flavour: Flavour) -> Result<String, Failure> {
    let env = match flavour {
        Flavour::Docker => "BUS_DOCKER_EVENT_PREFIX",
        Flavour::Podman => "BUS_PODMAN_EVENT_PREFIX",
    };
    let prefix = args
        .event_prefix
        .clone()
        .or_else(|| std::env::var(env).ok())
        .map(|p| p.trim().trim_end_matches('.').to_owned())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| PUBLIC_PREFIX.to_owned());
    validate_name(&prefix).map_err(|e| Failure::usage(format!("--event-prefix: {e}")))?;
    Ok(prefix)
}

/// Where the engine is: `DOCKER_HOST`, or each engine's own socket.
fn engine_host(args: &WorkerArgs, flavour: Flavour) -> String {
    let provider = args.provider.unwrap_or(match flavour {
        Flavour::Docker => WorkerProvider::Docker,
        Flavour::Podman => WorkerProvider::Podman,
    });
    match provider {
        WorkerProvider::Podman => std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unix:///run/podman/podman.sock".to_owned()),
        _ => docker_host(),
    }
}

fn engine(args: &WorkerArgs, flavour: Flavour) -> Engine {
    let provider = args.provider.unwrap_or(match flavour {
        Flavour::Docker => WorkerProvider::Docker,
        Flavour::Podman => WorkerProvider::Podman,
    });
    match provider {
        WorkerProvider::Static => Engine::Static,
        WorkerProvider::Docker => {
            Engine::Containers(Arc::new(DockerRuntime::new("docker", &docker_host())))
        }
        WorkerProvider::Podman => Engine::Containers(Arc::new(DockerRuntime::new(
            "podman",
            &engine_host(args, flavour),
        ))),
    }
}

fn self_test(
    args: &WorkerArgs,
    flavour: Flavour,
    settings: &WorkerSettings,
) -> Result<(), Failure> {
    let name = match flavour {
        Flavour::Docker => "docker",
        Flavour::Podman => "podman",
    };
    let request: RunRequest =
        serde_json::from_value(serde_json::json!({"profile": "codex", "args": ["printf", "OK"]}))?;
    plan_run(&request, "self-test", settings)
        .map_err(|e| Failure::error(format!("self-test: {e}")))?;
    let reply = static_answers::run(&request, "self-test", "self-test");
    if reply.stdout != "static: printf OK" {
        return Err(Failure::error(
            "self-test: the static provider answered wrongly",
        ));
    }
    if let Engine::Containers(runtime) = engine(args, flavour) {
        let images = settings.config.images();
        actix_rt::System::new().block_on(async {
            runtime.ping().await.map_err(|e| {
                Failure::error(format!(
                    "self-test: {e} (use --provider static to test without an engine)"
                ))
            })?;
            for (key, image) in &images {
                let present = runtime
                    .image_present(image)
                    .await
                    .map_err(|e| Failure::error(format!("self-test: {key}: image {image}: {e}")))?;
                if !present {
                    return Err(Failure::error(format!(
                        "self-test: {key}: image {image} is not on the engine (`bus containers runner start` pulls it; offline, build it: {})",
                        crate::config::build_hint(key, image)
                    )));
                }
            }
            Ok(())
        })?;
    }
    super::print_line(&format!("bus-integration-{name} self-test OK"))?;
    Ok(())
}

pub fn run_worker(args: WorkerArgs, flavour: Flavour) -> Result<(), Failure> {
    let settings = settings(&args, flavour)?;
    if args.self_test {
        return self_test(&args, flavour, &settings);
    }
    let prefix = prefix(&args, flavour)?;
    let engine = engine(&args, flavour);
    let bus = connect(&args.bus)?;
    let mut config = WorkerConfig::new(settings, &prefix);
    config.reap_every = args.reap_interval.max(Duration::from_secs(1));
    if let Engine::Containers(r) = &engine {
        config.runner_name = r.provider().to_owned();
        super::guard::spawn(
            &config.settings.worker_id,
            r.provider(),
            &engine_host(&args, flavour),
        );
    }
    actix_rt::System::new().block_on(async move {
        let metrics = Metrics::new();
        config.metrics = crate::actors::docker_worker::metrics::WorkerMetrics::register(&metrics);
        let broker = bus.open().await?;
        let publisher = Requester::new(
            broker.clone(),
            bus.identity.clone(),
            ReplyMetrics::register(&metrics, "bus_worker"),
        );
        let worker_id = config.settings.worker_id.clone();
        let worker = DockerWorker::start(broker.clone(), publisher, engine, config).await?;
        tracing::info!(worker_id = %worker_id, prefix = %prefix, "worker subscribed");
        serve_probes(args.bus.addr.as_deref(), broker, metrics, "worker")?;
        stop_signal().await;
        let _ = worker.send(Shutdown).await;
        Ok(())
    })
}
