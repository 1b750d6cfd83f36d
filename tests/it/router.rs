//! The router as actors on the memory broker, with mock workers in the
//! Docker worker's seat.

use crate::support::mock_worker::{Behaviour, Hold, Log, MockWorker, SetBehaviour};
use crate::support::*;
use actix::Addr;
use bus_containers::actors::bus::requester::{BusIdentity, Request, Requester};
use bus_containers::actors::router::{
    LiveWorkers, Router, RouterBackend, RouterConfig, RouterMetrics, Shutdown,
};
use bus_containers::broker::{EventStream, SharedBroker, SubscribeSpec};
use bus_containers::contract::{Kind, PUBLIC_PREFIX};
use bus_containers::metrics::Metrics;
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Stack {
    broker: SharedBroker,
    router_metrics: Metrics,
    router: Addr<Router>,
    workers: Vec<(Addr<MockWorker>, Arc<Mutex<Log>>)>,
    api: Requester,
}

async fn start_router(
    broker: &SharedBroker,
    tweak: &dyn Fn(&mut RouterConfig),
) -> (Addr<Router>, Metrics) {
    let metrics = Metrics::new();
    let mut config = RouterConfig::new(RouterBackend::Events {
        prefix: "bus.docker".into(),
    });
    tweak(&mut config);
    let router = Router::start(
        broker.clone(),
        BusIdentity::service("router"),
        config,
        RouterMetrics::register(&metrics),
    )
    .await
    .unwrap();
    (router, metrics)
}

