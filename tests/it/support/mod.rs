//! Shared fixtures: a secret, token minting, an in-process Events API on
//! port 0, and small HTTP helpers.

#![allow(dead_code)]

pub mod api;
pub mod docker;
pub mod mock_worker;
pub mod nats;
pub mod registry;
pub mod stack;
pub mod tls;

use bus_containers::auth::{issue_token, Acl, IssueRequest, Secrets, Verifier, AUDIENCE_API};
use bus_containers::broker::http::{HttpBroker, HttpBrokerConfig};
use bus_containers::broker::memory::{HubConfig, MemoryBroker};
use bus_containers::broker::SharedBroker;
use bus_containers::credentials::{Token, TokenSource};
use bus_containers::http::events::EventsApi;
use bus_containers::http::probes::Probes;
use bus_containers::http::server;
use bus_containers::metrics::{BusMetrics, Metrics};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub const SECRET: &[u8] = b"test-secret-0123456789-abcdefghijk";
pub const ADMIN: &str = "events:admin";

pub fn mint(sub: &str, scopes: &str) -> String {
    mint_with(SECRET, sub, AUDIENCE_API, scopes, Duration::from_secs(600))
}

pub fn mint_with(secret: &[u8], sub: &str, aud: &str, scopes: &str, ttl: Duration) -> String {
    issue_token(
        secret,
        &IssueRequest {
            subject: sub.into(),
            audience: aud.into(),
            scopes: scopes.split_whitespace().map(str::to_owned).collect(),
            ttl,
        },
    )
    .unwrap()
    .0
}

/// Options of a test Events API.
#[derive(Clone)]
pub struct EventsOpts {
    pub hub: HubConfig,
    pub heartbeat: Duration,
    pub max_payload: usize,
    pub previous_secret: Option<Vec<u8>>,
}

impl Default for EventsOpts {
    fn default() -> Self {
        EventsOpts {
            hub: HubConfig::default(),
            heartbeat: Duration::from_secs(15),
            max_payload: 1 << 20,
            previous_secret: None,
        }
    }
}

/// An Events API running in this test's actix System.
pub struct EventsServer {
    pub addr: SocketAddr,
    pub metrics: Metrics,
    pub handle: actix_web::dev::ServerHandle,
}

impl EventsServer {
    pub async fn start() -> Self {
        Self::start_with(EventsOpts::default()).await
    }

    pub async fn start_with(opts: EventsOpts) -> Self {
        Self::start_at("127.0.0.1:0", opts).await
    }

    /// Starts on a given address (to restart a server on its old port).
    pub async fn start_at(addr: &str, opts: EventsOpts) -> Self {
        let metrics = Metrics::new();
        let broker: SharedBroker = Arc::new(MemoryBroker::start(
            opts.hub.clone(),
            BusMetrics::register(&metrics),
        ));
        let listener = server::listen(addr).unwrap();
        let addr = server::local_addr(&listener);
        let api = EventsApi {
            broker,
            verifier: Verifier::new(
                &Secrets::new(SECRET.to_vec(), opts.previous_secret.clone()),
                AUDIENCE_API,
            ),
            acl: Acl::default(),
            heartbeat: opts.heartbeat,
            max_payload: opts.max_payload,
            streams: Default::default(),
        };
        let probes = Probes {
            ready: Arc::new(|| Ok(())),
            metrics: metrics.clone(),
        };
        let srv = server::start_events(listener, api, probes, 1).unwrap();
        let handle = srv.handle();
        actix_rt::spawn(srv);
        EventsServer {
            addr,
            metrics,
            handle,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// An HTTP broker client with `token` (no listener retry).
    pub fn client(&self, token: &str) -> HttpBroker {
        http_client(self.addr, token)
    }

    /// An HTTP broker client with listener retry and readiness required.
    pub fn retrying_client(&self, token: &str) -> HttpBroker {
        let mut config = HttpBrokerConfig::from_env(
            &format!("http://{}", self.addr),
            TokenSource::Env {
                var: "test".into(),
                token: Token::new(token),
            },
        )
        .unwrap();
        config.retry = Some(bus_containers::broker::http::Backoff {
            min: Duration::from_millis(50),
            max: Duration::from_millis(200),
        });
        config.required = true;
        HttpBroker::new(config).unwrap()
    }

    /// A metric's value from `/metrics`.
    pub fn metric(&self, name: &str) -> i64 {
        self.metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0)
    }
}

/// An HTTP broker client of the Events API at `addr` (no listener retry).
pub fn http_client(addr: SocketAddr, token: &str) -> HttpBroker {
    let mut config = HttpBrokerConfig::from_env(
        &format!("http://{addr}"),
        TokenSource::Env {
            var: "test".into(),
            token: Token::new(token),
        },
    )
    .unwrap();
    config.retry = None;
    config.required = false;
    HttpBroker::new(config).unwrap()
}

pub fn http() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish()
}

