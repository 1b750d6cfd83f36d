//! The NATS backend against a real `nats-server`: the broker conformance
//! suite, the Events API on NATS sharing one bus with NATS clients, and the
//! whole stack as processes talking `nats://`.

use crate::broker_conformance::suite;
use crate::support::api::{post_until_ok, token, ALL};
use crate::support::nats::NatsServer;
use crate::support::*;
use bus_containers::auth::{Acl, Secrets, Verifier, AUDIENCE_API};
use bus_containers::broker::nats::{NatsBroker, NatsOptions};
use bus_containers::broker::{Broker, SharedBroker, SubscribeSpec};
use bus_containers::contract::{Envelope, Publication};
use bus_containers::http::events::EventsApi;
use bus_containers::http::probes::Probes;
use bus_containers::http::server;
use futures::StreamExt;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

#[actix_rt::test]
async fn nats_backend_passes_the_conformance_suite() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let b: SharedBroker = Arc::new(
        NatsBroker::connect(&nats.url(), NatsOptions::default())
            .await
            .unwrap(),
    );
    assert_eq!(b.kind(), "nats");
    suite(b).await;
}

#[actix_rt::test]
async fn http_clients_and_nats_clients_share_one_bus() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let native = NatsBroker::connect(&nats.url(), NatsOptions::default())
        .await
        .unwrap();
    let shared: SharedBroker = Arc::new(native.clone());
    let listener = server::listen("127.0.0.1:0").unwrap();
    let addr = server::local_addr(&listener);
    let api = EventsApi {
        broker: shared.clone(),
        verifier: Verifier::new(&Secrets::new(SECRET.to_vec(), None), AUDIENCE_API),
        acl: Acl::default(),
        heartbeat: Duration::from_secs(15),
        max_payload: 1 << 20,
        streams: Default::default(),
    };
    let ready = shared.clone();
    let probes = Probes {
        ready: Arc::new(move || ready.ready().map_err(|e| e.to_string())),
        metrics: Default::default(),
    };
    actix_rt::spawn(server::start_events(listener, api, probes, 1).unwrap());
    let http = http_client(addr, &mint("alice", "events:send events:listen"));
    // NATS → HTTP listener (identity filtering applies to alice's stream).
    let mut from_nats = http
        .subscribe(SubscribeSpec::broadcast("app.shared"))
        .await
        .unwrap();
    native
        .publish(Envelope::stamp(
            Publication::new("app.shared", json!({"via": "nats"})),
            "alice",
            false,
        ))
        .await
        .unwrap();
    native
        .publish(Envelope::stamp(
            Publication::new("app.shared", json!({"via": "nats-other"})),
            "bob",
            false,
        ))
        .await
        .unwrap();
    let e = within(5, "nats to http", from_nats.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.payload["via"], "nats");
    // HTTP publisher → NATS subscriber, stamped by the Events API.
    let mut on_nats = native
        .subscribe(SubscribeSpec::broadcast("app.back"))
        .await
        .unwrap();
    http.publish(Envelope::stamp(
        Publication::new("app.back", json!({"via": "http"})),
        "forged",
        true,
    ))
    .await
    .unwrap();
    let e = within(5, "http to nats", on_nats.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (e.payload["via"].as_str(), e.identity_id.as_str(), e.service),
        (Some("http"), "alice", false)
    );
    // Replay through the HTTP API comes from JetStream.
    let replayed: Vec<_> = http
        .subscribe(
            SubscribeSpec::broadcast("app.shared")
                .replay(true)
                .follow(false),
        )
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(replayed.len(), 1, "alice's own event only");
}

