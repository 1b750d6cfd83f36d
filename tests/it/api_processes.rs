//! `bus api-provider containers` as a real process: the BusDK curl example
//! verbatim, and the ledger across a SIGKILL and restart.

use crate::support::api::{token, ALL};
use crate::support::*;
use std::process::Command;

fn provider(data: &std::path::Path) -> Process {
    let mut cmd = bus();
    cmd.args([
        "api-provider",
        "containers",
        "--backend",
        "static",
        "--addr",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--workers",
        "1",
    ])
    .arg("--data-dir")
    .arg(data)
    .env("BUS_API_JWT_SECRET", std::str::from_utf8(SECRET).unwrap());
    Process::spawn(cmd)
}

const CURL: &str = r#"curl -fsS -X POST \
  -H "Authorization: Bearer $TOKEN" \
  -H "Content-Type: application/json" \
  http://127.0.0.1:${LOCAL_AI_PLATFORM_PORT:-8080}/api/v1/containers/runs \
  -d '{"profile":"codex","args":["sh","-c","printf OK"],"timeout_seconds":300}'"#;

#[test]
fn the_busdk_curl_example_works_verbatim_and_the_ledger_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let p = provider(dir.path());
    let out = Command::new("sh")
        .arg("-c")
        .arg(CURL)
        .env("TOKEN", token("alice", ALL))
        .env("LOCAL_AI_PLATFORM_PORT", p.addr.port().to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["run_id"].as_str().unwrap().starts_with("run_"));
    assert_eq!(r["owner_account_id"], "alice");
    assert_eq!(r["runner_name"], "static");
    assert_eq!(r["image"], "codex");
    assert_eq!(r["args"], serde_json::json!(["sh", "-c", "printf OK"]));
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["stdout"], "static: sh -c printf OK");
    assert_eq!(r["stderr"], "");
    assert_eq!(r["duration_ms"], 0);
    assert_eq!(r["runtime"]["provider"], "static");
    assert_eq!(r["state"], "succeeded");
    assert_eq!(
        (
            r["stdout_truncated"].as_bool(),
            r["stderr_truncated"].as_bool()
        ),
        (Some(false), Some(false))
    );
    assert!(r["started_at"].is_string() && r["finished_at"].is_string());
    let id = r["run_id"].as_str().unwrap().to_owned();

    drop(p); // SIGKILL
    let again = provider(dir.path());
    let out = Command::new("curl")
        .args([
            "-fsS",
            "-H",
            &format!("Authorization: Bearer {}", token("alice", ALL)),
        ])
        .arg(format!("{}/api/v1/containers/runs/{id}", again.url()))
        .output()
        .unwrap();
    assert!(out.status.success());
    let rec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rec["state"], "succeeded");
    assert_eq!(rec["result"]["stdout"], "static: sh -c printf OK");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("runs.sqlite"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the ledger is private");
}

