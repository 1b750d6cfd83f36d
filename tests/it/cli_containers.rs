//! The real `bus containers` binary against a real API server on port 0:
//! every command in every format, exit codes like `docker run`, the
//! spinner only on a terminal, Ctrl-C, token refusal, `.bus` files.

use crate::support::api::*;
use crate::support::bus;
use crate::support::docker::{engine, test_config};
use serde_json::Value;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn cli(api: &Api) -> Command {
    let mut c = bus();
    c.env("BUS_AI_API_URL", &api.url)
        .env("BUS_API_TOKEN", token("alice", ALL))
        .env("NO_COLOR", "1");
    c
}

async fn out(mut c: Command) -> Output {
    actix_rt::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[actix_rt::test]
async fn every_command_in_every_format() {
    let api = Api::static_backend(|_| {}).await;
    let run = |format: &'static str| {
        let mut c = cli(&api);
        c.args([
            "containers",
            "run",
            "--format",
            format,
            "--profile",
            "codex",
            "--",
            "sh",
            "-c",
            "printf OK",
        ]);
        c
    };
    let o = out(run("json")).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (r["exit_code"].as_i64(), r["stdout"].as_str()),
        (Some(0), Some("static: sh -c printf OK"))
    );
    let id = r["run_id"].as_str().unwrap().to_owned();
    let o = out(run("text")).await;
    assert_eq!(text(&o.stdout), "static: sh -c printf OK");
    let o = out(run("tsv")).await;
    let t = text(&o.stdout);
    assert!(t.starts_with("run_id\tstate\texit_code"), "{t}");
    assert!(
        t.lines().nth(1).unwrap().contains("\tsucceeded\t0\t"),
        "{t}"
    );

    for format in ["json", "text", "tsv"] {
        let mut c = cli(&api);
        c.args(["containers", "status", "--format", format]);
        let o = out(c).await;
        assert!(o.status.success(), "{format}: {}", text(&o.stderr));
        let t = text(&o.stdout);
        match format {
            "json" => assert_eq!(
                serde_json::from_str::<Value>(&t).unwrap()["items"][0]["id"],
                "runner"
            ),
            "text" => assert!(t.starts_with("ID") && t.contains("runner  ready"), "{t}"),
            _ => assert!(
                t.starts_with("ID\tSTATE") && t.contains("runner\tready"),
                "{t}"
            ),
        }
        let mut c = cli(&api);
        c.args(["containers", "runs", "--format", format]);
        let t = text(&out(c).await.stdout);
        assert!(t.contains(&id), "{format}: {t}");
        let mut c = cli(&api);
        c.args(["containers", "logs", &id, "--format", format]);
        let t = text(&out(c).await.stdout);
        match format {
            "json" => assert!(t.lines().last().unwrap().contains("\"exit\""), "{t}"),
            "text" => assert_eq!(t, "static: sh -c printf OK"),
            _ => assert!(
                t.starts_with("seq\tstream\tdata\n0\tstdout\tstatic: sh -c printf OK"),
                "{t}"
            ),
        }
        let mut c = cli(&api);
        c.args(["containers", "wait", &id, "--format", format]);
        let o = out(c).await;
        assert_eq!(o.status.code(), Some(0));
    }
    // Input to a finished run: the server's conflict, exit 1.
    let mut c = cli(&api);
    c.args(["containers", "input", &id, "hello"]);
    let o = out(c).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("conflict"), "{}", text(&o.stderr));
    // Detach, -o, -C, delete in each format.
    let dir = tempfile::tempdir().unwrap();
    let mut c = cli(&api);
    c.args(["containers", "-C"]).arg(dir.path()).args([
        "run",
        "--detach",
        "--format",
        "text",
        "-o",
        "id.txt",
        "--profile",
        "codex",
        "--",
        "true",
    ]);
    assert!(out(c).await.status.success());
    let detached = std::fs::read_to_string(dir.path().join("id.txt"))
        .unwrap()
        .trim()
        .to_owned();
    assert!(detached.starts_with("run_"), "{detached}");
    for (format, victim) in [("json", id.as_str()), ("text", detached.as_str())] {
        let mut c = cli(&api);
        c.args(["containers", "delete", victim, "--format", format]);
        let o = out(c).await;
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    let mut c = cli(&api);
    c.args(["containers", "delete", &id]);
    let o = out(c).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("not found"));
}