/// POSTs a JSON value (or raw body) with an optional bearer; returns the
/// status and the parsed JSON body.
pub async fn post(url: &str, token: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let mut req = http()
        .post(url)
        .insert_header(("Content-Type", "application/json"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let mut resp = req.send_body(body.to_owned()).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.body().limit(8 << 20).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// GETs with an optional bearer; returns the status and the JSON body.
pub async fn get(url: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut req = http().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let mut resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.body().limit(8 << 20).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// Awaits `fut` for at most `secs` seconds, failing the test otherwise.
pub async fn within<F: std::future::Future>(secs: u64, what: &str, fut: F) -> F::Output {
    match actix_rt::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs}s: {what}"),
    }
}

/// The `bus` binary under test.
pub fn bus() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_bus"));
    for var in [
        "BUS_API_TOKEN",
        "BUS_AI_TOKEN",
        "BUS_EVENTS_API_URL",
        "BUS_API_JWT_SECRET",
        "BUS_EVENTS_JWT_SECRET",
        "BUS_AUTH_HS256_SECRET",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// A `bus` server process, killed when dropped.
pub struct Process {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Spawns `cmd` (which must log JSON to stderr) and waits for its log
    /// line carrying `addr`.
    pub fn spawn(mut cmd: std::process::Command) -> Process {
        use std::io::BufRead;
        cmd.stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null());
        let mut child = cmd.spawn().expect("spawn bus");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if !sent {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                        if let Some(addr) = v["addr"]
                            .as_str()
                            .and_then(|a| a.parse::<SocketAddr>().ok())
                        {
                            let _ = tx.send(addr);
                            sent = true;
                        }
                    }
                }
                if std::env::var_os("BUS_TEST_VERBOSE").is_some() {
                    eprintln!("[bus] {line}");
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => Process { child, addr },
            Err(_) => {
                let _ = child.kill();
                panic!("the bus process did not report its address");
            }
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A memory broker (its own hub) for in-process tests.
pub fn memory_broker() -> (SharedBroker, Metrics) {
    let metrics = Metrics::new();
    let broker: SharedBroker = Arc::new(MemoryBroker::start(
        HubConfig::default(),
        BusMetrics::register(&metrics),
    ));
    (broker, metrics)
}

/// A requester speaking as `sub` (a service unless `service` is false).
pub fn requester(
    broker: &SharedBroker,
    sub: &str,
    service: bool,
) -> bus_containers::actors::bus::requester::Requester {
    use bus_containers::actors::bus::dispatcher::ReplyMetrics;
    use bus_containers::actors::bus::requester::{BusIdentity, Requester};
    Requester::new(
        broker.clone(),
        BusIdentity {
            sub: sub.into(),
            service,
        },
        ReplyMetrics::register(&Metrics::new(), "test"),
    )
}

/// `bus api-provider events` as a process on a free port, with the test secret.
pub fn events_process() -> Process {
    let mut cmd = bus();
    cmd.args([
        "api-provider",
        "events",
        "--addr",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--workers",
        "1",
    ])
    .env("BUS_API_JWT_SECRET", std::str::from_utf8(SECRET).unwrap());
    Process::spawn(cmd)
}
