//! The worker as a real process on a real Docker engine: recovery after
//! SIGKILL (the reaper), standalone mode, and the full path through the
//! Events API and the router.

use crate::support::docker::{engine, IMAGE};
use crate::support::*;
use bus_containers::actors::bus::dispatcher::ReplyMetrics;
use bus_containers::actors::bus::requester::{BusIdentity, Request, Requester};
use bus_containers::broker::http::{HttpBroker, HttpBrokerConfig};
use bus_containers::broker::{SharedBroker, SubscribeSpec};
use bus_containers::credentials::{Token, TokenSource};
use bus_containers::runtime::ContainerRuntime;
use futures::StreamExt;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

fn config_file(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("config.toml");
    std::fs::write(&path, format!("[worker]\nallowed_images = [\"bus-busybox:*\"]\n[profiles.codex]\nimage = \"{IMAGE}\"\n")).unwrap();
    path.to_string_lossy().into_owned()
}

fn worker(events: &Process, worker_id: &str, prefix: Option<&str>, config: &str) -> Process {
    let mut cmd = bus();
    cmd.args([
        "integration",
        "docker",
        "--events-url",
        &events.url(),
        "--worker-id",
        worker_id,
    ])
    .args([
        "--reap-interval",
        "1s",
        "--addr",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--config",
        config,
    ])
    .env(
        "BUS_API_TOKEN",
        mint(&format!("worker-{worker_id}"), "container:admin"),
    );
    if let Some(p) = prefix {
        cmd.args(["--event-prefix", p]);
    }
    Process::spawn(cmd)
}

fn broker(events: &Process) -> SharedBroker {
    let source = TokenSource::Env {
        var: "test".into(),
        token: Token::new(mint("api", "container:admin")),
    };
    let mut config = HttpBrokerConfig::from_env(&events.url(), source).unwrap();
    config.retry = None;
    Arc::new(HttpBroker::new(config).unwrap())
}

fn api(broker: &SharedBroker) -> Requester {
    Requester::new(
        broker.clone(),
        BusIdentity::service("api"),
        ReplyMetrics::register(&bus_containers::metrics::Metrics::new(), "t"),
    )
}

async fn ask(r: &Requester, name: &str, payload: Value, secs: u64) -> Value {
    let out = r
        .request(Request::new(name, payload, Duration::from_secs(secs)))
        .await
        .unwrap();
    out.replies
        .first()
        .map(|e| e.payload.clone())
        .unwrap_or(json!({"error": {"type": "timeout"}}))
}

