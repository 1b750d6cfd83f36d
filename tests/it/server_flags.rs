//! The servers' tuning flags, each through the `bus` binary: started as an
//! operator starts them, observed from outside (curl, raw sockets, the
//! `bus events` client). Each assertion fails when its flag is not read.

use crate::support::api::{call, token, ALL};
use crate::support::*;
use std::io::{Read, Write};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn secret() -> &'static str {
    std::str::from_utf8(SECRET).unwrap()
}

fn events_with(flags: &[&str]) -> Process {
    let mut cmd = bus();
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
    .args(flags)
    .env("BUS_API_JWT_SECRET", secret());
    Process::spawn(cmd)
}

fn events_cli(srv: &Process, tok: &str, args: &[&str]) -> Output {
    bus()
        .arg("events")
        .args(args)
        .env("BUS_EVENTS_API_URL", srv.url())
        .env("BUS_API_TOKEN", tok)
        .output()
        .unwrap()
}

fn metric(url: &str, name: &str) -> i64 {
    let out = Command::new("curl")
        .args(["-s", &format!("{url}/metrics")])
        .output()
        .unwrap();
    text(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// Opens a raw NDJSON stream of `name`; the caller decides whether to read.
fn raw_stream(srv: &Process, tok: &str, name: &str) -> std::net::TcpStream {
    let mut tcp = std::net::TcpStream::connect(srv.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        tcp,
        "GET /api/v1/events/stream?name={name} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n\r\n"
    )
    .unwrap();
    tcp
}

/// `--heartbeat`, `--protected-prefix`, `--max-payload-bytes`,
/// `--replay-window`, `--queue-capacity` of `bus api-provider events`, and
/// `bus events send --correlation-id`.
#[test]
fn events_api_flags() {
    let srv = events_with(&[
        "--heartbeat",
        "200ms",
        "--protected-prefix",
        "app.vault",
        "--max-payload-bytes",
        "100000",
        "--replay-window",
        "2",
        "--queue-capacity",
        "2",
    ]);
    let user = mint("u", "events:send events:listen");

    // --heartbeat 200ms: two empty-line chunks within 3 s (default 15 s).
    let mut tcp = raw_stream(&srv, &user, "app.quiet");
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3)
        && text(&seen).matches("\r\n1\r\n\n\r\n").count() < 2
    {
        let n = tcp.read(&mut buf).unwrap();
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        text(&seen).matches("\r\n1\r\n\n\r\n").count() >= 2,
        "two heartbeats within 3 s: {:?}",
        text(&seen)
    );
    drop(tcp);

    // --protected-prefix app.vault: events:send is not enough there.
    let out = events_cli(&srv, &user, &["send", "--name", "app.vault.key"]);
    assert!(!out.status.success(), "a protected name is refused");
    assert!(
        text(&out.stderr).contains("container:admin"),
        "{}",
        text(&out.stderr)
    );
    let out = events_cli(&srv, &user, &["send", "--name", "app.open"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // --max-payload-bytes 100000: 90 kB passes, 120 kB is 413.
    let dir = tempfile::tempdir().unwrap();
    let post = |bytes: usize| {
        let body = format!(
            r#"{{"name":"app.big","payload":{{"blob":"{}"}}}}"#,
            "x".repeat(bytes)
        );
        let file = dir.path().join("body.json");
        std::fs::write(&file, body).unwrap();
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
            .args(["-H", "Content-Type: application/json"])
            .args(["-H", &format!("Authorization: Bearer {user}")])
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .arg(format!("{}/api/v1/events", srv.url()))
            .output()
            .unwrap();
        text(&out.stdout)
    };
    assert_eq!(post(90_000), "202");
    assert_eq!(post(120_000), "413");

    // --replay-window 2 and --correlation-id: three sent, the last two kept.
    for i in 1..=3 {
        let cid = format!("c-{i}");
        let out = events_cli(
            &srv,
            &user,
            &["send", "--name", "app.r", "--correlation-id", &cid],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let out = events_cli(
        &srv,
        &user,
        &["listen", "--name", "app.r", "--replay", "--no-follow"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let kept: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<_> = kept.iter().map(|e| e["correlationId"].clone()).collect();
    assert_eq!(ids, vec!["c-2", "c-3"], "{kept:?}");

    // --queue-capacity 2: a stream that never reads is cut off long before
    // the default queue (1024 events) would fill.
    let admin = mint("svc", ADMIN);
    let stuck = raw_stream(&srv, &admin, "app.firehose");
    let url = srv.url();
    for _ in 0..200 {
        if metric(&url, "bus_events_open_streams") >= 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let blob = "x".repeat(90_000);
    actix_rt::System::new().block_on(async {
        use bus_containers::broker::Broker;
        use bus_containers::contract::{Envelope, Publication};
        let c = http_client(srv.addr, &admin);
        for i in 0..200 {
            c.publish(Envelope::stamp(
                Publication::new("app.firehose", serde_json::json!({"i": i, "blob": blob})),
                "x",
                true,
            ))
            .await
            .unwrap();
            if metric(&url, "bus_events_slow_consumers_cut_off_total") >= 1 {
                break;
            }
        }
    });
    assert!(
        metric(&url, "bus_events_slow_consumers_cut_off_total") >= 1,
        "the stuck stream was cut off"
    );
    drop(stuck);
}

fn provider_with(data: &std::path::Path, flags: &[&str]) -> Process {
    Process::spawn(provider_command(data, flags))
}

/// `bus api-provider containers` on port 0 with `data` and `flags`.
fn provider_command(data: &std::path::Path, flags: &[&str]) -> Command {
    let mut cmd = bus();
    cmd.args([
        "api-provider",
        "containers",
        "--addr",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--workers",
        "1",
    ])
    .arg("--data-dir")
    .arg(data)
    .args(flags)
    .env("BUS_API_JWT_SECRET", secret());
    cmd
}

fn curl_json(args: &[&str]) -> (String, serde_json::Value) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let body = text(&out.stdout);
    let (json, code) = body.rsplit_once('\n').unwrap();
    (
        code.to_owned(),
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
    )
}

fn post_run(p: &Process, tok: &str, body: &str) -> (String, serde_json::Value) {
    curl_json(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-H",
        &format!("Authorization: Bearer {tok}"),
        "--data-binary",
        body,
        &format!("{}/api/v1/containers/runs", p.url()),
    ])
}

fn list_runs(p: &Process, tok: &str) -> Vec<serde_json::Value> {
    let (code, v) = curl_json(&[
        "-H",
        &format!("Authorization: Bearer {tok}"),
        &format!("{}/api/v1/containers/runs", p.url()),
    ]);
    assert_eq!(code, "200", "{v}");
    v["items"].as_array().cloned().unwrap_or_default()
}

/// `--max-body-bytes`, `--retention-max-runs` and `--retention-max-age` of
/// `bus api-provider containers`.
#[test]
fn provider_body_and_retention_flags() {
    let dir = tempfile::tempdir().unwrap();
    let alice = token("alice", ALL);
    let p = provider_with(dir.path(), &["--max-body-bytes", "300"]);
    let small = r#"{"profile":"codex","args":["true"]}"#;
    let big = format!(
        r#"{{"profile":"codex","args":["echo","{}"]}}"#,
        "x".repeat(400)
    );
    let (code, v) = post_run(&p, &alice, &big);
    assert_eq!(
        (code.as_str(), v["error"]["type"].as_str()),
        ("413", Some("payload_too_large")),
        "{v}"
    );
    for _ in 0..3 {
        let (code, v) = post_run(&p, &alice, small);
        assert_eq!(code, "200", "{v}");
    }
    let all = list_runs(&p, &alice);
    assert_eq!(all.len(), 3);

    // The client's `runs --before` pages, and `--color always` colours an
    // error even on a pipe (auto does not).
    let client = |args: &[&str]| {
        bus()
            .args(["containers", "--api-url", &p.url()])
            .args(args)
            .env("BUS_AI_TOKEN", &alice)
            .env_remove("NO_COLOR")
            .output()
            .unwrap()
    };
    let oldest_two = client(&[
        "--format",
        "json",
        "runs",
        "--before",
        all[0]["run_id"].as_str().unwrap(),
    ]);
    assert!(oldest_two.status.success(), "{}", text(&oldest_two.stderr));
    let page: serde_json::Value = serde_json::from_slice(&oldest_two.stdout).unwrap();
    let ids: Vec<_> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].clone())
        .collect();
    assert_eq!(
        ids,
        vec![all[1]["run_id"].clone(), all[2]["run_id"].clone()]
    );
    let missing = "run_00000000000000000000000000";
    let out = client(&["--color", "always", "delete", missing]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("\x1b[31merror\x1b[0m"),
        "{:?}",
        text(&out.stderr)
    );
    let out = client(&["delete", missing]);
    assert!(!out.status.success());
    assert!(
        !text(&out.stderr).contains('\x1b') && text(&out.stderr).contains("error"),
        "{:?}",
        text(&out.stderr)
    );
    drop(p);

    // Retention runs at start: at most two records are kept.
    let p = provider_with(dir.path(), &["--retention-max-runs", "2"]);
    assert_eq!(list_runs(&p, &alice).len(), 2);
    drop(p);

    // Records older than a second are removed. The ledger keeps whole
    // seconds (created 12:00:05.0 is 5; at 12:00:06.6 the cutoff is 5, not
    // past it): wait over two seconds, so the test does not depend on
    // where in its second a record was made.
    std::thread::sleep(Duration::from_millis(2500));
    let p = provider_with(dir.path(), &["--retention-max-age", "1s"]);
    assert_eq!(list_runs(&p, &alice).len(), 0);
}

/// `--max-files-bytes` (here by its variable, `BUS_MAX_FILES_BYTES`) of
/// `bus api-provider containers`: files over it are 413, and the body
/// limit grows with it (a 1.2 MB file is over the old 1 MiB body).
#[test]
fn provider_files_limit() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let alice = token("alice", ALL);
    let body = |n: usize| {
        let data = base64::engine::general_purpose::STANDARD.encode(vec![7u8; n]);
        let path = dir.path().join(format!("body-{n}.json"));
        std::fs::write(
            &path,
            format!(r#"{{"profile":"codex","args":["true"],"files":[{{"path":"/workspace/f","content_base64":"{data}"}}]}}"#),
        )
        .unwrap();
        format!("@{}", path.display())
    };
    let mut cmd = provider_command(dir.path(), &[]);
    cmd.env("BUS_MAX_FILES_BYTES", "1500000");
    let p = Process::spawn(cmd);
    let (code, v) = post_run(&p, &alice, &body(1_200_000));
    assert_eq!(code, "200", "{v}");
    let (code, v) = post_run(&p, &alice, &body(1_600_000));
    assert_eq!(code, "413", "{v}");
    assert_eq!(v["error"]["type"], "payload_too_large", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 1500000 (--max-files-bytes)"),
        "{v}"
    );
}

/// Request metrics by route pattern: a fixed path, a path with a run id
/// (its pattern, never the id) and an unmatched one, each counted by
/// method and status.
#[test]
fn request_metrics_count_by_route() {
    let dir = tempfile::tempdir().unwrap();
    let alice = token("alice", ALL);
    let p = provider_with(dir.path(), &[]);
    let get = |path: &str| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["-H", &format!("Authorization: Bearer {alice}")])
            .arg(format!("{}{path}", p.url()))
            .output()
            .unwrap();
        text(&out.stdout)
    };
    for _ in 0..3 {
        assert_eq!(get("/healthz"), "200");
    }
    assert_eq!(
        get("/api/v1/containers/runs/run_0123456789abcdef0123456789abcdef"),
        "404"
    );
    assert_eq!(
        get("/api/v1/containers/runs/run_fedcba9876543210fedcba9876543210"),
        "404"
    );
    assert_eq!(get("/no/such/path"), "404");
    let out = Command::new("curl")
        .args(["-s", &format!("{}/metrics", p.url())])
        .output()
        .unwrap();
    let metrics = text(&out.stdout);
    for line in [
        r#"bus_api_http_requests_total{method="GET",route="/healthz",status="200"} 3"#,
        r#"bus_api_http_requests_total{method="GET",route="/api/v1/containers/runs/{run_id}",status="404"} 2"#,
        r#"bus_api_http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
        r#"bus_api_http_request_seconds_count{route="/healthz"} 3"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    assert!(
        !metrics.contains("run_0123456789abcdef"),
        "never a raw path"
    );
}

/// `--billing-backend events`: each run is first checked on the bus; a
/// billing service (here `bus events listen` and `bus events send
/// --correlation-id`) that says no makes it 402 with its guidance.
#[test]
fn provider_billing_backend() {
    let events = events_process();
    let dir = tempfile::tempdir().unwrap();
    let provider_token = mint("provider", "events:admin");
    let mut cmd = bus();
    cmd.args([
        "api-provider",
        "containers",
        "--addr",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--workers",
        "1",
        "--billing-backend",
        "events",
        "--events-url",
        &events.url(),
    ])
    .arg("--data-dir")
    .arg(dir.path())
    .env("BUS_API_JWT_SECRET", secret())
    .env("BUS_API_TOKEN", &provider_token);
    let p = Process::spawn(cmd);

    // The billing service: hears one check and answers "no".
    let billing = mint("billing", "events:admin");
    let mut listen = bus();
    listen
        .args([
            "events",
            "listen",
            "--name",
            "bus.billing.entitlement.check.request",
            "--count",
            "1",
        ])
        .env("BUS_EVENTS_API_URL", events.url())
        .env("BUS_API_TOKEN", &billing)
        .stdout(std::process::Stdio::piped());
    let listener = listen.spawn().unwrap();
    let mut open = false;
    for _ in 0..200 {
        // the provider's reply listener and the billing service's stream
        if metric(&events.url(), "bus_events_open_streams") >= 2 {
            open = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(open, "both listeners are on the bus");
    let url = p.url();
    let alice = token("alice", ALL);
    let run = std::thread::spawn(move || {
        curl_json(&[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-H",
            &format!("Authorization: Bearer {alice}"),
            "--data-binary",
            r#"{"profile":"codex","args":["true"]}"#,
            &format!("{url}/api/v1/containers/runs"),
        ])
    });
    let out = listener.wait_with_output().unwrap();
    let check: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(check["payload"]["account_id"], "alice", "{check}");
    let cid = check["correlationId"].as_str().unwrap();
    let out = events_cli(
        &events,
        &billing,
        &[
            "send",
            "--name",
            "bus.billing.entitlement.check.response",
            "--correlation-id",
            cid,
            "--payload",
            r#"{"allowed":false,"reason":"billing_required","command":"bus billing setup"}"#,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (code, v) = run.join().unwrap();
    assert_eq!(
        (code.as_str(), v["error"]["type"].as_str()),
        ("402", Some("billing_required")),
        "{v}"
    );
    assert_eq!(v["error"]["command"], "bus billing setup");
}

/// `--output-cap-bytes`: what the provider keeps of a running run's
/// output for log readers stops at the cap; the finished record still
/// has the whole output (it comes from the result).
#[actix_rt::test]
async fn provider_output_cap_bytes() {
    use crate::support::docker::engine;
    use crate::support::stack::{Stack, StackOpts};
    if engine().await.is_none() {
        return;
    }
    let Some(s) = Stack::start(StackOpts {
        api_args: vec!["--output-cap-bytes".into(), "4".into()],
        ..Default::default()
    })
    .await
    else {
        return;
    };
    s.warm_up().await;
    let (status, _, v) = call(
        "POST",
        &format!("{}/api/v1/containers/runs", s.api_url()),
        Some(&s.token),
        Some(
            r#"{"profile":"codex","args":["sh","-c","echo first; sleep 1; echo second; sleep 30"],"wait":false}"#,
        ),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    let run = v["run_id"].as_str().unwrap().to_owned();
    let logs = format!("{}/api/v1/containers/runs/{run}/logs", s.api_url());
    let read = || {
        let out = Command::new("curl")
            .args(["-s", "-H", &format!("Authorization: Bearer {}", s.token)])
            .arg(format!("{logs}?follow=false"))
            .output()
            .unwrap();
        text(&out.stdout)
    };
    let until = Instant::now() + Duration::from_secs(30);
    while !read().contains("first") && Instant::now() < until {
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    // "second" is printed a second after "first": give it time to arrive.
    actix_rt::time::sleep(Duration::from_millis(3000)).await;
    let seen = read();
    assert!(seen.contains("first"), "{seen}");
    assert!(!seen.contains("second"), "past the cap: {seen}");
    let (status, _, _) = call(
        "DELETE",
        &format!("{}/api/v1/containers/runs/{run}", s.api_url()),
        Some(&s.token),
        None,
    )
    .await;
    assert!(status < 300);
}

/// `--max-concurrent-runs`: deleting a running run frees its slot at once
/// (the next run is accepted right after the DELETE answers).
#[actix_rt::test]
async fn deleting_a_run_frees_its_concurrency_slot() {
    use crate::support::docker::engine;
    use crate::support::stack::{Stack, StackOpts};
    if engine().await.is_none() {
        return;
    }
    let Some(s) = Stack::start(StackOpts {
        api_args: vec!["--max-concurrent-runs".into(), "1".into()],
        ..Default::default()
    })
    .await
    else {
        return;
    };
    s.warm_up().await;
    let runs = format!("{}/api/v1/containers/runs", s.api_url());
    let long = r#"{"profile":"codex","args":["sleep","60"],"wait":false}"#;
    let (status, _, first) = call("POST", &runs, Some(&s.token), Some(long)).await;
    assert_eq!(status, 202, "{first}");
    let (status, _, v) = call("POST", &runs, Some(&s.token), Some(long)).await;
    assert_eq!(status, 429, "one at a time: {v}");
    let id = first["run_id"].as_str().unwrap();
    let (status, _, v) = call("DELETE", &format!("{runs}/{id}"), Some(&s.token), None).await;
    assert!(status < 300, "{v}");
    let (status, _, second) = call("POST", &runs, Some(&s.token), Some(long)).await;
    assert_eq!(status, 202, "the slot is free: {second}");
    let id = second["run_id"].as_str().unwrap();
    call("DELETE", &format!("{runs}/{id}"), Some(&s.token), None).await;
}

/// The status code of a raw request's answer, read off its first line;
/// and whatever else came with it so far.
fn status_of(tcp: &mut std::net::TcpStream) -> (u16, String) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !text(&seen).contains("\r\n\r\n") {
        match tcp.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    // The body of an error comes right after its head.
    if !text(&seen).starts_with("HTTP/1.1 200") {
        tcp.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        while !text(&seen).contains("}}") {
            match tcp.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    }
    let all = text(&seen);
    let code = all
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, all)
}

/// `--max-streams-per-identity` and `--max-streams` of the Events API:
/// one token over its cap gets `429 rate_limited` (JSON, `Retry-After`)
/// however many connections it opens (a bounded 600 here, all held open),
/// while another identity's stream and `/readyz` are served; a stream that
/// ends gives its place back; the total cap holds across identities.
#[test]
fn events_stream_caps() {
    let srv = events_with(&["--max-streams-per-identity", "10", "--max-streams", "20"]);
    let alice = mint("alice", "events:listen");
    let mut held = Vec::new();
    for _ in 0..10 {
        let mut tcp = raw_stream(&srv, &alice, "app.caps");
        let (code, all) = status_of(&mut tcp);
        assert_eq!(code, 200, "{all}");
        held.push(tcp);
    }
    let mut refused = Vec::new();
    for i in 0..600 {
        let mut tcp = raw_stream(&srv, &alice, "app.caps");
        let (code, all) = status_of(&mut tcp);
        assert_eq!(code, 429, "attempt {i}: {all}");
        if i == 0 {
            assert!(
                all.contains("\"rate_limited\"") && all.contains("open streams"),
                "{all}"
            );
            assert!(all.to_ascii_lowercase().contains("retry-after: 1"), "{all}");
        }
        refused.push(tcp);
    }
    // Others are served meanwhile.
    let bob = mint("bob", "events:listen");
    let mut tcp = raw_stream(&srv, &bob, "app.caps");
    assert_eq!(status_of(&mut tcp).0, 200);
    held.push(tcp);
    let ready = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .arg(format!("{}/readyz", srv.url()))
        .output()
        .unwrap();
    assert_eq!(text(&ready.stdout), "200");
    // A stream that ends gives its place back.
    drop(held.remove(0));
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let mut tcp = raw_stream(&srv, &alice, "app.caps");
        let (code, all) = status_of(&mut tcp);
        if code == 200 {
            held.push(tcp);
            break;
        }
        assert!(Instant::now() < until, "the place never came back: {all}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // 11 open; 9 more fill the server, the next is over the total.
    for i in 0..9 {
        let tok = mint(&format!("carol{i}"), "events:listen");
        let mut tcp = raw_stream(&srv, &tok, "app.caps");
        assert_eq!(status_of(&mut tcp).0, 200);
        held.push(tcp);
    }
    let dave = mint("dave", "events:listen");
    let mut tcp = raw_stream(&srv, &dave, "app.caps");
    let (code, all) = status_of(&mut tcp);
    assert_eq!(code, 429, "{all}");
    assert!(all.contains("the server has 20 open streams"), "{all}");
    drop(refused);
}

/// `--max-streams-per-identity` of the containers API caps log follows:
/// the next follow by the same token is `429`, its other requests and
/// other accounts are served.
#[actix_rt::test]
async fn provider_log_follow_caps() {
    use crate::support::docker::engine;
    use crate::support::stack::{Stack, StackOpts};
    if engine().await.is_none() {
        return;
    }
    let Some(s) = Stack::start(StackOpts {
        api_args: vec![
            "--max-streams-per-identity".into(),
            "3".into(),
            "--max-streams".into(),
            "100".into(),
        ],
        ..Default::default()
    })
    .await
    else {
        return;
    };
    s.warm_up().await;
    let runs = format!("{}/api/v1/containers/runs", s.api_url());
    let (status, _, v) = call(
        "POST",
        &runs,
        Some(&s.token),
        Some(r#"{"profile":"codex","args":["sleep","60"],"wait":false}"#),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    let id = v["run_id"].as_str().unwrap().to_owned();
    let addr = s.api_url().trim_start_matches("http://").to_owned();
    let follow = || {
        let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            tcp,
            "GET /api/v1/containers/runs/{id}/logs?follow=true HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            s.token
        )
        .unwrap();
        let (code, all) = status_of(&mut tcp);
        (code, all, tcp)
    };
    let mut held = Vec::new();
    for _ in 0..3 {
        let (code, all, tcp) = follow();
        assert_eq!(code, 200, "{all}");
        held.push(tcp);
    }
    let (code, all, _) = follow();
    assert_eq!(code, 429, "{all}");
    assert!(all.contains("\"rate_limited\""), "{all}");
    // A follow whose client goes gives its place back.
    drop(held.remove(0));
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, all, tcp) = follow();
        if code == 200 {
            held.push(tcp);
            break;
        }
        assert!(Instant::now() < until, "the place never came back: {all}");
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _, v) = call("GET", &format!("{runs}/{id}"), Some(&s.token), None).await;
    assert_eq!(status, 200, "not a stream: {v}");
    let other = token("someone-else", ALL);
    let (status, _, v) = call("GET", &runs, Some(&other), None).await;
    assert_eq!(status, 200, "{v}");
    call("DELETE", &format!("{runs}/{id}"), Some(&s.token), None).await;
    drop(held);
}
