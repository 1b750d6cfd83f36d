//! The embedded hub's own bounds: slow-consumer policy, replay window,
//! identity filtering inside unicast groups, cleanup of dropped streams.

use bus_containers::broker::memory::{HubConfig, MemoryBroker};
use bus_containers::broker::{Broker, SubscribeSpec};
use bus_containers::contract::{Envelope, Publication};
use bus_containers::metrics::{BusMetrics, Metrics};
use futures::StreamExt;
use serde_json::json;
use std::time::Duration;

fn start(config: HubConfig) -> (MemoryBroker, Metrics) {
    let metrics = Metrics::new();
    (
        MemoryBroker::start(config, BusMetrics::register(&metrics)),
        metrics,
    )
}

fn metric(m: &Metrics, name: &str) -> i64 {
    m.render()
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

fn ev(name: &str, who: &str, i: usize) -> Envelope {
    Envelope::stamp(Publication::new(name, json!({ "i": i })), who, false)
}

#[actix_rt::test]
async fn slow_consumer_is_cut_off_others_get_everything() {
    let (b, m) = start(HubConfig {
        queue_capacity: 16,
        ..HubConfig::default()
    });
    let slow = b
        .subscribe(SubscribeSpec::broadcast("t").consumer("slow"))
        .await
        .unwrap();
    let fast = b
        .subscribe(SubscribeSpec::broadcast("t").consumer("fast"))
        .await
        .unwrap();
    let reader = actix_rt::spawn(async move { fast.take(200).count().await });
    for i in 0..200 {
        b.publish(ev("t", "p", i)).await.unwrap();
        if i % 8 == 0 {
            actix_rt::task::yield_now().await;
        }
    }
    assert_eq!(reader.await.unwrap(), 200);
    assert_eq!(metric(&m, "bus_events_slow_consumers_cut_off_total"), 1);
    // The slow stream holds what was queued when it was cut off, then ends.
    let kept: Vec<_> = tokio::time::timeout(Duration::from_secs(5), slow.collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(kept.len(), 16);
}

#[actix_rt::test]
async fn replay_window_is_bounded() {
    let (b, _) = start(HubConfig {
        replay_per_name: 10,
        replay_bytes: 1 << 20,
        ..HubConfig::default()
    });
    for i in 0..50 {
        b.publish(ev("r", "p", i)).await.unwrap();
    }
    let got: Vec<u64> = b
        .subscribe(SubscribeSpec::broadcast("r").replay(true).follow(false))
        .await
        .unwrap()
        .map(|e| e.unwrap().payload["i"].as_u64().unwrap())
        .collect()
        .await;
    assert_eq!(got, (40..50).collect::<Vec<_>>());

    // The byte budget evicts the name published longest ago first.
    let (b, _) = start(HubConfig {
        replay_per_name: 1000,
        replay_bytes: 4096,
        ..HubConfig::default()
    });
    let big = "y".repeat(1000);
    b.publish(Envelope::stamp(
        Publication::new("old", json!({"b": big})),
        "p",
        false,
    ))
    .await
    .unwrap();
    for i in 0..3 {
        b.publish(Envelope::stamp(
            Publication::new("new", json!({"b": big, "i": i})),
            "p",
            false,
        ))
        .await
        .unwrap();
    }
    let old: Vec<_> = b
        .subscribe(SubscribeSpec::broadcast("old").replay(true).follow(false))
        .await
        .unwrap()
        .collect()
        .await;
    let new: Vec<_> = b
        .subscribe(SubscribeSpec::broadcast("new").replay(true).follow(false))
        .await
        .unwrap()
        .collect()
        .await;
    assert!(old.is_empty(), "the oldest name lost its window");
    assert_eq!(new.len(), 3);
}

#[actix_rt::test]
async fn unicast_respects_identity_filter_and_drops_are_counted() {
    let (b, m) = start(HubConfig::default());
    let mut alice = b
        .subscribe(SubscribeSpec::unicast("u", "g").only_identity("alice"))
        .await
        .unwrap();
    let mut bob = b
        .subscribe(SubscribeSpec::unicast("u", "g").only_identity("bob"))
        .await
        .unwrap();
    for i in 0..4 {
        b.publish(ev("u", if i % 2 == 0 { "alice" } else { "bob" }, i))
            .await
            .unwrap();
    }
    let a: Vec<u64> = alice
        .by_ref()
        .take(2)
        .map(|e| e.unwrap().payload["i"].as_u64().unwrap())
        .collect()
        .await;
    let o: Vec<u64> = bob
        .by_ref()
        .take(2)
        .map(|e| e.unwrap().payload["i"].as_u64().unwrap())
        .collect()
        .await;
    assert_eq!((a, o), (vec![0, 2], vec![1, 3]));
    // Nobody of the group may see carol's event: dropped and counted.
    b.publish(ev("u", "carol", 9)).await.unwrap();
    assert_eq!(metric(&m, "bus_events_dropped_total"), 1);
    drop((alice, bob));
}

#[actix_rt::test]
async fn dropped_streams_are_forgotten() {
    let (b, m) = start(HubConfig::default());
    let s = b.subscribe(SubscribeSpec::broadcast("d")).await.unwrap();
    let g = b.subscribe(SubscribeSpec::unicast("d", "g")).await.unwrap();
    assert_eq!(metric(&m, "bus_events_open_streams"), 2);
    drop((s, g));
    for _ in 0..50 {
        if metric(&m, "bus_events_open_streams") == 0 {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(metric(&m, "bus_events_open_streams"), 0);
}
