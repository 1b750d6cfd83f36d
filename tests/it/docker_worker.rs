//! The Docker worker against a real Docker engine: real containers, real
//! output, timeouts, cancel, stdin, caps, OOM, hardening, cleanup.

use crate::support::docker::{rss_kib, test_config, Fixture, IMAGE};
use crate::support::within;
use bus_containers::broker::SubscribeSpec;
use bus_containers::contract::Kind;
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn sh(script: &str) -> Value {
    json!(["sh", "-c", script])
}

#[actix_rt::test]
async fn output_exit_codes_and_stderr() {
    let Some(f) = Fixture::start().await else {
        return;
    };
    let ok = f
        .run(json!({"profile": "codex", "args": sh("printf OK")}))
        .await;
    assert_eq!(ok["exit_code"], 0, "{ok}");
    assert_eq!(ok["stdout"], "OK");
    assert_eq!(ok["state"], "succeeded");
    assert_eq!(ok["owner_account_id"], "alice");
    assert_eq!(ok["worker_id"], f.worker_id.as_str());
    assert_eq!(ok["runtime"]["provider"], "docker");
    assert_eq!(ok["image"], IMAGE);
    assert_eq!(ok["args"], sh("printf OK"));
    assert!(ok["run_id"].as_str().unwrap().starts_with("run_"));
    let three = f
        .run(json!({"image": IMAGE, "command": sh("echo to-err >&2; exit 3")}))
        .await;
    assert_eq!(
        (three["exit_code"].as_i64(), three["state"].as_str()),
        (Some(3), Some("failed")),
        "{three}"
    );
    assert_eq!(three["stderr"], "to-err\n");
    assert_eq!(three["stdout"], "");
    f.finish().await;
}

