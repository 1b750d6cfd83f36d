//! The warm pool on a real Docker engine: profile runs exec into idle
//! pooled containers with the cold semantics (output, exit code, stdin,
//! env, timeout, hardening), each container serves one run and is
//! removed, the pool refills and replaces idle containers past their age,
//! explicit-image runs stay cold, and shutdown leaves nothing behind.

use crate::support::docker::{engine, test_config, Fixture, IMAGE};
use crate::support::within;
use bus_containers::actors::docker_worker::PoolIdle;
use bus_containers::broker::SubscribeSpec;
use futures::StreamExt;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

async fn pooled(f: &Fixture) -> BTreeSet<String> {
    f.containers()
        .await
        .into_iter()
        .filter(|c| c.pool.is_some())
        .map(|c| c.id)
        .collect()
}

/// Waits until the pool holds `n` started, idle containers; returns them.
async fn filled(f: &Fixture, n: usize) -> BTreeSet<String> {
    for _ in 0..300 {
        let idle = f.worker.send(PoolIdle).await.unwrap();
        let ids = pooled(f).await;
        if idle.get("codex") == Some(&n) && ids.len() == n {
            return ids;
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the pool did not fill to {n}");
}

/// The container of the next `run.started`.
async fn next_container(started: &mut bus_containers::broker::EventStream) -> String {
    let event = within(30, "run.started", started.next())
        .await
        .unwrap()
        .unwrap();
    event.payload["container_id"].as_str().unwrap().to_owned()
}

#[actix_rt::test]
async fn docker_pooled_runs_keep_the_cold_semantics_and_each_container_serves_one_run() {
    let Some(runtime) = engine().await else {
        return;
    };
    let mut config = test_config();
    config.set_pool_size(2);
    config.worker.pool_max_idle_seconds = 4;
    let f = Fixture::start_on(runtime, config).await;
    let mut started = f
        .broker
        .subscribe(SubscribeSpec::broadcast("bus.docker.run.started"))
        .await
        .unwrap();
    let pool = filled(&f, 2).await;
    let r = f
        .run(json!({"profile": "codex", "args": ["sh", "-c", "printf OK; echo err >&2; exit 3"]}))
        .await;
    assert_eq!(
        (
            r["stdout"].as_str(),
            r["stderr"].as_str(),
            r["exit_code"].as_i64(),
            r["state"].as_str()
        ),
        (Some("OK"), Some("err\n"), Some(3), Some("failed")),
        "{r}"
    );
    let used = next_container(&mut started).await;
    assert!(pool.contains(&used), "the run used a pooled container");
    // It served one run: removed right after the reply.
    let mut removed = false;
    for _ in 0..50 {
        if !f.containers().await.iter().any(|c| c.id == used) {
            removed = true;
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(removed, "a pooled container serves one run and is removed");

    // Same hardening as a cold run: read-only root, no capabilities, no network.
    let r = f
        .run(json!({"profile": "codex", "args": ["sh", "-c",
            "touch /etc/x 2>/dev/null && echo writable || echo readonly; grep CapEff /proc/self/status; ls /sys/class/net"]}))
        .await;
    let out = r["stdout"].as_str().unwrap_or_default();
    assert!(out.contains("readonly"), "{r}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{r}");
    assert_eq!(out.lines().last(), Some("lo"), "only loopback: {r}");
    next_container(&mut started).await;

    // Input, environment and the timeout.
    let r = f
        .run(json!({"profile": "codex", "args": ["cat"], "stdin": "hello"}))
        .await;
    assert_eq!(r["stdout"], "hello", "{r}");
    next_container(&mut started).await;
    let r = f
        .run(json!({"profile": "codex", "args": ["sh", "-c", "printf \"$X\""], "env": {"X": "from-env"}}))
        .await;
    assert_eq!(r["stdout"], "from-env", "{r}");
    next_container(&mut started).await;
    let r = f
        .run(json!({"profile": "codex", "args": ["sleep", "30"], "timeout_seconds": 1}))
        .await;
    assert_eq!(
        (r["state"].as_str(), r["signal"].as_str()),
        (Some("timed_out"), Some("SIGKILL")),
        "{r}"
    );
    next_container(&mut started).await;

    // Explicit-image runs go cold.
    let now = filled(&f, 2).await;
    let r = f
        .run(json!({"image": IMAGE, "command": ["printf", "cold"]}))
        .await;
    assert_eq!(r["stdout"], "cold", "{r}");
    assert!(
        !now.contains(&next_container(&mut started).await),
        "an image run does not take from the pool"
    );

    // Idle containers past the age limit are replaced.
    let before = filled(&f, 2).await;
    let mut replaced = false;
    for _ in 0..100 {
        let ids = pooled(&f).await;
        if ids.len() == 2 && ids.is_disjoint(&before) {
            replaced = true;
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(replaced, "idle containers were replaced after 4s");
    f.finish().await;
}
