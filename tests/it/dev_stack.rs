//! `bus dev` as a new user meets it: a subprocess with a temporary config
//! directory, then `bus containers run` end to end on real Docker.

use crate::support::bus;
use crate::support::docker::engine;
use bus_containers::runtime::ContainerRuntime;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Dev {
    pub child: Child,
    pub url: String,
    pub config_dir: tempfile::TempDir,
    pub data: tempfile::TempDir,
    pub printed: std::sync::Arc<std::sync::Mutex<String>>,
    /// Its log lines (stderr).
    pub logs: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_dev(extra: &[&str], prepare: impl FnOnce(&std::path::Path)) -> Dev {
    start_dev_with(extra, &[], prepare)
}

/// `bus dev` on an existing data directory (its own config directory).
fn start_dev_in(data_dir: &std::path::Path, extra: &[&str]) -> Dev {
    let dir = data_dir.display().to_string();
    let mut flags = vec!["--data-dir", dir.as_str()];
    flags.extend_from_slice(extra);
    start_dev_with(&flags, &[], |_| {})
}

/// `bus dev` with extra flags and environment; `prepare` fills its
/// config directory first.
pub fn start_dev_with(
    extra: &[&str],
    env: &[(&str, &str)],
    prepare: impl FnOnce(&std::path::Path),
) -> Dev {
    let config_dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    prepare(config_dir.path());
    let mut cmd = bus();
    cmd.args(["dev", "--addr", "127.0.0.1:0"]);
    if !extra.contains(&"--data-dir") {
        cmd.arg("--data-dir").arg(data.path());
    }
    cmd.args(extra)
        .env("BUS_CONFIG_DIR", config_dir.path())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let logs = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let log_sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            log_sink.lock().unwrap().push_str(&format!("{line}\n"));
        }
    });
    let printed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = printed.clone();
    std::thread::spawn(move || {
        let mut url = None;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&format!("{line}\n"));
            if line.starts_with("bus dev is up") {
                url = line
                    .split_whitespace()
                    .find(|w| w.starts_with("http://"))
                    .map(str::to_owned);
            }
            // The last line of the greeting.
            if line.starts_with("Ctrl-C stops it") {
                if let Some(u) = url.take() {
                    let _ = tx.send(u);
                }
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("bus dev did not come up: {}", printed.lock().unwrap()));
    Dev {
        child,
        url,
        config_dir,
        data,
        printed,
        logs,
    }
}

impl Dev {
    /// The worker id its greeting names.
    pub fn worker_id(&self) -> String {
        let printed = self.printed.lock().unwrap().clone();
        printed
            .lines()
            .find_map(|l| l.strip_prefix("worker id: "))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no worker id in the greeting: {printed}"))
            .to_owned()
    }
}

pub fn containers(dev: &Dev) -> Command {
    let mut c = bus();
    c.env("BUS_CONFIG_DIR", dev.config_dir.path())
        .env("BUS_AI_API_URL", &dev.url)
        .args(["containers"]);
    c
}

fn sigint(child: &Child) {
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
}