#[test]
fn the_provider_refuses_bad_flags() {
    let out = bus()
        .args(["api-provider", "containers", "--addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "no secret");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("tried BUS_CONTAINERS_JWT_SECRET, BUS_API_JWT_SECRET, BUS_EVENTS_JWT_SECRET, BUS_AUTH_HS256_SECRET"),
        "which variables were tried: {said}"
    );
    // BusDK's local flows set only one of the fallbacks: each works alone
    // (a token signed with it is accepted).
    for var in ["BUS_EVENTS_JWT_SECRET", "BUS_AUTH_HS256_SECRET"] {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = bus();
        cmd.args(["api-provider", "containers", "--addr", "127.0.0.1:0"])
            .args(["--log-format", "json", "--workers", "1", "--data-dir"])
            .arg(dir.path())
            .env(var, std::str::from_utf8(SECRET).unwrap());
        let p = Process::spawn(cmd);
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
            .arg(format!("Authorization: Bearer {}", token("alice", ALL)))
            .arg(format!("{}/api/v1/containers/runs", p.url()))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{var}");
    }
    let out = bus()
        .args([
            "api-provider",
            "containers",
            "--addr",
            "127.0.0.1:0",
            "--request-timeout",
            "later",
        ])
        .env("BUS_API_JWT_SECRET", "x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // A signing secret shorter than 32 bytes is refused, by every
    // server and by local issuance, saying how long it must be.
    for args in [
        &["api-provider", "containers", "--addr", "127.0.0.1:0"][..],
        &["api-provider", "events", "--addr", "127.0.0.1:0"][..],
        &["operator", "token", "issue", "--local"][..],
    ] {
        let out = bus()
            .args(args)
            .env("BUS_API_JWT_SECRET", "short-secret")
            .env("BUS_AUTH_HS256_SECRET", "short-secret")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {said}");
        assert!(
            said.contains("12 bytes") && said.contains("at least 32"),
            "{args:?}: {said}"
        );
        assert!(
            !said.contains("short-secret"),
            "the secret is never echoed: {said}"
        );
    }
}

/// `nbf` is honoured as `exp` is; two `Authorization` headers are 400.
#[test]
fn not_before_and_a_second_authorization_header() {
    let dir = tempfile::tempdir().unwrap();
    let p = provider(dir.path());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let signed = |nbf: i64| {
        let claims = serde_json::json!({
            "sub": "alice", "aud": bus_containers::auth::AUDIENCE_API, "iat": now,
            "exp": now + 600, "nbf": nbf, "scope": ALL,
        });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    };
    let status = |headers: &[String]| {
        let mut c = Command::new("curl");
        c.args(["-sS", "-o", "/dev/stderr", "-w", "%{http_code}"]);
        for h in headers {
            c.args(["-H", h]);
        }
        let out = c
            .arg(format!("{}/api/v1/containers/status", p.url()))
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let bearer = |t: &str| format!("Authorization: Bearer {t}");
    let (code, body) = status(&[bearer(&signed(now + 3600))]);
    assert_eq!(code, "401", "{body}");
    assert!(
        body.contains("invalid_auth") && body.contains("not valid yet"),
        "{body}"
    );
    let (code, body) = status(&[bearer(&signed(now - 5))]);
    assert_eq!(code, "200", "{body}");
    let good = token("alice", ALL);
    let (code, body) = status(&[bearer(&good), bearer(&good)]);
    assert_eq!(code, "400", "{body}");
    assert!(
        body.contains("bad_request") && body.contains("more than one Authorization header"),
        "{body}"
    );
}

/// A body that is not JSON by its `Content-Type` is 415; the same key
/// twice is 400; an image name with whitespace is 400 — each with the
/// documented error body, and nothing recorded.
#[test]
fn content_types_duplicate_keys_and_image_names() {
    let dir = tempfile::tempdir().unwrap();
    let p = provider(dir.path());
    let auth = format!("Authorization: Bearer {}", token("alice", ALL));
    let post = |content_type: Option<&str>, body: &str| {
        let mut c = Command::new("curl");
        c.args([
            "-sS",
            "-o",
            "/dev/stderr",
            "-w",
            "%{http_code}",
            "-H",
            &auth,
        ]);
        // `Content-Type:` alone: curl sends none.
        c.args([
            "-H",
            &format!("Content-Type: {}", content_type.unwrap_or_default()),
        ]);
        let out = c
            .args(["--data-binary", body])
            .arg(format!("{}/api/v1/containers/runs", p.url()))
            .output()
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
        });
        (String::from_utf8_lossy(&out.stdout).into_owned(), body)
    };
    let good = r#"{"profile":"codex","args":["true"]}"#;
    for t in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
    ] {
        let (code, body) = post(Some(t), good);
        assert_eq!(code, "415", "{t}: {body}");
        assert_eq!(body["error"]["type"], "unsupported_media_type", "{body}");
    }
    for t in [
        Some("application/json"),
        Some("application/json; charset=utf-8"),
        Some("application/vnd.bus+json"),
        None,
    ] {
        let (code, body) = post(t, good);
        assert_eq!(code, "200", "{t:?}: {body}");
    }
    for dup in [
        r#"{"profile":"codex","args":["true"],"profile":"other"}"#,
        r#"{"profile":"codex","args":["true"],"env":{"A":"1","A":"2"}}"#,
    ] {
        let (code, body) = post(Some("application/json"), dup);
        assert_eq!(code, "400", "{dup}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("duplicate key"),
            "{body}"
        );
    }
    let (code, body) = post(
        Some("application/json"),
        r#"{"image":"bus busybox","args":["true"]}"#,
    );
    assert_eq!(
        (code.as_str(), &body["error"]["type"]),
        ("400", &serde_json::json!("bad_request")),
        "{body}"
    );
    // Only the four good runs are in the ledger.
    let out = Command::new("curl")
        .args(["-fsS", "-H", &auth])
        .arg(format!("{}/api/v1/containers/runs", p.url()))
        .output()
        .unwrap();
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(runs["items"].as_array().unwrap().len(), 4, "{runs}");
}

