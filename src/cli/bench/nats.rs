//! `bus bench nats`: routed `status` throughput on NATS with one and with
//! two workers (the router gathers a reply from every live worker), beside
//! a direct request to one worker, measured in one run. A last row adds
//! three idle API provider instances that receive every reply and drop
//! the ones that are not theirs: the cost of reply filtering.
//!
//! Every participant has its own NATS connection, as on separate hosts.
//! Without `--nats-url` the bench starts its own `nats-server`.

use super::router::{measure, RouterBenchArgs};
use super::stats::{print_table, Summary};
use crate::actors::bus::dispatcher::ReplyMetrics;
use crate::actors::bus::requester::{BusIdentity, Requester};
use crate::actors::docker_worker::{DockerWorker, Engine, WorkerConfig};
use crate::actors::router::{LiveWorkers, Router, RouterBackend, RouterConfig, RouterMetrics};
use crate::broker::nats::{NatsBroker, NatsOptions};
use crate::broker::SharedBroker;
use crate::cli::failure::Failure;
use crate::config::Config;
use crate::contract::{Kind, PUBLIC_PREFIX};
use crate::metrics::Metrics;
use crate::planning::plan::WorkerSettings;
use clap::Args;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct NatsBenchArgs {
    /// A NATS server to use (default: start a private `nats-server`).
    #[arg(long)]
    pub nats_url: Option<String>,
    #[command(flatten)]
    pub load: RouterBenchArgs,
}

/// A private `nats-server` on a free loopback port, stopped on drop.
struct OwnServer {
    child: std::process::Child,
    url: String,
    dir: std::path::PathBuf,
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn own_server() -> Result<OwnServer, Failure> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir =
        std::env::temp_dir().join(format!("bus-bench-nats-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let child = std::process::Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| {
            Failure::error(format!(
                "starting nats-server (install it, or pass --nats-url): {e}"
            ))
        })?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(OwnServer {
                child,
                url: format!("nats://127.0.0.1:{port}"),
                dir,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(Failure::error("nats-server did not come up"))
}

async fn connect(url: &str) -> Result<SharedBroker, Failure> {
    Ok(Arc::new(
        NatsBroker::connect(url, NatsOptions::default()).await?,
    ))
}

async fn worker(url: &str, id: &str, metrics: &Metrics) -> Result<(), Failure> {
    let broker = connect(url).await?;
    let settings = WorkerSettings {
        worker_id: id.to_owned(),
        config: Config::builtin(),
        codex_mounts: Vec::new(),
        codex_env: Vec::new(),
    };
    let publisher = Requester::new(
        broker.clone(),
        BusIdentity::service(id),
        ReplyMetrics::register(metrics, &format!("bench_{}", id.replace('-', "_"))),
    );
    let config = WorkerConfig::new(settings, "bus.docker");
    DockerWorker::start(broker, publisher, Engine::Static, config).await?;
    Ok(())
}

async fn until_known(router: &actix::Addr<Router>, n: usize) -> Result<(), Failure> {
    for _ in 0..200 {
        if router.send(LiveWorkers).await.map(|w| w.len()).unwrap_or(0) >= n {
            return Ok(());
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    Err(Failure::error(format!(
        "the router did not see {n} workers"
    )))
}

pub fn run(args: NatsBenchArgs) -> Result<(), Failure> {
    let own = match &args.nats_url {
        Some(_) => None,
        None => Some(own_server()?),
    };
    let url = args
        .nats_url
        .clone()
        .or_else(|| own.as_ref().map(|o| o.url.clone()))
        .unwrap_or_default();
    actix_rt::System::new().block_on(async move {
        let metrics = Metrics::new();
        let router = Router::start(
            connect(&url).await?,
            BusIdentity::service("bench-router"),
            RouterConfig::new(RouterBackend::Events {
                prefix: "bus.docker".into(),
            }),
            RouterMetrics::register(&metrics),
        )
        .await?;
        let requester = Requester::new(
            connect(&url).await?,
            BusIdentity::service("bench"),
            ReplyMetrics::register(&metrics, "bench"),
        );
        let status = Kind::Status.request(PUBLIC_PREFIX);
        let payload = json!({"owner_account_id": "bench"});
        let load = &args.load;
        let mut rows: Vec<Summary> = Vec::new();

        worker(&url, "bench-w1", &metrics).await?;
        until_known(&router, 1).await?;
        rows.push(
            measure(
                "status direct to 1 worker (baseline)",
                &requester,
                &Kind::Status.request("bus.docker"),
                payload.clone(),
                load,
            )
            .await?,
        );
        rows.push(
            measure(
                "status routed, 1 worker",
                &requester,
                &status,
                payload.clone(),
                load,
            )
            .await?,
        );

        worker(&url, "bench-w2", &metrics).await?;
        until_known(&router, 2).await?;
        rows.push(
            measure(
                "status routed, 2 workers",
                &requester,
                &status,
                payload.clone(),
                load,
            )
            .await?,
        );

        let mut idle = Vec::new();
        for i in 0..3 {
            let other = Requester::new(
                connect(&url).await?,
                BusIdentity::service(format!("bench-idle-{i}")),
                ReplyMetrics::register(&metrics, &format!("bench_idle_{i}")),
            );
            other.listen(&Kind::Status.response(PUBLIC_PREFIX)).await?;
            idle.push(other);
        }
        rows.push(
            measure(
                "status routed, 2 workers, +3 idle instances dropping foreign replies",
                &requester,
                &status,
                payload,
                load,
            )
            .await?,
        );
        print_table(
            "status request → reply on NATS (baseline: direct to one worker)",
            &rows,
        );
        if load.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&rows).unwrap_or_default()
            );
        }
        Ok(())
    })
}
