//! The containers REST API over real HTTP: auth on every endpoint, account
//! isolation, strict bodies, delete semantics, limits, deadlines, logs,
//! billing and usage, and the ledger's durability.

use crate::support::api::*;
use crate::support::{within, SECRET};
use bus_containers::actors::bus::subscription::{Delivered, Subscription};
use bus_containers::broker::SubscribeSpec;
use bus_containers::cli::serve_containers::{BillingBackend, ContainersOptions, UsageBackend};
use bus_containers::contract::Publication;
use bus_containers::store::sqlite::SqliteStore;
use futures::StreamExt;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const RUN: &str = r#"{"profile":"codex","args":["sh","-c","printf OK"],"timeout_seconds":300}"#;

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn expired(sub: &str) -> String {
    let claims = json!({"sub": sub, "aud": "ai.hg.fi/api", "iat": now() - 600, "exp": now() - 60, "scope": ALL});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

#[actix_rt::test]
async fn auth_on_every_endpoint() {
    let api = Api::static_backend(|_| {}).await;
    let alice = token("alice", ALL);
    let (s, _, run) = call(
        "POST",
        &api.at("/api/v1/containers/runs"),
        Some(&alice),
        Some(RUN),
    )
    .await;
    assert_eq!(s, 200, "{run}");
    let id = run["run_id"].as_str().unwrap().to_owned();
    let endpoints = [
        (
            "GET",
            "/api/v1/containers/status".to_owned(),
            "container:read",
            None,
        ),
        (
            "POST",
            "/api/v1/containers/runs".to_owned(),
            "container:run",
            Some(RUN),
        ),
        (
            "GET",
            "/api/v1/containers/runs".to_owned(),
            "container:read",
            None,
        ),
        (
            "GET",
            format!("/api/v1/containers/runs/{id}"),
            "container:read",
            None,
        ),
        (
            "GET",
            format!("/api/v1/containers/runs/{id}/wait"),
            "container:read",
            None,
        ),
        (
            "GET",
            format!("/api/v1/containers/runs/{id}/logs"),
            "container:read",
            None,
        ),
        (
            "POST",
            format!("/api/v1/containers/runs/{id}/input"),
            "container:run",
            Some(r#"{"data":"x"}"#),
        ),
        (
            "DELETE",
            format!("/api/v1/containers/runs/{id}"),
            "container:delete",
            None,
        ),
    ];
    for (method, path, scope, body) in endpoints {
        let url = api.at(&path);
        for (what, tok) in [
            ("no token", None),
            ("expired", Some(expired("alice"))),
            (
                "internal audience",
                Some(token_for("alice", ALL, "ai.hg.fi/internal")),
            ),
            ("garbage", Some("x.y.z".to_owned())),
        ] {
            let (s, _, b) = call(method, &url, tok.as_deref(), body).await;
            assert_eq!(
                (s, b["error"]["type"].as_str()),
                (401, Some("invalid_auth")),
                "{method} {path} {what}: {b}"
            );
        }
        let others: Vec<&str> = ALL.split(' ').filter(|s| *s != scope).collect();
        let (s, _, b) = call(method, &url, Some(&token("alice", &others.join(" "))), body).await;
        assert_eq!(
            (s, b["error"]["type"].as_str()),
            (403, Some("forbidden")),
            "{method} {path} without {scope}: {b}"
        );
        assert!(b["error"]["message"].as_str().unwrap().contains(scope));
    }
    // Internal runner endpoints: internal audience and container:admin.
    let runner = api.at("/api/internal/containers/runner");
    for method in ["GET", "POST", "DELETE"] {
        let (s, _, _) = call(
            method,
            &runner,
            Some(&token("ops", "container:admin")),
            None,
        )
        .await;
        assert_eq!(s, 401, "{method}: the public audience is not enough");
        let (s, _, _) = call(method, &runner, Some(&internal("container:read")), None).await;
        assert_eq!(s, 403, "{method}: container:admin is required");
    }
    let admin = internal("container:admin");
    let (s, _, b) = call("GET", &runner, Some(&admin), None).await;
    assert_eq!(
        (s, b["status"]["state"].as_str()),
        (200, Some("ready")),
        "{b}"
    );
    let (s, _, b) = call("POST", &runner, Some(&admin), None).await;
    assert_eq!((s, b), (202, json!({"accepted": true, "action": "start"})));
    let (s, _, b) = call("DELETE", &runner, Some(&admin), None).await;
    assert_eq!((s, b), (200, json!({"deleted": true})));
}

#[actix_rt::test]
async fn another_account_can_touch_nothing() {
    let api = Api::with_fake_worker(|_| {}).await;
    let (alice, bob) = (token("alice", ALL), token("bob", ALL));
    let body = r#"{"profile":"codex","args":["cat"],"interactive":true,"wait":false}"#;
    let (s, _, accepted) = call(
        "POST",
        &api.at("/api/v1/containers/runs"),
        Some(&alice),
        Some(body),
    )
    .await;
    assert_eq!(
        (s, accepted["state"].as_str()),
        (202, Some("running")),
        "{accepted}"
    );
    let id = accepted["run_id"].as_str().unwrap().to_owned();
    let run = |p: &str| api.at(&format!("/api/v1/containers/runs/{id}{p}"));
    for (method, url, body) in [
        ("GET", run(""), None),
        ("GET", run("/wait?timeout=1s"), None),
        ("GET", run("/logs"), None),
        ("GET", run("/logs?follow=true"), None),
        ("POST", run("/input"), Some(r#"{"data":"evil","eof":true}"#)),
        ("DELETE", run(""), None),
    ] {
        let (s, _, b) = call(method, &url, Some(&bob), body).await;
        assert_eq!(
            (s, b["error"]["type"].as_str()),
            (403, Some("forbidden")),
            "bob {method} {url}: {b}"
        );
    }
    let (_, _, listed) = call("GET", &api.at("/api/v1/containers/runs"), Some(&bob), None).await;
    assert_eq!(listed["items"], json!([]));
    let (_, _, status) = call(
        "GET",
        &api.at("/api/v1/containers/status"),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(
        status["items"].as_array().unwrap().len(),
        1,
        "only the runner item: {status}"
    );
    let (_, _, status) = call(
        "GET",
        &api.at("/api/v1/containers/status"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(status["items"][0]["id"], "runner");
    assert_eq!(status["items"][1]["id"], id.as_str(), "{status}");
    assert!(status["items"][1]["details"]["worker_id"]
        .as_str()
        .unwrap()
        .starts_with("w-"));
    // Alice's run is untouched: her input reaches it.
    let (_, accepted) = post_until_ok(
        &run("/input"),
        &alice,
        r#"{"data":"mine","eof":true}"#,
        50,
        Duration::from_millis(20),
    )
    .await;
    assert_eq!(
        accepted,
        json!({"accepted": true, "run_id": id, "bytes": 4})
    );
    let (s, _, result) = call("GET", &run("/wait?timeout=10s"), Some(&alice), None).await;
    assert_eq!(
        (s, result["stdout"].as_str()),
        (200, Some("mine")),
        "{result}"
    );
}

#[actix_rt::test]
async fn bodies_are_strict() {
    let api = Api::static_backend(|o| o.max_body_bytes = 4096).await;
    let t = token("alice", ALL);
    let url = api.at("/api/v1/containers/runs");
    for (body, want) in [
        (r#"{"profile":"codex","extra":1}"#.to_owned(), 400),
        (r#"{"profile":"codex"} {"again":1}"#.into(), 400),
        (r#"{}"#.into(), 400),
        (r#"{"image":"bus-busybox:latest"}"#.into(), 400),
        (r#"{"profile":"codex","timeout_seconds":-1}"#.into(), 400),
        (r#"{"profile":"codex","timeout_seconds":"5"}"#.into(), 400),
        (r#"{"profile":"codex","wait":null}"#.into(), 400),
        (r#"[1,2]"#.into(), 400),
        ("not json".into(), 400),
        (
            json!({"profile": "codex", "stdin": "x".repeat(8192)}).to_string(),
            413,
        ),
        (
            r#"{"profile":"codex","timeout_seconds":300.0,"wait":false}"#.into(),
            202,
        ),
    ] {
        let (s, _, b) = call("POST", &url, Some(&t), Some(&body)).await;
        assert_eq!(s, want, "{body:.60}: {b}");
        if s >= 400 {
            let kind = if s == 413 {
                "payload_too_large"
            } else {
                "bad_request"
            };
            assert_eq!(b["error"]["type"], kind, "{b}");
        }
    }
    let (s, _, b) = call("PUT", &url, Some(&t), Some("{}")).await;
    assert_eq!(
        (s, b["error"]["type"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let (s, _, _) = call(
        "GET",
        &api.at("/api/v1/containers/runs/..%2F..%2Fetc"),
        Some(&t),
        None,
    )
    .await;
    assert_eq!(s, 404);
    let (s, _, _) = call(
        "GET",
        &api.at("/api/v1/containers/runs?limit=0"),
        Some(&t),
        None,
    )
    .await;
    assert_eq!(s, 400);
    let (s, _, doc) = call(
        "GET",
        &api.at("/api/v1/containers/openapi.json"),
        None,
        None,
    )
    .await;
    assert_eq!((s, doc["openapi"].as_str()), (200, Some("3.1.0")));
}

#[actix_rt::test]
async fn delete_cancels_and_nothing_comes_back() {
    let api = Api::with_fake_worker(|_| {}).await;
    let t = token("alice", ALL);
    let (_, _, a) = call(
        "POST",
        &api.at("/api/v1/containers/runs"),
        Some(&t),
        Some(r#"{"profile":"codex","args":["sleep","30"],"wait":false}"#),
    )
    .await;
    let id = a["run_id"].as_str().unwrap().to_owned();
    let fake = api.fake.clone().unwrap();
    for _ in 0..100 {
        if !fake.live().is_empty() {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    let url = api.at(&format!("/api/v1/containers/runs/{id}"));
    let (s, _, d) = call("DELETE", &url, Some(&t), None).await;
    assert_eq!(
        (s, d),
        (
            200,
            json!({"deleted": true, "run_id": id, "owner_account_id": "alice"})
        )
    );
    actix_rt::time::sleep(Duration::from_millis(300)).await; // the cancelled result arrives
    assert_eq!(
        call("GET", &url, Some(&t), None).await.0,
        404,
        "the cancelled result did not resurrect the run"
    );
    assert!(fake.live().is_empty(), "the container is gone");
    // A finished run's record is simply removed.
    let (_, _, done) = call(
        "POST",
        &api.at("/api/v1/containers/runs"),
        Some(&t),
        Some(r#"{"profile":"codex","args":["printf","x"]}"#),
    )
    .await;
    let url = api.at(&format!(
        "/api/v1/containers/runs/{}",
        done["run_id"].as_str().unwrap()
    ));
    assert_eq!(call("DELETE", &url, Some(&t), None).await.0, 200);
    assert_eq!(call("DELETE", &url, Some(&t), None).await.0, 404);
}

#[actix_rt::test]
async fn concurrency_limit_and_missed_deadline() {
    let api = Api::with_fake_worker(|o| {
        o.max_concurrent_runs = 1;
        o.request_timeout = Duration::from_secs(3);
    })
    .await;
    let t = token("alice", ALL);
    let runs = api.at("/api/v1/containers/runs");
    let pending = {
        let (runs, t) = (runs.clone(), t.clone());
        actix_rt::spawn(async move {
            call(
                "POST",
                &runs,
                Some(&t),
                Some(r#"{"profile":"codex","args":["sleep","30"]}"#),
            )
            .await
        })
    };
    let fake = api.fake.clone().unwrap();
    for _ in 0..500 {
        if fake.live().len() == 1 {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fake.live().len(), 1, "the first run holds the slot");
    let (s, retry, b) = call(
        "POST",
        &runs,
        Some(&t),
        Some(r#"{"profile":"codex","args":["printf","x"]}"#),
    )
    .await;
    assert_eq!(
        (s, b["error"]["type"].as_str()),
        (429, Some("rate_limited")),
        "{b}"
    );
    assert_eq!(retry.as_deref(), Some("1"));
    // Another account is not limited by alice's runs.
    let (s, _, _) = call(
        "POST",
        &runs,
        Some(&token("bob", ALL)),
        Some(r#"{"profile":"codex","args":["printf","x"]}"#),
    )
    .await;
    assert_eq!(s, 200);
    // The first run misses its deadline: 503, recorded lost, cancelled on its worker.
    let (s, _, b) = within(10, "the deadline answer", pending).await.unwrap();
    assert_eq!(
        (s, b["error"]["type"].as_str()),
        (503, Some("unavailable")),
        "{b}"
    );
    let (_, _, list) = call("GET", &runs, Some(&t), None).await;
    assert_eq!(list["items"][0]["state"], "lost", "{list}");
    for _ in 0..250 {
        if fake.live().is_empty() {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        fake.live().is_empty(),
        "the lost run was cancelled on its worker"
    );
}

#[actix_rt::test]
async fn logs_follow_wait_and_input() {
    let api = Api::with_fake_worker(|_| {}).await;
    let t = token("alice", ALL);
    let (_, _, a) = call(
        "POST",
        &api.at("/api/v1/containers/runs"),
        Some(&t),
        Some(r#"{"profile":"codex","args":["cat"],"interactive":true,"wait":false}"#),
    )
    .await;
    let id = a["run_id"].as_str().unwrap().to_owned();
    let run = |p: &str| api.at(&format!("/api/v1/containers/runs/{id}{p}"));
    let (s, _, b) = call("GET", &run("/wait?timeout=200ms"), Some(&t), None).await;
    assert_eq!((s, b["state"].as_str()), (202, Some("running")));
    let follow_url = run("/logs?follow=true");
    let tok = t.clone();
    let follower = actix_rt::spawn(async move {
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish();
        let mut resp = client
            .get(&follow_url)
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        let mut text = String::new();
        while let Some(chunk) = resp.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if text.contains("\"exit\"") {
                break;
            }
        }
        text
    });
    let (status, _) = post_until_ok(
        &run("/input"),
        &t,
        r#"{"data":"line one\n"}"#,
        50,
        Duration::from_millis(20),
    )
    .await;
    let sent = status == 200;
    assert!(sent);
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    let (s, _, _) = call(
        "POST",
        &run("/input"),
        Some(&t),
        Some(r#"{"data":"two","eof":true}"#),
    )
    .await;
    assert_eq!(s, 200);
    let text = within(10, "the follower sees the end", follower)
        .await
        .unwrap();
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let data: String = lines.iter().filter_map(|l| l["data"].as_str()).collect();
    assert_eq!(data, "line one\ntwo", "{text}");
    assert_eq!(lines.last().unwrap()["exit"]["state"], "succeeded");
    let (s, _, b) = call("GET", &run("/wait"), Some(&t), None).await;
    assert_eq!((s, b["stdout"].as_str()), (200, Some("line one\ntwo")));
    // A late follower of a finished run gets all of it, then the exit line.
    let (_, _, text) = call("GET", &run("/logs"), Some(&t), None).await;
    let text = text.as_str().unwrap().to_owned();
    assert!(
        text.contains("line one\\ntwo") && text.contains("\"exit\""),
        "{text}"
    );
    let (s, _, b) = call("POST", &run("/input"), Some(&t), Some(r#"{"data":"late"}"#)).await;
    assert_eq!((s, b["error"]["type"].as_str()), (409, Some("conflict")));
}

/// A billing service on the bus: bob has no billing.
struct MockBilling {
    requester: bus_containers::actors::bus::requester::Requester,
}

impl actix::Actor for MockBilling {
    type Context = actix::Context<Self>;
}

impl actix::Handler<Delivered> for MockBilling {
    type Result = ();
    fn handle(&mut self, Delivered(e): Delivered, _: &mut Self::Context) {
        let allowed = e.payload["account_id"] != "bob";
        let reply = if allowed {
            json!({"allowed": true, "reason": "billing_active"})
        } else {
            json!({"allowed": false, "reason": "billing_required", "command": "bus billing setup"})
        };
        let p = Publication::new("bus.billing.entitlement.check.response", reply)
            .with_correlation(e.correlation_id.clone().unwrap());
        let r = self.requester.clone();
        actix_rt::spawn(async move {
            r.publish(p).await.unwrap();
        });
    }
}

#[actix_rt::test]
async fn billing_says_no_and_usage_is_recorded_in_order() {
    use actix::Actor;
    let api = Api::with_fake_worker(|o| {
        o.usage_backend = UsageBackend::Events;
        o.billing_backend = BillingBackend::Events;
    })
    .await;
    let broker = api.broker.clone().unwrap();
    let billing = MockBilling {
        requester: crate::support::requester(&broker, "billing", true),
    }
    .start();
    Subscription::start(
        broker.clone(),
        SubscribeSpec::broadcast("bus.billing.entitlement.check.request"),
        billing.recipient(),
    )
    .await
    .unwrap();
    let mut usage = broker
        .subscribe(SubscribeSpec::broadcast("bus.usage.record.request"))
        .await
        .unwrap();

    let (s, _, b) = call(
        "POST",
        &api.at("/api/v1/containers/runs"),
        Some(&token("bob", ALL)),
        Some(RUN),
    )
    .await;
    assert_eq!(
        (s, b["error"]["type"].as_str()),
        (402, Some("billing_required")),
        "{b}"
    );
    assert_eq!(b["error"]["command"], "bus billing setup");
    assert!(b["error"]["action"].as_str().is_some());

    let (s, _, ok) = call(
        "POST",
        &api.at("/api/v1/containers/runs"),
        Some(&token("alice", ALL)),
        Some(r#"{"profile":"codex","args":["printf","hi"]}"#),
    )
    .await;
    assert_eq!((s, ok["stdout"].as_str()), (200, Some("hi")), "{ok}");
    let (_, _, bad) = call(
        "POST",
        &api.at("/api/v1/containers/runs"),
        Some(&token("alice", ALL)),
        Some(r#"{"image":"not-allowed:1","command":["x"]}"#),
    )
    .await;
    assert_eq!(bad["error"]["type"], "forbidden", "{bad}");
    let mut seen = Vec::new();
    for _ in 0..4 {
        let e = within(5, "usage events", usage.next())
            .await
            .unwrap()
            .unwrap();
        seen.push((
            e.payload["event_type"].as_str().unwrap().to_owned(),
            e.payload["event_id"].as_str().unwrap().to_owned(),
            e.payload.clone(),
        ));
    }
    let run_id = ok["run_id"].as_str().unwrap();
    assert_eq!(seen[0].0, "container_run_requested");
    assert_eq!(seen[0].1, format!("{run_id}:container_run_requested"));
    assert_eq!(seen[1].0, "container_run_finished");
    assert_eq!(seen[1].2["account_id"], "alice");
    assert_eq!(seen[1].2["data"]["state"], "succeeded");
    assert!(seen[1].2["data"]["duration_ms"].is_u64());
    assert_eq!(seen[2].0, "container_run_requested");
    assert_eq!(seen[3].0, "container_run_failed");
    assert_eq!(seen[3].2["data"]["error"]["type"], "forbidden");
}

#[actix_rt::test]
async fn the_ledger_survives_a_restart_and_only_its_own_instance_resolves_its_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.sqlite");
    let t = token("alice", ALL);
    // An events backend with nobody answering: the run stays running.
    let (broker, _) = crate::support::memory_broker();
    let first = Api::start(
        ContainersOptions {
            backend: bus_containers::cli::serve_containers::ApiBackend::Events,
            ..instance("one")
        },
        Arc::new(SqliteStore::open(&path).unwrap()),
        Some(broker),
    )
    .await;
    let (s, _, a) = call(
        "POST",
        &first.at("/api/v1/containers/runs"),
        Some(&t),
        Some(r#"{"profile":"codex","wait":false}"#),
    )
    .await;
    assert_eq!(s, 202);
    let id = a["run_id"].as_str().unwrap().to_owned();
    first.handle.stop(false).await;
    drop(first);

    // Another instance on the same ledger leaves it alone...
    let other = Api::start(
        instance("two"),
        Arc::new(SqliteStore::open(&path).unwrap()),
        None,
    )
    .await;
    let (_, _, r) = call(
        "GET",
        &other.at(&format!("/api/v1/containers/runs/{id}")),
        Some(&t),
        None,
    )
    .await;
    assert_eq!(r["state"], "running");
    other.handle.stop(false).await;
    // ...the same instance, restarted, asks its workers about it; none
    // ever accepted it, so it is refused (never started, never will be).
    let again = Api::start(
        instance("one"),
        Arc::new(SqliteStore::open(&path).unwrap()),
        None,
    )
    .await;
    let mut r = serde_json::Value::Null;
    for _ in 0..60 {
        let (s, _, got) = call(
            "GET",
            &again.at(&format!("/api/v1/containers/runs/{id}")),
            Some(&t),
            None,
        )
        .await;
        assert_eq!(s, 200);
        r = got;
        if r["state"] != "running" {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(r["state"].as_str(), Some("error"), "{r}");
    let (s, _, r) = call(
        "GET",
        &again.at(&format!("/api/v1/containers/runs/{id}/wait")),
        Some(&t),
        None,
    )
    .await;
    assert_eq!((s, r["error"]["type"].as_str()), (503, Some("unavailable")));
}