async fn stack(workers: &[&str], tweak: &dyn Fn(&mut RouterConfig)) -> Stack {
    let (broker, _) = memory_broker();
    let (router, router_metrics) = start_router(&broker, tweak).await;
    let mut ws = Vec::new();
    for id in workers {
        ws.push(MockWorker::start(broker.clone(), id, "bus.docker").await);
    }
    // Every worker's first heartbeat has reached the router.
    let mut known = 0;
    for _ in 0..500 {
        known = router.send(LiveWorkers).await.unwrap().len();
        if known == workers.len() {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        known,
        workers.len(),
        "every worker's heartbeat reached the router"
    );
    let api = requester(&broker, "api", true);
    Stack {
        broker,
        router_metrics,
        router,
        workers: ws,
        api,
    }
}

async fn ask(r: &Requester, kind: Kind, payload: Value, deadline: Duration) -> Value {
    let out = r
        .request(Request::new(
            &kind.request(PUBLIC_PREFIX),
            payload,
            deadline,
        ))
        .await
        .unwrap();
    match out.replies.first() {
        Some(reply) => reply.payload.clone(),
        None => json!({"error": {"type": "timeout", "message": "requester deadline"}}),
    }
}

fn error_type(v: &Value) -> &str {
    v["error"]["type"].as_str().unwrap_or("")
}

fn metric(m: &Metrics, name: &str) -> i64 {
    m.render()
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// Counts replies on a public reply name until `quiet` passes without one.
async fn count(mut s: EventStream, quiet: Duration) -> Vec<String> {
    let mut ids = Vec::new();
    while let Ok(Some(Ok(e))) = actix_rt::time::timeout(quiet, s.next()).await {
        ids.push(e.correlation_id.clone().unwrap_or_default());
    }
    ids
}

const SECS: Duration = Duration::from_secs(10);

#[actix_rt::test]
async fn a_thousand_concurrent_requests_each_get_exactly_one_reply() {
    let s = stack(&["w1"], &|_| {}).await;
    let replies = s
        .broker
        .subscribe(SubscribeSpec::broadcast("bus.containers.run.response"))
        .await
        .unwrap();
    const N: usize = 1000;
    let results = futures::future::join_all((0..N).map(|i| {
        let api = s.api.clone();
        async move {
            let run_id = format!("run_{i}");
            let reply = ask(
                &api,
                Kind::Run,
                json!({"run_id": run_id, "owner_account_id": "alice", "command": ["true"]}),
                SECS,
            )
            .await;
            (run_id, reply)
        }
    }))
    .await;
    for (run_id, reply) in &results {
        assert_eq!(reply["run_id"], run_id.as_str(), "{reply}");
        assert_eq!(reply["owner_account_id"], "alice");
        assert_eq!(reply["worker_id"], "w1");
    }
    let seen = count(replies, Duration::from_millis(300)).await;
    assert_eq!(seen.len(), N, "one public reply per request");
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        N,
        "each with its own correlation id"
    );
    assert_eq!(s.workers[0].1.lock().unwrap().received["run"], N);
}

#[actix_rt::test]
async fn input_and_delete_reach_only_the_holder_and_status_merges_all_workers() {
    let s = stack(&["w1", "w2", "w3"], &|c| {
        c.default_timeout = Duration::from_secs(5)
    })
    .await;
    let hold = |w: usize, run: &str, owner: &str| {
        s.workers[w].0.do_send(Hold {
            run_id: run.into(),
            owner: owner.into(),
        })
    };
    hold(0, "run_a", "alice");
    hold(1, "run_b", "alice");
    hold(2, "run_c", "bob");

    let status = ask(
        &s.api,
        Kind::Status,
        json!({"owner_account_id": "alice"}),
        SECS,
    )
    .await;
    let mut ids: Vec<_> = status["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["run_a", "run_b"], "{status}");
    let bob = ask(
        &s.api,
        Kind::Status,
        json!({"owner_account_id": "bob"}),
        SECS,
    )
    .await;
    assert_eq!(bob["items"].as_array().unwrap().len(), 1);
    for (_, log) in &s.workers {
        assert_eq!(
            log.lock().unwrap().acted["status"],
            2,
            "every worker answered the gather"
        );
    }

    let input = ask(
        &s.api,
        Kind::Input,
        json!({"run_id": "run_a", "owner_account_id": "alice", "worker_id": "w1", "data": "hello"}),
        SECS,
    )
    .await;
    assert_eq!(
        input,
        json!({"accepted": true, "run_id": "run_a", "bytes": 5, "worker_id": "w1"})
    );
    let deleted = ask(
        &s.api,
        Kind::Delete,
        json!({"run_id": "run_b", "owner_account_id": "alice", "worker_id": "w2"}),
        SECS,
    )
    .await;
    assert_eq!(deleted["deleted"], true, "{deleted}");
    assert_eq!(deleted["worker_id"], "w2");
    let acted = |w: usize, k: &str| {
        s.workers[w]
            .1
            .lock()
            .unwrap()
            .acted
            .get(k)
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(
        (acted(0, "input"), acted(1, "input"), acted(2, "input")),
        (1, 0, 0)
    );
    assert_eq!(
        (acted(0, "delete"), acted(1, "delete"), acted(2, "delete")),
        (0, 1, 0)
    );

    // A worker that is not alive: not_found at once.
    let t0 = std::time::Instant::now();
    let gone = ask(
        &s.api,
        Kind::Delete,
        json!({"run_id": "run_x", "owner_account_id": "alice", "worker_id": "w9"}),
        SECS,
    )
    .await;
    assert_eq!(error_type(&gone), "not_found", "{gone}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    // The holder is alive but has no such run: it stays silent → not_found at the deadline.
    let none = ask(
        &s.api,
        Kind::Input,
        json!({"run_id": "run_zz", "owner_account_id": "alice", "worker_id": "w3"}),
        SECS,
    )
    .await;
    assert_eq!(error_type(&none), "not_found", "{none}");

    let runner = ask(&s.api, Kind::RunnerStatus, json!({}), SECS).await;
    assert_eq!(runner["status"]["state"], "ready", "{runner}");
    let workers = runner["status"]["details"]["workers"].as_object().unwrap();
    assert_eq!(workers.len(), 3);
    assert_eq!(
        ask(&s.api, Kind::RunnerStart, json!({}), SECS).await,
        json!({"accepted": true, "action": "start"})
    );
    assert_eq!(
        ask(&s.api, Kind::RunnerDelete, json!({}), SECS).await,
        json!({"deleted": true})
    );
}

#[actix_rt::test]
async fn a_non_service_publisher_acts_only_as_itself() {
    let s = stack(&["w1"], &|_| {}).await;
    let mallory = requester(&s.broker, "mallory", false);
    let reply = ask(
        &mallory,
        Kind::Run,
        json!({"run_id": "r1", "owner_account_id": "alice", "command": ["id"]}),
        SECS,
    )
    .await;
    assert_eq!(error_type(&reply), "forbidden", "{reply}");
    let reply = ask(
        &mallory,
        Kind::Delete,
        json!({"run_id": "r1", "owner_account_id": "alice", "worker_id": "w1"}),
        SECS,
    )
    .await;
    assert_eq!(error_type(&reply), "forbidden");
    let reply = ask(&mallory, Kind::RunnerDelete, json!({}), SECS).await;
    assert_eq!(error_type(&reply), "forbidden");
    // As itself it may run.
    let reply = ask(
        &mallory,
        Kind::Run,
        json!({"run_id": "r2", "command": ["id"]}),
        SECS,
    )
    .await;
    assert_eq!(reply["owner_account_id"], "mallory", "{reply}");
    assert_eq!(
        s.workers[0].1.lock().unwrap().received["run"],
        1,
        "refused requests never reach a worker"
    );
    // A service request without an owner is a bad request.
    let reply = ask(&s.api, Kind::Run, json!({"run_id": "r3"}), SECS).await;
    assert_eq!(error_type(&reply), "bad_request");
}

#[actix_rt::test]
async fn silence_times_out_and_late_replies_are_counted() {
    let s = stack(&["w1"], &|c| {
        c.request_timeout = Duration::from_millis(800);
        c.default_timeout = Duration::from_millis(800);
    })
    .await;
    s.workers[0].0.do_send(SetBehaviour(Behaviour::Silent));
    // A run is forwarded, not waited for: the router says nothing of its
    // own (the API provider tracks it), so a silent worker is silence.
    let replies = s
        .broker
        .subscribe(SubscribeSpec::broadcast("bus.containers.run.response"))
        .await
        .unwrap();
    let reply = ask(
        &s.api,
        Kind::Run,
        json!({"run_id": "r", "owner_account_id": "a", "timeout_seconds": 5}),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(error_type(&reply), "timeout", "{reply}");
    assert!(count(replies, Duration::from_millis(300)).await.is_empty());
    // Gathers answer with what they have: the silent worker shows as unavailable.
    let runner = ask(&s.api, Kind::RunnerStatus, json!({}), SECS).await;
    assert_eq!(runner["status"]["state"], "unavailable", "{runner}");
    assert_eq!(
        runner["status"]["details"]["workers"]["w1"]["state"],
        "unavailable"
    );
    assert_eq!(
        ask(&s.api, Kind::Status, json!({"owner_account_id": "a"}), SECS).await,
        json!({"items": []})
    );

    // A gathered reply that comes after the deadline is dropped and counted.
    s.workers[0]
        .0
        .do_send(SetBehaviour(Behaviour::Delay(Duration::from_millis(1300))));
    let replies = s
        .broker
        .subscribe(SubscribeSpec::broadcast(
            "bus.containers.runner.start.response",
        ))
        .await
        .unwrap();
    let reply = ask(&s.api, Kind::RunnerStart, json!({}), SECS).await;
    assert_eq!(error_type(&reply), "unavailable", "{reply}");
    for _ in 0..250 {
        if metric(&s.router_metrics, "bus_router_replies_late_total") >= 1 {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        metric(&s.router_metrics, "bus_router_replies_late_total"),
        1
    );
    assert_eq!(
        count(replies, Duration::from_millis(300)).await.len(),
        1,
        "only the timeout reply went out"
    );
}

#[actix_rt::test]
async fn malformed_and_duplicate_replies() {
    let s = stack(&["w1"], &|_| {}).await;
    let run = json!({"run_id": "r", "owner_account_id": "alice"});
    for bad in [
        json!("not an object"),
        json!([1, 2]),
        json!({"run_id": "r"}),
        json!({"error": "not an error object"}),
    ] {
        s.workers[0]
            .0
            .do_send(SetBehaviour(Behaviour::Reply(bad.clone())));
        let reply = ask(&s.api, Kind::Run, run.clone(), SECS).await;
        assert_eq!(error_type(&reply), "malformed_response", "{bad} → {reply}");
    }
    // A run's reply is relayed without the router keeping the request:
    // whether it is for the right owner is the API provider's to check.
    s.workers[0].0.do_send(SetBehaviour(Behaviour::WrongOwner));
    let reply = ask(&s.api, Kind::Run, run.clone(), SECS).await;
    assert_eq!(reply["owner_account_id"], "someone-else", "{reply}");
    // A worker's own error reply passes through.
    s.workers[0].0.do_send(SetBehaviour(Behaviour::Reply(
        json!({"error": {"type": "forbidden", "message": "image not allowed"}}),
    )));
    let reply = ask(&s.api, Kind::Run, run.clone(), SECS).await;
    assert_eq!(
        reply,
        json!({"error": {"type": "forbidden", "message": "image not allowed"}})
    );
    assert_eq!(
        metric(&s.router_metrics, "bus_router_malformed_replies_total"),
        4
    );

    s.workers[0].0.do_send(SetBehaviour(Behaviour::Duplicate));
    let replies = s
        .broker
        .subscribe(SubscribeSpec::broadcast("bus.containers.run.response"))
        .await
        .unwrap();
    let reply = ask(
        &s.api,
        Kind::Run,
        json!({"run_id": "dup", "owner_account_id": "alice"}),
        SECS,
    )
    .await;
    assert_eq!(reply["run_id"], "dup");
    // Both copies are relayed (a worker sends a result again until it is
    // recorded); the API provider records one.
    assert_eq!(count(replies, Duration::from_millis(400)).await.len(), 2);
}

#[actix_rt::test]
async fn a_router_stopped_mid_flight_leaves_the_requester_a_timeout() {
    let s = stack(&["w1"], &|_| {}).await;
    s.workers[0]
        .0
        .do_send(SetBehaviour(Behaviour::Delay(Duration::from_secs(2))));
    let api = s.api.clone();
    let pending = actix_rt::spawn(async move {
        ask(
            &api,
            Kind::Run,
            json!({"run_id": "r", "owner_account_id": "a"}),
            Duration::from_millis(1500),
        )
        .await
    });
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    s.router.send(Shutdown).await.unwrap();
    let reply = within(10, "the requester is answered", pending)
        .await
        .unwrap();
    assert_eq!(error_type(&reply), "timeout", "{reply}");
}

#[actix_rt::test]
async fn routers_sharing_the_group_forward_each_request_once() {
    let (broker, _) = memory_broker();
    let _r1 = start_router(&broker, &|_| {}).await;
    let _r2 = start_router(&broker, &|_| {}).await;
    let (_w, log) = MockWorker::start(broker.clone(), "w1", "bus.docker").await;
    let api = requester(&broker, "api", true);
    let replies = broker
        .subscribe(SubscribeSpec::broadcast("bus.containers.run.response"))
        .await
        .unwrap();
    const N: usize = 200;
    let results = futures::future::join_all((0..N).map(|i| {
        let api = api.clone();
        async move {
            ask(
                &api,
                Kind::Run,
                json!({"run_id": format!("r{i}"), "owner_account_id": "a"}),
                SECS,
            )
            .await
        }
    }))
    .await;
    assert!(
        results.iter().all(|r| r["state"] == "succeeded"),
        "{:?}",
        results.iter().find(|r| r["state"] != "succeeded")
    );
    assert_eq!(
        log.lock().unwrap().received["run"],
        N,
        "each request forwarded once"
    );
    assert_eq!(count(replies, Duration::from_millis(300)).await.len(), N);
}

#[actix_rt::test]
async fn a_run_with_no_live_worker_is_unavailable_at_once() {
    let (broker, _) = memory_broker();
    let (_router, _) =
        start_router(&broker, &|c| c.discovery_wait = Duration::from_millis(200)).await;
    let api = requester(&broker, "api", true);
    let t0 = std::time::Instant::now();
    let reply = ask(
        &api,
        Kind::Run,
        json!({"run_id": "r", "owner_account_id": "a"}),
        SECS,
    )
    .await;
    assert_eq!(error_type(&reply), "unavailable", "{reply}");
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no live worker"));
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

#[actix_rt::test]
async fn the_static_provider_answers_every_kind() {
    let (broker, _) = memory_broker();
    let config = RouterConfig::new(RouterBackend::Static);
    let _router = Router::start(
        broker.clone(),
        BusIdentity::service("router"),
        config,
        RouterMetrics::register(&Metrics::new()),
    )
    .await
    .unwrap();
    let api = requester(&broker, "api", true);
    let run = ask(&api, Kind::Run, json!({"run_id": "r1", "owner_account_id": "a", "profile": "codex", "args": ["sh", "-c", "printf OK"]}), SECS).await;
    assert_eq!(run["stdout"], "static: sh -c printf OK");
    assert_eq!(
        (run["exit_code"].as_i64(), run["state"].as_str()),
        (Some(0), Some("succeeded"))
    );
    assert_eq!(
        (
            run["runner_name"].as_str(),
            run["runtime"]["provider"].as_str()
        ),
        (Some("static"), Some("static"))
    );
    assert_eq!(run["duration_ms"], 0);
    assert_eq!(run["stderr"], "");
    assert_eq!(
        ask(&api, Kind::Status, json!({"owner_account_id": "a"}), SECS).await["items"],
        json!([])
    );
    assert_eq!(
        ask(&api, Kind::RunnerStatus, json!({}), SECS).await["status"]["state"],
        "ready"
    );
    assert_eq!(
        ask(
            &api,
            Kind::Input,
            json!({"run_id": "r1", "owner_account_id": "a", "data": "x"}),
            SECS
        )
        .await["accepted"],
        true
    );
    assert_eq!(
        error_type(
            &ask(
                &api,
                Kind::Delete,
                json!({"run_id": "nope", "owner_account_id": "a"}),
                SECS
            )
            .await
        ),
        "not_found"
    );
    assert_eq!(
        ask(&api, Kind::RunnerStart, json!({}), SECS).await["accepted"],
        true
    );
    assert_eq!(
        ask(&api, Kind::RunnerDelete, json!({}), SECS).await["deleted"],
        true
    );
}

#[actix_rt::test]
async fn run_events_are_forwarded_under_the_public_name() {
    let s = stack(&["w1"], &|_| {}).await;
    let mut out = s
        .broker
        .subscribe(SubscribeSpec::broadcast("bus.containers.run.output"))
        .await
        .unwrap();
    let worker = requester(&s.broker, "worker-w1", true);
    for seq in 0..20 {
        worker
            .publish(bus_containers::contract::Publication::new("bus.docker.run.output", json!({"run_id": "r", "owner_account_id": "a", "seq": seq, "stream": "stdout", "data": "x"})))
            .await
            .unwrap();
    }
    for seq in 0..20 {
        let e = within(5, "forwarded output", out.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e.payload["seq"], seq, "in order");
        assert!(e.service);
    }
}