#[actix_rt::test]
async fn the_stack_as_processes_on_nats_and_readiness_across_a_restart() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let url = nats.url();
    let mut router = bus();
    router.args([
        "integration",
        "containers",
        "--events-url",
        &url,
        "--addr",
        "127.0.0.1:0",
        "--log-format",
        "json",
    ]);
    let router = Process::spawn(router);
    let mut worker = bus();
    worker
        .args([
            "integration",
            "docker",
            "--provider",
            "static",
            "--event-prefix",
            "bus.docker",
            "--worker-id",
            "nats-w1",
        ])
        .args([
            "--events-url",
            &url,
            "--addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ]);
    let worker = Process::spawn(worker);
    let data = tempfile::tempdir().unwrap();
    let mut api = bus();
    api.args([
        "api-provider",
        "containers",
        "--backend",
        "events",
        "--events-url",
        &url,
        "--addr",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--workers",
        "1",
    ])
    .arg("--data-dir")
    .arg(data.path())
    .env("BUS_API_JWT_SECRET", std::str::from_utf8(SECRET).unwrap());
    let api = Process::spawn(api);
    let t = token("alice", ALL);
    let runs = format!("{}/api/v1/containers/runs", api.url());
    let every = Duration::from_millis(200);
    let (_, result) = post_until_ok(
        &runs,
        &t,
        r#"{"profile":"codex","args":["printf","OK"]}"#,
        50,
        every,
    )
    .await;
    assert_eq!(result["stdout"], "static: printf OK", "{result}");
    assert_eq!(result["worker_id"], "nats-w1");
    // NATS goes away: readiness drops; it comes back: readiness recovers.
    let ready = |p: &Process| {
        let url = format!("{}/readyz", p.url());
        async move { get(&url, None).await.0 }
    };
    assert_eq!(ready(&router).await, 200);
    nats.stop();
    let mut dropped = false;
    for _ in 0..100 {
        if ready(&router).await == 503 {
            dropped = true;
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped, "the router's readiness drops without NATS");
    nats.restart();
    for (what, p) in [("router", &router), ("worker", &worker), ("api", &api)] {
        let mut back = false;
        for _ in 0..300 {
            if ready(p).await == 200 {
                back = true;
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(back, "the {what} reconnects");
    }
    let (_, after) = post_until_ok(
        &runs,
        &t,
        r#"{"profile":"codex","args":["printf","again"]}"#,
        50,
        every,
    )
    .await;
    assert_eq!(after["stdout"], "static: printf again", "{after}");
}

#[actix_rt::test]
async fn two_providers_share_one_ledger_on_nats_kv() {
    use crate::support::api::{call, instance, Api};
    use bus_containers::store::kv::KvStore;
    use bus_containers::store::{RunRecord, RunStore};
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let url = nats.url();
    let open = || KvStore::open(&url, "test_runs");
    let a = Api::start(instance("a"), Arc::new(open().await.unwrap()), None).await;
    let b = Api::start(instance("b"), Arc::new(open().await.unwrap()), None).await;
    let t = token("alice", ALL);
    let (s, _, run) = call(
        "POST",
        &a.at("/api/v1/containers/runs"),
        Some(&t),
        Some(r#"{"profile":"codex","args":["printf","OK"]}"#),
    )
    .await;
    assert_eq!(s, 200, "{run}");
    let id = run["run_id"].as_str().unwrap().to_owned();
    let (_, _, listed) = call("GET", &b.at("/api/v1/containers/runs"), Some(&t), None).await;
    assert_eq!(
        listed["items"][0]["run_id"],
        id.as_str(),
        "B lists A's run: {listed}"
    );
    let (_, _, other) = call(
        "GET",
        &b.at("/api/v1/containers/runs"),
        Some(&token("bob", ALL)),
        None,
    )
    .await;
    assert_eq!(other["items"], json!([]));
    let (s, _, _) = call(
        "DELETE",
        &b.at(&format!("/api/v1/containers/runs/{id}")),
        Some(&t),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, _) = call(
        "GET",
        &a.at(&format!("/api/v1/containers/runs/{id}")),
        Some(&t),
        None,
    )
    .await;
    assert_eq!(s, 404, "deleted through B, gone for A");

    // The store itself: compare-and-set completion, no resurrection, lost
    // marking only for one instance.
    let store = open().await.unwrap();
    let record = |id: &str, instance: &str| RunRecord {
        run_id: id.into(),
        owner_account_id: "o".into(),
        state: bus_containers::contract::RunState::Running,
        instance_id: instance.into(),
        worker_id: None,
        profile: None,
        image: None,
        args: vec![],
        created_at: bus_containers::contract::now_rfc3339(),
        finished_at: None,
        result: None,
        usage_sent: 0,
    };
    store.insert(record("run_x1", "a")).await.unwrap();
    store.insert(record("run_x2", "b")).await.unwrap();
    assert!(
        store.insert(record("run_x1", "a")).await.is_err(),
        "no duplicate run ids"
    );
    use bus_containers::contract::RunState;
    assert!(store
        .complete("run_x1", RunState::Succeeded, json!({"worker_id": "w"}))
        .await
        .unwrap());
    assert!(!store
        .complete("run_x1", RunState::Failed, json!({}))
        .await
        .unwrap());
    assert_eq!(
        store
            .get("run_x1")
            .await
            .unwrap()
            .unwrap()
            .worker_id
            .as_deref(),
        Some("w")
    );
    assert_eq!(store.mark_lost("b").await.unwrap(), 1);
    assert_eq!(
        store.get("run_x2").await.unwrap().unwrap().state,
        RunState::Lost
    );
    assert!(store.delete("run_x1").await.unwrap());
    assert!(
        !store
            .complete("run_x1", RunState::Succeeded, json!({}))
            .await
            .unwrap(),
        "no resurrection"
    );
    assert!(store.get("run_x1").await.unwrap().is_none());
}

/// `bus api-provider events --events-backend nats` started as a command:
/// an HTTP client publishes a run request through it, a router and a
/// worker speaking `nats://` answer, and the HTTP listener gets the
/// reply; its readiness follows the NATS connection.
#[actix_rt::test]
async fn the_events_api_command_on_nats_shares_one_bus_with_nats_processes() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let url = nats.url();
    let mut events = bus();
    events
        .args([
            "api-provider",
            "events",
            "--addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--workers",
            "1",
            "--events-backend",
            "nats",
            "--nats-url",
            &url,
        ])
        .env("BUS_API_JWT_SECRET", std::str::from_utf8(SECRET).unwrap());
    let events = Process::spawn(events);
    let mut router = bus();
    router.args([
        "integration",
        "containers",
        "--events-url",
        &url,
        "--log-format",
        "json",
        "--addr",
        "127.0.0.1:0",
    ]);
    let _router = Process::spawn(router);
    let mut worker = bus();
    worker.args([
        "integration",
        "docker",
        "--provider",
        "static",
        "--event-prefix",
        "bus.docker",
        "--worker-id",
        "nats-events-w1",
        "--events-url",
        &url,
        "--log-format",
        "json",
        "--addr",
        "127.0.0.1:0",
    ]);
    let _worker = Process::spawn(worker);
    // The HTTP side: a service client of the Events API process.
    let http: SharedBroker = Arc::new(http_client(events.addr, &mint("api", "container:admin")));
    let api = requester(&http, "api", true);
    let mut answer = serde_json::Value::Null;
    for attempt in 0..40 {
        let payload = json!({
            "run_id": format!("run_nats_http_{attempt}"),
            "owner_account_id": "alice",
            "profile": "codex",
            "args": ["printf", "OK"],
        });
        let out = api
            .request(bus_containers::actors::bus::requester::Request::new(
                "bus.containers.run.request",
                payload,
                Duration::from_secs(3),
            ))
            .await
            .unwrap();
        if let Some(reply) = out.replies.first() {
            answer = reply.payload.clone();
            if answer.get("error").is_none() {
                break;
            }
        }
        actix_rt::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(answer["stdout"], "static: printf OK", "{answer}");
    assert_eq!(answer["worker_id"], "nats-events-w1", "{answer}");
    // Readiness is NATS's.
    let readyz = format!("{}/readyz", events.url());
    assert_eq!(get(&readyz, None).await.0, 200);
    nats.stop();
    let mut dropped = false;
    for _ in 0..100 {
        if get(&readyz, None).await.0 == 503 {
            dropped = true;
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped, "the events API is not ready without NATS");
    nats.restart();
    let mut back = false;
    for _ in 0..300 {
        if get(&readyz, None).await.0 == 200 {
            back = true;
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the events API is ready again once NATS is back");
}
