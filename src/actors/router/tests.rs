//! The router with a mock worker registry in its seat: who is alive is
//! whatever the test says, with no heartbeats.

use super::workers::{Live, LiveSet};
use super::*;
use crate::actors::bus::requester::{first_reply, Request};
use crate::broker::memory::{HubConfig, MemoryBroker};
use crate::contract::replies::{InputAccepted, RunnerStarted};
use crate::contract::ErrorType;
use crate::contract::{RunResult, WorkerReply};
use futures::StreamExt;
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::Arc;

/// A registry that knows exactly these workers and discovers no more.
struct MockRegistry(BTreeSet<String>);

impl Actor for MockRegistry {
    type Context = Context<Self>;
}

impl Handler<Live> for MockRegistry {
    type Result = MessageResult<Live>;
    fn handle(&mut self, _: Live, _: &mut Self::Context) -> Self::Result {
        MessageResult(LiveSet {
            live: self.0.clone(),
            beats: Vec::new(),
            discovery: None,
        })
    }
}

async fn rig(live: &[&str]) -> (SharedBroker, Requester) {
    let broker: SharedBroker = Arc::new(MemoryBroker::start(
        HubConfig::default(),
        crate::metrics::BusMetrics::register(&Metrics::new()),
    ));
    let registry = MockRegistry(live.iter().map(|s| s.to_string()).collect()).start();
    let metrics = RouterMetrics::register(&Metrics::new());
    let config = RouterConfig::new(RouterBackend::Events {
        prefix: "bus.docker".into(),
    });
    Router::start_with(
        broker.clone(),
        BusIdentity::service("router"),
        config,
        metrics.clone(),
        registry.recipient(),
    )
    .await
    .unwrap();
    let api = Requester::new(broker.clone(), BusIdentity::service("api"), metrics.replies);
    (broker, api)
}

async fn ask<R: serde::de::DeserializeOwned>(
    api: &Requester,
    kind: Kind,
    payload: serde_json::Value,
) -> WorkerReply<R> {
    let out = api
        .request(Request::new(
            &kind.request(PUBLIC_PREFIX),
            payload,
            Duration::from_secs(5),
        ))
        .await
        .unwrap();
    first_reply::<R>(&out)
        .expect("a reply")
        .expect("well formed")
}

#[actix_rt::test]
async fn a_request_for_a_worker_the_registry_does_not_know_never_reaches_the_bus() {
    let (broker, api) = rig(&["w1"]).await;
    let mut backend = broker
        .subscribe(SubscribeSpec::broadcast("bus.docker.input.request"))
        .await
        .unwrap();
    let reply: WorkerReply<InputAccepted> = ask(
        &api,
        Kind::Input,
        json!({"run_id": "run_x", "owner_account_id": "alice", "worker_id": "w2", "data": "x"}),
    )
    .await;
    let e = reply.reply.as_error().expect("refused").clone();
    assert_eq!(e.kind, ErrorType::NotFound);
    assert!(e.message.contains("not alive"), "{}", e.message);
    let forwarded = actix_rt::time::timeout(Duration::from_millis(200), backend.next()).await;
    assert!(forwarded.is_err(), "nothing was forwarded");
}

#[actix_rt::test]
async fn with_no_live_worker_a_run_is_unavailable_at_once_and_a_gather_asks_nobody() {
    let (_broker, api) = rig(&[]).await;
    let started = std::time::Instant::now();
    let run: WorkerReply<RunResult> = ask(
        &api,
        Kind::Run,
        json!({"owner_account_id": "alice", "profile": "codex", "args": ["true"]}),
    )
    .await;
    assert_eq!(run.reply.as_error().unwrap().kind, ErrorType::Unavailable);
    let start: WorkerReply<RunnerStarted> = ask(&api, Kind::RunnerStart, json!({})).await;
    let e = start.reply.as_error().unwrap();
    assert_eq!(e.kind, ErrorType::Unavailable);
    assert!(e.message.contains("no live docker worker"), "{}", e.message);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered well before the 30 s deadline: {:?}",
        started.elapsed()
    );
}

#[actix_rt::test]
async fn a_malformed_request_is_answered_bad_request_by_the_router() {
    let (_broker, api) = rig(&["w1"]).await;
    let run: WorkerReply<RunResult> = ask(
        &api,
        Kind::Run,
        json!({"owner_account_id": "alice", "profile": "codex", "command": "not a list"}),
    )
    .await;
    assert_eq!(run.reply.as_error().unwrap().kind, ErrorType::BadRequest);
}