#[actix_rt::test]
async fn refusals_and_guidance() {
    let api = Api::static_backend(|_| {}).await;
    let mut c = cli(&api);
    c.args(["containers", "--token", "eyJhbGciOi.secret.sig", "status"]);
    let o = out(c).await;
    assert_eq!(o.status.code(), Some(2));
    let e = text(&o.stderr);
    assert!(
        e.contains("--token-file") && e.contains("BUS_API_TOKEN") && e.contains("api-token"),
        "{e}"
    );
    assert!(!e.contains("secret.sig"));
    // The token lookup order: --token-file beats the environment.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tok");
    std::fs::write(&file, token("bob", "container:read")).unwrap();
    let mut c = cli(&api);
    c.args(["containers", "--format", "json", "runs", "--token-file"])
        .arg(&file);
    let o = out(c).await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mut c = cli(&api);
    c.args(["containers", "run", "--token-file"])
        .arg(&file)
        .args(["--profile", "codex", "--", "true"]);
    let o = out(c).await;
    assert_eq!(
        o.status.code(),
        Some(125),
        "a platform failure (403) is 125"
    );
    assert!(
        text(&o.stderr).contains("container:run"),
        "{}",
        text(&o.stderr)
    );
    // Usage errors are 2.
    let mut c = cli(&api);
    c.args(["containers", "run", "--", "true"]);
    assert_eq!(out(c).await.status.code(), Some(2));
    let mut c = cli(&api);
    c.args(["containers", "--timeout", "whenever", "status"]);
    assert_eq!(out(c).await.status.code(), Some(2));
    // The server unreachable: 125 and says so.
    let mut c = bus();
    c.env("BUS_API_TOKEN", token("alice", ALL)).args([
        "containers",
        "--api-url",
        "http://127.0.0.1:9",
        "run",
        "--profile",
        "codex",
        "--",
        "true",
    ]);
    let o = out(c).await;
    assert_eq!(o.status.code(), Some(125));
    assert!(
        text(&o.stderr).contains("cannot reach the API"),
        "{}",
        text(&o.stderr)
    );
}

#[actix_rt::test]
async fn bus_files_stop_at_the_failing_line() {
    let api = Api::static_backend(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("steps.bus");
    std::fs::write(
        &file,
        "# a comment\ncontainers status --format text -o $OUT_DIR/one.txt\ncontainers runs --limit 0\ncontainers status -o $OUT_DIR/four.txt\n",
    )
    .unwrap();
    let mut c = cli(&api);
    c.arg(&file).env("OUT_DIR", dir.path());
    let o = out(c).await;
    assert_eq!(o.status.code(), Some(1));
    let e = text(&o.stderr);
    assert!(e.contains("steps.bus:3"), "{e}");
    assert!(dir.path().join("one.txt").exists(), "line 2 ran");
    assert!(!dir.path().join("four.txt").exists(), "line 4 did not");
    let mut c = bus();
    c.args(["completions", "bash"]);
    let o = out(c).await;
    assert!(text(&o.stdout).contains("_bus()"));
}

#[actix_rt::test]
async fn spinner_on_a_terminal_only_and_ctrl_c_cancels() {
    let api = Api::with_fake_worker(|_| {}).await;
    // Under a pseudo-terminal (script(1)) the spinner shows on stderr.
    let mut c = Command::new("script");
    c.args([
        "-qec",
        &format!(
            "{} containers run --profile codex -- sleep 1.5",
            env!("CARGO_BIN_EXE_bus")
        ),
        "/dev/null",
    ])
    .env("BUS_AI_API_URL", &api.url)
    .env("BUS_API_TOKEN", token("alice", ALL))
    .stdin(Stdio::null());
    let o = out(c).await;
    let t = text(&o.stdout);
    assert!(t.contains("running run_"), "spinner on a terminal: {t:?}");
    // On a pipe: no spinner.
    let mut c = cli(&api);
    c.args([
        "containers",
        "run",
        "--profile",
        "codex",
        "--",
        "sleep",
        "1.5",
    ]);
    let o = out(c).await;
    assert!(o.status.success());
    assert!(
        !text(&o.stderr).contains("running run_"),
        "{}",
        text(&o.stderr)
    );
    // -q under a terminal: no spinner either.
    let mut c = Command::new("script");
    c.args([
        "-qec",
        &format!(
            "{} containers run -q --profile codex -- sleep 1.5",
            env!("CARGO_BIN_EXE_bus")
        ),
        "/dev/null",
    ])
    .env("BUS_AI_API_URL", &api.url)
    .env("BUS_API_TOKEN", token("alice", ALL))
    .stdin(Stdio::null());
    assert!(!text(&out(c).await.stdout).contains("running run_"));

    // Ctrl-C cancels the run and waits for its result: exit 130, no container.
    let mut c = cli(&api);
    c.args([
        "containers",
        "run",
        "--profile",
        "codex",
        "--",
        "sleep",
        "60",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    let pid = child.id();
    let fake = api.fake.clone().unwrap();
    for _ in 0..500 {
        if !fake.live().is_empty() {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fake.live().len(), 1);
    Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    let o = actix_rt::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("cancelling"));
    let result: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(result["state"], "cancelled");
    assert!(fake.live().is_empty(), "the container is gone");
}

#[actix_rt::test]
async fn exit_codes_pass_through_from_real_containers() {
    let Some(runtime) = engine().await else {
        return;
    };
    let api = Api::with_worker(runtime, test_config(), |_| {}).await;
    let mut c = cli(&api);
    c.args([
        "containers",
        "run",
        "--format",
        "text",
        "--profile",
        "codex",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    let o = out(c).await;
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "out\n");
    assert!(text(&o.stderr).contains("err\n"));
    let mut c = cli(&api);
    c.args([
        "containers",
        "run",
        "--profile",
        "codex",
        "--timeout-seconds",
        "1",
        "--",
        "sleep",
        "30",
    ]);
    let o = out(c).await;
    assert_eq!(o.status.code(), Some(124), "timed out: {}", text(&o.stdout));
    let mut c = cli(&api);
    c.args([
        "containers",
        "run",
        "-i",
        "--format",
        "text",
        "--profile",
        "codex",
        "--",
        "cat",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped());
    let mut child = c.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"forwarded stdin\n").unwrap();
    }
    let o = actix_rt::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "forwarded stdin\n");
}
