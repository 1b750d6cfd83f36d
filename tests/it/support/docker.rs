//! Real-Docker fixtures: the engine (or a skip, unless
//! `BUS_TEST_DOCKER=required`), the local test image, and an in-process
//! worker on the memory broker with a requester in the API's seat.

use super::{memory_broker, requester};
use actix::Addr;
use bus_containers::actors::bus::requester::{Request, Requester};
use bus_containers::actors::bus::waiter::Outcome;
use bus_containers::actors::docker_worker::{DockerWorker, Engine, Shutdown, WorkerConfig};
use bus_containers::broker::SharedBroker;
use bus_containers::broker::SubscribeSpec;
use bus_containers::config::Config;
use bus_containers::contract::Kind;
use bus_containers::planning::WorkerSettings;
use bus_containers::runtime::docker::{docker_host, DockerRuntime};
use bus_containers::runtime::{ContainerRuntime, Managed, SharedRuntime};
use futures::StreamExt;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

pub const IMAGE: &str = "bus-busybox:latest";

/// The Docker engine, or `None` (skip) when none is reachable and
/// `BUS_TEST_DOCKER` is not `required`.
pub async fn engine() -> Option<Arc<DockerRuntime>> {
    let required = std::env::var("BUS_TEST_DOCKER").is_ok_and(|v| v == "required");
    let runtime = Arc::new(DockerRuntime::new("docker", &docker_host()));
    let problem = match runtime.ping().await {
        Err(e) => Some(format!("no Docker engine: {e}")),
        Ok(_) => match runtime.image_present(IMAGE).await {
            Ok(true) => None,
            _ => Some(format!(
                "image {IMAGE} is missing: run scripts/build-test-image"
            )),
        },
    };
    match problem {
        None => Some(runtime),
        Some(p) if required => panic!("BUS_TEST_DOCKER=required: {p}"),
        Some(p) => {
            eprintln!("SKIPPED (Docker): {p}");
            None
        }
    }
}

/// A Podman service, or `None` (skip) unless `BUS_TEST_PODMAN=required`.
/// Where: `BUS_TEST_PODMAN_HOST`, default `unix:///run/podman/podman.sock`.
pub async fn podman() -> Option<Arc<DockerRuntime>> {
    let required = std::env::var("BUS_TEST_PODMAN").is_ok_and(|v| v == "required");
    let host = std::env::var("BUS_TEST_PODMAN_HOST")
        .unwrap_or_else(|_| "unix:///run/podman/podman.sock".into());
    let runtime = Arc::new(DockerRuntime::new("podman", &host));
    let problem = match runtime.ping().await {
        Err(e) => Some(format!(
            "no Podman service at {host}: {e} (scripts/ensure-podman starts one)"
        )),
        Ok(_) => match runtime.image_present(IMAGE).await {
            Ok(true) => None,
            _ => Some(format!(
                "image {IMAGE} is missing in Podman: run scripts/ensure-podman"
            )),
        },
    };
    match problem {
        None => Some(runtime),
        Some(p) if required => panic!("BUS_TEST_PODMAN=required: {p}"),
        Some(p) => {
            eprintln!("SKIPPED (Podman): {p}");
            None
        }
    }
}

/// A worker on its own memory broker.
pub struct Fixture {
    pub broker: SharedBroker,
    pub worker: Addr<DockerWorker>,
    pub api: Requester,
    pub worker_id: String,
    pub runtime: Arc<DockerRuntime>,
    pub prefix: String,
}

pub fn test_config() -> Config {
    let mut config = Config::builtin();
    config.worker.allowed_images = vec!["bus-busybox:*".into()];
    config
}

impl Fixture {
    pub async fn start() -> Option<Fixture> {
        Self::start_with(test_config()).await
    }

    pub async fn start_with(config: Config) -> Option<Fixture> {
        Some(Self::start_on(engine().await?, config).await)
    }

    /// A worker on `runtime` (Docker or Podman).
    pub async fn start_on(runtime: Arc<DockerRuntime>, config: Config) -> Fixture {
        Self::start_settings(runtime, config, vec![], vec![]).await
    }

    /// A worker with codex mounts and environment (as the CLI flags give).
    pub async fn start_settings(
        runtime: Arc<DockerRuntime>,
        config: Config,
        codex_mounts: Vec<bus_containers::runtime::MountSpec>,
        codex_env: Vec<(String, String)>,
    ) -> Fixture {
        let (broker, _) = memory_broker();
        let worker_id = format!("test-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let settings = WorkerSettings {
            worker_id: worker_id.clone(),
            config,
            codex_mounts,
            codex_env,
        };
        let prefix = "bus.docker".to_owned();
        let publisher = requester(&broker, &format!("worker-{worker_id}"), true);
        let shared: SharedRuntime = runtime.clone();
        let worker = DockerWorker::start(
            broker.clone(),
            publisher,
            Engine::Containers(shared),
            WorkerConfig::new(settings, &prefix),
        )
        .await
        .unwrap();
        let api = requester(&broker, "api", true);
        Fixture {
            broker,
            worker,
            api,
            worker_id,
            runtime,
            prefix,
        }
    }

    /// One request on the worker's prefix; the reply payload.
    pub async fn ask(&self, kind: Kind, payload: Value, deadline: Duration) -> Value {
        let out = self
            .api
            .request(Request::new(&kind.request(&self.prefix), payload, deadline))
            .await
            .unwrap();
        out.replies
            .first()
            .map(|r| r.payload.clone())
            .unwrap_or(json!({"error": {"type": "timeout"}}))
    }

    /// A run for account `alice`.
    pub async fn run(&self, mut payload: Value) -> Value {
        if payload.get("owner_account_id").is_none() {
            payload["owner_account_id"] = json!("alice");
        }
        self.ask(Kind::Run, payload, Duration::from_secs(120)).await
    }

    /// Starts a run (for `alice` unless it names an owner) in the
    /// background and waits for its `run.started`: the run's eventual
    /// outcome, and the started event's payload.
    pub async fn start_run(
        &self,
        mut payload: Value,
    ) -> (actix_rt::task::JoinHandle<Outcome>, Value) {
        if payload.get("owner_account_id").is_none() {
            payload["owner_account_id"] = json!("alice");
        }
        let mut started = self
            .broker
            .subscribe(SubscribeSpec::broadcast(format!(
                "{}.run.started",
                self.prefix
            )))
            .await
            .unwrap();
        let api = self.api.clone();
        let name = Kind::Run.request(&self.prefix);
        let run = actix_rt::spawn(async move {
            api.request(Request::new(&name, payload, Duration::from_secs(60)))
                .await
                .unwrap()
        });
        let ev = super::within(60, "run.started", started.next())
            .await
            .unwrap()
            .unwrap();
        (run, ev.payload.clone())
    }

    pub async fn containers(&self) -> Vec<Managed> {
        self.runtime.list_managed(&self.worker_id).await.unwrap()
    }

    /// Stops the worker and checks that it left no container behind.
    pub async fn finish(self) {
        let _ = self.worker.send(Shutdown).await;
        let left = self.containers().await;
        assert!(left.is_empty(), "containers left behind: {left:?}");
    }
}

/// This process's resident memory in KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l.to_owned())
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}
