//! `https://` through the `bus` binary: the containers client and the
//! Events API client reach servers behind a TLS terminator whose
//! certificate a test CA signed, trusting it through `SSL_CERT_FILE`; a
//! certificate nothing vouches for is refused.

use crate::support::api::{token, ALL};
use crate::support::tls::{terminate, TestPki};
use crate::support::*;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn the_clients_speak_https_trusting_ssl_cert_file() {
    let pki = TestPki::new(&["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();

    // The containers API (static) behind TLS.
    let mut cmd = bus();
    cmd.args(["api-provider", "containers", "--addr", "127.0.0.1:0"])
        .args(["--log-format", "json", "--workers", "1", "--data-dir"])
        .arg(dir.path())
        .env("BUS_API_JWT_SECRET", std::str::from_utf8(SECRET).unwrap());
    let provider = Process::spawn(cmd);
    let front = terminate(&pki, provider.addr);
    let url = format!("https://localhost:{}", front.port());
    let run = |ca_file: Option<&std::path::Path>| {
        let mut c = bus();
        c.args(["containers", "--api-url", &url])
            .args(["run", "--profile", "codex", "--", "printf", "OK"])
            .env("BUS_AI_TOKEN", token("alice", ALL))
            .env_remove("SSL_CERT_FILE");
        if let Some(f) = ca_file {
            c.env("SSL_CERT_FILE", f);
        }
        c.output().unwrap()
    };
    let out = run(Some(&ca));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["stdout"], "static: printf OK");
    let out = run(None);
    assert!(!out.status.success(), "an unknown CA is refused");
    assert!(
        text(&out.stderr).to_lowercase().contains("certificate"),
        "{}",
        text(&out.stderr)
    );

    // The Events API behind TLS: `bus events send` and `listen`.
    let events = events_process();
    let front = terminate(&pki, events.addr);
    let url = format!("https://localhost:{}", front.port());
    let tok = mint("u", "events:send events:listen");
    let events_cli = |args: &[&str]| {
        bus()
            .arg("events")
            .args(args)
            .env("BUS_EVENTS_API_URL", &url)
            .env("BUS_API_TOKEN", &tok)
            .env("SSL_CERT_FILE", &ca)
            .output()
            .unwrap()
    };
    let out = events_cli(&[
        "send",
        "--name",
        "app.tls",
        "--payload",
        r#"{"over":"tls"}"#,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = events_cli(&["listen", "--name", "app.tls", "--replay", "--no-follow"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let e: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(e["payload"]["over"], "tls");
}
