//! The real `bus` binary: `api-provider events`, `operator token issue
//! --local` and `events send|listen`, as the spec spells them.

use crate::support::*;
use base64::Engine;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const RAW_SECRET: &str = "cli-secret-value-0123456789-abcdef";

fn server() -> Process {
    let mut cmd = bus();
    let encoded = base64::engine::general_purpose::STANDARD.encode(RAW_SECRET);
    cmd.args([
        "api-provider",
        "events",
        "--addr",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--workers",
        "1",
    ])
    .env("BUS_API_JWT_SECRET", format!("base64:{encoded}"));
    Process::spawn(cmd)
}

fn token(args: &[&str]) -> Output {
    bus()
        .args(["operator", "token"])
        .args(args)
        .env("BUS_AUTH_HS256_SECRET", RAW_SECRET)
        .output()
        .unwrap()
}

fn client(cmd: &mut Command, srv: &Process, tok: &str) {
    cmd.env("BUS_EVENTS_API_URL", srv.url())
        .env("BUS_API_TOKEN", tok);
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn token_from_the_cli_is_accepted_and_event_commands_work_verbatim() {
    let srv = server();
    let out = token(&[
        "issue",
        "--local",
        "--scope",
        "events:send events:listen",
        "--format",
        "token",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let tok = text(&out.stdout).trim().to_owned();
    assert_eq!(tok.split('.').count(), 3);

    // --format before `issue` works too, and says what it minted.
    let out = token(&[
        "--format",
        "json",
        "issue",
        "--local",
        "--subject",
        "bob",
        "--ttl",
        "1.5h",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["subject"], "bob");
    assert_eq!(v["audience"], "ai.hg.fi/api");
    let now = jsonwebtoken::get_current_timestamp();
    let exp = v["expires_at"].as_u64().unwrap();
    assert!(
        exp >= now + 5390 && exp <= now + 5410,
        "ttl 1.5h: {exp} vs {now}"
    );

    // listen (unicast, named group and consumer) in the background.
    let mut listen = bus();
    client(&mut listen, &srv, &tok);
    listen
        .args([
            "events",
            "listen",
            "--name",
            "app.cli",
            "--delivery",
            "unicast",
            "--group",
            "G",
            "--consumer",
            "C",
            "--count",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let listener = listen.spawn().unwrap();
    // Wait until the listener's stream is open on the server.
    let metrics_url = format!("{}/metrics", srv.url());
    let mut open = false;
    for _ in 0..200 {
        let m = Command::new("curl")
            .args(["-s", &metrics_url])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&m.stdout)
            .lines()
            .any(|l| l.starts_with("bus_events_open_streams") && !l.ends_with(" 0"))
        {
            open = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(open, "the listener subscribed");

    let mut send = bus();
    client(&mut send, &srv, &tok);
    let out = send
        .args([
            "events",
            "send",
            "--name",
            "app.cli",
            "--payload",
            r#"{"hello":"world"}"#,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let accepted: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(accepted["accepted"], true);
    assert_eq!(accepted["name"], "app.cli");

    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(listener.wait_with_output().unwrap());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the listener got the event and exited");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let env: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(env["payload"], serde_json::json!({"hello": "world"}));
    assert_eq!(env["id"], accepted["id"]);
    assert_eq!(env["identity_id"], "00000000-0000-4000-8000-000000000001");
    assert_eq!(env["service"], false);

    // --replay --no-follow prints what is stored and exits.
    let mut replay = bus();
    client(&mut replay, &srv, &tok);
    let out = replay
        .args([
            "events",
            "listen",
            "--name",
            "app.cli",
            "--replay",
            "--no-follow",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 1);
}

#[test]
fn the_token_file_is_used_when_no_variable_is_set() {
    let srv = server();
    let tok = text(&token(&["issue", "--local", "--scope", "events:send"]).stdout)
        .trim()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("auth")).unwrap();
    std::fs::write(dir.path().join("auth/api-token"), format!("{tok}\n")).unwrap();
    let out = bus()
        .env("BUS_CONFIG_DIR", dir.path())
        .args([
            "events",
            "send",
            "--events-url",
            &srv.url(),
            "--name",
            "app.file",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn refusals_are_clear() {
    let srv = server();
    // A literal token on the command line.
    let out = bus()
        .args(["events", "send", "--token", "abc", "--name", "app.x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("BUS_API_TOKEN") && err.contains("--token-file"),
        "{err}"
    );
    assert!(!err.contains("abc"), "the token is not echoed: {err}");

    // A token signed with another secret.
    let out = bus()
        .args(["operator", "token", "issue", "--local"])
        .env(
            "BUS_AUTH_HS256_SECRET",
            "another-secret-0123456789-abcdefghij",
        )
        .output()
        .unwrap();
    let wrong = text(&out.stdout).trim().to_owned();
    let mut send = bus();
    client(&mut send, &srv, &wrong);
    let out = send
        .args(["events", "send", "--name", "app.x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("signature"),
        "{}",
        text(&out.stderr)
    );

    // No scope for a container name.
    let tok = text(&token(&["issue", "--local", "--scope", "events:send"]).stdout)
        .trim()
        .to_owned();
    let mut send = bus();
    client(&mut send, &srv, &tok);
    let out = send
        .args(["events", "send", "--name", "bus.containers.run.request"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("container:admin"),
        "{}",
        text(&out.stderr)
    );

    // Bad names, payloads, durations and a missing --local.
    let out = bus()
        .args(["events", "send", "--name", "Bad..Name"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = bus()
        .args(["events", "send", "--name", "app.x", "--payload", "{nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--payload"));
    let out = token(&["issue", "--local", "--ttl", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("Go syntax"),
        "{}",
        text(&out.stderr)
    );
    let out = token(&["issue"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--local"));
    let out = bus()
        .args(["operator", "token", "issue", "--local"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("BUS_AUTH_HS256_SECRET"));
}

#[test]
fn the_server_refuses_to_start_without_a_secret() {
    let out = bus()
        .args(["api-provider", "events", "--addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("BUS_API_JWT_SECRET"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn busdk_binary_names_work_through_links() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("bus-operator-token");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_bus"), &link).unwrap();
    let out = Command::new(&link)
        .args(["issue", "--local", "--format", "json"])
        .env("BUS_AUTH_HS256_SECRET", RAW_SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("\"token\""));
    let link = dir.path().join("bus-integration-podman");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_bus"), &link).unwrap();
    let out = Command::new(&link)
        .args(["--provider", "static", "--self-test"])
        .output()
        .unwrap();
    assert_eq!(
        text(&out.stdout).trim(),
        "bus-integration-podman self-test OK"
    );
}