#[actix_rt::test]
async fn a_timeout_kills_within_a_second_and_leaves_nothing() {
    let Some(f) = Fixture::start().await else {
        return;
    };
    let t0 = Instant::now();
    let r = f
        .run(json!({"profile": "codex", "args": ["sleep", "30"], "timeout_seconds": 1}))
        .await;
    let took = t0.elapsed();
    assert_eq!(r["state"], "timed_out", "{r}");
    assert_eq!(r["signal"], "SIGKILL");
    let ms = r["duration_ms"].as_u64().unwrap();
    assert!(
        (1000..2000).contains(&ms),
        "killed within 1 s of the deadline: {ms} ms"
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert!(f.containers().await.is_empty(), "the container is gone");
    f.finish().await;
}

#[actix_rt::test]
async fn cancel_mid_run_and_owner_checks() {
    let Some(f) = Fixture::start().await else {
        return;
    };
    let mut started = f
        .broker
        .subscribe(SubscribeSpec::broadcast("bus.docker.run.started"))
        .await
        .unwrap();
    let api = f.api.clone();
    let run = actix_rt::spawn({
        let f_run = json!({"run_id": "run_cancel_me", "owner_account_id": "alice", "profile": "codex", "args": ["sleep", "60"]});
        async move {
            api.request(bus_containers::actors::bus::requester::Request::new(
                "bus.docker.run.request",
                f_run,
                Duration::from_secs(60),
            ))
            .await
            .unwrap()
        }
    });
    let ev = within(30, "run.started", started.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.payload["run_id"], "run_cancel_me");
    assert_eq!(ev.payload["worker_id"], f.worker_id.as_str());
    assert!(ev.payload["container_id"]
        .as_str()
        .is_some_and(|c| !c.is_empty()));

    let status = f
        .ask(
            Kind::Status,
            json!({"owner_account_id": "alice"}),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(status["items"][0]["id"], "run_cancel_me", "{status}");
    assert_eq!(status["items"][0]["state"], "running");
    let bob = f
        .ask(
            Kind::Status,
            json!({"owner_account_id": "bob"}),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(bob["items"], json!([]));

    let wid = f.worker_id.clone();
    let forbidden = f
        .ask(
            Kind::Delete,
            json!({"run_id": "run_cancel_me", "owner_account_id": "bob", "worker_id": wid}),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(forbidden["error"]["type"], "forbidden", "{forbidden}");
    let missing = f
        .ask(
            Kind::Delete,
            json!({"run_id": "run_nope", "owner_account_id": "alice", "worker_id": wid}),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(missing["error"]["type"], "not_found");
    let deleted = f
        .ask(
            Kind::Delete,
            json!({"run_id": "run_cancel_me", "owner_account_id": "alice", "worker_id": wid}),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(deleted["deleted"], true, "{deleted}");
    assert_eq!(deleted["owner_account_id"], "alice");

    let out = within(30, "the cancelled result", run).await.unwrap();
    let result = &out.replies[0].payload;
    assert_eq!(result["state"], "cancelled", "{result}");
    f.finish().await;
}

#[actix_rt::test]
async fn interactive_input_and_fed_stdin() {
    let Some(f) = Fixture::start().await else {
        return;
    };
    let fed = f
        .run(json!({"profile": "codex", "args": ["cat"], "stdin": "fed then closed\n"}))
        .await;
    assert_eq!(fed["stdout"], "fed then closed\n", "{fed}");
    assert_eq!(fed["state"], "succeeded");

    let mut started = f
        .broker
        .subscribe(SubscribeSpec::broadcast("bus.docker.run.started"))
        .await
        .unwrap();
    let mut output = f
        .broker
        .subscribe(SubscribeSpec::broadcast("bus.docker.run.output"))
        .await
        .unwrap();
    let api = f.api.clone();
    let run = actix_rt::spawn(async move {
        let p = json!({"run_id": "run_cat", "owner_account_id": "alice", "profile": "codex", "args": ["cat"], "interactive": true, "timeout_seconds": 60});
        api.request(bus_containers::actors::bus::requester::Request::new(
            "bus.docker.run.request",
            p,
            Duration::from_secs(60),
        ))
        .await
        .unwrap()
    });
    within(30, "run.started", started.next())
        .await
        .unwrap()
        .unwrap();
    let wid = f.worker_id.clone();
    let input = json!({"run_id": "run_cat", "owner_account_id": "alice", "worker_id": wid, "data": "hello\n"});
    let accepted = f.ask(Kind::Input, input, Duration::from_secs(10)).await;
    assert_eq!(
        accepted,
        json!({"accepted": true, "run_id": "run_cat", "bytes": 6, "worker_id": wid})
    );
    // cat echoes it while stdin is still open: output keeps flowing.
    let echoed = within(10, "echo before eof", output.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            echoed.payload["data"].as_str(),
            echoed.payload["stream"].as_str()
        ),
        (Some("hello\n"), Some("stdout"))
    );
    assert_eq!(echoed.payload["seq"], 0);
    let more = json!({"run_id": "run_cat", "owner_account_id": "alice", "worker_id": wid, "data": "bye\n", "eof": true});
    assert_eq!(
        f.ask(Kind::Input, more, Duration::from_secs(10)).await["bytes"],
        4
    );
    let out = within(30, "eof ends cat", run).await.unwrap();
    let result = &out.replies[0].payload;
    assert_eq!(result["stdout"], "hello\nbye\n", "{result}");
    assert_eq!(result["state"], "succeeded");
    // Input to a non-interactive run is refused.
    let r = f.run(json!({"profile": "codex", "args": ["true"]})).await;
    assert_eq!(r["state"], "succeeded");
    f.finish().await;
}

#[actix_rt::test]
async fn output_is_capped_with_bounded_memory() {
    let Some(f) = Fixture::start().await else {
        return;
    };
    let before = rss_kib();
    let r = f.run(json!({"profile": "codex", "args": sh("yes 0123456789abcdef | head -c 52428800; echo done >&2")})).await;
    let grew = rss_kib().saturating_sub(before);
    assert_eq!(
        r["state"],
        "succeeded",
        "{}",
        &r.to_string()[..300.min(r.to_string().len())]
    );
    assert_eq!(
        r["stdout"].as_str().unwrap().len(),
        1 << 20,
        "stdout kept up to the cap"
    );
    assert_eq!(r["stdout_truncated"], true);
    assert_eq!(r["stderr"], "done\n");
    assert_eq!(r["stderr_truncated"], false);
    assert!(
        grew < 48 * 1024,
        "50 MiB of output grew this process by {grew} KiB"
    );
    f.finish().await;
}

#[actix_rt::test]
async fn over_the_memory_limit_is_oom_killed() {
    let mut config = test_config();
    config.profiles.get_mut("codex").unwrap().sandbox.memory_mb = Some(16);
    let Some(f) = Fixture::start_with(config).await else {
        return;
    };
    let r = f
        .run(json!({"profile": "codex", "args": ["tail", "/dev/zero"]}))
        .await;
    assert_eq!(r["state"], "oom_killed", "{r}");
    assert_eq!(r["exit_code"], 137);
    // Exit 137 alone (no OOM) is a plain failure.
    let r = f
        .run(json!({"profile": "codex", "args": sh("exit 137")}))
        .await;
    assert_eq!(
        (r["state"].as_str(), r["exit_code"].as_i64()),
        (Some("failed"), Some(137)),
        "{r}"
    );
    f.finish().await;
}

#[actix_rt::test]
async fn fifty_concurrent_runs() {
    let Some(f) = Fixture::start().await else {
        return;
    };
    let results = futures::future::join_all((0..50).map(|i| {
        let f = &f;
        async move {
            (
                i,
                f.run(json!({"profile": "codex", "args": sh(&format!("printf run-{i}"))}))
                    .await,
            )
        }
    }))
    .await;
    for (i, r) in results {
        assert_eq!(r["stdout"], format!("run-{i}"), "{r}");
        assert_eq!(r["exit_code"], 0);
    }
    f.finish().await;
}

#[actix_rt::test]
async fn hardening_shows_in_docker_inspect() {
    let Some(f) = Fixture::start().await else {
        return;
    };
    let (run, ev) = f.start_run(json!({"run_id": "run_inspect", "owner_account_id": "alice", "profile": "codex", "args": ["sleep", "30"]})).await;
    let id = ev["container_id"].as_str().unwrap().to_owned();
    let out = std::process::Command::new("docker")
        .args(["inspect", &id])
        .output()
        .unwrap();
    let inspect: Value = serde_json::from_slice(&out.stdout).unwrap();
    let hc = &inspect[0]["HostConfig"];
    assert_eq!(hc["CapDrop"], json!(["ALL"]), "{hc}");
    assert!(hc["SecurityOpt"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o.as_str().unwrap().starts_with("no-new-privileges")));
    assert_eq!(hc["ReadonlyRootfs"], true);
    assert_eq!(hc["NetworkMode"], "none");
    assert_eq!(hc["LogConfig"]["Type"], "none");
    assert_eq!(hc["PidsLimit"], 256);
    assert_eq!(hc["Memory"], 512 << 20);
    assert_eq!(hc["NanoCpus"], 1_000_000_000i64);
    assert!(hc["Tmpfs"]["/tmp"].as_str().unwrap().contains("size=64m"));
    let labels = &inspect[0]["Config"]["Labels"];
    assert_eq!(labels["bus.managed"], "true");
    assert_eq!(labels["bus.run_id"], "run_inspect");
    assert_eq!(labels["bus.owner"], "alice");
    assert_eq!(labels["bus.worker_id"], f.worker_id.as_str());
    let wid = f.worker_id.clone();
    f.ask(
        Kind::Delete,
        json!({"run_id": "run_inspect", "owner_account_id": "alice", "worker_id": wid}),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        within(30, "cancelled", run).await.unwrap().replies[0].payload["state"],
        "cancelled"
    );
    f.finish().await;
}

#[actix_rt::test]
async fn refusals_and_runner_requests() {
    let Some(f) = Fixture::start().await else {
        return;
    };
    let e = |v: &Value| v["error"]["type"].as_str().unwrap_or("").to_owned();
    assert_eq!(
        e(
            &f.run(json!({"image": "alpine:latest", "command": ["true"]}))
                .await
        ),
        "forbidden"
    );
    assert_eq!(e(&f.run(json!({"image": IMAGE})).await), "bad_request");
    assert_eq!(e(&f.run(json!({"profile": "nope"})).await), "bad_request");
    assert_eq!(
        e(
            &f.run(json!({"image": "bus-busybox:missing", "command": ["true"]}))
                .await
        ),
        "bad_request"
    );
    assert_eq!(
        e(&f.run(json!({"profile": "codex", "timeout_seconds": -5}))
            .await),
        "bad_request"
    );
    // The runner is `starting` until its first engine ping answers.
    let mut status = json!(null);
    for _ in 0..100 {
        status = f
            .ask(Kind::RunnerStatus, json!({}), Duration::from_secs(10))
            .await;
        if status["status"]["state"] != "starting" {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status["status"]["state"], "ready", "{status}");
    assert_eq!(
        status["status"]["details"]["profiles"]["codex"]["present"],
        true
    );
    assert_eq!(status["worker_id"], f.worker_id.as_str());
    let start = f
        .ask(Kind::RunnerStart, json!({}), Duration::from_secs(30))
        .await;
    assert_eq!(start["accepted"], true, "{start}");
    let deleted = f
        .ask(Kind::RunnerDelete, json!({}), Duration::from_secs(30))
        .await;
    assert_eq!(deleted["deleted"], true);
    f.finish().await;

    // A profile image that is missing where nothing can be pulled: a clear error.
    let mut config = test_config();
    config.profiles.get_mut("codex").unwrap().image = Some("bus-busybox:not-built".into());
    let Some(f) = Fixture::start_with(config).await else {
        return;
    };
    let start = f
        .ask(Kind::RunnerStart, json!({}), Duration::from_secs(60))
        .await;
    assert_eq!(start["error"]["type"], "unavailable", "{start}");
    assert!(
        start["error"]["message"]
            .as_str()
            .unwrap()
            .contains("scripts/build-test-image"),
        "{start}"
    );
    f.finish().await;
}

#[actix_rt::test]
async fn codex_mounts_and_a_non_root_user() {
    use crate::support::docker::engine;
    use bus_containers::runtime::MountSpec;
    let Some(runtime) = engine().await else {
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let workspace = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("auth.json"), "secret-ish").unwrap();
    let mounts = vec![
        MountSpec {
            source: home.path().to_string_lossy().into(),
            target: "/codex-home".into(),
            read_only: true,
        },
        MountSpec {
            source: workspace.path().to_string_lossy().into(),
            target: "/workspace".into(),
            read_only: false,
        },
    ];
    let env = vec![("CODEX_HOME".to_owned(), "/codex-home".to_owned())];
    let mut config = test_config();
    config.profiles.get_mut("codex").unwrap().sandbox.user = Some("1000:1000".into());
    let f = Fixture::start_settings(runtime, config, mounts, env).await;
    std::fs::set_permissions(
        workspace.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let script = "cat $CODEX_HOME/auth.json; echo; id -u; echo made > /workspace/out.txt; touch /codex-home/x 2>/dev/null || echo home-is-read-only; touch /etc/x 2>/dev/null || echo root-is-read-only; echo tmp > /tmp/ok && cat /tmp/ok";
    let r = f.run(json!({"profile": "codex", "args": sh(script)})).await;
    assert_eq!(
        r["stdout"], "secret-ish\n1000\nhome-is-read-only\nroot-is-read-only\ntmp\n",
        "{r}"
    );
    assert_eq!(
        std::fs::read_to_string(workspace.path().join("out.txt")).unwrap(),
        "made\n"
    );
    // Explicit-image runs get no mounts.
    let r = f
        .run(json!({"image": IMAGE, "command": sh("ls /codex-home 2>&1 || echo none")}))
        .await;
    assert!(r["stdout"].as_str().unwrap().contains("none"), "{r}");
    f.finish().await;
}