#[actix_rt::test]
async fn bus_dev_runs_printf_ok_end_to_end_and_ctrl_c_leaves_nothing() {
    let Some(docker) = engine().await else { return };
    let mut dev = start_dev(&[], |_| {});
    let printed = dev.printed.lock().unwrap().clone();
    assert!(printed.contains("wrote a dev token"), "{printed}");
    assert!(
        printed.contains("bus containers"),
        "names the next command: {printed}"
    );
    let auth = dev.config_dir.path().join("auth");
    for f in ["dev-secret", "api-token"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(auth.join(f)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    // The new user's first command, with the token bus dev wrote.
    let mut c = containers(&dev);
    c.args(["run", "--profile", "codex", "--", "sh", "-lc", "printf OK"]);
    let out = c.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["stdout"], "OK");
    let mut c = containers(&dev);
    c.args([
        "run",
        "--format",
        "text",
        "--profile",
        "codex",
        "--",
        "sh",
        "-lc",
        "printf OK",
    ]);
    assert_eq!(String::from_utf8_lossy(&c.output().unwrap().stdout), "OK");

    // Ctrl-C with a run in flight: cancelled, container removed.
    let mut c = containers(&dev);
    c.args(["run", "--profile", "codex", "--", "sleep", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut client = c.spawn().unwrap();
    let worker_id = dev.worker_id();
    assert!(worker_id.starts_with("dev-"), "{worker_id}");
    let mut running = false;
    for _ in 0..100 {
        let ps = Command::new("docker")
            .args([
                "ps",
                "-q",
                "--filter",
                &format!("label=bus.worker_id={worker_id}"),
                "--filter",
                "label=bus.managed=true",
            ])
            .output()
            .unwrap();
        if !ps.stdout.is_empty() {
            running = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(running, "the run's container started");
    sigint(&dev.child);
    let status = dev.child.wait().unwrap();
    assert!(status.success(), "bus dev stopped cleanly: {status:?}");
    let _ = client.kill();
    let _ = client.wait();
    let left = docker.list_managed(&worker_id).await.unwrap();
    assert!(left.is_empty(), "no container left: {left:?}");
    assert!(dev.printed.lock().unwrap().contains("stopped"));
}

#[test]
fn a_foreign_token_is_left_alone_and_static_needs_no_engine() {
    let dev = start_dev(&["--provider", "static"], |dir| {
        std::fs::create_dir_all(dir.join("auth")).unwrap();
        std::fs::write(dir.join("auth/api-token"), "someone-elses-token\n").unwrap();
    });
    let printed = dev.printed.lock().unwrap().clone();
    assert!(
        printed.contains("left alone") && printed.contains("dev-token"),
        "{printed}"
    );
    assert_eq!(
        std::fs::read_to_string(dev.config_dir.path().join("auth/api-token")).unwrap(),
        "someone-elses-token\n"
    );
    let mut c = containers(&dev);
    c.arg("--token-file")
        .arg(dev.config_dir.path().join("auth/dev-token"))
        .args(["run", "--profile", "codex", "--", "printf", "OK"]);
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("static: printf OK"));
}

#[test]
fn no_engine_is_said_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let out = bus()
        .args(["dev", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("BUS_CONFIG_DIR", dir.path())
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no Docker engine") && err.contains("--provider static"),
        "{err}"
    );
}

#[actix_rt::test]
async fn two_dev_stacks_on_one_engine_leave_each_others_runs_alone() {
    let Some(docker) = engine().await else { return };
    let first = start_dev(&[], |_| {});
    let first_id = first.worker_id();
    let mut run = containers(&first);
    run.args([
        "run",
        "--format",
        "text",
        "--profile",
        "codex",
        "--",
        "sh",
        "-c",
        "sleep 8; echo survived",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let run = run.spawn().unwrap();
    let mut started = false;
    for _ in 0..200 {
        if !docker.list_managed(&first_id).await.unwrap().is_empty() {
            started = true;
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started, "the first stack's run started");
    // A second stack (its own data dir: its own worker id), and a third
    // that even shares the first one's worker id: both start their
    // reapers at once and must leave the live run alone.
    let second = start_dev(&[], |_| {});
    assert_ne!(second.worker_id(), first_id, "each stack has its own id");
    let third = start_dev(&["--worker-id", &first_id], |_| {});
    assert_eq!(third.worker_id(), first_id);
    let out = run.wait_with_output().unwrap();
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref()
        ),
        (Some(0), "survived\n"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same data dir gives the same id again (stable across restarts).
    let again = start_dev_in(first.data.path(), &[]);
    assert_eq!(again.worker_id(), first_id);
    // BUS_WORKER_ID names it too.
    let named = start_dev_with(&[], &[("BUS_WORKER_ID", "dev-from-env")], |_| {});
    assert_eq!(named.worker_id(), "dev-from-env");
    drop((second, third, again, named));
}

/// As `docker run`: a command that is not in the image exits 127, one
/// that is not executable 126 — a `failed` run with the engine's reason,
/// cold (an explicit image) and pooled (the codex profile's warm pool).
#[actix_rt::test]
async fn a_command_that_cannot_run_exits_127_or_126_as_docker_run() {
    let Some(docker) = engine().await else { return };
    let dev = start_dev(&["--pool-size", "1"], |_| {});
    let run = |target: &[&str], command: &[&str], format: &str| {
        let mut c = containers(&dev);
        c.args(["run", "--format", format])
            .args(target)
            .arg("--")
            .args(command);
        c.output().unwrap()
    };
    let image = ["--image", "bus-busybox:latest"];
    let pooled = ["--profile", "codex"];
    for (target, command, code, says) in [
        (
            &image[..],
            "no-such-command",
            127,
            "executable file not found",
        ),
        (&image[..], "/etc", 126, "permission denied"),
        (
            &pooled[..],
            "no-such-command",
            127,
            "executable file not found",
        ),
        (&pooled[..], "/etc", 126, "permission denied"),
    ] {
        let out = run(target, &[command], "json");
        let what = format!("{target:?} {command}");
        assert_eq!(
            out.status.code(),
            Some(code),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let result: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{what}: {e}: {}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(result["state"], "failed", "{what}: {result}");
        assert_eq!(result["exit_code"], code, "{what}: {result}");
        assert_eq!(
            result["stdout"], "",
            "{what}: the engine's words are not output"
        );
        let reason = result["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(says), "{what}: {result}");
        assert!(result["stderr"].as_str().unwrap().contains(says), "{what}");
        // The record says the same (`wait` reads it back over REST).
        let run_id = result["run_id"].as_str().unwrap();
        let mut c = containers(&dev);
        let again = c
            .args(["--format", "json", "wait", run_id])
            .output()
            .unwrap();
        assert_eq!(again.status.code(), Some(code), "{what}");
        let record: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
        assert_eq!(record["state"], "failed", "{what}: {record}");
        assert_eq!(record["exit_code"], code, "{what}: {record}");
    }
    // Text output prints the reason on stderr and exits the same.
    let out = run(&image, &["no-such-command"], "text");
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("executable file not found"));
    // Nothing left but the warm pool's idle container.
    let worker_id = dev.worker_id();
    let left = docker.list_managed(&worker_id).await.unwrap();
    assert!(left.len() <= 1, "only the pool's container: {left:?}");
}

/// A profile whose image is not on the engine: the runner is not
/// `ready`, and its status says which image and how to build it.
#[actix_rt::test]
async fn a_missing_profile_image_shows_in_the_runner_status() {
    if engine().await.is_none() {
        return;
    }
    let dev = start_dev_with(
        &["--container-codex-image", "bus-busybox:not-built"],
        &[],
        |_| {},
    );
    let mut status = serde_json::Value::Null;
    // Until its worker's first heartbeat, the runner is `unavailable`.
    for _ in 0..50 {
        let out = containers(&dev)
            .args(["--format", "json", "status"])
            .output()
            .unwrap();
        status = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        if status["items"][0]["state"] != "unavailable" {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let runner = &status["items"][0];
    assert_eq!(runner["id"], "runner", "{status}");
    assert_eq!(runner["state"], "stopped", "{status}");
    let worker = &runner["details"]["workers"][dev.worker_id()];
    assert_eq!(worker["state"], "stopped", "{status}");
    let error = worker["details"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("bus-busybox:not-built") && error.contains("scripts/build-test-image"),
        "{status}"
    );
    assert_eq!(
        worker["details"]["profiles"]["codex"]["present"], false,
        "{status}"
    );
}

/// A token's claims end up in log lines (the run's owner): a control
/// character in them is escaped, so no request can forge a line.
#[actix_rt::test]
async fn a_claim_cannot_forge_a_log_line() {
    if engine().await.is_none() {
        return;
    }
    let dev = start_dev(&[], |_| {});
    let secret = std::fs::read_to_string(dev.config_dir.path().join("auth/dev-secret")).unwrap();
    let out = bus()
        .args([
            "operator",
            "token",
            "issue",
            "--local",
            "--scope",
            "container:run container:read",
        ])
        .args(["--subject", "mallory\nERROR forged line"])
        .env("BUS_AUTH_HS256_SECRET", secret.trim())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let out = containers(&dev)
        .env("BUS_AI_TOKEN", token.trim())
        .args(["run", "--profile", "codex", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(300));
    let logs = dev.logs.lock().unwrap().clone();
    assert!(
        logs.contains(r"mallory\x0aERROR forged line"),
        "the owner is logged, escaped: {logs}"
    );
    assert!(
        !logs.lines().any(|l| l.starts_with("ERROR forged")),
        "no forged line: {logs}"
    );
}

/// `-w`, `-e NAME=VALUE`, a bare `-e NAME` (this shell's value) and
/// `--env-file`, as `docker run` takes them; a flag `run` does not know,
/// before `--`, is a usage error and nothing is sent.
#[actix_rt::test]
async fn docker_like_run_flags() {
    if engine().await.is_none() {
        return;
    }
    let dev = start_dev(&[], |_| {});
    let file = dev.config_dir.path().join("run.env");
    std::fs::write(
        &file,
        "# the file\nFROM_FILE=file value\nBOTH=from the file\n\nCOPIED_IN_FILE\n",
    )
    .unwrap();
    let out = containers(&dev)
        .env("COPIED", "from the shell")
        .env("COPIED_IN_FILE", "shell, via the file")
        .env_remove("NOT_SET_HERE")
        .args([
            "run",
            "--format",
            "text",
            "--profile",
            "codex",
            "-w",
            "/tmp",
        ])
        .args([
            "-e",
            "A=1",
            "-e",
            "COPIED",
            "-e",
            "NOT_SET_HERE",
            "-e",
            "BOTH=from -e",
        ])
        .arg("--env-file")
        .arg(&file)
        .args([
            "--",
            "sh",
            "-c",
            "pwd; echo \"$A|$COPIED|$FROM_FILE|$BOTH|$COPIED_IN_FILE|${NOT_SET_HERE-unset}\"",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "/tmp\n1|from the shell|file value|from -e|shell, via the file|unset\n"
    );
    let runs = || {
        let out = containers(&dev)
            .args(["--format", "json", "runs"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["items"].as_array().unwrap().len()
    };
    let before = runs();
    for bad in [
        &["run", "--profile", "codex", "--bogus", "--", "true"][..],
        &[
            "run",
            "--profile",
            "codex",
            "--timeout-second",
            "5",
            "--",
            "true",
        ][..],
        &["run", "--profile", "codex", "-w", "relative", "--", "true"][..],
        &["run", "--profile", "codex", "-e", "1BAD=x", "--", "true"][..],
        &["runs", "--bogus"][..],
    ] {
        let out = containers(&dev).args(bad).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{bad:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = containers(&dev)
        .args([
            "run",
            "--profile",
            "codex",
            "--timeout-second",
            "5",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--timeout-seconds"),
        "clap's suggestion"
    );
    assert_eq!(runs(), before, "nothing was sent");
}

/// `bus containers logs --follow` waits for a running run's output and
/// its end; without it, logs print what is there and return.
#[actix_rt::test]
async fn logs_follow_waits_for_the_end() {
    if engine().await.is_none() {
        return;
    }
    let dev = start_dev(&[], |_| {});
    let out = containers(&dev)
        .args(["run", "-d", "--format", "text", "--profile", "codex"])
        .args(["--", "sh", "-c", "sleep 2; echo late"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let now = containers(&dev).args(["logs", &id]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&now.stdout).contains("late"),
        "not yet: {}",
        String::from_utf8_lossy(&now.stdout)
    );
    let followed = containers(&dev)
        .args(["--format", "text", "logs", "--follow", &id])
        .output()
        .unwrap();
    assert!(
        followed.status.success(),
        "{}",
        String::from_utf8_lossy(&followed.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&followed.stdout), "late\n");
}

/// `bus dev --events-addr` also serves the Events API of its embedded
/// bus; the dev token may send and listen there.
#[test]
fn dev_serves_the_events_api_with_events_addr() {
    let dev = start_dev(
        &["--provider", "static", "--events-addr", "127.0.0.1:0"],
        |_| {},
    );
    let printed = dev.printed.lock().unwrap().clone();
    let url = printed
        .lines()
        .find(|l| l.starts_with("events API"))
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with("http://")))
        .unwrap_or_else(|| panic!("no events API in the greeting: {printed}"))
        .to_owned();
    let events = |args: &[&str]| {
        bus()
            .arg("events")
            .args(args)
            .env("BUS_CONFIG_DIR", dev.config_dir.path())
            .env("BUS_EVENTS_API_URL", &url)
            .output()
            .unwrap()
    };
    let out = events(&["send", "--name", "app.dev", "--payload", r#"{"n":1}"#]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = events(&["listen", "--name", "app.dev", "--replay", "--no-follow"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(got["payload"]["n"], 1);
}

/// `bus auth token --scope "..."` mints from the local stack's secret and
/// saves the token where `bus containers` reads it (0600, never printed).
#[test]
fn auth_token_saves_a_scoped_token_for_the_client() {
    let dev = start_dev(&["--provider", "static"], |_| {});
    let auth = |scope: &str| {
        let out = bus()
            .args(["auth", "token", "--scope", scope])
            .env("BUS_CONFIG_DIR", dev.config_dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        let file = dev.config_dir.path().join("auth/api-token");
        let token = std::fs::read_to_string(&file).unwrap();
        assert!(
            !said.contains(token.trim()),
            "the token is not printed: {said}"
        );
        assert!(said.contains("api-token") && said.contains(scope), "{said}");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&file).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    };
    auth("container:read");
    let status = containers(&dev).arg("status").output().unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let run = || {
        containers(&dev)
            .args(["run", "--profile", "codex", "--", "true"])
            .output()
            .unwrap()
    };
    let out = run();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("container:run"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    auth("container:read container:run");
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without a local secret it says where one comes from.
    let empty = tempfile::tempdir().unwrap();
    let out = bus()
        .args(["auth", "token"])
        .env("BUS_CONFIG_DIR", empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bus dev"));
}

/// `/metrics` of `bus dev` covers the whole stack: the bus, the router,
/// the worker (live sessions, pool hits and misses, container start
/// latency) and the provider (runs by state), and the process (RSS, fds,
/// CPU).
#[actix_rt::test]
async fn metrics_cover_the_whole_stack() {
    if engine().await.is_none() {
        return;
    }
    let dev = start_dev(&["--pool-size", "1"], |_| {});
    let run = || {
        containers(&dev)
            .args(["run", "--profile", "codex", "--", "true"])
            .output()
            .unwrap()
    };
    // The first run may find the pool still warming (a miss); wait until a
    // pooled container is idle, then a run takes it (a hit).
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let scrape = || {
        let out = std::process::Command::new("curl")
            .args(["-s", &format!("{}/metrics", dev.url)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let value = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(-1.0)
    };
    let mut hit = false;
    for _ in 0..40 {
        let out = run();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if value(&scrape(), "bus_worker_pool_hits_total") >= 1.0 {
            hit = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let text = scrape();
    assert!(hit, "a pooled run: {text}");
    for name in [
        "bus_events_published_total",
        "bus_router_requests_total",
        "bus_worker_pool_misses_total",
        "bus_worker_container_start_seconds_count",
        "process_open_fds",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(value(&text, name) >= 0.0, "{name} in {text}");
    }
    assert_eq!(value(&text, "bus_worker_live_sessions"), 0.0, "{text}");
    assert!(value(&text, "bus_worker_container_start_seconds_count") >= 1.0);
    assert!(value(&text, "process_resident_memory_bytes") > 1e6);
    assert!(
        value(&text, "bus_api_runs_total{state=\"succeeded\"}") >= 2.0,
        "{text}"
    );
}

/// A run whose image is not on the engine is pulled on demand where a
/// registry serves it (a real registry on loopback); where none does, the
/// run is refused with the pull's words and how to build it offline.
#[actix_rt::test]
async fn a_missing_image_is_pulled_on_demand() {
    use crate::support::registry::Registry;
    if engine().await.is_none() {
        return;
    }
    let Some(registry) = Registry::start() else {
        return;
    };
    let name = format!("bus-pull-{}:v1", uuid::Uuid::new_v4().simple());
    let remote = registry.push(crate::support::docker::IMAGE, &name);
    // The project's config, with the registry's images allowed too.
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("config.toml");
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml")).unwrap();
    let allowed = r#"allowed_images = ["bus-busybox:*"]"#;
    assert!(text.contains(allowed));
    std::fs::write(
        &config,
        text.replace(
            allowed,
            r#"allowed_images = ["bus-busybox:*", "127.0.0.1:*"]"#,
        ),
    )
    .unwrap();
    let dev = start_dev(&["--config", config.to_str().unwrap()], |_| {});
    let run = |image: &str| {
        containers(&dev)
            .args([
                "run", "--format", "text", "--image", image, "--", "echo", "pulled",
            ])
            .output()
            .unwrap()
    };
    let out = run(&remote);
    let _ = Command::new("docker").args(["rmi", &remote]).output();
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref()
        ),
        (Some(0), "pulled\n"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let absent = format!("{}/bus-pull-absent:v1", registry.host);
    let out = run(&absent);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{said}");
    assert!(
        said.contains("could not be pulled") && said.contains("scripts/build-test-image"),
        "{said}"
    );
}
