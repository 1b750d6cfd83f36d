//! The multi-process stack for fault tests: the Events API (or NATS), one
//! or more routers, a Docker worker and the containers API, each a real
//! `bus` process with ids and ports of its own, every one of which can be
//! SIGKILLed, SIGSTOPped and restarted; and a listener that collects the
//! usage records. Several stacks share one Docker engine safely.

use super::api::{call, token, ALL};
use super::docker::IMAGE;
use super::nats::NatsServer;
use super::{bus, mint, Process, SECRET};
use bus_containers::runtime::docker::DockerRuntime;
use bus_containers::runtime::{ContainerRuntime, Managed};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What a stack has.
#[derive(Clone)]
pub struct StackOpts {
    pub routers: usize,
    pub worker: bool,
    /// NATS (with JetStream) instead of the Events API.
    pub nats: bool,
    /// Mount a filesystem this small (bytes) as the API's data directory
    /// (needs root; for a full-disk fault).
    pub small_data_dir: Option<usize>,
    /// More flags of the API provider's command line.
    pub api_args: Vec<String>,
    /// More flags and environment of the worker's command line.
    pub worker_args: Vec<String>,
    pub worker_env: Vec<(String, String)>,
}

impl Default for StackOpts {
    fn default() -> Self {
        StackOpts {
            routers: 1,
            worker: true,
            nats: false,
            small_data_dir: None,
            api_args: Vec::new(),
            worker_args: Vec::new(),
            worker_env: Vec::new(),
        }
    }
}

/// Which process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Bus,
    Router(usize),
    Worker,
    Api,
}

pub struct Stack {
    pub dir: tempfile::TempDir,
    pub opts: StackOpts,
    pub id: String,
    pub worker_id: String,
    pub bus_url: String,
    events_port: u16,
    api_port: u16,
    pub events: Option<Process>,
    pub nats: Option<NatsServer>,
    pub routers: Vec<Option<Process>>,
    pub worker: Option<Process>,
    pub api: Option<Process>,
    usage_listener: Option<std::process::Child>,
    pub usage: Arc<Mutex<Vec<Value>>>,
    pub workspace: PathBuf,
    pub data_dir: PathBuf,
    mounted: bool,
    pub token: String,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(mut l) = self.usage_listener.take() {
            let _ = l.kill();
            let _ = l.wait();
        }
        self.api = None;
        self.worker = None;
        self.routers.clear();
        self.events = None;
        if self.mounted {
            let _ = Command::new("umount").arg(&self.data_dir).status();
        }
    }
}

fn env_bus(cmd: &mut Command) {
    cmd.env("BUS_EVENTS_LISTENER_RETRY", "1")
        .env("BUS_EVENTS_LISTENER_RETRY_MIN", "100ms")
        .env("BUS_EVENTS_LISTENER_RETRY_MAX", "500ms");
}

