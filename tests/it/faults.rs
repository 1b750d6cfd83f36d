//! Faults, each ending in documented states with nothing lost (a slow
//! consumer is `events_api::a_slow_consumer_is_cut_off...`, a worker
//! killed with SIGKILL `worker_processes` and `nats_scale`):
//!
//! - the Events API restarted while runs are in flight: every run ends in
//!   a terminal state in the ledger (its result, or `lost` at its
//!   deadline), none stays `running`, and new runs work once it is back;
//! - the Docker engine unreachable, then back: the worker reports
//!   `unavailable` and refuses runs with `unavailable` (nothing hangs),
//!   then recovers by itself and runs again.

use crate::support::api::{call, post_until_ok, token, ALL};
use crate::support::docker::{engine, IMAGE};
use crate::support::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn events_on(port: u16) -> Process {
    let mut cmd = bus();
    cmd.args([
        "api-provider",
        "events",
        "--addr",
        &format!("127.0.0.1:{port}"),
    ])
    .args(["--log-format", "json", "--workers", "1"])
    .env("BUS_API_JWT_SECRET", std::str::from_utf8(SECRET).unwrap());
    Process::spawn(cmd)
}

/// A service process on the Events API that reconnects its listeners.
fn service(args: &[&str], events: &str, sub: &str) -> Process {
    let mut cmd = bus();
    cmd.args(args)
        .args(["--events-url", events, "--addr", "127.0.0.1:0"])
        .args(["--log-format", "json"])
        .env("BUS_API_TOKEN", mint(sub, "container:admin"))
        .env("BUS_EVENTS_LISTENER_RETRY", "1")
        .env("BUS_EVENTS_LISTENER_RETRY_MIN", "100ms")
        .env("BUS_EVENTS_LISTENER_RETRY_MAX", "500ms");
    Process::spawn(cmd)
}

fn config_file(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("config.toml");
    std::fs::write(&path, format!("[profiles.codex]\nimage = \"{IMAGE}\"\n")).unwrap();
    path.to_string_lossy().into_owned()
}

async fn state_of(api: &Process, t: &str, id: &str) -> Value {
    let (_, _, r) = call(
        "GET",
        &format!("{}/api/v1/containers/runs/{id}", api.url()),
        Some(t),
        None,
    )
    .await;
    r
}

