//! The fault matrix: the multi-process stack (`support::stack`) with real
//! faults — SIGKILL and restart, SIGSTOP/SIGCONT, a missing router or
//! worker, NATS going away, a full ledger disk, outputs larger than a bus
//! message — asserting what the caller hears, by when, and that the REST
//! answer, the ledger record, the usage records and the engine's
//! containers agree afterwards (`container-events.md`, "Delivery
//! guarantees"). Each prints what it measured.

use crate::support::docker::engine;
use crate::support::stack::{agree, Part, Stack, StackOpts};
use serde_json::Value;
use std::time::{Duration, Instant};

fn id(v: &Value) -> String {
    v["run_id"].as_str().expect("a run id").to_owned()
}

async fn stack(opts: StackOpts) -> Option<Stack> {
    engine().await?;
    let s = Stack::start(opts).await?;
    s.warm_up().await;
    Some(s)
}

/// Starts `n` runs that take `secs` (wait: false); their ids.
async fn in_flight(s: &Stack, n: usize, secs: u32) -> Vec<String> {
    let body = format!(
        r#"{{"profile":"codex","args":["sh","-c","sleep {secs}; echo done"],"timeout_seconds":60,"wait":false}}"#
    );
    let mut ids = Vec::new();
    for _ in 0..n {
        let (status, v, _) = s.run(&body).await;
        assert_eq!(status, 202, "{v}");
        ids.push(id(&v));
    }
    ids
}

/// Every run ended as `state`, and answer, ledger and usage agree.
async fn all_end(s: &Stack, ids: &[String], state: &str, within: u64) {
    for run_id in ids {
        let record = s.settled(run_id, within).await;
        assert_eq!(record["state"], state, "{record}");
        let usage = s.usage_settled(run_id, 20).await;
        let answer = match &record["result"] {
            Value::Null => Value::Null,
            r => r.clone(),
        };
        agree(&answer, &record, &usage);
    }
}

