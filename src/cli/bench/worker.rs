//! `bus bench worker`: end-to-end latency of `sh -c 'printf OK'` through
//! the Docker worker (request → container → result on the memory broker)
//! beside plain `docker run --rm` of the same image, measured in one run;
//! and a sandboxed run of it (its own network and egress proxy sidecar),
//! when the egress proxy image is present.

use super::stats::{print_table, Summary};
use crate::actors::bus::dispatcher::ReplyMetrics;
use crate::actors::bus::requester::{BusIdentity, Request, Requester};
use crate::actors::docker_worker::{DockerWorker, Engine, Shutdown, WorkerConfig};
use crate::broker::memory::{HubConfig, MemoryBroker};
use crate::broker::SharedBroker;
use crate::cli::failure::Failure;
use crate::config::{Config, EgressRoute, Profile, DEFAULT_EGRESS_IMAGE, DEFAULT_IMAGE};
use crate::contract::Kind;
use crate::metrics::{BusMetrics, Metrics};
use crate::planning::WorkerSettings;
use crate::runtime::docker::{docker_host, DockerRuntime};
use crate::runtime::ContainerRuntime;
use clap::Args;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct WorkerBenchArgs {
    /// Runs per path.
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Image to run (built offline by scripts/build-test-image).
    #[arg(long, default_value = DEFAULT_IMAGE)]
    pub image: String,
    /// The egress proxy image of the sandboxed path (built offline by
    /// scripts/build-egress-image; the path is skipped without it).
    #[arg(long, default_value = DEFAULT_EGRESS_IMAGE)]
    pub egress_image: String,
    /// Print the results as JSON too.
    #[arg(long)]
    pub json: bool,
}

/// One `docker run --rm --network none IMAGE sh -c 'printf OK'`, timed:
/// the baseline the worker and end-to-end benchmarks compare against.
pub(super) fn docker_run(image: &str) -> Result<Duration, Failure> {
    let t0 = Instant::now();
    let out = std::process::Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            image,
            "sh",
            "-c",
            "printf OK",
        ])
        .output()
        .map_err(|e| Failure::error(format!("docker CLI: {e}")))?;
    let took = t0.elapsed();
    if !out.status.success() || out.stdout != b"OK" {
        return Err(Failure::error(format!(
            "docker run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(took)
}

pub fn run(args: WorkerBenchArgs) -> Result<(), Failure> {
    actix_rt::System::new().block_on(async move {
        let runtime = Arc::new(DockerRuntime::new("docker", &docker_host()));
        runtime.ping().await.map_err(|e| Failure::error(format!("{e}: the worker benchmark needs a Docker engine")))?;
        if !runtime.image_present(&args.image).await.unwrap_or(false) {
            return Err(Failure::error(format!("image {} is missing: run scripts/build-test-image {}", args.image, args.image)));
        }
        let metrics = Metrics::new();
        let broker: SharedBroker = Arc::new(MemoryBroker::start(HubConfig::default(), BusMetrics::register(&metrics)));
        let mut config = Config::builtin();
        config.worker.allowed_images = vec![args.image.clone()];
        let sandboxed = runtime.image_present(&args.egress_image).await.unwrap_or(false);
        if sandboxed {
            config.worker.egress_image = args.egress_image.clone();
            config.profiles.insert("sandboxed".into(), Profile {
                image: Some(args.image.clone()),
                egress: vec![EgressRoute::Host("example.invalid:443".into())],
                ..Profile::default()
            });
        } else {
            eprintln!("bench worker: {} is missing (scripts/build-egress-image); the sandboxed path is skipped", args.egress_image);
        }
        let worker_id = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let settings = WorkerSettings { worker_id, config, codex_mounts: vec![], codex_env: vec![] };
        let publisher = Requester::new(broker.clone(), BusIdentity::service("bench-worker"), ReplyMetrics::register(&metrics, "bench_w"));
        let worker = DockerWorker::start(broker.clone(), publisher, Engine::Containers(runtime), WorkerConfig::new(settings, "bus.docker")).await?;
        let api = Requester::new(broker, BusIdentity::service("bench"), ReplyMetrics::register(&metrics, "bench"));
        let payload = json!({"owner_account_id": "bench", "image": args.image, "command": ["sh", "-c", "printf OK"]});

        let sandboxed_payload = json!({"owner_account_id": "bench", "profile": "sandboxed", "args": ["sh", "-c", "printf OK"]});
        let mut baseline = Vec::new();
        let mut through = Vec::new();
        let mut in_sandbox = Vec::new();
        // Interleave the two paths so drift on the machine hits both alike.
        for i in 0..args.runs + 2 {
            let d = docker_run(&args.image)?;
            let t0 = Instant::now();
            let out = api
                .request(Request::new(&Kind::Run.request("bus.docker"), payload.clone(), Duration::from_secs(60)))
                .await
                .map_err(|e| Failure::error(e.to_string()))?;
            let w = t0.elapsed();
            let reply = out.replies.first().map(|r| r.payload.clone()).unwrap_or_default();
            if reply["stdout"] != "OK" {
                return Err(Failure::error(format!("worker run failed: {reply}")));
            }
            let mut s = None;
            if sandboxed {
                let t0 = Instant::now();
                let out = api
                    .request(Request::new(&Kind::Run.request("bus.docker"), sandboxed_payload.clone(), Duration::from_secs(60)))
                    .await
                    .map_err(|e| Failure::error(e.to_string()))?;
                s = Some(t0.elapsed());
                let reply = out.replies.first().map(|r| r.payload.clone()).unwrap_or_default();
                if reply["stdout"] != "OK" {
                    return Err(Failure::error(format!("sandboxed run failed: {reply}")));
                }
            }
            if i >= 2 {
                baseline.push(d);
                through.push(w);
                in_sandbox.extend(s);
            }
        }
        let _ = worker.send(Shutdown).await;
        let rate = |s: &[Duration]| s.len() as f64 / s.iter().map(Duration::as_secs_f64).sum::<f64>();
        let mut rows = vec![
            Summary::new("docker run --rm (CLI)", baseline.clone(), rate(&baseline)),
            Summary::new("through the worker (create, attach, start, wait, remove)", through.clone(), rate(&through)),
        ];
        if !in_sandbox.is_empty() {
            rows.push(Summary::new("sandboxed: + own network, egress proxy sidecar, teardown", in_sandbox.clone(), rate(&in_sandbox)));
        }
        print_table("sh -c 'printf OK', end to end, one at a time (baseline: docker run --rm)", &rows);
        if args.json {
            println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
        }
        Ok(())
    })
}
