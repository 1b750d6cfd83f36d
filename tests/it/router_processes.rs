//! The same routing flow as separate processes: `bus api-provider events`
//! and `bus integration containers` (twice), with the mock worker and the
//! requester in this test talking HTTP to the Events API.

use crate::support::mock_worker::MockWorker;
use crate::support::*;
use bus_containers::actors::bus::requester::{BusIdentity, Request, Requester};
use bus_containers::broker::SharedBroker;
use bus_containers::contract::{Kind, PUBLIC_PREFIX};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

fn router(events: &Process, provider: &str) -> Process {
    let mut cmd = bus();
    cmd.args([
        "integration",
        "containers",
        "--provider",
        provider,
        "--addr",
        "127.0.0.1:0",
        "--log-format",
        "json",
    ])
    .args(["--events-url", &events.url(), "--request-timeout", "20s"])
    .env("BUS_API_TOKEN", mint("router", "container:admin"));
    Process::spawn(cmd)
}

fn client(events: &Process, sub: &str) -> SharedBroker {
    let srv = EventsClient { url: events.url() };
    Arc::new(srv.broker(&mint(sub, "container:admin")))
}

struct EventsClient {
    url: String,
}

impl EventsClient {
    fn broker(&self, token: &str) -> bus_containers::broker::http::HttpBroker {
        use bus_containers::broker::http::{HttpBroker, HttpBrokerConfig};
        use bus_containers::credentials::{Token, TokenSource};
        let mut config = HttpBrokerConfig::from_env(
            &self.url,
            TokenSource::Env {
                var: "test".into(),
                token: Token::new(token),
            },
        )
        .unwrap();
        config.retry = None;
        HttpBroker::new(config).unwrap()
    }
}

async fn ask(r: &Requester, kind: Kind, payload: Value) -> Value {
    let out = r
        .request(Request::new(
            &kind.request(PUBLIC_PREFIX),
            payload,
            Duration::from_secs(20),
        ))
        .await
        .unwrap();
    out.replies
        .first()
        .map(|e| e.payload.clone())
        .unwrap_or(json!({"error": {"type": "timeout"}}))
}

fn api(events: &Process) -> Requester {
    use bus_containers::actors::bus::dispatcher::ReplyMetrics;
    Requester::new(
        client(events, "api"),
        BusIdentity::service("api"),
        ReplyMetrics::register(&bus_containers::metrics::Metrics::new(), "t"),
    )
}

#[actix_rt::test]
async fn routing_through_the_events_api_as_separate_processes() {
    let events = events_process();
    let _r1 = router(&events, "events");
    let _r2 = router(&events, "events");
    let (_worker, log) = MockWorker::start(client(&events, "worker"), "w1", "bus.docker").await;
    let api = api(&events);
    const N: usize = 50;
    let replies = futures::future::join_all((0..N).map(|i| {
        let api = api.clone();
        async move {
            ask(
                &api,
                Kind::Run,
                json!({"run_id": format!("r{i}"), "owner_account_id": "alice"}),
            )
            .await
        }
    }))
    .await;
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r["run_id"], format!("r{i}"), "{r}");
        assert_eq!(r["state"], "succeeded");
    }
    assert_eq!(
        log.lock().unwrap().received["run"],
        N,
        "two routers, each request forwarded once"
    );
    let runner = ask(&api, Kind::RunnerStatus, json!({})).await;
    assert_eq!(runner["status"]["state"], "ready", "{runner}");
    assert!(runner["status"]["details"]["workers"]["w1"].is_object());
    let gone = ask(
        &api,
        Kind::Delete,
        json!({"run_id": "r1", "owner_account_id": "alice", "worker_id": "w404"}),
    )
    .await;
    assert_eq!(gone["error"]["type"], "not_found");
}

#[actix_rt::test]
async fn a_static_router_process_answers_by_itself() {
    let events = events_process();
    let _r = router(&events, "static");
    let api = api(&events);
    let run = ask(
        &api,
        Kind::Run,
        json!({"owner_account_id": "alice", "command": ["sh", "-c", "printf OK"]}),
    )
    .await;
    assert_eq!(run["stdout"], "static: sh -c printf OK", "{run}");
    assert!(run["run_id"].as_str().unwrap().starts_with("run_"));
}

#[test]
fn router_flags_are_checked() {
    let out = bus()
        .args(["integration", "containers", "--request-timeout", "forever"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = bus()
        .args([
            "integration",
            "containers",
            "--backend-event-prefix",
            "bus.containers",
        ])
        .env("BUS_API_TOKEN", mint("r", "container:admin"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("forward to itself"));
    let out = bus()
        .args(["integration", "containers"])
        .env("BUS_CONFIG_DIR", "/nonexistent")
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("BUS_API_TOKEN"));
}
