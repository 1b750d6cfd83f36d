//! The Events API as the delivery guarantees need it: a stream whose
//! client has gone gets no more events (a unicast event goes to a live
//! consumer of the group at once), and a publish sent twice with the same
//! `Idempotency-Key` is published once. Real processes, real sockets.

use crate::support::*;
use bus_containers::broker::{Broker, SharedBroker, SubscribeSpec};
use bus_containers::contract::{Envelope, Publication};
use futures::StreamExt;
use serde_json::json;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

#[actix_rt::test]
async fn a_unicast_event_never_goes_to_a_stream_whose_client_was_killed() {
    let events = events_process();
    let token = mint("listener", "events:send events:listen");
    // Consumer one: a `bus events listen` process in group g.
    let mut listener = bus()
        .args([
            "events",
            "listen",
            "--name",
            "app.work",
            "--delivery",
            "unicast",
            "--group",
            "g",
            "--consumer",
            "doomed",
        ])
        .env("BUS_EVENTS_API_URL", events.url())
        .env("BUS_API_TOKEN", &token)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Consumer two: this test, in the same group.
    let http: SharedBroker = Arc::new(http_client(events.addr, &token));
    let mut mine = http
        .subscribe(SubscribeSpec::unicast("app.work", "g").consumer("survivor"))
        .await
        .unwrap();
    // Both are connected once the first events alternate between them.
    let publish = |i: usize| {
        let http = http.clone();
        async move {
            http.publish(Envelope::stamp(
                Publication::new("app.work", json!({"n": i})),
                "listener",
                false,
            ))
            .await
            .unwrap();
        }
    };
    // Warm up until both consumers have had an event.
    let out = listener.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut theirs, mut ours) = (0, 0);
    for i in 0..200 {
        publish(i).await;
        if let Ok(Some(_)) = actix_rt::time::timeout(Duration::from_millis(100), mine.next()).await
        {
            ours += 1;
        }
        theirs += rx.try_iter().count();
        if theirs > 0 && ours > 0 {
            break;
        }
    }
    assert!(
        theirs > 0 && ours > 0,
        "both consumers took events ({theirs}, {ours})"
    );
    // SIGKILL: its kernel closes the connection; no heartbeat has been
    // written since, so only watching the socket can tell.
    listener.kill().unwrap();
    listener.wait().unwrap();
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    for i in 100..120 {
        publish(i).await;
    }
    let mut got = Vec::new();
    while got.len() < 20 {
        let e = within(
            5,
            "every event after the kill reaches the live consumer",
            mine.next(),
        )
        .await
        .unwrap()
        .unwrap();
        let n = e.payload["n"].as_u64().unwrap();
        if n >= 100 {
            got.push(n);
        }
    }
    assert_eq!(got, (100..120).collect::<Vec<u64>>());
}

#[actix_rt::test]
async fn a_publish_sent_twice_with_the_same_key_is_published_once() {
    let events = events_process();
    let token = mint("pub", "events:send events:listen");
    let http = http_client(events.addr, &token);
    let mut stream = http
        .subscribe(SubscribeSpec::broadcast("app.once"))
        .await
        .unwrap();
    let url = format!("{}/api/v1/events", events.url());
    let send = |key: &'static str| {
        let (url, token) = (url.clone(), token.clone());
        async move {
            let mut resp = awc::Client::default()
                .post(&url)
                .bearer_auth(&token)
                .insert_header(("Idempotency-Key", key))
                .send_json(&json!({"name": "app.once", "payload": {"key": key}}))
                .await
                .unwrap();
            let body: serde_json::Value = resp.json().await.unwrap();
            (
                resp.status().as_u16(),
                body["id"].as_str().unwrap().to_owned(),
            )
        }
    };
    // Both copies at once, as after a stalled API resumes.
    let (a, b) = futures::join!(send("retry-1"), send("retry-1"));
    assert_eq!((a.0, b.0), (202, 202));
    assert_eq!(a.1, b.1, "the repeat is answered with the first id");
    let other = send("retry-2").await;
    assert_ne!(other.1, a.1);
    let first = within(5, "the event", stream.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.payload["key"], "retry-1");
    let second = within(5, "the next event", stream.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        second.payload["key"], "retry-2",
        "retry-1 was published once"
    );
}