#[actix_rt::test]
async fn a_worker_killed_mid_run_is_cleaned_up_when_it_comes_back() {
    let Some(docker) = engine().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(&dir);
    let events = events_process();
    let worker_id = format!("reap-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let first = worker(&events, &worker_id, Some("bus.docker"), &config);
    let b = broker(&events);
    let api = api(&b);
    let mut started = b
        .subscribe(SubscribeSpec::broadcast("bus.docker.run.started"))
        .await
        .unwrap();
    let pending = {
        let api = api.clone();
        actix_rt::spawn(async move {
            ask(
                &api,
                "bus.docker.run.request",
                json!({"owner_account_id": "alice", "profile": "codex", "args": ["sleep", "120"]}),
                120,
            )
            .await
        })
    };
    let ev = within(60, "run.started", started.next())
        .await
        .unwrap()
        .unwrap();
    let container = ev.payload["container_id"].as_str().unwrap().to_owned();
    drop(first); // SIGKILL: no chance to clean up
    let orphans = docker.list_managed(&worker_id).await.unwrap();
    assert_eq!(
        orphans.len(),
        1,
        "the killed worker's container is still there"
    );
    assert_eq!(orphans[0].id, container);

    let _second = worker(&events, &worker_id, Some("bus.docker"), &config);
    let mut gone = false;
    for _ in 0..100 {
        if docker.list_managed(&worker_id).await.unwrap().is_empty() {
            gone = true;
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the restarted worker's reaper removed the orphan");
    pending.abort();
}

#[actix_rt::test]
async fn standalone_worker_and_the_full_routed_path() {
    let Some(docker) = engine().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(&dir);

    // Standalone: no prefix, the worker serves bus.containers.* itself.
    let events = events_process();
    let standalone_id = format!("solo-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let solo = worker(&events, &standalone_id, None, &config);
    let api1 = api(&broker(&events));
    let r = ask(
        &api1,
        "bus.containers.run.request",
        json!({"owner_account_id": "alice", "profile": "codex", "args": ["sh", "-c", "printf OK"]}),
        60,
    )
    .await;
    assert_eq!(
        (r["stdout"].as_str(), r["exit_code"].as_i64()),
        (Some("OK"), Some(0)),
        "{r}"
    );
    drop(solo);
    drop(events);

    // Routed: events API, a router and a worker on bus.docker, all processes.
    let events = events_process();
    let mut router = bus();
    router
        .args([
            "integration",
            "containers",
            "--events-url",
            &events.url(),
            "--addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .env("BUS_API_TOKEN", mint("router", "container:admin"));
    let _router = Process::spawn(router);
    let worker_id = format!(
        "routed-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let _w = worker(&events, &worker_id, Some("bus.docker"), &config);
    let b = broker(&events);
    let api2 = api(&b);
    // The router knows the worker (its first heartbeat arrived).
    let mut known = false;
    for _ in 0..80 {
        let status = ask(&api2, "bus.containers.runner.status.request", json!({}), 10).await;
        if status["status"]["details"]["workers"][&worker_id].is_object() {
            known = true;
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(known, "the router learned of the worker");
    let mut output = b
        .subscribe(SubscribeSpec::broadcast("bus.containers.run.output"))
        .await
        .unwrap();
    let r = ask(&api2, "bus.containers.run.request", json!({"owner_account_id": "alice", "profile": "codex", "args": ["sh", "-c", "echo out; echo err >&2; exit 4"]}), 60).await;
    assert_eq!(r["exit_code"], 4, "{r}");
    assert_eq!(r["stdout"], "out\n");
    assert_eq!(r["stderr"], "err\n");
    assert_eq!(r["worker_id"], worker_id.as_str());
    let mut streams = Vec::new();
    for _ in 0..2 {
        let e = within(10, "forwarded output", output.next())
            .await
            .unwrap()
            .unwrap();
        streams.push(e.payload["stream"].as_str().unwrap().to_owned());
    }
    streams.sort();
    assert_eq!(streams, ["stderr", "stdout"]);
    let status = ask(&api2, "bus.containers.runner.status.request", json!({}), 30).await;
    assert_eq!(status["status"]["state"], "ready", "{status}");
    assert!(
        status["status"]["details"]["workers"][&worker_id].is_object(),
        "{status}"
    );
    assert!(docker.list_managed(&worker_id).await.unwrap().is_empty());
}

#[test]
fn self_tests_and_flags() {
    let out = bus()
        .args([
            "integration",
            "podman",
            "--provider",
            "static",
            "--self-test",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "bus-integration-podman self-test OK"
    );
    let out = bus()
        .args([
            "integration",
            "docker",
            "--self-test",
            "--worker-id",
            "bad id!",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[profiles.codex]\nmemroy_mb = 5\n").unwrap();
    let out = bus()
        .args([
            "integration",
            "docker",
            "--self-test",
            "--config",
            bad.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("memroy_mb"));
    // A limit of 0 would remove it: refused at start-up, by the worker
    // and by `bus dev`, naming the key.
    for (body, key) in [
        ("[defaults]\ncpus = 0\n", "defaults.cpus"),
        ("[defaults]\nmemory_mb = 0\n", "defaults.memory_mb"),
        (
            "[profiles.codex]\npids_limit = 0\n",
            "profiles.codex.pids_limit",
        ),
        ("[profiles.codex]\ncpus = -1.5\n", "profiles.codex.cpus"),
    ] {
        std::fs::write(&bad, body).unwrap();
        for command in [
            &["integration", "docker", "--self-test"][..],
            &["dev", "--addr", "127.0.0.1:0"][..],
        ] {
            let data = tempfile::tempdir().unwrap();
            let out = bus()
                .args(command)
                .args(["--config", bad.to_str().unwrap()])
                .env("BUS_DATA_DIR", data.path())
                .env("BUS_CONFIG_DIR", data.path())
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{command:?} {body}: {said}");
            assert!(
                said.contains(key) && said.contains("greater than 0"),
                "{command:?}: {said}"
            );
        }
    }
    let out = bus()
        .args([
            "integration",
            "docker",
            "--self-test",
            "--codex-home-host-path",
            "relative/dir",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // Against a real engine, when there is one.
    if std::process::Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let out = bus()
            .args(["integration", "docker", "--self-test"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "bus-integration-docker self-test OK"
        );
        // A profile image that is not on the engine fails the self-test.
        let out = bus()
            .args(["integration", "docker", "--self-test"])
            .env("DOCKER_CONTAINER_CODEX_IMAGE", "bus-busybox:not-built")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{said}");
        assert!(
            said.contains("codex: image bus-busybox:not-built is not on the engine")
                && said.contains("scripts/build-test-image"),
            "{said}"
        );
    } else {
        println!("skipped: the self-test against a real engine (no docker here)");
        assert!(
            std::env::var("BUS_TEST_DOCKER").as_deref() != Ok("required"),
            "BUS_TEST_DOCKER=required but docker info fails"
        );
    }
}
