//! An in-process containers API on port 0: static, or on a memory bus with
//! a real worker actor whose engine is the in-memory fake.

use super::{memory_broker, SECRET};
use actix::Addr;
use bus_containers::actors::bus::requester::BusIdentity;
use bus_containers::actors::docker_worker::{DockerWorker, Engine, WorkerConfig};
use bus_containers::auth::{issue_token, IssueRequest, Secrets, AUDIENCE_API, AUDIENCE_INTERNAL};
use bus_containers::broker::SharedBroker;
use bus_containers::cli::serve_containers::{
    self, ApiBackend, BillingBackend, ContainersOptions, UsageBackend,
};
use bus_containers::config::Config;
use bus_containers::http::server;
use bus_containers::planning::WorkerSettings;
use bus_containers::runtime::fake::FakeRuntime;
use bus_containers::runtime::SharedRuntime;
use bus_containers::store::sqlite::SqliteStore;
use bus_containers::store::{Retention, SharedStore};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

pub const ALL: &str = "container:read container:run container:delete";

pub fn token(sub: &str, scopes: &str) -> String {
    token_for(sub, scopes, AUDIENCE_API)
}

pub fn token_for(sub: &str, scopes: &str, aud: &str) -> String {
    let req = IssueRequest {
        subject: sub.into(),
        audience: aud.into(),
        scopes: scopes.split_whitespace().map(str::to_owned).collect(),
        ttl: Duration::from_secs(600),
    };
    issue_token(SECRET, &req).unwrap().0
}

pub fn internal(scopes: &str) -> String {
    token_for("ops", scopes, AUDIENCE_INTERNAL)
}

pub fn options() -> ContainersOptions {
    ContainersOptions {
        backend: ApiBackend::Static,
        usage_backend: UsageBackend::None,
        billing_backend: BillingBackend::None,
        request_timeout: Duration::from_secs(60),
        instance_id: "test-instance".into(),
        max_concurrent_runs: 16,
        retention: Retention {
            max_age: Duration::from_secs(3600),
            max_runs: 10_000,
        },
        output_cap_bytes: 1 << 20,
        max_body_bytes: 1 << 20,
        max_files_bytes: bus_containers::config::DEFAULT_MAX_FILES_BYTES,
        streams: Default::default(),
        heartbeat: Duration::from_secs(15),
        workers: 1,
    }
}

/// The default options for a provider instance named `id`.
pub fn instance(id: &str) -> ContainersOptions {
    ContainersOptions {
        instance_id: id.into(),
        ..options()
    }
}

pub struct Api {
    pub url: String,
    pub store: SharedStore,
    pub broker: Option<SharedBroker>,
    pub fake: Option<FakeRuntime>,
    pub worker: Option<Addr<DockerWorker>>,
    pub handle: actix_web::dev::ServerHandle,
    pub metrics: bus_containers::metrics::Metrics,
}

impl Api {
    /// The static backend.
    pub async fn static_backend(tweak: impl FnOnce(&mut ContainersOptions)) -> Api {
        let mut opts = options();
        tweak(&mut opts);
        let store: SharedStore = Arc::new(SqliteStore::memory().unwrap());
        Self::start(opts, store, None).await
    }

    /// The events backend on a memory bus, with a standalone worker on the
    /// fake engine.
    pub async fn with_fake_worker(tweak: impl FnOnce(&mut ContainersOptions)) -> Api {
        let fake = FakeRuntime::new();
        let mut api = Self::with_worker(Arc::new(fake.clone()), Config::builtin(), tweak).await;
        api.fake = Some(fake);
        api
    }

    /// The events backend on a memory bus with a standalone worker on
    /// `runtime` (the fake, or a real engine).
    pub async fn with_worker(
        runtime: SharedRuntime,
        config: Config,
        tweak: impl FnOnce(&mut ContainersOptions),
    ) -> Api {
        let mut opts = options();
        opts.backend = ApiBackend::Events;
        tweak(&mut opts);
        let (broker, _) = memory_broker();
        let worker_id = format!("w-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let settings = WorkerSettings {
            worker_id,
            config,
            codex_mounts: vec![],
            codex_env: vec![],
        };
        let worker = DockerWorker::start(
            broker.clone(),
            super::requester(&broker, "worker", true),
            Engine::Containers(runtime),
            WorkerConfig::new(settings, "bus.containers"),
        )
        .await
        .unwrap();
        let store: SharedStore = Arc::new(SqliteStore::memory().unwrap());
        let mut api = Self::start(opts, store, Some(broker)).await;
        api.worker = Some(worker);
        actix_rt::time::sleep(Duration::from_millis(350)).await; // the worker's engine check
        api
    }

    pub async fn start(
        opts: ContainersOptions,
        store: SharedStore,
        broker: Option<SharedBroker>,
    ) -> Api {
        let listener = server::listen("127.0.0.1:0").unwrap();
        let bus = broker.clone().map(|b| (b, BusIdentity::service("api")));
        let started = serve_containers::start(
            opts,
            Secrets::new(SECRET.to_vec(), None),
            store.clone(),
            None,
            bus,
            listener,
            bus_containers::metrics::Metrics::new(),
        )
        .await
        .unwrap();
        let handle = started.server.handle();
        actix_rt::spawn(started.server);
        Api {
            url: format!("http://{}", started.addr),
            store,
            broker,
            fake: None,
            worker: None,
            handle,
            metrics: started.metrics,
        }
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

/// One request: status, `Retry-After` (if any) and the JSON body (or the
/// raw text as a JSON string).
pub async fn call(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Option<String>, Value) {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish();
    let mut req = client.request(method.parse().unwrap(), url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let mut resp = match body {
        Some(b) => req
            .insert_header(("Content-Type", "application/json"))
            .send_body(b.to_owned())
            .await
            .unwrap(),
        None => req.send().await.unwrap(),
    };
    let retry = resp
        .headers()
        .get("Retry-After")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = resp.body().limit(16 << 20).await.unwrap();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (resp.status().as_u16(), retry, json)
}

/// POSTs `body` until it is answered 200 (a stack that is coming up or
/// reconnecting answers 503 meanwhile), at most `tries` times, `every`
/// apart; the last status and body.
pub async fn post_until_ok(
    url: &str,
    token: &str,
    body: &str,
    tries: usize,
    every: Duration,
) -> (u16, Value) {
    let mut last = (0, Value::Null);
    for _ in 0..tries {
        let (s, _, b) = call("POST", url, Some(token), Some(body)).await;
        last = (s, b);
        if s == 200 {
            break;
        }
        actix_rt::time::sleep(every).await;
    }
    last
}

/// A GET of raw bytes (an archive): status, body and content type.
pub async fn get_bytes(url: &str, token: &str) -> (u16, Vec<u8>, Option<String>) {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish();
    let mut resp = client.get(url).bearer_auth(token).send().await.unwrap();
    let kind = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = resp.body().limit(256 << 20).await.unwrap();
    (resp.status().as_u16(), bytes.to_vec(), kind)
}