#[actix_rt::test]
async fn faults_events_api_restarted_mid_flight() {
    let Some(_docker) = engine().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(&dir);
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let events = events_on(port);
    let _router = service(&["integration", "containers"], &url, "router");
    let worker_id = format!("faults-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let _worker = service(
        &[
            "integration",
            "docker",
            "--event-prefix",
            "bus.docker",
            "--worker-id",
            &worker_id,
            "--config",
            &config,
        ],
        &url,
        "worker",
    );
    let mut api = bus();
    api.args(["api-provider", "containers", "--backend", "events"])
        .args([
            "--events-url",
            &url,
            "--addr",
            "127.0.0.1:0",
            "--workers",
            "1",
        ])
        .args(["--log-format", "json"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("BUS_API_JWT_SECRET", std::str::from_utf8(SECRET).unwrap())
        .env("BUS_API_TOKEN", mint("api", "container:admin"))
        .env("BUS_EVENTS_LISTENER_RETRY", "1")
        .env("BUS_EVENTS_LISTENER_RETRY_MIN", "100ms")
        .env("BUS_EVENTS_LISTENER_RETRY_MAX", "500ms");
    let api = Process::spawn(api);
    let t = token("alice", ALL);
    let runs = format!("{}/api/v1/containers/runs", api.url());
    let post = |body: &'static str| {
        let (runs, t) = (runs.clone(), t.clone());
        async move { call("POST", &runs, Some(&t), Some(body)).await }
    };
    // Up: a run works.
    let every = Duration::from_millis(200);
    let (_, first) = post_until_ok(
        &runs,
        &t,
        r#"{"profile":"codex","args":["printf","up"]}"#,
        100,
        every,
    )
    .await;
    assert_eq!(first["stdout"], "up", "{first}");

    // Runs in flight when the Events API goes away and comes back.
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (s, _, r) =
            post(r#"{"profile":"codex","args":["sleep","2"],"timeout_seconds":3,"wait":false}"#)
                .await;
        assert_eq!(s, 202, "{r}");
        ids.push(r["run_id"].as_str().unwrap().to_owned());
    }
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    drop(events); // SIGKILL: every stream and every event in it is gone
    let (s, _, r) = post(r#"{"profile":"codex","args":["printf","down"]}"#).await;
    assert_eq!(
        s, 503,
        "while the bus is down a run is refused at once: {r}"
    );
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    let _events = events_on(port);

    // Each in-flight run reaches one terminal state: its result, or lost
    // at its deadline (3 s + 30 s grace) when the reply was in the gap.
    let started = Instant::now();
    let mut states = Vec::new();
    for id in &ids {
        loop {
            let r = state_of(&api, &t, id).await;
            if r["state"] != "running" {
                states.push(r["state"].as_str().unwrap_or("?").to_owned());
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "run {id} still running: {r}"
            );
            actix_rt::time::sleep(Duration::from_millis(250)).await;
        }
    }
    eprintln!("faults: runs across an Events API restart ended {states:?}");
    assert!(
        states.iter().all(|s| s == "succeeded" || s == "lost"),
        "{states:?}"
    );
    // Back: runs work again.
    let (_, after) = post_until_ok(
        &runs,
        &t,
        r#"{"profile":"codex","args":["printf","back"]}"#,
        100,
        every,
    )
    .await;
    assert_eq!(after["stdout"], "back", "{after}");
}

/// A unix-socket proxy to the Docker engine that can be cut and restored.
struct EngineProxy {
    path: std::path::PathBuf,
    task: Option<actix_rt::task::JoinHandle<()>>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<actix_rt::task::JoinHandle<()>>>>,
}

impl EngineProxy {
    fn start(path: std::path::PathBuf) -> EngineProxy {
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let held = conns.clone();
        let task = actix_rt::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                held.lock().unwrap().push(actix_rt::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::UnixStream::connect("/var/run/docker.sock").await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        EngineProxy {
            path,
            task: Some(task),
            conns,
        }
    }

    /// The engine goes away: the socket is closed and removed.
    fn cut(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

#[actix_rt::test]
async fn faults_docker_engine_unavailable_then_back() {
    let Some(_docker) = engine().await else {
        return;
    };
    if !std::path::Path::new("/var/run/docker.sock").exists() {
        eprintln!("SKIPPED: the engine is not on /var/run/docker.sock");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("engine.sock");
    let mut proxy = EngineProxy::start(socket.clone());
    let config = config_file(&dir);
    let mut cmd = bus();
    cmd.args([
        "integration",
        "docker",
        "--worker-id",
        "faults-engine",
        "--config",
        &config,
    ])
    .args(["--addr", "127.0.0.1:0", "--log-format", "json"])
    .env("DOCKER_HOST", format!("unix://{}", socket.display()));
    let events = events_process();
    cmd.args(["--events-url", &events.url()])
        .env("BUS_API_TOKEN", mint("worker", "container:admin"));
    let _worker = Process::spawn(cmd);
    let client = http_client(events.addr, &mint("api", "container:admin"));
    let shared: bus_containers::broker::SharedBroker = std::sync::Arc::new(client);
    let api = requester(&shared, "api", true);
    let ask = |name: &'static str, payload: Value| {
        let api = api.clone();
        async move {
            let out = api
                .request(bus_containers::actors::bus::requester::Request::new(
                    name,
                    payload,
                    Duration::from_secs(30),
                ))
                .await
                .unwrap();
            out.replies
                .first()
                .map(|r| r.payload.clone())
                .unwrap_or(json!({"error": {"type": "timeout"}}))
        }
    };
    let state = || async {
        ask("bus.containers.runner.status.request", json!({})).await["status"]["state"]
            .as_str()
            .unwrap_or("?")
            .to_owned()
    };
    let wait_for = |want: &'static str| async move {
        let t0 = Instant::now();
        loop {
            let s = state().await;
            if s == want {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "runner stayed {s}, never {want}"
            );
            actix_rt::time::sleep(Duration::from_millis(250)).await;
        }
    };
    wait_for("ready").await;
    let run = json!({"owner_account_id": "alice", "profile": "codex", "args": ["printf", "OK"]});
    assert_eq!(
        ask("bus.containers.run.request", run.clone()).await["stdout"],
        "OK"
    );

    proxy.cut();
    let noticed = wait_for("unavailable").await;
    let t0 = Instant::now();
    let refused = ask("bus.containers.run.request", run.clone()).await;
    assert_eq!(refused["error"]["type"], "unavailable", "{refused}");
    let refused_in = t0.elapsed();

    let _proxy = EngineProxy::start(socket.clone());
    let recovered = wait_for("ready").await;
    let r = ask("bus.containers.run.request", run).await;
    assert_eq!(r["stdout"], "OK", "{r}");
    eprintln!(
        "faults: engine cut noticed in {:.1} s; a run refused in {} ms; recovered in {:.1} s",
        noticed.as_secs_f64(),
        refused_in.as_millis(),
        recovered.as_secs_f64()
    );
}
