//! One conformance suite for every `Broker` backend: the in-memory hub and
//! the HTTP client against a real Events API (NATS joins it later).

use crate::support::*;
use bus_containers::broker::memory::{HubConfig, MemoryBroker};
use bus_containers::broker::{EventStream, SharedBroker, SubscribeSpec};
use bus_containers::contract::{Envelope, Publication};
use bus_containers::metrics::{BusMetrics, Metrics};
use futures::StreamExt;
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;

fn event(name: &str, i: usize) -> Envelope {
    Envelope::stamp(
        Publication::new(name, json!({ "i": i })).with_correlation(format!("corr-{i}")),
        "svc",
        true,
    )
}

async fn take(stream: EventStream, n: usize) -> Vec<u64> {
    within(
        10,
        "events",
        stream
            .take(n)
            .map(|e| e.unwrap().payload["i"].as_u64().unwrap())
            .collect(),
    )
    .await
}

/// Everything a backend must do. `b` publishes and subscribes with a
/// service identity that sees every event.
pub async fn suite(b: SharedBroker) {
    b.ready().expect("a fresh backend is ready");

    // Broadcast: each subscriber gets every event, in publish order, with
    // the payload and correlation id intact and the broker's stamps.
    let s1 = b
        .subscribe(SubscribeSpec::broadcast("conf.fan"))
        .await
        .unwrap();
    let mut s2 = b
        .subscribe(SubscribeSpec::broadcast("conf.fan"))
        .await
        .unwrap();
    let id = b.publish(event("conf.fan", 0)).await.unwrap();
    assert!(!id.is_empty());
    let first = within(5, "first event", s2.next()).await.unwrap().unwrap();
    assert_eq!(first.name, "conf.fan");
    assert_eq!(first.correlation_id.as_deref(), Some("corr-0"));
    assert_eq!(first.payload, json!({"i": 0}));
    assert_eq!(first.id, id);
    assert!(!first.time.is_empty());
    for i in 1..20 {
        b.publish(event("conf.fan", i)).await.unwrap();
    }
    assert_eq!(take(s1, 20).await, (0..20).collect::<Vec<_>>());
    assert_eq!(take(s2, 19).await, (1..20).collect::<Vec<_>>());

    // Unicast: each event to exactly one consumer of a group; every group
    // gets its own copy.
    let mut group = Vec::new();
    for c in 0..3 {
        group.push(
            b.subscribe(SubscribeSpec::unicast("conf.work", "g").consumer(format!("c{c}")))
                .await
                .unwrap(),
        );
    }
    let other = b
        .subscribe(SubscribeSpec::unicast("conf.work", "h"))
        .await
        .unwrap();
    for i in 0..30 {
        b.publish(event("conf.work", i)).await.unwrap();
    }
    // However a backend spreads them (round robin, random), the group as a
    // whole gets each event exactly once.
    let mut merged = futures::stream::select_all(group);
    let mut seen = HashSet::new();
    for _ in 0..30 {
        let e = within(10, "group events", merged.next())
            .await
            .unwrap()
            .unwrap();
        let i = e.payload["i"].as_u64().unwrap();
        assert!(seen.insert(i), "event {i} delivered twice in one group");
    }
    assert_eq!(seen.len(), 30);
    let extra = actix_rt::time::timeout(std::time::Duration::from_millis(300), merged.next()).await;
    assert!(
        extra.is_err(),
        "no event beyond the 30: {:?}",
        extra.ok().flatten().map(|e| e.map(|e| e.payload.clone()))
    );
    assert_eq!(take(other, 30).await, (0..30).collect::<Vec<_>>());

    // Replay: stored events first; follow=false closes after them.
    for i in 0..3 {
        b.publish(event("conf.replay", i)).await.unwrap();
    }
    let replayed = b
        .subscribe(
            SubscribeSpec::broadcast("conf.replay")
                .replay(true)
                .follow(false),
        )
        .await
        .unwrap();
    let all: Vec<_> = within(5, "replay closes", replayed.collect::<Vec<_>>()).await;
    let is: Vec<_> = all
        .into_iter()
        .map(|e| e.unwrap().payload["i"].as_u64().unwrap())
        .collect();
    assert_eq!(is, vec![0, 1, 2]);

    // A dropped subscriber does not disturb the others.
    let gone = b
        .subscribe(SubscribeSpec::broadcast("conf.drop"))
        .await
        .unwrap();
    let kept = b
        .subscribe(SubscribeSpec::broadcast("conf.drop"))
        .await
        .unwrap();
    drop(gone);
    for i in 0..5 {
        b.publish(event("conf.drop", i)).await.unwrap();
    }
    assert_eq!(take(kept, 5).await, (0..5).collect::<Vec<_>>());
}

#[actix_rt::test]
async fn memory_backend() {
    let b: SharedBroker = Arc::new(MemoryBroker::start(
        HubConfig::default(),
        BusMetrics::register(&Metrics::new()),
    ));
    assert_eq!(b.kind(), "memory");
    suite(b).await;
}

#[actix_rt::test]
async fn http_backend() {
    let srv = EventsServer::start().await;
    let b: SharedBroker = Arc::new(srv.client(&mint("svc", ADMIN)));
    assert_eq!(b.kind(), "http");
    suite(b).await;
}
