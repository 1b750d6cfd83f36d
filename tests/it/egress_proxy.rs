//! `bus egress-proxy` as a process on loopback: the allowlist for CONNECT
//! and plain HTTP, 403 and the JSON decision log, a credential route's
//! TLS interception and header injection, the CA files' modes, and bad
//! flags.

use crate::support::tls::{client_config, header, read_head, TestPki, Upstream};
use crate::support::{bus, within};
use serde_json::Value;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A running proxy: its address, its CA (when it has one), and every
/// line it printed on stdout and stderr.
struct ProxyProcess {
    child: Child,
    addr: SocketAddr,
    ca_pem: Option<String>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(read: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let kept = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(read).lines().map_while(Result::ok) {
            kept.lock().unwrap().push(line);
        }
    });
    lines
}

impl ProxyProcess {
    fn start(args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> ProxyProcess {
        let mut cmd = bus();
        cmd.args(["egress-proxy", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        if let Some(text) = stdin {
            let mut input = child.stdin.take().unwrap();
            input.write_all(text.as_bytes()).unwrap();
        }
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        // Killed on drop, also when it never gets ready.
        let mut proxy = ProxyProcess {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            ca_pem: None,
            stdout,
            stderr,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let ready = proxy.stdout.lock().unwrap().iter().find_map(|l| {
                let v: Value = serde_json::from_str(l).ok()?;
                (v["event"] == "ready").then_some(v)
            });
            if let Some(v) = ready {
                proxy.addr = v["listen"].as_str().unwrap().parse().unwrap();
                proxy.ca_pem = v["ca_cert"].as_str().map(str::to_owned);
                return proxy;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the proxy did not get ready: {:?}",
                proxy.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn decisions(&self) -> Vec<Value> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["event"] == "decision")
            .collect()
    }

    /// Whether a stdout line containing `needle` comes within `limit`.
    fn printed_within(&self, needle: &str, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if self
                .stdout
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
            {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn all_output(&self) -> String {
        let mut all = self.stdout.lock().unwrap().join("\n");
        all.push_str(&self.stderr.lock().unwrap().join("\n"));
        all
    }
}

/// Sends a raw request head to the proxy; the response (head and body,
/// read to the end of the connection).
async fn raw(proxy: SocketAddr, request: &str) -> String {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Opens a CONNECT tunnel; the stream after the proxy's 200.
async fn tunnel(proxy: SocketAddr, target: &str) -> Result<TcpStream, String> {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut tcp).await;
    if head.starts_with("HTTP/1.1 200") {
        Ok(tcp)
    } else {
        Err(head)
    }
}

#[actix_rt::test]
async fn allowlist_for_connect_and_plain_http_with_a_decision_log() {
    let up = Upstream::start(None).await;
    let allowed = format!("127.0.0.1:{}", up.port);
    let proxy = ProxyProcess::start(&["--allow", &allowed], None, &[]);
    assert!(proxy.ca_pem.is_none(), "no credential route, no CA");

    let ok = within(
        10,
        "plain GET",
        raw(
            proxy.addr,
            &format!(
                "GET http://{allowed}/a HTTP/1.1\r\nHost: {allowed}\r\nConnection: close\r\n\r\n"
            ),
        ),
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.ends_with("upstream-ok"), "{ok}");
    let head = up.heads().pop().unwrap();
    assert!(
        head.starts_with("GET /a HTTP/1.1"),
        "origin-form upstream: {head}"
    );

    // Another port of the same host, and another host: refused.
    let other = format!("127.0.0.1:{}", up.port.wrapping_add(1).max(1));
    let no = within(
        10,
        "denied GET",
        raw(
            proxy.addr,
            &format!("GET http://{other}/ HTTP/1.1\r\nHost: {other}\r\nConnection: close\r\n\r\n"),
        ),
    )
    .await;
    assert!(no.starts_with("HTTP/1.1 403"), "{no}");
    assert!(no.contains("not in this run's allowlist"), "{no}");
    let denied = within(10, "denied CONNECT", tunnel(proxy.addr, "localhost:443")).await;
    assert!(denied.unwrap_err().starts_with("HTTP/1.1 403"));

    // A tunnel to the allowed destination carries bytes both ways.
    let mut t = within(10, "tunnel", tunnel(proxy.addr, &allowed))
        .await
        .unwrap();
    t.write_all(b"GET /through HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    within(10, "tunnel reply", t.read_to_string(&mut out))
        .await
        .unwrap();
    assert!(out.ends_with("upstream-ok"), "{out}");

    // Not a proxy request at all.
    let bad = within(
        10,
        "origin-form",
        raw(
            proxy.addr,
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ),
    )
    .await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");

    // The proxy's lines reach us through a reader thread (a tunnel's
    // decision is printed when it closes): wait for all four, then check.
    let find = |log: &[Value], method: &str, decision: &str, port: u16| {
        log.iter()
            .any(|d| d["method"] == method && d["decision"] == decision && d["port"] == port)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut log = proxy.decisions();
    while !(find(&log, "GET", "allow", up.port)
        && find(&log, "GET", "deny", up.port.wrapping_add(1).max(1))
        && find(&log, "CONNECT", "deny", 443)
        && find(&log, "CONNECT", "allow", up.port))
        && std::time::Instant::now() < deadline
    {
        actix_rt::time::sleep(Duration::from_millis(50)).await;
        log = proxy.decisions();
    }
    let find = |method: &str, decision: &str, port: u16| find(&log, method, decision, port);
    assert!(find("GET", "allow", up.port), "{log:?}");
    assert!(
        find("GET", "deny", up.port.wrapping_add(1).max(1)),
        "{log:?}"
    );
    assert!(find("CONNECT", "deny", 443), "{log:?}");
    assert!(find("CONNECT", "allow", up.port), "{log:?}");
    for d in &log {
        assert!(d["ts"].is_string() && d["host"].is_string(), "{d}");
        assert!(d.get("path").is_none(), "no paths in the log: {d}");
    }
}

#[actix_rt::test]
async fn a_credential_route_injects_its_header_over_intercepted_tls() {
    let pki = TestPki::new(&["localhost"]);
    let up = Upstream::start(Some(pki.server_config())).await;
    let dir = tempfile::tempdir().unwrap();
    let upstream_ca = dir.path().join("upstream-ca.pem");
    std::fs::write(&upstream_ca, &pki.ca_pem).unwrap();
    let ca_dir = dir.path().join("ca");
    let route = format!("localhost:{}=Authorization=TEST_TOKEN=Bearer ", up.port);
    let secret = "s3cret-value-0451";
    let stdin = serde_json::json!({"env": {"TEST_TOKEN": secret}}).to_string();
    let proxy = ProxyProcess::start(
        &[
            "--credential",
            &route,
            "--secrets-stdin",
            "--upstream-ca",
            upstream_ca.to_str().unwrap(),
            "--ca-dir",
            ca_dir.to_str().unwrap(),
        ],
        Some(&stdin),
        &[],
    );
    let ca_pem = proxy.ca_pem.clone().expect("a per-run CA");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| {
            std::fs::metadata(ca_dir.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("ca-key.pem"), 0o600);
        assert_eq!(
            std::fs::read_to_string(ca_dir.join("ca.pem")).unwrap(),
            ca_pem
        );
    }

    // The agent's side: CONNECT, then TLS trusting only the per-run CA.
    let target = format!("localhost:{}", up.port);
    let tcp = within(10, "tunnel", tunnel(proxy.addr, &target))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = within(
        10,
        "TLS to the proxy",
        tokio_rustls::TlsConnector::from(client_config(&ca_pem)).connect(name, tcp),
    )
    .await
    .expect("the agent trusts the per-run CA's leaf");
    for path in ["/one", "/two"] {
        tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer agent-forged\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let head = within(10, "response head", read_head(&mut tls)).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let len: usize = header(&head, "content-length").unwrap().parse().unwrap();
        let mut body = vec![0; len];
        tls.read_exact(&mut body).await.unwrap();
        assert_eq!(body, b"upstream-ok");
    }
    let heads = up.heads();
    assert_eq!(
        heads.len(),
        2,
        "both requests, one upstream connection: {heads:?}"
    );
    for head in &heads {
        assert_eq!(
            header(head, "authorization").as_deref(),
            Some(format!("Bearer {secret}").as_str())
        );
        assert_eq!(
            head.matches("Authorization").count() + head.matches("authorization").count(),
            1,
            "the agent's header is replaced: {head}"
        );
    }
    // A request's decision is printed once its response has gone out.
    let credentialed = |log: &[Value]| {
        log.iter()
            .filter(|d| d["credential"] == true && d["status"] == 200)
            .count()
    };
    let mut log = proxy.decisions();
    for _ in 0..50 {
        if credentialed(&log) >= 2 {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
        log = proxy.decisions();
    }
    assert_eq!(credentialed(&log), 2, "{log:?}");
    assert!(
        !proxy.all_output().contains(secret),
        "the secret is never logged"
    );

    // A client that does not trust the per-run CA gets no session.
    let tcp = tunnel(proxy.addr, &target).await.unwrap();
    let strict = client_config(&pki.ca_pem);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    assert!(tokio_rustls::TlsConnector::from(strict)
        .connect(name, tcp)
        .await
        .is_err());
}

#[actix_rt::test]
async fn clients_outside_allow_from_are_refused_and_credentials_never_go_in_cleartext() {
    let up = Upstream::start(None).await;
    let allowed = format!("127.0.0.1:{}", up.port);
    let other = ProxyProcess::start(
        &["--allow", &allowed, "--allow-from", "10.0.0.0/8"],
        None,
        &[],
    );
    let reply = within(
        10,
        "refused client",
        raw(
            other.addr,
            &format!("GET http://{allowed}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        ),
    )
    .await;
    assert!(
        reply.is_empty(),
        "no answer for a client outside --allow-from: {reply}"
    );
    assert!(up.heads().is_empty());
    assert!(
        other.printed_within("client_refused", Duration::from_secs(5)),
        "the refusal is logged"
    );

    let route = format!("127.0.0.1:{}=Authorization=TEST_TOKEN", up.port);
    let proxy = ProxyProcess::start(
        &["--credential", &route, "--allow-from", "127.0.0.0/8"],
        None,
        &[("TEST_TOKEN", "cleartext-secret-1")],
    );
    let plain = within(
        10,
        "credential over http",
        raw(
            proxy.addr,
            &format!("GET http://{allowed}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        ),
    )
    .await;
    assert!(plain.starts_with("HTTP/1.1 403"), "{plain}");
    assert!(up.heads().is_empty(), "nothing sent upstream");
    let bad = within(10, "bad CONNECT", tunnel(proxy.addr, "nohost")).await;
    assert!(bad.unwrap_err().starts_with("HTTP/1.1 400"));
    assert!(proxy.printed_within("nohost", Duration::from_secs(5)));
    let log = proxy.decisions();
    assert!(
        log.iter()
            .any(|d| d["status"] == 403 && d["reason"] == "a credential route needs https"),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|d| d["status"] == 400 && d["host"] == "nohost"),
        "{log:?}"
    );
}

#[test]
fn bad_flags_and_missing_secrets_are_usage_errors() {
    let run = |args: &[&str]| {
        let out = bus()
            .arg("egress-proxy")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--allow", "example.com"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("expected host:port"), "{err}");
    let (code, err) = run(&["--credential", "a.test:443=Authorization=NOPE_NOT_SET"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("NOPE_NOT_SET"), "{err}");
    let (code, err) = run(&["--credential", "a.test:443=Proxy-Authorization=T"]);
    assert_eq!(code, Some(2), "{err}");
    let (code, err) = run(&["--allow-from", "nope"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("CIDR"), "{err}");
    let (code, err) = run(&["--secrets-stdin"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("JSON object"), "{err}");
}
