//! Scale-out on a real `nats-server` with real Docker: durable run
//! requests (a run waits for a worker; a killed worker's run is recorded
//! `lost`, never re-run), and two API providers, two routers and two
//! workers as separate processes sharing 200 runs and a NATS restart.

use crate::support::api::{call, token, ALL};
use crate::support::docker::{engine, IMAGE};
use crate::support::nats::NatsServer;
use crate::support::*;
use bus_containers::broker::nats::{NatsBroker, NatsOptions};
use bus_containers::broker::{Broker, SubscribeSpec};
use bus_containers::runtime::ContainerRuntime;
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

/// The ack wait the tests' processes use: a lost delivery comes back fast.
const ACK_WAIT: &str = "2s";

fn config_file(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!("[worker]\ncapacity = 8\n[profiles.codex]\nimage = \"{IMAGE}\"\n"),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

fn on_nats(cmd: &mut std::process::Command, nats: &str) {
    cmd.args(["--events-url", nats, "--addr", "127.0.0.1:0"])
        .args(["--log-format", "json"])
        .env("BUS_NATS_ACK_WAIT", ACK_WAIT);
}

fn worker(nats: &str, id: &str, config: &str) -> Process {
    let mut cmd = bus();
    cmd.args(["integration", "docker", "--event-prefix", "bus.docker"])
        .args([
            "--worker-id",
            id,
            "--reap-interval",
            "1s",
            "--config",
            config,
        ]);
    on_nats(&mut cmd, nats);
    Process::spawn(cmd)
}

fn router(nats: &str) -> Process {
    let mut cmd = bus();
    cmd.args(["integration", "containers"]);
    on_nats(&mut cmd, nats);
    Process::spawn(cmd)
}

fn provider(nats: &str, instance: &str, data: &tempfile::TempDir) -> Process {
    let mut cmd = bus();
    cmd.args(["api-provider", "containers", "--backend", "events"])
        .args(["--instance-id", instance, "--workers", "2"])
        .args(["--store", nats, "--max-concurrent-runs", "0"])
        .arg("--data-dir")
        .arg(data.path())
        .env("BUS_API_JWT_SECRET", std::str::from_utf8(SECRET).unwrap());
    on_nats(&mut cmd, nats);
    Process::spawn(cmd)
}

fn unique(what: &str) -> String {
    format!(
        "{what}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// Polls a run through `api` until it is no longer running.
async fn ended(api: &Process, t: &str, id: &str, secs: u64) -> Value {
    let url = format!("{}/api/v1/containers/runs/{id}", api.url());
    let mut last = json!(null);
    for _ in 0..secs * 10 {
        let (s, _, r) = call("GET", &url, Some(t), None).await;
        if s == 200 && r["state"] != "running" {
            return r;
        }
        last = r;
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("run {id} did not end within {secs}s: {last}");
}

/// Counts container starts of one worker from the engine's live event
/// stream (its history keeps only the last few hundred events).
struct Starts(std::process::Child);

impl Starts {
    fn watch(worker: &str) -> Starts {
        let child = std::process::Command::new("docker")
            .args(["events", "--format", "{{.ID}}"])
            .args(["--filter", "type=container", "--filter", "event=start"])
            .args(["--filter", &format!("label=bus.worker_id={worker}")])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("docker events");
        std::thread::sleep(Duration::from_millis(300));
        Starts(child)
    }

    /// Stops watching (after a moment for the last events) and counts.
    fn count(mut self) -> usize {
        use std::io::Read;
        std::thread::sleep(Duration::from_millis(500));
        let _ = self.0.kill();
        let mut out = String::new();
        self.0
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let _ = self.0.wait();
        out.lines().count()
    }
}

#[actix_rt::test]
async fn a_queued_run_waits_for_a_worker_and_a_killed_workers_run_is_lost() {
    let Some(docker) = engine().await else { return };
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let url = nats.url();
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(&dir);
    let api = provider(&url, &unique("api"), &dir);
    let _router = router(&url);
    let t = token("alice", ALL);
    let runs = format!("{}/api/v1/containers/runs", api.url());

    // No worker is up: the run is accepted and waits in the work queue.
    let (s, _, r) = call(
        "POST",
        &runs,
        Some(&t),
        Some(r#"{"profile":"codex","args":["printf","queued"],"wait":false}"#),
    )
    .await;
    assert_eq!(s, 202, "{r}");
    let queued = r["run_id"].as_str().unwrap().to_owned();
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    let (_, _, r) = call("GET", &format!("{runs}/{queued}"), Some(&t), None).await;
    assert_eq!(r["state"], "running", "still queued: {r}");

    let worker_id = unique("durable");
    let starts = Starts::watch(&worker_id);
    let first = worker(&url, &worker_id, &config);
    let r = ended(&api, &t, &queued, 60).await;
    assert_eq!(
        (r["state"].as_str(), r["result"]["stdout"].as_str()),
        (Some("succeeded"), Some("queued")),
        "{r}"
    );

    // A run in flight when its worker is SIGKILLed...
    let (s, _, r) = call(
        "POST",
        &runs,
        Some(&t),
        Some(r#"{"profile":"codex","args":["sleep","120"],"wait":false}"#),
    )
    .await;
    assert_eq!(s, 202, "{r}");
    let doomed = r["run_id"].as_str().unwrap().to_owned();
    let mut container = None;
    for _ in 0..300 {
        if let Some(c) = docker
            .list_managed(&worker_id)
            .await
            .unwrap()
            .into_iter()
            .next()
        {
            container = Some(c.id);
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    let container = container.expect("the run's container started");
    drop(first); // SIGKILL
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    let (_, _, r) = call("GET", &format!("{runs}/{doomed}"), Some(&t), None).await;
    assert_eq!(
        r["state"], "running",
        "nothing is decided while the worker is away: {r}"
    );

    // ...comes back: the orphan is removed, the redelivered request finds
    // the claim of a worker that is gone and records the run lost.
    let _second = worker(&url, &worker_id, &config);
    let r = ended(&api, &t, &doomed, 60).await;
    assert_eq!(r["state"], "lost", "{r}");
    assert_eq!(r["result"]["error"]["type"], "unavailable", "{r}");
    let mut gone = false;
    for _ in 0..100 {
        if docker.list_managed(&worker_id).await.unwrap().is_empty() {
            gone = true;
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the orphan {container} was removed");
    // Never run again: exactly two containers ever started for this worker.
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(starts.count(), 2, "the lost run was not re-run");
    // And a run still works afterwards.
    let (s, _, r) = call(
        "POST",
        &runs,
        Some(&t),
        Some(r#"{"profile":"codex","args":["printf","after"]}"#),
    )
    .await;
    assert_eq!((s, r["stdout"].as_str()), (200, Some("after")), "{r}");
}

/// Sends `n` runs alternately through the providers at `bases`,
/// `concurrency` at a time; returns each run's HTTP status and body.
async fn load(bases: &[String], n: usize, concurrency: usize, tag: &str) -> Vec<(u16, Value)> {
    let urls: Vec<String> = bases
        .iter()
        .map(|a| format!("{a}/api/v1/containers/runs"))
        .collect();
    let mut done: Vec<(usize, u16, Value)> = futures::stream::iter(0..n)
        .map(|i| {
            let url = urls[i % urls.len()].clone();
            let t = token(&format!("acct{}", i % 7), ALL);
            let body = json!({"profile": "codex", "args": ["printf", format!("{tag}{i}")], "timeout_seconds": 20}).to_string();
            async move {
                let (s, _, r) = call("POST", &url, Some(&t), Some(&body)).await;
                (i, s, r)
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    done.sort_by_key(|(i, _, _)| *i);
    done.into_iter().map(|(_, s, r)| (s, r)).collect()
}

#[actix_rt::test]
async fn two_providers_two_routers_two_workers_share_200_runs_and_a_nats_restart() {
    let Some(_docker) = engine().await else {
        return;
    };
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let url = nats.url();
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(&dir);
    let (w1, w2) = (unique("w1"), unique("w2"));
    let watched = (Starts::watch(&w1), Starts::watch(&w2));
    let procs = [
        ("api-a", provider(&url, &unique("a"), &dir)),
        ("api-b", provider(&url, &unique("b"), &dir)),
        ("router-1", router(&url)),
        ("router-2", router(&url)),
        ("worker-1", worker(&url, &w1, &config)),
        ("worker-2", worker(&url, &w2, &config)),
    ];
    let (a, b) = (&procs[0].1, &procs[1].1);

    // Every reply on the public name, counted per correlation id.
    let watch = NatsBroker::connect(&url, NatsOptions::default())
        .await
        .unwrap();
    let mut replies = watch
        .subscribe(SubscribeSpec::broadcast("bus.containers.run.response"))
        .await
        .unwrap();
    let counted = actix_rt::spawn(async move {
        let mut seen: HashMap<String, usize> = HashMap::new();
        while let Ok(Some(Ok(e))) =
            actix_rt::time::timeout(Duration::from_secs(5), replies.next()).await
        {
            *seen
                .entry(e.correlation_id.clone().unwrap_or_default())
                .or_default() += 1;
        }
        seen
    });

    let bases = [a.url(), b.url()];
    let results = load(&bases, 200, 24, "r").await;
    for (i, (s, r)) in results.iter().enumerate() {
        assert_eq!(
            (*s, r["state"].as_str(), r["stdout"].as_str()),
            (200, Some("succeeded"), Some(format!("r{i}").as_str())),
            "run {i}: {r}"
        );
    }
    let ids: std::collections::HashSet<&str> = results
        .iter()
        .map(|(_, r)| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 200, "200 distinct runs");
    let seen = counted.await.unwrap();
    assert_eq!(seen.len(), 200, "200 replies on the public name");
    assert!(
        seen.values().all(|n| *n == 1),
        "each answered exactly once: {seen:?}"
    );
    let starts = (watched.0.count(), watched.1.count());
    assert_eq!(starts.0 + starts.1, 200, "each executed once: {starts:?}");
    assert!(
        starts.0 > 0 && starts.1 > 0,
        "both workers ran some: {starts:?}"
    );
    // One ledger: a run made through A reads the same through B.
    let t = token("acct0", ALL);
    let id = results[0].1["run_id"].as_str().unwrap();
    let (s, _, r) = call(
        "GET",
        &format!("{}/api/v1/containers/runs/{id}", b.url()),
        Some(&t),
        None,
    )
    .await;
    assert_eq!((s, r["state"].as_str()), (200, Some("succeeded")), "{r}");
    // One archive store: a run's artifacts made through A download
    // through B (the object store beside the KV ledger, not a data dir).
    let body = json!({"profile": "codex", "args": ["sh", "-c", "printf shared > /tmp/a.txt"],
        "artifacts": ["/tmp/a.txt"], "timeout_seconds": 60});
    let (s, _, kept) = call(
        "POST",
        &format!("{}/api/v1/containers/runs", a.url()),
        Some(&t),
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(
        (s, kept["state"].as_str()),
        (200, Some("succeeded")),
        "{kept}"
    );
    let kept_id = kept["run_id"].as_str().unwrap();
    let (s, tar, _) = crate::support::api::get_bytes(
        &format!("{}/api/v1/containers/runs/{kept_id}/artifacts", b.url()),
        &t,
    )
    .await;
    assert_eq!(s, 200);
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
    assert_eq!(entry.path().unwrap().display().to_string(), "tmp/a.txt");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
    assert_eq!(text, "shared");
    assert!(
        !dir.path().join(format!("artifacts/{kept_id}.tar")).exists(),
        "with a KV ledger the archive is in the object store"
    );

    // NATS restarted under load: every process's readiness drops and
    // recovers, and every run of the load ends in exactly one state.
    let ready = |p: &Process| {
        let url = format!("{}/readyz", p.url());
        async move { get(&url, None).await.0 }
    };
    let background = {
        let bases = bases.clone();
        actix_rt::spawn(async move { load(&bases, 40, 8, "x").await })
    };
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    nats.stop();
    for (what, p) in &procs {
        let mut dropped = false;
        for _ in 0..100 {
            if ready(p).await == 503 {
                dropped = true;
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(dropped, "{what}'s readiness drops without NATS");
    }
    nats.restart();
    for (what, p) in &procs {
        let mut back = false;
        for _ in 0..300 {
            if ready(p).await == 200 {
                back = true;
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(back, "{what} reconnects");
    }
    let during = within(120, "the load under a restart", background)
        .await
        .unwrap();
    let mut states: HashMap<String, usize> = HashMap::new();
    for (s, r) in &during {
        // Every request was answered; runs that were accepted end once.
        assert!(matches!(s, 200 | 503), "{s}: {r}");
        if let Some(id) = r["run_id"].as_str() {
            let owner = r["owner_account_id"].as_str().unwrap();
            let r = ended(a, &token(owner, ALL), id, 60).await;
            *states
                .entry(r["state"].as_str().unwrap().to_owned())
                .or_default() += 1;
        } else {
            *states.entry(format!("http {s}")).or_default() += 1;
        }
    }
    eprintln!("runs across the NATS restart: {states:?}");
    assert_eq!(states.values().sum::<usize>(), 40);
    // Afterwards, both providers run again.
    for base in bases {
        let r = load(&[base], 2, 2, "after").await;
        assert!(
            r.iter()
                .all(|(s, r)| *s == 200 && r["state"] == "succeeded"),
            "{r:?}"
        );
    }
}