impl Stack {
    /// A stack, up and answering runs; `None` (skip) when NATS is wanted
    /// and not installed.
    pub async fn start(opts: StackOpts) -> Option<Stack> {
        let dir = tempfile::tempdir().unwrap();
        let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let nats = if opts.nats {
            Some(NatsServer::start()?)
        } else {
            None
        };
        let events_port = free_port();
        let bus_url = match &nats {
            Some(n) => n.url(),
            None => format!("http://127.0.0.1:{events_port}"),
        };
        let workspace = dir.path().join("workspace");
        std::fs::create_dir_all(&workspace).unwrap();
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).unwrap();
        let mut mounted = false;
        if let Some(size) = opts.small_data_dir {
            let ok = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(&data_dir)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                if std::env::var("BUS_TEST_ROOT").is_ok_and(|v| v == "required") {
                    panic!("BUS_TEST_ROOT=required but a tmpfs cannot be mounted");
                }
                eprintln!("SKIPPED (root): a small filesystem cannot be mounted here");
                return None;
            }
            mounted = true;
        }
        let mut stack = Stack {
            worker_id: format!("fm-{id}"),
            token: token("alice", ALL),
            id,
            dir,
            bus_url,
            events_port,
            api_port: free_port(),
            events: None,
            nats,
            routers: Vec::new(),
            worker: None,
            api: None,
            usage_listener: None,
            usage: Arc::new(Mutex::new(Vec::new())),
            workspace,
            data_dir,
            mounted,
            opts: opts.clone(),
        };
        if !opts.nats {
            stack.start_part(Part::Bus);
            stack.listen_usage();
        }
        for i in 0..opts.routers {
            stack.routers.push(None);
            stack.start_part(Part::Router(i));
        }
        if opts.worker {
            stack.start_part(Part::Worker);
        }
        stack.start_part(Part::Api);
        Some(stack)
    }

    fn config(&self) -> String {
        let path = self.dir.path().join("config.toml");
        if !path.exists() {
            std::fs::write(
                &path,
                format!("[worker]\nallowed_images = [\"bus-busybox:*\"]\n\n[profiles.codex]\nimage = \"{IMAGE}\"\n"),
            )
            .unwrap();
        }
        path.to_string_lossy().into_owned()
    }

    fn command(&self, part: Part) -> Command {
        let mut cmd = bus();
        match part {
            Part::Bus => {
                cmd.args(["api-provider", "events", "--addr"])
                    .arg(format!("127.0.0.1:{}", self.events_port))
                    .args(["--workers", "1"])
                    .env("BUS_API_JWT_SECRET", std::str::from_utf8(SECRET).unwrap());
            }
            Part::Router(i) => {
                cmd.args(["integration", "containers", "--addr", "127.0.0.1:0"])
                    .args(["--events-url", &self.bus_url])
                    .env(
                        "BUS_API_TOKEN",
                        mint(&format!("router-{}-{i}", self.id), "container:admin"),
                    );
                env_bus(&mut cmd);
            }
            Part::Worker => {
                cmd.args(["integration", "docker", "--event-prefix", "bus.docker"])
                    .args(["--worker-id", &self.worker_id, "--config", &self.config()])
                    .args(["--addr", "127.0.0.1:0", "--events-url", &self.bus_url])
                    .args(["--reap-interval", "2s", "--nats-ack-wait", "6s"])
                    .args(&self.opts.worker_args)
                    .envs(self.opts.worker_env.iter().cloned())
                    .arg("--codex-workspace-host-path")
                    .arg(&self.workspace)
                    .env(
                        "BUS_API_TOKEN",
                        mint(&format!("worker-{}", self.id), "container:admin"),
                    );
                env_bus(&mut cmd);
            }
            Part::Api => {
                cmd.args(["api-provider", "containers", "--backend", "events"])
                    .args(["--events-url", &self.bus_url])
                    .arg("--addr")
                    .arg(format!("127.0.0.1:{}", self.api_port))
                    .args([
                        "--workers",
                        "1",
                        "--instance-id",
                        &format!("api-{}", self.id),
                    ])
                    .arg("--data-dir")
                    .arg(&self.data_dir)
                    .env("BUS_API_JWT_SECRET", std::str::from_utf8(SECRET).unwrap())
                    .env(
                        "BUS_API_TOKEN",
                        mint(&format!("api-{}", self.id), "container:admin usage:write"),
                    );
                if !self.opts.nats {
                    cmd.args(["--usage-backend", "events"]);
                }
                cmd.args(&self.opts.api_args);
                env_bus(&mut cmd);
            }
        }
        cmd.args(["--log-format", "json"]);
        cmd
    }

    /// Starts (or starts again) a part.
    pub fn start_part(&mut self, part: Part) {
        let p = Process::spawn(self.command(part));
        match part {
            Part::Bus => self.events = Some(p),
            Part::Router(i) => self.routers[i] = Some(p),
            Part::Worker => self.worker = Some(p),
            Part::Api => self.api = Some(p),
        }
    }

    fn process(&self, part: Part) -> Option<&Process> {
        match part {
            Part::Bus => self.events.as_ref(),
            Part::Router(i) => self.routers[i].as_ref(),
            Part::Worker => self.worker.as_ref(),
            Part::Api => self.api.as_ref(),
        }
    }

    /// SIGKILL (NATS: the server is killed).
    pub fn kill(&mut self, part: Part) {
        if part == Part::Bus {
            if let Some(n) = &mut self.nats {
                n.stop();
                return;
            }
        }
        let taken = match part {
            Part::Bus => self.events.take(),
            Part::Router(i) => self.routers[i].take(),
            Part::Worker => self.worker.take(),
            Part::Api => self.api.take(),
        };
        drop(taken);
    }

    /// Starts a killed part again (NATS: on its port and store).
    pub fn restart(&mut self, part: Part) {
        if part == Part::Bus {
            if let Some(n) = &mut self.nats {
                n.restart();
                return;
            }
        }
        self.start_part(part);
    }

    fn signal(&self, part: Part, sig: &str) {
        let pid = self.process(part).expect("running").child.id();
        Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
    }

    pub fn stop(&self, part: Part) {
        self.signal(part, "-STOP");
    }

    pub fn cont(&self, part: Part) {
        self.signal(part, "-CONT");
    }

    fn listen_usage(&mut self) {
        let mut cmd = bus();
        cmd.args(["events", "listen", "--name", "bus.usage.record.request"])
            .env("BUS_EVENTS_API_URL", &self.bus_url)
            .env("BUS_API_TOKEN", mint("usage", "usage:read events:admin"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        env_bus(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let usage = self.usage.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    usage.lock().unwrap().push(v["payload"].clone());
                }
            }
        });
        self.usage_listener = Some(child);
    }

    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// POSTs a run body; the status, body and how long the answer took.
    pub async fn run(&self, body: &str) -> (u16, Value, Duration) {
        let t0 = Instant::now();
        let (s, _, v) = call(
            "POST",
            &format!("{}/api/v1/containers/runs", self.api_url()),
            Some(&self.token),
            Some(body),
        )
        .await;
        (s, v, t0.elapsed())
    }

    /// A run started in the background: its eventual (status, body, time).
    pub fn run_in_background(
        &self,
        body: &'static str,
    ) -> actix_rt::task::JoinHandle<(u16, Value, Duration)> {
        let (url, token) = (
            format!("{}/api/v1/containers/runs", self.api_url()),
            self.token.clone(),
        );
        actix_rt::spawn(async move {
            let t0 = Instant::now();
            let (s, _, v) = call("POST", &url, Some(&token), Some(body)).await;
            (s, v, t0.elapsed())
        })
    }

    /// Waits until a run works (the stack is up), at most 60 s.
    pub async fn warm_up(&self) {
        for _ in 0..300 {
            let (s, v, _) = self.run(r#"{"profile":"codex","args":["true"]}"#).await;
            if s == 200 && v["state"] == "succeeded" {
                return;
            }
            actix_rt::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("the stack never ran a run");
    }

    /// The ledger's record of a run.
    pub async fn record(&self, run_id: &str) -> Value {
        let (_, _, v) = call(
            "GET",
            &format!("{}/api/v1/containers/runs/{run_id}", self.api_url()),
            Some(&self.token),
            None,
        )
        .await;
        v
    }

    /// Waits (at most `secs`) for a run's record to leave `running`.
    pub async fn settled(&self, run_id: &str, secs: u64) -> Value {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            let r = self.record(run_id).await;
            if r["state"] != "running" || Instant::now() > until {
                return r;
            }
            actix_rt::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The usage records of a run, by event type.
    /// A run's usage records as a consumer counts them: once per
    /// `event_id` (a restarted provider sends a running run's
    /// `requested` again).
    pub fn usage_of(&self, run_id: &str) -> Vec<(String, Value)> {
        let mut ids = std::collections::BTreeSet::new();
        self.usage
            .lock()
            .unwrap()
            .iter()
            .filter(|u| u["data"]["run_id"] == run_id)
            .filter(|u| ids.insert(u["event_id"].to_string()))
            .map(|u| (u["event_type"].as_str().unwrap_or("").to_owned(), u.clone()))
            .collect()
    }

    /// Waits (at most `secs`) until a run has its end-of-run usage record.
    pub async fn usage_settled(&self, run_id: &str, secs: u64) -> Vec<(String, Value)> {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            let u = self.usage_of(run_id);
            if u.iter().any(|(t, _)| t != "container_run_requested") || Instant::now() > until {
                return u;
            }
            actix_rt::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// This stack's containers on the engine.
    pub async fn containers(&self) -> Vec<Managed> {
        DockerRuntime::new("docker", &bus_containers::runtime::docker::docker_host())
            .list_managed(&self.worker_id)
            .await
            .unwrap_or_default()
    }

    /// Waits (at most `secs`) until the stack has no container left.
    pub async fn no_containers_within(&self, secs: u64) -> Vec<Managed> {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = self.containers().await;
            if left.is_empty() || Instant::now() > until {
                return left;
            }
            actix_rt::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The ids of the newest `n` runs of the stack's account.
    pub async fn latest_runs(&self, n: usize) -> Vec<String> {
        let (_, _, v) = call(
            "GET",
            &format!("{}/api/v1/containers/runs?limit={n}", self.api_url()),
            Some(&self.token),
            None,
        )
        .await;
        v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["run_id"].as_str().map(str::to_owned))
            .collect()
    }

    /// The newest run of the stack's account.
    pub async fn latest_run(&self) -> String {
        let mut ids = self.latest_runs(1).await;
        assert!(!ids.is_empty(), "a run");
        ids.swap_remove(0)
    }

    /// `GET /readyz` of the API.
    pub async fn api_ready(&self) -> u16 {
        super::get(&format!("{}/readyz", self.api_url()), None)
            .await
            .0
    }
}

/// What a REST answer, the ledger record and the usage records of one
/// run must agree on.
pub fn agree(answer: &Value, record: &Value, usage: &[(String, Value)]) {
    let state = record["state"].as_str().unwrap_or("?");
    let types: Vec<&str> = usage.iter().map(|(t, _)| t.as_str()).collect();
    match state {
        "succeeded" | "failed" | "timed_out" | "cancelled" | "oom_killed" => {
            assert_eq!(answer["state"], state, "answer {answer} vs record {record}");
            assert_eq!(
                types,
                ["container_run_requested", "container_run_finished"],
                "{usage:?}"
            );
            let ms = record["result"]["duration_ms"].as_u64().unwrap();
            assert_eq!(
                usage[1].1["data"]["meters"]["bus_container_runtime_seconds"],
                ms.div_ceil(1000),
                "billed as run"
            );
        }
        "error" | "lost" => {
            assert_eq!(
                answer["error"]["type"], record["result"]["error"]["type"],
                "answer {answer} vs record {record}"
            );
            assert_eq!(
                types,
                ["container_run_requested", "container_run_failed"],
                "{usage:?}"
            );
            assert_eq!(usage[1].1["data"]["state"], state);
        }
        other => panic!("the run did not settle: {other} {record}"),
    }
}
