//! The Events API over real sockets: auth matrix, ACL, stamping, identity
//! filtering, name validation, delivery semantics, heartbeats, limits.

use crate::support::*;
use bus_containers::auth::AUDIENCE_API;
use bus_containers::broker::memory::HubConfig;
use bus_containers::broker::{Broker, SubscribeSpec};
use bus_containers::contract::{Envelope, Publication};
use futures::StreamExt;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

fn raw_token(header: Header, secret: &[u8], claims: serde_json::Value) -> String {
    encode(&header, &claims, &EncodingKey::from_secret(secret)).unwrap()
}

fn claims(sub: Option<&str>, iat: Option<i64>, exp: Option<i64>, aud: &str) -> serde_json::Value {
    let mut c = json!({"aud": aud, "scope": "events:send"});
    if let Some(s) = sub {
        c["sub"] = json!(s);
    }
    if let Some(i) = iat {
        c["iat"] = json!(i);
    }
    if let Some(e) = exp {
        c["exp"] = json!(e);
    }
    c
}

fn b64(v: &serde_json::Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

async fn publish_status(srv: &EventsServer, token: Option<&str>) -> (u16, serde_json::Value) {
    post(
        &srv.url("/api/v1/events"),
        token,
        r#"{"name":"app.hello","payload":{}}"#,
    )
    .await
}

#[actix_rt::test]
async fn auth_matrix() {
    let old = b"the-old-secret".to_vec();
    let srv = EventsServer::start_with(EventsOpts {
        previous_secret: Some(old.clone()),
        ..Default::default()
    })
    .await;
    let t = now();
    let hs = |c| raw_token(Header::default(), SECRET, c);
    let cases: Vec<(&str, Option<String>, u16)> = vec![
        ("valid", Some(mint("alice", "events:send")), 202),
        (
            "iat within leeway",
            Some(hs(claims(
                Some("a"),
                Some(t + 30),
                Some(t + 600),
                AUDIENCE_API,
            ))),
            202,
        ),
        (
            "previous secret during rotation",
            Some(raw_token(
                Header::default(),
                &old,
                claims(Some("a"), Some(t), Some(t + 600), AUDIENCE_API),
            )),
            202,
        ),
        ("no header", None, 401),
        (
            "expired",
            Some(hs(claims(
                Some("a"),
                Some(t - 600),
                Some(t - 60),
                AUDIENCE_API,
            ))),
            401,
        ),
        (
            "future iat",
            Some(hs(claims(
                Some("a"),
                Some(t + 300),
                Some(t + 900),
                AUDIENCE_API,
            ))),
            401,
        ),
        (
            "wrong audience",
            Some(hs(claims(Some("a"), Some(t), Some(t + 600), "other/api"))),
            401,
        ),
        (
            "internal audience",
            Some(hs(claims(
                Some("a"),
                Some(t),
                Some(t + 600),
                "ai.hg.fi/internal",
            ))),
            401,
        ),
        (
            "alg none",
            Some(format!(
                "{}.{}.",
                b64(&json!({"alg":"none","typ":"JWT"})),
                b64(&claims(Some("a"), Some(t), Some(t + 600), AUDIENCE_API))
            )),
            401,
        ),
        (
            "HS512",
            Some(raw_token(
                Header::new(jsonwebtoken::Algorithm::HS512),
                SECRET,
                claims(Some("a"), Some(t), Some(t + 600), AUDIENCE_API),
            )),
            401,
        ),
        (
            "wrong secret",
            Some(raw_token(
                Header::default(),
                b"not-the-secret",
                claims(Some("a"), Some(t), Some(t + 600), AUDIENCE_API),
            )),
            401,
        ),
        (
            "missing sub",
            Some(hs(claims(None, Some(t), Some(t + 600), AUDIENCE_API))),
            401,
        ),
        (
            "empty sub",
            Some(hs(claims(Some(""), Some(t), Some(t + 600), AUDIENCE_API))),
            401,
        ),
        (
            "missing exp",
            Some(hs(claims(Some("a"), Some(t), None, AUDIENCE_API))),
            401,
        ),
        (
            "missing iat",
            Some(hs(claims(Some("a"), None, Some(t + 600), AUDIENCE_API))),
            401,
        ),
        ("garbage", Some("garbage".into()), 401),
        ("three garbage parts", Some("a.b.c".into()), 401),
    ];
    for (what, token, want) in cases {
        let (status, body) = publish_status(&srv, token.as_deref()).await;
        assert_eq!(status, want, "{what}: {body}");
        if want == 401 {
            assert_eq!(body["error"]["type"], "invalid_auth", "{what}: {body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{what}"
            );
        }
    }
    // Not a bearer scheme.
    let mut resp = http()
        .post(srv.url("/api/v1/events"))
        .insert_header(("Authorization", "Basic YTpi"))
        .send_body(r#"{"name":"app.hello"}"#)
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_auth");

    // Once the previous secret is rotated out, its tokens stop working.
    let rotated = EventsServer::start().await;
    let old_token = raw_token(
        Header::default(),
        &old,
        claims(Some("a"), Some(t), Some(t + 600), AUDIENCE_API),
    );
    assert_eq!(publish_status(&rotated, Some(&old_token)).await.0, 401);
}

#[actix_rt::test]
async fn acl_per_prefix_for_publish_and_listen() {
    let srv = EventsServer::start().await;
    let user = mint("u", "events:send events:listen");
    let admin = mint("svc", "container:admin");
    let usage = mint("u", "usage:write usage:read");
    let billing = mint("u", "billing:entitlement:check billing:read");
    let publish = |name: &str, token: &str| {
        let url = srv.url("/api/v1/events");
        let body = json!({"name": name}).to_string();
        let token = token.to_owned();
        async move { post(&url, Some(&token), &body).await.0 }
    };
    let listen = |name: &str, token: &str| {
        let url = srv.url(&format!("/api/v1/events/stream?name={name}&follow=false"));
        let token = token.to_owned();
        async move { get(&url, Some(&token)).await.0 }
    };
    for name in [
        "bus.containers.run.request",
        "bus.docker.run.request",
        "bus.podman.status.request",
    ] {
        assert_eq!(publish(name, &user).await, 403, "{name}");
        assert_eq!(listen(name, &user).await, 403, "{name}");
        assert_eq!(publish(name, &admin).await, 202, "{name}");
        assert_eq!(listen(name, &admin).await, 200, "{name}");
    }
    assert_eq!(publish("app.hello", &user).await, 202);
    assert_eq!(listen("app.hello", &user).await, 200);
    assert_eq!(
        publish("app.hello", &admin).await,
        403,
        "container:admin is not events:send"
    );
    assert_eq!(publish("bus.usage.record.request", &user).await, 403);
    assert_eq!(publish("bus.usage.record.request", &usage).await, 202);
    assert_eq!(listen("bus.usage.record.request", &usage).await, 200);
    assert_eq!(listen("bus.usage.record.request", &user).await, 403);
    assert_eq!(
        publish("bus.billing.entitlement.check.request", &billing).await,
        202
    );
    assert_eq!(
        listen("bus.billing.entitlement.check.request", &billing).await,
        200
    );
    assert_eq!(
        publish("bus.billing.entitlement.check.request", &usage).await,
        403
    );
    let everything = mint("root", ADMIN);
    assert_eq!(publish("bus.containers.x", &everything).await, 202);
    assert_eq!(listen("bus.billing.x", &everything).await, 200);
    let (status, body) = post(
        &srv.url("/api/v1/events"),
        Some(&user),
        r#"{"name":"bus.docker.x"}"#,
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["type"], "forbidden");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("container:admin"),
        "{body}"
    );
}

#[actix_rt::test]
async fn service_stamp_and_identity_filtering() {
    let srv = EventsServer::start().await;
    let alice = srv.client(&mint("alice", "events:send events:listen"));
    let bob = srv.client(&mint("bob", "events:send events:listen"));
    let admin = srv.client(&mint("ops", ADMIN));
    let mut alice_sees = alice
        .subscribe(SubscribeSpec::broadcast("app.chat"))
        .await
        .unwrap();
    let mut admin_sees = admin
        .subscribe(SubscribeSpec::broadcast("app.chat"))
        .await
        .unwrap();

    // A caller cannot forge the stamped fields.
    let forged = json!({"name":"app.chat","id":"evt_forged","identity_id":"alice","service":true,"time":"1999-01-01T00:00:00Z","payload":{"from":"bob"}});
    let (status, _) = post(
        &srv.url("/api/v1/events"),
        Some(&mint("bob", "events:send")),
        &forged.to_string(),
    )
    .await;
    assert_eq!(status, 202);
    alice
        .publish(Envelope::stamp(
            Publication::new("app.chat", json!({"from":"alice"})),
            "x",
            true,
        ))
        .await
        .unwrap();
    bob.publish(Envelope::stamp(
        Publication::new("app.chat", json!({"from":"bob2"})),
        "x",
        false,
    ))
    .await
    .unwrap();
    admin
        .publish(Envelope::stamp(
            Publication::new("app.chat", json!({"from":"ops"})),
            "x",
            false,
        ))
        .await
        .unwrap();

    let first = within(5, "alice's event", alice_sees.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.payload["from"], "alice");
    assert_eq!(first.identity_id, "alice");
    assert!(!first.service);

    let mut seen = Vec::new();
    for _ in 0..4 {
        let e = within(5, "admin stream", admin_sees.next())
            .await
            .unwrap()
            .unwrap();
        seen.push((
            e.identity_id.clone(),
            e.service,
            e.payload["from"].as_str().unwrap().to_owned(),
            e.id.clone(),
            e.time.clone(),
        ));
    }
    assert_eq!(seen[0].0, "bob");
    assert!(!seen[0].1, "bob's forged service flag is overwritten");
    assert_ne!(seen[0].3, "evt_forged");
    assert!(!seen[0].4.starts_with("1999"));
    assert_eq!(seen[1].0, "alice");
    assert_eq!(seen[2].0, "bob");
    assert_eq!(
        seen[3],
        (
            "ops".into(),
            true,
            "ops".into(),
            seen[3].3.clone(),
            seen[3].4.clone()
        )
    );

    // Alice saw neither of bob's events nor the admin's: the next thing on
    // her stream is her own next event.
    alice
        .publish(Envelope::stamp(
            Publication::new("app.chat", json!({"from":"alice-again"})),
            "x",
            false,
        ))
        .await
        .unwrap();
    let next = within(5, "alice's second event", alice_sees.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.payload["from"], "alice-again");

    // A container service sees every identity on container names.
    let svc = srv.client(&mint("router", "container:admin"));
    let mut svc_sees = svc
        .subscribe(SubscribeSpec::broadcast("bus.containers.run.response"))
        .await
        .unwrap();
    let other = srv.client(&mint("worker", "container:admin"));
    other
        .publish(Envelope::stamp(
            Publication::new("bus.containers.run.response", json!({})),
            "x",
            false,
        ))
        .await
        .unwrap();
    let got = within(5, "service stream", svc_sees.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.identity_id, "worker");
    assert!(
        got.service,
        "container:admin publishers are stamped service"
    );
}

#[actix_rt::test]
async fn names_bodies_and_limits() {
    let srv = EventsServer::start_with(EventsOpts {
        max_payload: 2048,
        ..Default::default()
    })
    .await;
    let token = mint("u", "events:send events:listen");
    let url = srv.url("/api/v1/events");
    for (body, want) in [
        (r#"{"name":"Bad.Name"}"#.to_owned(), 400),
        (r#"{"name":"a..b"}"#.into(), 400),
        (r#"{"name":"app.*"}"#.into(), 400),
        (json!({"name": "a".repeat(201)}).to_string(), 400),
        (r#"{"payload":{}}"#.into(), 400),
        ("not json".into(), 400),
        (r#"{"name":"app.x"} trailing"#.into(), 400),
        ("".into(), 400),
        (
            r#"{"name":"app.x","delivery":"unicast","group":"g","correlation_id":"c"}"#.into(),
            202,
        ),
        (
            json!({"name":"app.x","payload":"x".repeat(4096)}).to_string(),
            413,
        ),
    ] {
        let (status, resp) = post(&url, Some(&token), &body).await;
        assert_eq!(status, want, "{body:.80}: {resp}");
        if status == 400 {
            assert_eq!(resp["error"]["type"], "bad_request", "{resp}");
        }
        if status == 413 {
            assert_eq!(resp["error"]["type"], "payload_too_large", "{resp}");
        }
        if status == 202 {
            assert_eq!(resp["accepted"], true);
            assert_eq!(resp["name"], "app.x");
            assert!(resp["id"].as_str().unwrap().starts_with("evt_"));
        }
    }
    for query in [
        "",
        "?name=a..b",
        "?name=app.x&delivery=sideways",
        "?name=app.x&replay=perhaps",
    ] {
        let (status, resp) = get(
            &srv.url(&format!("/api/v1/events/stream{query}")),
            Some(&token),
        )
        .await;
        assert_eq!(status, 400, "{query}: {resp}");
        assert_eq!(resp["error"]["type"], "bad_request");
    }
    // 401 and 403 come back as plain errors before any stream opens.
    let (status, resp) = get(&srv.url("/api/v1/events/stream?name=app.x"), Some("nope")).await;
    assert_eq!(
        (status, resp["error"]["type"].as_str()),
        (401, Some("invalid_auth"))
    );
    let (status, resp) = get(
        &srv.url("/api/v1/events/stream?name=bus.containers.x"),
        Some(&token),
    )
    .await;
    assert_eq!(
        (status, resp["error"]["type"].as_str()),
        (403, Some("forbidden"))
    );
    assert_eq!(srv.metric("bus_events_open_streams"), 0);
}

#[actix_rt::test]
async fn unicast_exactly_once_per_group_and_broadcast_fan_out() {
    let srv = EventsServer::start().await;
    let token = mint("svc", ADMIN);
    let mut workers = Vec::new();
    for i in 0..3 {
        let c = srv.client(&token);
        workers.push(
            c.subscribe(SubscribeSpec::unicast("app.job", "workers").consumer(format!("w{i}")))
                .await
                .unwrap(),
        );
    }
    let audit = srv
        .client(&token)
        .subscribe(SubscribeSpec::unicast("app.job", "audit"))
        .await
        .unwrap();
    let mut fans = Vec::new();
    for _ in 0..3 {
        fans.push(
            srv.client(&token)
                .subscribe(SubscribeSpec::broadcast("app.job"))
                .await
                .unwrap(),
        );
    }
    let publisher = srv.client(&token);
    const N: usize = 60;
    for i in 0..N {
        publisher
            .publish(Envelope::stamp(
                Publication::new("app.job", json!({"i": i})),
                "x",
                true,
            ))
            .await
            .unwrap();
    }
    let take = |s: bus_containers::broker::EventStream, n: usize| async move {
        s.take(n)
            .map(|e| e.unwrap().payload["i"].as_u64().unwrap())
            .collect::<Vec<_>>()
            .await
    };
    // The group's consumers split the events: every event exactly once.
    let mut counts: HashMap<u64, usize> = HashMap::new();
    let mut per_worker = Vec::new();
    let share = N / 3; // round robin over three live consumers
    for w in workers {
        let got = within(10, "worker share", take(w, share)).await;
        per_worker.push(got.len());
        for i in got {
            *counts.entry(i).or_default() += 1;
        }
    }
    assert_eq!(counts.len(), N, "every event reached the group");
    assert!(
        counts.values().all(|c| *c == 1),
        "no event twice: {counts:?}"
    );
    assert!(per_worker.iter().all(|n| *n > 0), "{per_worker:?}");
    // Another group gets its own copy of each.
    let audited = within(10, "audit group", take(audit, N)).await;
    assert_eq!(audited, (0..N as u64).collect::<Vec<_>>());
    // Broadcast: every stream gets everything, in order.
    for f in fans {
        assert_eq!(
            within(10, "fan-out", take(f, N)).await,
            (0..N as u64).collect::<Vec<_>>()
        );
    }
    assert_eq!(srv.metric("bus_events_published_total"), N as i64);
}

#[actix_rt::test]
async fn replay_and_follow_false() {
    let srv = EventsServer::start().await;
    let token = mint("svc", ADMIN);
    let c = srv.client(&token);
    for i in 0..5 {
        c.publish(Envelope::stamp(
            Publication::new("app.log", json!({"i": i})),
            "x",
            true,
        ))
        .await
        .unwrap();
    }
    let replayed: Vec<_> = within(
        5,
        "replay then close",
        c.subscribe(
            SubscribeSpec::broadcast("app.log")
                .replay(true)
                .follow(false),
        )
        .await
        .unwrap()
        .collect::<Vec<_>>(),
    )
    .await;
    let is: Vec<_> = replayed
        .iter()
        .map(|e| e.as_ref().unwrap().payload["i"].as_u64().unwrap())
        .collect();
    assert_eq!(is, vec![0, 1, 2, 3, 4]);
    // follow=false without replay: closes at once, empty.
    let empty: Vec<_> = within(
        5,
        "no replay, no follow",
        c.subscribe(SubscribeSpec::broadcast("app.log").follow(false))
            .await
            .unwrap()
            .collect::<Vec<_>>(),
    )
    .await;
    assert!(empty.is_empty());
    // replay + follow: stored events, then live ones.
    let mut s = c
        .subscribe(SubscribeSpec::broadcast("app.log").replay(true))
        .await
        .unwrap();
    for want in 0..5 {
        assert_eq!(
            within(5, "replayed", s.next())
                .await
                .unwrap()
                .unwrap()
                .payload["i"],
            want
        );
    }
    c.publish(Envelope::stamp(
        Publication::new("app.log", json!({"i": 5})),
        "x",
        true,
    ))
    .await
    .unwrap();
    assert_eq!(
        within(5, "live after replay", s.next())
            .await
            .unwrap()
            .unwrap()
            .payload["i"],
        5
    );
}

#[actix_rt::test]
async fn heartbeats_are_empty_lines() {
    let srv = EventsServer::start_with(EventsOpts {
        heartbeat: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let token = mint("u", "events:listen");
    let addr = srv.addr;
    let got = actix_rt::task::spawn_blocking(move || {
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            tcp,
            "GET /api/v1/events/stream?name=app.quiet HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            let n = tcp.read(&mut buf).unwrap();
            seen.extend_from_slice(&buf[..n]);
            // chunked encoding: a heartbeat is a chunk of size 1 holding "\n".
            if String::from_utf8_lossy(&seen).matches("\r\n1\r\n\n\r\n").count() >= 2 {
                break;
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    })
    .await
    .unwrap();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.contains("application/x-ndjson"), "{got}");
    assert!(
        got.matches("\r\n1\r\n\n\r\n").count() >= 2,
        "two heartbeats: {got:?}"
    );
}

#[actix_rt::test]
async fn a_slow_consumer_is_cut_off_and_does_not_stall_others() {
    let srv = EventsServer::start_with(EventsOpts {
        hub: HubConfig {
            queue_capacity: 64,
            ..HubConfig::default()
        },
        ..Default::default()
    })
    .await;
    let token = mint("svc", ADMIN);
    // A consumer that opens a stream and never reads it.
    let addr = srv.addr;
    let stuck_token = token.clone();
    let stuck = std::thread::spawn(move || {
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        write!(
            tcp,
            "GET /api/v1/events/stream?name=app.firehose&consumer=stuck HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {stuck_token}\r\n\r\n"
        )
        .unwrap();
        std::thread::sleep(Duration::from_secs(20));
        drop(tcp);
    });
    let c = srv.client(&token);
    let fast = c
        .subscribe(SubscribeSpec::broadcast("app.firehose").consumer("fast"))
        .await
        .unwrap();
    // Give the stuck stream time to be registered.
    for _ in 0..500 {
        if srv.metric("bus_events_open_streams") >= 2 {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        srv.metric("bus_events_open_streams") >= 2,
        "both streams open"
    );
    const N: usize = 1500;
    let blob = "x".repeat(16 * 1024);
    let reader = actix_rt::spawn(async move {
        fast.take(N)
            .map(|e| e.unwrap().payload["i"].as_u64().unwrap())
            .collect::<Vec<_>>()
            .await
    });
    for i in 0..N {
        c.publish(Envelope::stamp(
            Publication::new("app.firehose", json!({"i": i, "blob": blob})),
            "x",
            true,
        ))
        .await
        .unwrap();
    }
    let got = within(30, "the fast consumer gets everything", reader)
        .await
        .unwrap();
    assert_eq!(got, (0..N as u64).collect::<Vec<_>>());
    assert!(
        srv.metric("bus_events_slow_consumers_cut_off_total") >= 1,
        "{}",
        srv.metrics.render()
    );
    drop(stuck);
}

#[actix_rt::test]
async fn probes() {
    let srv = EventsServer::start().await;
    assert_eq!(
        get(&srv.url("/readyz"), None).await,
        (200, json!({"ok": true}))
    );
    assert_eq!(
        get(&srv.url("/healthz"), None).await,
        (200, json!({"ok": true}))
    );
    let mut resp = http().get(srv.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let text = String::from_utf8(resp.body().await.unwrap().to_vec()).unwrap();
    for m in [
        "bus_events_published_total",
        "bus_events_delivered_total",
        "bus_events_dropped_total",
        "bus_events_open_streams",
    ] {
        assert!(text.contains(m), "{m} in {text}");
    }
    let (status, body) = get(&srv.url("/no/such/path"), None).await;
    assert_eq!(
        (status, body["error"]["type"].as_str()),
        (404, Some("not_found"))
    );
}
