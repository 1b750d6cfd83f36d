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
    // An artifact limit past what a provider assembles: refused by the
    // flag (worker and bus dev), its variable and the config key.
    std::fs::write(&bad, "[worker]\nmax_artifact_bytes = 200000000\n").unwrap();
    for (command, flag, env) in [
        (&["integration", "docker", "--self-test"][..], true, false),
        (&["dev", "--addr", "127.0.0.1:0"][..], true, false),
        (&["integration", "docker", "--self-test"][..], false, true),
        (&["integration", "docker", "--self-test"][..], false, false),
    ] {
        let data = tempfile::tempdir().unwrap();
        let mut cmd = bus();
        cmd.args(command)
            .env("BUS_DATA_DIR", data.path())
            .env("BUS_CONFIG_DIR", data.path());
        if flag {
            cmd.args(["--max-artifact-bytes", "134217729"]);
        } else if env {
            cmd.env("BUS_MAX_ARTIFACT_BYTES", "134217729");
        } else {
            cmd.args(["--config", bad.to_str().unwrap()]);
        }
        let out = cmd.output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command:?}: {said}");
        assert!(said.contains("at most 134217728"), "{command:?}: {said}");
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
        // --egress-image replaces the config's sidecar image, which the
        // self-test checks for the sandboxed profile.
        let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml");
        let out = bus()
            .args(["integration", "docker", "--self-test", "--config", config])
            .args(["--egress-image", "bus-egress:not-built"])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{said}");
        assert!(said.contains("bus-egress:not-built"), "{said}");
    } else {
        println!("skipped: the self-test against a real engine (no docker here)");
        assert!(
            std::env::var("BUS_TEST_DOCKER").as_deref() != Ok("required"),
            "BUS_TEST_DOCKER=required but docker info fails"
        );
    }
}

/// The codex profile's host mounts and environment, set by the worker's
/// flags: `--codex-home-host-path` with `--codex-home-writable` (at
/// `/root/.codex`, BusDK's path), `--codex-ssh-host-path`,
/// `--codex-ssh-agent-host-path`, `--codex-git-ssh-command`.
#[actix_rt::test]
async fn codex_flags_mount_and_set_what_they_say() {
    let Some(_docker) = engine().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, format!("[worker]\nallowed_images = [\"bus-busybox:*\"]\n[profiles.codex]\nimage = \"{IMAGE}\"\ntimeout_seconds = 7\n")).unwrap();
    let config = config.to_string_lossy().into_owned();
    let home = dir.path().join("home");
    let ssh = dir.path().join("ssh");
    std::fs::create_dir(&home).unwrap();
    std::fs::create_dir(&ssh).unwrap();
    std::fs::write(home.join("auth.json"), "auth").unwrap();
    std::fs::write(ssh.join("known_hosts"), "kh").unwrap();
    for d in [&home, &ssh] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    }
    let agent = dir.path().join("agent.sock");
    let _agent = std::os::unix::net::UnixListener::bind(&agent).unwrap();
    let events = events_process();
    let worker_id = format!("codex-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let mut cmd = bus();
    cmd.args(["integration", "docker", "--events-url", &events.url()])
        .args(["--worker-id", &worker_id, "--addr", "127.0.0.1:0"])
        .args(["--log-format", "json", "--config", &config])
        .arg("--codex-home-host-path")
        .arg(&home)
        .arg("--codex-home-writable")
        .arg("--codex-ssh-host-path")
        .arg(&ssh)
        .arg("--codex-ssh-agent-host-path")
        .arg(&agent)
        .args(["--codex-git-ssh-command", "ssh -F /dev/null"])
        .env(
            "BUS_API_TOKEN",
            mint(&format!("worker-{worker_id}"), "container:admin"),
        );
    let _w = Process::spawn(cmd);
    let b = broker(&events);
    let api = api(&b);
    let mut accepted = b
        .subscribe(SubscribeSpec::broadcast("bus.containers.run.accepted"))
        .await
        .unwrap();
    let script = "echo $CODEX_HOME; cat /root/.codex/auth.json; echo; \
        echo w > /root/.codex/written && echo writable; cat /codex-ssh/known_hosts; echo; \
        echo $SSH_AUTH_SOCK; test -S /ssh-agent.sock && echo socket; echo \"$GIT_SSH_COMMAND\"";
    let r = ask(
        &api,
        "bus.containers.run.request",
        json!({"owner_account_id": "alice", "profile": "codex", "args": ["sh", "-c", script]}),
        60,
    )
    .await;
    assert_eq!(
        r["stdout"],
        "/root/.codex\nauth\nwritable\nkh\n/ssh-agent.sock\nsocket\nssh -F /dev/null\n",
        "{r}"
    );
    assert_eq!(
        std::fs::read_to_string(home.join("written")).unwrap(),
        "w\n"
    );
    // run.accepted names the timeout the worker enforces (the profile's:
    // the request set none), so the requester's deadline follows it.
    let e = within(10, "run.accepted", accepted.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.payload["timeout_seconds"], 7, "{}", e.payload);
}

/// `bus integration guard --worker-id --process --engine`: once the marked
/// process is gone, its containers are removed and the guard exits; a
/// container another (live) process made is left alone.
#[test]
fn the_guard_removes_what_a_dead_process_made() {
    let engine_up = std::process::Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success());
    if !engine_up {
        println!("skipped: the guard needs a Docker engine");
        assert!(std::env::var("BUS_TEST_DOCKER").as_deref() != Ok("required"));
        return;
    }
    let mark = |pid: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let start = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .nth(19)
            .unwrap()
            .to_owned();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim()
            .replace('/', "_");
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap()
            .trim()
            .replace('-', "");
        format!("{host}/{boot}/{pid}/{start}")
    };
    let mut short = std::process::Command::new("sleep")
        .arg("2")
        .spawn()
        .unwrap();
    let dead_mark = mark(short.id());
    let live_mark = mark(std::process::id());
    let worker_id = format!("guard-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let create = |m: &str| {
        let out = std::process::Command::new("docker")
            .args(["create", "--label", "bus.managed=true"])
            .args(["--label", &format!("bus.worker_id={worker_id}")])
            .args(["--label", &format!("bus.process={m}")])
            .args([IMAGE, "sleep", "60"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let doomed = create(&dead_mark);
    let kept = create(&live_mark);
    let engine = std::env::var("DOCKER_HOST").unwrap_or("unix:///var/run/docker.sock".into());
    let mut guard = bus()
        .args(["integration", "guard", "--worker-id", &worker_id])
        .args(["--process", &dead_mark, "--engine", &engine])
        .spawn()
        .unwrap();
    short.wait().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(guard.wait());
    });
    let status = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the guard exits once its process is gone")
        .unwrap();
    assert!(status.success());
    let exists = |id: &str| {
        std::process::Command::new("docker")
            .args(["inspect", id])
            .output()
            .unwrap()
            .status
            .success()
    };
    let (doomed_gone, kept_there) = (!exists(&doomed), exists(&kept));
    let _ = std::process::Command::new("docker")
        .args(["rm", "-f", &kept, &doomed])
        .output();
    assert!(doomed_gone, "the dead process's container was removed");
    assert!(kept_there, "a live process's container was left alone");
}