/// `operator token issue --hs256-secret-file`, and the client's
/// `--output FILE` and `-C/--chdir DIR`, through the binary against the
/// provider process.
#[test]
fn secret_file_output_file_and_chdir() {
    let dir = tempfile::tempdir().unwrap();
    let p = provider(dir.path());
    let secret = dir.path().join("secret.txt");
    std::fs::write(
        &secret,
        format!("{}\n", std::str::from_utf8(SECRET).unwrap()),
    )
    .unwrap();
    let out = bus()
        .args(["operator", "token", "issue", "--local", "--scope", ALL])
        .arg("--hs256-secret-file")
        .arg(&secret)
        .env_remove("BUS_AUTH_HS256_SECRET")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let out = bus()
        .args(["containers", "--api-url", &p.url(), "-C"])
        .arg(&work)
        .args([
            "--output",
            "result.json",
            "run",
            "--profile",
            "codex",
            "--",
            "true",
        ])
        .env("BUS_AI_TOKEN", token.trim())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "the result went to the file");
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("result.json")).unwrap()).unwrap();
    assert_eq!(written["stdout"], "static: true", "{written}");
}

/// Pipes and formats: `runs` shows each run's command; with `--format
/// json` a failure is a JSON error object on stderr; a reader that goes
/// away (`| head`) ends the client quietly with 141, as SIGPIPE would.
#[test]
fn pipes_and_formats() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let p = provider(dir.path());
    let alice = token("alice", ALL);
    let client = || {
        let mut c = bus();
        c.args(["containers", "--api-url", &p.url()])
            .env("BUS_AI_TOKEN", &alice);
        c
    };
    // Big enough to overflow a pipe: the static answer echoes the args.
    let word = "x".repeat(100_000);
    let out = client()
        .args(["run", "--profile", "codex", "--", "echo", "hello world"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = client()
        .args(["run", "--profile", "codex", "--"])
        .args(std::iter::repeat_n(&word, 7))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let big: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let out = client()
        .args(["--format", "text", "runs"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table.lines().next().unwrap().contains("COMMAND"), "{table}");
    assert!(table.contains("echo 'hello world'"), "{table}");

    let out = client()
        .args(["--format", "json", "delete", "run_0000000000000000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err: serde_json::Value = serde_json::from_slice(&out.stderr)
        .unwrap_or_else(|_| panic!("JSON on stderr: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(err["error"]["type"], "not_found", "{err}");
    let out = client()
        .args([
            "--format",
            "json",
            "--token-file",
            "/nonexistent/token",
            "status",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["error"]["type"], "usage_error", "{err}");

    let mut logs = client()
        .args(["--format", "text", "logs", big["run_id"].as_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 10];
    logs.stdout.take().unwrap().read_exact(&mut first).unwrap(); // then closed
    let out = logs.wait_with_output().unwrap();
    assert_eq!(&first, b"static: xx");
    assert_eq!(out.status.code(), Some(141));
    assert!(
        out.stderr.is_empty(),
        "quiet: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One raw HTTP/1.1 request; the status and the JSON body of its answer.
fn raw_request(addr: &str, head: &str) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status: {text}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, body)
}

/// A request target over 8 KiB is 414 and a head with too many or too
/// large headers 431, each with the JSON error body, on the containers
/// API and the Events API alike; a head under the limits is served.
#[test]
fn heads_over_the_limits_get_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = provider(dir.path());
    let e = events_process();
    for server in [&p, &e] {
        let addr = server.url().trim_start_matches("http://").to_owned();
        let long = "a".repeat(9000);
        let (code, body) = raw_request(
            &addr,
            &format!("GET /readyz?x={long} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(
            (code, &body["error"]["type"]),
            (414, &"uri_too_long".into()),
            "{body}"
        );
        let many: String = (0..80).map(|i| format!("X-H{i}: v\r\n")).collect();
        let (code, body) = raw_request(
            &addr,
            &format!("GET /readyz HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n"),
        );
        assert_eq!(
            (code, &body["error"]["type"]),
            (431, &"headers_too_large".into()),
            "{body}"
        );
        let big = "b".repeat(40_000);
        let (code, body) = raw_request(
            &addr,
            &format!(
                "GET /readyz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"
            ),
        );
        assert_eq!(
            (code, &body["error"]["type"]),
            (431, &"headers_too_large".into()),
            "{body}"
        );
        let few: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
        let (code, body) = raw_request(
            &addr,
            &format!(
                "GET /readyz?x={} HTTP/1.1\r\nHost: x\r\n{few}Connection: close\r\n\r\n",
                "a".repeat(4000)
            ),
        );
        assert_eq!(code, 200, "{body}");
    }
}
