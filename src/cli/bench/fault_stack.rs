//! The multi-process stack of `bus bench soak --faults`: the Events API,
//! two routers, a Docker worker and the containers API, each a process of
//! this binary that can be SIGKILLed and started again, and a listener
//! that collects the usage records.

use crate::auth::{issue_token, IssueRequest, AUDIENCE_API};
use crate::cli::failure::Failure;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The parts a fault can hit.
pub(super) const PARTS: [&str; 5] = ["events", "router-0", "router-1", "worker", "api"];

pub(super) struct Procs {
    pub(super) exe: PathBuf,
    pub(super) dir: PathBuf,
    pub(super) secret: String,
    pub(super) events_port: u16,
    pub(super) api_port: u16,
    pub(super) worker_id: String,
    pub(super) running: BTreeMap<&'static str, Child>,
    pub(super) usage: Option<Child>,
}

pub(super) fn free_port() -> Result<u16, Failure> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Procs {
    pub(super) fn token(&self, sub: &str, scopes: &str) -> String {
        let secret = crate::auth::decode_secret(&self.secret).expect("a valid secret");
        let req = IssueRequest {
            subject: sub.into(),
            audience: AUDIENCE_API.into(),
            scopes: scopes.split_whitespace().map(str::to_owned).collect(),
            ttl: Duration::from_secs(6 * 3600),
        };
        issue_token(&secret, &req).expect("a token").0
    }

    pub(super) fn bus_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.events_port)
    }

    pub(super) fn command(&self, part: &str) -> Command {
        let mut cmd = Command::new(&self.exe);
        let bus = self.bus_url();
        let token = |sub: &str, scopes: &str| self.token(sub, scopes);
        match part {
            "events" => {
                cmd.args(["api-provider", "events", "--workers", "1", "--addr"])
                    .arg(format!("127.0.0.1:{}", self.events_port))
                    .env("BUS_API_JWT_SECRET", &self.secret);
            }
            "router-0" | "router-1" => {
                cmd.args(["integration", "containers", "--events-url", &bus])
                    .env("BUS_API_TOKEN", token(part, "container:admin"));
            }
            "worker" => {
                cmd.args(["integration", "docker", "--event-prefix", "bus.docker"])
                    .args(["--worker-id", &self.worker_id, "--events-url", &bus])
                    .args(["--reap-interval", "5s", "--config"])
                    .arg(self.dir.join("config.toml"))
                    .arg("--codex-workspace-host-path")
                    .arg(self.dir.join("workspace"))
                    .env("BUS_API_TOKEN", token("worker", "container:admin"));
            }
            _ => {
                cmd.args(["api-provider", "containers", "--backend", "events"])
                    .args(["--usage-backend", "events", "--events-url", &bus])
                    .args(["--max-concurrent-runs", "0", "--workers", "1"])
                    .args(["--instance-id", "soak-api", "--addr"])
                    .arg(format!("127.0.0.1:{}", self.api_port))
                    .arg("--data-dir")
                    .arg(self.dir.join("data"))
                    .env("BUS_API_JWT_SECRET", &self.secret)
                    .env("BUS_API_TOKEN", token("api", "container:admin usage:write"));
            }
        }
        cmd.env("BUS_EVENTS_LISTENER_RETRY", "1")
            .env("BUS_EVENTS_LISTENER_RETRY_MIN", "100ms")
            .env("BUS_EVENTS_LISTENER_RETRY_MAX", "500ms")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // Each part's warnings, across its restarts, for a failed soak.
        let log = std::fs::create_dir_all(self.dir.join("logs")).and_then(|_| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(format!("logs/{part}.log")))
        });
        match log {
            Ok(f) => cmd.stderr(f),
            Err(_) => cmd.stderr(Stdio::null()),
        };
        cmd
    }

    pub(super) fn start(&mut self, part: &'static str) -> Result<(), Failure> {
        let child = self.command(part).spawn()?;
        self.running.insert(part, child);
        Ok(())
    }

    pub(super) fn kill(&mut self, part: &str) {
        if let Some(mut c) = self.running.remove(part) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(super) fn listen_usage(&mut self, into: Arc<Mutex<Vec<Value>>>) -> Result<(), Failure> {
        let mut child = Command::new(&self.exe)
            .args(["events", "listen", "--name", "bus.usage.record.request"])
            .env("BUS_EVENTS_API_URL", self.bus_url())
            .env(
                "BUS_API_TOKEN",
                self.token("usage", "usage:read events:admin"),
            )
            .env("BUS_EVENTS_LISTENER_RETRY", "1")
            .env("BUS_EVENTS_LISTENER_RETRY_MIN", "100ms")
            .env("BUS_EVENTS_LISTENER_RETRY_MAX", "500ms")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let out = child.stdout.take().expect("piped");
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    into.lock().expect("usage").push(v["payload"].clone());
                }
            }
        });
        self.usage = Some(child);
        Ok(())
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.running) {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
        if let Some(mut u) = self.usage.take() {
            let _ = u.kill();
            let _ = u.wait();
        }
    }
}