#[actix_rt::test]
async fn faults_events_api_killed_and_restarted_mid_run_loses_no_result() {
    let Some(mut s) = stack(StackOpts::default()).await else {
        return;
    };
    let ids = in_flight(&s, 3, 2).await;
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    s.kill(Part::Bus);
    // A run asked for while the bus is gone is refused at once.
    let (status, v, took) = s.run(r#"{"profile":"codex","args":["true"]}"#).await;
    eprintln!("fault matrix: Events API down → {status} in {took:?}");
    assert_eq!(status, 503, "{v}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let refused = v.clone();
    actix_rt::time::sleep(Duration::from_secs(3)).await; // the runs finish meanwhile
    s.restart(Part::Bus);
    all_end(&s, &ids, "succeeded", 60).await;
    eprintln!("fault matrix: Events API killed mid-run → 3/3 succeeded after it came back");
    assert!(refused["error"]["type"] == "unavailable", "{refused}");
    assert!(s.no_containers_within(10).await.is_empty());
}

#[actix_rt::test]
async fn faults_events_api_stalled_eleven_seconds() {
    let Some(s) = stack(StackOpts::default()).await else {
        return;
    };
    let ids = in_flight(&s, 2, 3).await;
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    s.stop(Part::Bus);
    let during = s.run_in_background(r#"{"profile":"codex","args":["sh","-c","echo stalled"]}"#);
    actix_rt::time::sleep(Duration::from_secs(11)).await;
    s.cont(Part::Bus);
    let (status, v, took) = during.await.unwrap();
    eprintln!("fault matrix: a run asked during an 11 s stall → {status} after {took:?}");
    // Whatever it was answered, that is what happened: never a 400 for
    // a copy, never answered refused while it ran.
    assert_ne!(status, 400, "{v}");
    match status {
        200 => assert_eq!(v["stdout"], "stalled\n"),
        503 => {
            assert_eq!(v["error"]["type"], "unavailable", "{v}");
            // Refused: it never ran, and the ledger and usage say so.
            let run_id = s.latest_run().await;
            let record = s.record(&run_id).await;
            assert_eq!(record["state"], "error", "{record}");
            agree(&v, &record, &s.usage_settled(&run_id, 20).await);
        }
        other => panic!("{other} {v}"),
    }
    all_end(&s, &ids, "succeeded", 60).await;
    assert!(s.no_containers_within(10).await.is_empty());
}

#[actix_rt::test]
async fn faults_router_killed_and_restarted_at_once_loses_no_result() {
    let Some(mut s) = stack(StackOpts::default()).await else {
        return;
    };
    let ids = in_flight(&s, 5, 3).await;
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    s.kill(Part::Router(0));
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    s.restart(Part::Router(0));
    all_end(&s, &ids, "succeeded", 60).await;
    eprintln!("fault matrix: router killed and restarted within 0.2 s → 5/5 succeeded");
    // And new runs go through the new router at once.
    let t0 = Instant::now();
    let (status, v, _) = s
        .run(r#"{"profile":"codex","args":["echo","after"]}"#)
        .await;
    assert_eq!(
        (status, v["stdout"].as_str()),
        (200, Some("after\n")),
        "{v}"
    );
    eprintln!(
        "fault matrix: the first run after the restart answered in {:?}",
        t0.elapsed()
    );
}

#[actix_rt::test]
async fn faults_two_routers_one_killed() {
    let Some(mut s) = stack(StackOpts {
        routers: 2,
        ..StackOpts::default()
    })
    .await
    else {
        return;
    };
    let ids = in_flight(&s, 4, 2).await;
    s.kill(Part::Router(1));
    let mut slowest = Duration::ZERO;
    for i in 0..6 {
        let (status, v, took) = s
            .run(&format!(r#"{{"profile":"codex","args":["echo","{i}"]}}"#))
            .await;
        assert_eq!(status, 200, "{v}");
        slowest = slowest.max(took);
    }
    eprintln!("fault matrix: two routers, one killed → 6/6 new runs, slowest {slowest:?}");
    // A request the killed router had taken is gone with it: such a run
    // never started, and says so; every other one succeeded.
    let mut states = Vec::new();
    for run_id in &ids {
        let record = s.settled(run_id, 60).await;
        let state = record["state"].as_str().unwrap().to_owned();
        assert!(state == "succeeded" || state == "error", "{record}");
        if state == "error" {
            assert_eq!(record["worker_id"], Value::Null, "never started: {record}");
        }
        agree(
            &record["result"],
            &record,
            &s.usage_settled(run_id, 20).await,
        );
        states.push(state);
    }
    eprintln!("fault matrix: runs in flight when one of two routers was killed → {states:?}");
}

#[actix_rt::test]
async fn faults_worker_killed_mid_run_is_lost_within_twenty_seconds_and_its_container_goes() {
    let Some(mut s) = stack(StackOpts::default()).await else {
        return;
    };
    let pending =
        s.run_in_background(r#"{"profile":"codex","args":["sleep","300"],"timeout_seconds":600}"#);
    let mut started = false;
    for _ in 0..100 {
        if !s.containers().await.is_empty() {
            started = true;
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started);
    s.kill(Part::Worker);
    let killed = Instant::now();
    let (status, v, _) = pending.await.unwrap();
    let heard = killed.elapsed();
    eprintln!("fault matrix: worker SIGKILLed mid-run → {status} after {heard:?}");
    assert_eq!(status, 503, "{v}");
    assert!(heard < Duration::from_secs(20), "{heard:?}");
    let left = s.no_containers_within(10).await;
    assert!(
        left.is_empty(),
        "its guardian removed the container: {left:?}"
    );
    let run_id = s.latest_run().await;
    let record = s.record(&run_id).await;
    assert_eq!(record["state"], "lost", "{record}");
    agree(&v, &record, &s.usage_settled(&run_id, 20).await);
}

#[actix_rt::test]
async fn faults_no_router_and_no_worker_answer_unavailable_within_ten_seconds() {
    let Some(engine) = engine().await else { return };
    drop(engine);
    for (what, opts) in [
        (
            "no router",
            StackOpts {
                routers: 0,
                ..StackOpts::default()
            },
        ),
        (
            "no worker",
            StackOpts {
                worker: false,
                ..StackOpts::default()
            },
        ),
    ] {
        let s = Stack::start(opts).await.unwrap();
        let (status, v, took) = s.run(r#"{"profile":"codex","args":["echo","x"]}"#).await;
        eprintln!("fault matrix: {what} → {status} in {took:?}");
        assert_eq!(
            (status, v["error"]["type"].as_str()),
            (503, Some("unavailable")),
            "{v}"
        );
        assert!(took < Duration::from_secs(10), "{what}: {took:?}");
        assert!(s.containers().await.is_empty());
    }
}

#[actix_rt::test]
async fn faults_api_provider_killed_and_restarted_resolves_its_runs_from_their_workers() {
    let Some(mut s) = stack(StackOpts::default()).await else {
        return;
    };
    let ids = in_flight(&s, 2, 3).await;
    actix_rt::time::sleep(Duration::from_millis(800)).await;
    s.kill(Part::Api);
    actix_rt::time::sleep(Duration::from_secs(3)).await; // the runs end meanwhile
    s.restart(Part::Api);
    for run_id in &ids {
        let record = s.settled(run_id, 30).await;
        assert_eq!(record["state"], "succeeded", "not lost: {record}");
        assert_eq!(record["result"]["stdout"], "done\n");
    }
    eprintln!(
        "fault matrix: API provider killed mid-run → 2/2 resolved succeeded from their workers"
    );
}

#[actix_rt::test]
async fn faults_a_full_ledger_disk_holds_the_answer_until_it_is_recorded() {
    let Some(s) = stack(StackOpts {
        small_data_dir: Some(3 << 20),
        ..StackOpts::default()
    })
    .await
    else {
        return;
    };
    assert_eq!(s.api_ready().await, 200);
    let pending =
        s.run_in_background(r#"{"profile":"codex","args":["sh","-c","sleep 2; echo kept"]}"#);
    actix_rt::time::sleep(Duration::from_millis(800)).await;
    // Fill the disk.
    let filler = s.data_dir.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    let mut unready = false;
    for _ in 0..50 {
        if s.api_ready().await == 503 {
            unready = true;
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(unready, "/readyz is 503 while the ledger cannot be written");
    actix_rt::time::sleep(Duration::from_secs(3)).await;
    assert!(!pending.is_finished(), "the answer waits for the ledger");
    std::fs::remove_file(&filler).unwrap();
    let (status, v, took) = pending.await.unwrap();
    eprintln!("fault matrix: a full ledger disk → {status} after {took:?}, once space came back");
    assert_eq!((status, v["stdout"].as_str()), (200, Some("kept\n")), "{v}");
    let record = s.settled(&id(&v), 10).await;
    agree(&v, &record, &s.usage_settled(&id(&v), 20).await);
    let mut ready = false;
    for _ in 0..50 {
        if s.api_ready().await == 200 {
            ready = true;
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ready);
}

#[actix_rt::test]
async fn faults_outputs_larger_than_a_bus_message_arrive_whole() {
    let Some(s) = stack(StackOpts::default()).await else {
        return;
    };
    // 1 MiB of NUL bytes: six-fold once escaped in JSON.
    let (status, v, _) = s
        .run(r#"{"profile":"codex","args":["head","-c","1048576","/dev/zero"]}"#)
        .await;
    assert_eq!(status, 200, "{}", v["error"]);
    assert_eq!(v["stdout"].as_str().unwrap().len(), 1 << 20);
    assert!(v["stdout"].as_str().unwrap().bytes().all(|b| b == 0));
    assert_eq!(v["stdout_truncated"], false);
    agree(
        &v,
        &s.settled(&id(&v), 10).await,
        &s.usage_settled(&id(&v), 20).await,
    );
    // 1 MiB on each stream.
    let (status, v, _) = s
        .run(r#"{"profile":"codex","args":["sh","-c","head -c 1048576 /dev/zero | tr '\\0' a; head -c 1048576 /dev/zero | tr '\\0' b >&2"]}"#)
        .await;
    assert_eq!(status, 200, "{}", v["error"]);
    assert_eq!(v["stdout"].as_str().unwrap().len(), 1 << 20);
    assert_eq!(v["stderr"].as_str().unwrap().len(), 1 << 20);
    eprintln!(
        "fault matrix: 1 MiB of NUL bytes, and 1 MiB on each stream → whole, over the Events API"
    );
}

/// A result far past one bus message (a 24 MB artifact: dozens of
/// parts) ends while the router is stalled for longer than several
/// resends: once the router is back it arrives whole, byte for byte —
/// sends of it never overlap, and a part sent again counts once.
#[actix_rt::test]
async fn faults_a_large_artifact_result_survives_a_stalled_router() {
    let Some(s) = stack(StackOpts::default()).await else {
        return;
    };
    let body = serde_json::json!({
        "profile": "codex",
        "args": ["sh", "-c", "sleep 2; yes 0123456789abcdef | head -c 24000000 > /tmp/big.txt"],
        "artifacts": ["/tmp/big.txt"],
        "timeout_seconds": 60,
        "wait": false,
    });
    let (status, v, _) = s.run(&body.to_string()).await;
    assert_eq!(status, 202, "{v}");
    let run_id = id(&v);
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    s.stop(Part::Router(0));
    actix_rt::time::sleep(Duration::from_secs(12)).await;
    s.cont(Part::Router(0));
    let t0 = Instant::now();
    let record = s.settled(&run_id, 120).await;
    eprintln!(
        "fault matrix: a 24 MB artifact result behind a 12 s router stall → {} {:?} after it came back",
        record["state"],
        t0.elapsed()
    );
    assert_eq!(record["state"], "succeeded", "{record}");
    let summary = &record["result"]["artifacts"];
    assert_eq!(summary["truncated"], false, "{summary}");
    let (status, tar, _) = crate::run_artifacts::download(&s.api_url(), &run_id, &s.token).await;
    assert_eq!(status, 200);
    assert_eq!(summary["bytes"], tar.len(), "{summary}");
    let files = crate::run_artifacts::entries(&tar);
    let big = &files["tmp/big.txt"];
    assert_eq!(big.len(), 24_000_000);
    assert!(
        big.chunks(17).all(|c| b"0123456789abcdef\n".starts_with(c)),
        "the artifact's exact bytes"
    );
    agree(
        &record["result"],
        &record,
        &s.usage_settled(&run_id, 20).await,
    );
    assert!(s.no_containers_within(10).await.is_empty());
}

/// Run requests too large for one bus message (2 MB of files each: a
/// summary, and parts the worker fetches through the router) sent while
/// the router is killed and started again: each run either ran once,
/// with its exact file, or was refused and never ran; the answer, the
/// ledger and usage agree, and no container is left.
#[actix_rt::test]
async fn faults_large_run_requests_across_a_router_restart() {
    let Some(mut s) = stack(StackOpts::default()).await else {
        return;
    };
    use base64::Engine;
    let data = base64::engine::general_purpose::STANDARD.encode(vec![b'x'; 2_000_000]);
    let body = serde_json::json!({
        "profile": "codex",
        "args": ["sh", "-c", "test $(wc -c < /tmp/in.bin) -eq 2000000 && grep -qv '[^x]' /tmp/in.bin; echo ran >> /workspace/parts.log; echo whole"],
        "files": [{"path": "/tmp/in.bin", "content_base64": data}],
        "timeout_seconds": 60,
    })
    .to_string();
    let mut asked = Vec::new();
    for i in 0..6 {
        let (url, token, body) = (
            format!("{}/api/v1/containers/runs", s.api_url()),
            s.token.clone(),
            body.clone(),
        );
        asked.push(actix_rt::spawn(async move {
            crate::support::api::call("POST", &url, Some(&token), Some(&body)).await
        }));
        actix_rt::time::sleep(Duration::from_millis(150)).await;
        if i == 2 {
            s.kill(Part::Router(0));
            actix_rt::time::sleep(Duration::from_millis(200)).await;
            s.restart(Part::Router(0));
        }
    }
    let (mut ran, mut refused) = (0, 0);
    for handle in asked {
        let (status, _, v) = handle.await.unwrap();
        match status {
            200 => {
                assert_eq!(v["state"], "succeeded", "{v}");
                assert_eq!(
                    v["stdout"], "whole\n",
                    "the whole file reached the run: {v}"
                );
                ran += 1;
            }
            503 => {
                assert_eq!(v["error"]["type"], "unavailable", "{v}");
                refused += 1;
            }
            other => panic!("{other} {v}"),
        }
    }
    // The ledger says what the callers heard, and usage agrees.
    let (mut succeeded, mut errors) = (0, 0);
    for run_id in s.latest_runs(6).await {
        let record = s.settled(&run_id, 120).await;
        match record["state"].as_str() {
            Some("succeeded") => succeeded += 1,
            Some("error") => errors += 1,
            other => panic!("{other:?}: {record}"),
        }
        let usage = s.usage_settled(&run_id, 20).await;
        agree(&record["result"], &record, &usage);
    }
    assert_eq!(
        (succeeded, errors),
        (ran, refused),
        "the ledger agrees with the answers"
    );
    eprintln!("fault matrix: 6 runs of 2 MB requests across a router restart → {ran} ran, the rest refused and never ran");
    assert_eq!(executions(&s, "parts.log"), ran, "a refused run never ran");
    assert!(ran >= 3, "the runs after the restart go through: {ran}");
    assert!(s.no_containers_within(10).await.is_empty());
}

/// Counts the runs that wrote to the stack's workspace.
fn executions(s: &Stack, file: &str) -> usize {
    std::fs::read_to_string(s.workspace.join(file))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[actix_rt::test]
async fn faults_nats_restarted_mid_run_loses_no_result() {
    let Some(mut s) = stack(StackOpts {
        nats: true,
        ..StackOpts::default()
    })
    .await
    else {
        return;
    };
    let ids = in_flight(&s, 3, 3).await;
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    s.kill(Part::Bus);
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    s.restart(Part::Bus);
    for run_id in &ids {
        let record = s.settled(run_id, 60).await;
        assert_eq!(record["state"], "succeeded", "{record}");
    }
    eprintln!("fault matrix: NATS restarted mid-run → 3/3 succeeded");
}

#[actix_rt::test]
async fn faults_nats_outage_a_refused_run_never_runs_and_a_retry_runs_once() {
    let Some(mut s) = stack(StackOpts {
        nats: true,
        ..StackOpts::default()
    })
    .await
    else {
        return;
    };
    s.kill(Part::Bus);
    let body = r#"{"profile":"codex","args":["sh","-c","echo ran >> /workspace/count"]}"#;
    let first = s.run_in_background(body);
    actix_rt::time::sleep(Duration::from_secs(4)).await;
    s.restart(Part::Bus);
    let (status, v, took) = first.await.unwrap();
    eprintln!("fault matrix: a run asked during a NATS outage → {status} after {took:?}");
    let refused = status != 200;
    if refused {
        assert_eq!(v["error"]["type"], "unavailable", "{v}");
        // The client retries, as clients do.
        let mut retried = (0, Value::Null, Duration::ZERO);
        for _ in 0..50 {
            retried = s.run(body).await;
            if retried.0 == 200 {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(300)).await;
        }
        assert_eq!(retried.0, 200, "{}", retried.1);
    }
    // Give a queued copy every chance to run late.
    actix_rt::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        executions(&s, "count"),
        1,
        "executed exactly once (first answered {status})"
    );
}

/// Input sent right after `run -d -i`, before any worker has taken the
/// run (here the worker is SIGSTOPped for two seconds), is held by the
/// provider and delivered once the run starts: `bus containers input`
/// waits and succeeds instead of being refused "has not started yet", and
/// the run reads exactly what was sent.
#[actix_rt::test]
async fn input_sent_before_the_run_starts_is_delivered() {
    let Some(s) = stack(StackOpts::default()).await else {
        return;
    };
    let cli = |args: &[&str]| {
        let mut c = crate::support::bus();
        c.env("BUS_AI_API_URL", s.api_url())
            .env("BUS_API_TOKEN", &s.token)
            .env("NO_COLOR", "1")
            .arg("containers")
            .args(args);
        c
    };
    s.stop(Part::Worker);
    let out = cli(&[
        "run",
        "-d",
        "-i",
        "--format",
        "text",
        "--profile",
        "codex",
        "--",
        "sh",
        "-c",
        "read line; echo got:$line",
    ])
    .output()
    .unwrap();
    let run_id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(out.status.success() && !run_id.is_empty(), "{out:?}");
    let input = cli(&["input", &run_id, "hello\n", "--eof"])
        .spawn()
        .unwrap();
    let started = Instant::now();
    actix_rt::time::sleep(Duration::from_secs(2)).await;
    s.cont(Part::Worker);
    let input = actix_rt::task::spawn_blocking(move || input.wait_with_output().unwrap())
        .await
        .unwrap();
    eprintln!(
        "fault matrix: input sent before the run started → exit {:?} after {:?}",
        input.status.code(),
        started.elapsed()
    );
    assert!(input.status.success(), "{input:?}");
    let waited = cli(&["--format", "json", "wait", &run_id])
        .output()
        .unwrap();
    let result: Value =
        serde_json::from_slice(&waited.stdout).unwrap_or_else(|e| panic!("{e}: {waited:?}"));
    assert_eq!(result["state"], "succeeded", "{result}");
    assert_eq!(result["stdout"], "got:hello\n", "{result}");
}

/// The ledger's usage mark of a run (`usage_sent`: 1 requested, 2 end).
fn usage_mark(s: &Stack, run_id: &str) -> i64 {
    let db = rusqlite::Connection::open(s.data_dir.join("runs.sqlite")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.query_row(
        "SELECT usage_sent FROM runs WHERE run_id = ?1",
        [run_id],
        |r| r.get(0),
    )
    .unwrap()
}

/// How many copies of a run's usage records the listener heard, by type.
fn copies(s: &Stack, run_id: &str, event_type: &str) -> usize {
    s.usage
        .lock()
        .unwrap()
        .iter()
        .filter(|u| u["data"]["run_id"] == run_id && u["event_type"] == event_type)
        .count()
}

#[actix_rt::test]
async fn faults_usage_a_killed_provider_did_not_get_out_is_sent_at_its_restart() {
    let Some(mut s) = stack(StackOpts::default()).await else {
        return;
    };
    let body = r#"{"profile":"codex","args":["sh","-c","echo billed"],"timeout_seconds":30}"#;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (status, v, _) = s.run(body).await;
        assert_eq!(
            (status, &v["state"]),
            (200, &Value::from("succeeded")),
            "{v}"
        );
        ids.push(id(&v));
    }
    // The ledger marks each record once the bus has taken it.
    for run_id in &ids {
        let usage = s.usage_settled(run_id, 20).await;
        assert_eq!(usage.len(), 2, "{usage:?}");
        let until = Instant::now() + Duration::from_secs(10);
        while usage_mark(&s, run_id) != 3 && Instant::now() < until {
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            usage_mark(&s, run_id),
            3,
            "{run_id}: both records marked sent"
        );
    }
    // SIGKILLed with usage still in its queue: what a kill between a
    // run's ledger write and its usage publish leaves on disk — the
    // first run's end not out, the second's records none of them.
    s.kill(Part::Api);
    {
        let db = rusqlite::Connection::open(s.data_dir.join("runs.sqlite")).unwrap();
        db.execute(
            "UPDATE runs SET usage_sent = 1 WHERE run_id = ?1",
            [&ids[0]],
        )
        .unwrap();
        db.execute(
            "UPDATE runs SET usage_sent = 0 WHERE run_id = ?1",
            [&ids[1]],
        )
        .unwrap();
    }
    let before: Vec<(usize, usize)> = ids
        .iter()
        .map(|r| {
            (
                copies(&s, r, "container_run_requested"),
                copies(&s, r, "container_run_finished"),
            )
        })
        .collect();
    let t0 = Instant::now();
    s.restart(Part::Api);
    let until = Instant::now() + Duration::from_secs(30);
    while (usage_mark(&s, &ids[0]) != 3 || usage_mark(&s, &ids[1]) != 3) && Instant::now() < until {
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    let want = vec![
        (before[0].0, before[0].1 + 1),
        (before[1].0 + 1, before[1].1 + 1),
    ];
    let heard = |s: &Stack| -> Vec<(usize, usize)> {
        ids.iter()
            .map(|r| {
                (
                    copies(s, r, "container_run_requested"),
                    copies(s, r, "container_run_finished"),
                )
            })
            .collect()
    };
    while heard(&s) != want && Instant::now() < until {
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    let after = heard(&s);
    eprintln!(
        "fault matrix: usage not got out by a killed provider → sent again {:?} after its restart (copies heard {before:?} → {after:?})",
        t0.elapsed()
    );
    assert_eq!(after[0], want[0], "only the missing end again");
    assert_eq!(after[1], want[1], "both again");
    for run_id in &ids {
        assert_eq!(usage_mark(&s, run_id), 3);
        // Counted as a consumer counts (once per event_id), usage and
        // ledger still agree.
        let record = s.record(run_id).await;
        agree(&record["result"], &record, &s.usage_of(run_id));
    }
}
