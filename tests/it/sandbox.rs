//! Sandboxed runs on real Docker: a profile with `egress` runs on an
//! internal network of its own whose only way out is the egress proxy
//! sidecar. Checked from inside a run: an allowed server answers, a
//! denied one is refused (and shows in `details.egress`), a direct TCP
//! connection and UDP/DNS to the outside fail, a credential route's
//! header reaches a test HTTPS server while the secret is nowhere in the
//! agent container, the run record, the ledger or the logs. Nothing is
//! left after success, timeout, cancel or a sidecar that cannot start.

use crate::dev_stack::start_dev_with;
use crate::support::docker::{engine, test_config, Fixture};
use crate::support::tls::TestPki;
use crate::support::{get, post, within};
use bus_containers::config::{Config, EgressRoute};
use bus_containers::contract::Kind;
use bus_containers::runtime::ContainerRuntime;
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

const TOOLS: &str = "bus-test-tools:latest";
const EGRESS: &str = "bus-egress:test";

fn docker(args: &[&str]) -> (bool, String) {
    let out = Command::new("docker").args(args).output().unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text.trim().to_owned())
}

fn script(name: &str, args: &[&str]) {
    let status = Command::new(format!("{}/scripts/{name}", env!("CARGO_MANIFEST_DIR")))
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "scripts/{name} failed");
}

/// The tools image and an egress image of the binary under test.
fn images() {
    script("build-tools-image", &[TOOLS]);
    script("build-egress-image", &[env!("CARGO_BIN_EXE_bus"), EGRESS]);
}

/// The outside world of a test: a network of its own with one server
/// container on it: HTTP on 8080 (busybox httpd), HTTPS on 8443 (socat;
/// logs the headers it gets and answers `auth-ok` only for the expected
/// bearer), and a UDP listener on 53 that logs anything it receives.
struct Outside {
    network: String,
    name: String,
    ip: String,
    dir: tempfile::TempDir,
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.name]);
        let _ = docker(&["network", "rm", &self.network]);
    }
}

const HANDLER: &str = r#"#!/bin/sh
auth=""
while IFS= read -r line; do
  line=$(printf %s "$line" | tr -d '\r')
  [ -z "$line" ] && break
  echo "HEADER $line" >&2
  case "$line" in [Aa]uthorization:*) auth=${line#*: };; esac
done
if [ "$auth" = "Bearer $EXPECTED" ]; then verdict=auth-ok; else verdict=auth-bad; fi
body="$verdict echo=$auth"
printf 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s' "${#body}" "$body"
"#;

impl Outside {
    fn start(expected_token: &str) -> Outside {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let network = format!("bus-test-out-{id}");
        let name = format!("bus-test-srv-{id}");
        let (ok, out) = docker(&["network", "create", "--label", "bus.test=sandbox", &network]);
        assert!(ok, "{out}");
        let pki = TestPki::new(&[&name]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("server.pem"),
            format!("{}{}", pki.cert_pem, pki.key_pem),
        )
        .unwrap();
        std::fs::write(dir.path().join("ca.pem"), &pki.ca_pem).unwrap();
        let handler = dir.path().join("handler.sh");
        std::fs::write(&handler, HANDLER).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&handler, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let serve = "mkdir -p /tmp/www && echo hello-allowed > /tmp/www/index.html && httpd -p 8080 -h /tmp/www \
            && (socat -u UDP-RECVFROM:53,fork SYSTEM:'echo UDP-RECEIVED >&2' &) \
            && exec socat OPENSSL-LISTEN:8443,fork,reuseaddr,cert=/certs/server.pem,verify=0 SYSTEM:/certs/handler.sh";
        let volume = format!("{}:/certs:ro", dir.path().display());
        let expected = format!("EXPECTED={expected_token}");
        let (ok, out) = docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &network,
            "--label",
            "bus.test=sandbox",
            "-e",
            &expected,
            "-v",
            &volume,
            TOOLS,
            "sh",
            "-c",
            serve,
        ]);
        let mut outside = Outside {
            network,
            name,
            ip: String::new(),
            dir,
        };
        assert!(ok, "{out}");
        let format = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            outside.network
        );
        let (ok, ip) = docker(&["inspect", "-f", &format, &outside.name]);
        assert!(ok && !ip.is_empty(), "{ip}");
        outside.ip = ip;
        outside
    }

    fn logs(&self) -> String {
        docker(&["logs", &self.name]).1
    }

    fn upstream_ca(&self) -> String {
        self.dir.path().join("ca.pem").display().to_string()
    }
}

/// `sh -c SCRIPT` in a tools container on the outside network: what a
/// neighbour of the run's proxy could do.
fn from_outside(out: &Outside, script: &str) -> String {
    docker(&[
        "run",
        "--rm",
        "--network",
        &out.network,
        TOOLS,
        "sh",
        "-c",
        script,
    ])
    .1
}

fn gone(kind: &str, name: &str) -> bool {
    let (ok, out) = docker(&[kind, "inspect", name]);
    let out = out.to_lowercase();
    !ok && (out.contains("no such") || out.contains("not found"))
}

#[actix_rt::test]
async fn a_sandboxed_run_reaches_only_its_allowlist_and_never_sees_its_secret() {
    let Some(_) = engine().await else { return };
    images();
    let secret = format!("sk-test-{}", uuid::Uuid::new_v4().simple());
    let out = Outside::start(&secret);
    let host = &out.name;
    let config = format!(
        r#"
[worker]
egress_image = "{EGRESS}"
egress_network = "{net}"
egress_upstream_ca = "{ca}"

[profiles.agent]
image = "{TOOLS}"
timeout_seconds = 90
egress = ["{host}:8080", {{ host = "{host}:8443", header = "Authorization", value_env = "BUS_TEST_EGRESS_TOKEN", prefix = "Bearer " }}]
"#,
        net = out.network,
        ca = out.upstream_ca(),
    );
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("config.toml");
    std::fs::write(&cfg, config).unwrap();
    let dev = start_dev_with(
        &["--config", cfg.to_str().unwrap()],
        &[("BUS_TEST_EGRESS_TOKEN", &secret), ("RUST_LOG", "debug")],
        |_| {},
    );
    let token = std::fs::read_to_string(dev.config_dir.path().join("auth/api-token")).unwrap();
    let token = token.trim();
    let ip = &out.ip;
    let agent_script = format!(
        r#"sleep 6
echo "allowed=$(curl -sS --retry 5 --retry-delay 1 -m 10 http://{host}:8080/)"
echo "denied=$(curl -s -m 10 -o /dev/null -w '%{{http_code}}' http://{host}:9090/)"
echo "cred=$(curl -sS --retry 5 --retry-delay 1 -m 10 -H 'Authorization: Bearer agent-forged' https://{host}:8443/check)"
if nc -w 3 {ip} 8080 </dev/null >/dev/null 2>&1; then echo direct=open; else echo direct=blocked; fi
if timeout 8 nslookup leak.example.invalid {ip} >/dev/null 2>&1; then echo udp=open; else echo udp=blocked; fi
if timeout 8 nslookup {host} >/dev/null 2>&1; then echo dns=open; else echo dns=blocked; fi
"#
    );
    let body = json!({"profile": "agent", "args": ["sh", "-c", agent_script], "wait": false});
    let (status, accepted) = post(
        &format!("{}/api/v1/containers/runs", dev.url),
        Some(token),
        &body.to_string(),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    let run_id = accepted["run_id"].as_str().unwrap().to_owned();
    let agent = format!("bus-{run_id}");
    let sidecar = format!("bus-egress-{run_id}");
    let network = format!("bus-net-{run_id}");

    // While it runs: the agent's container as the engine sees it.
    let mut inspected = None;
    for _ in 0..100 {
        let (ok, text) = docker(&["inspect", &agent]);
        if ok && text.contains("\"Running\": true") {
            inspected = Some(text);
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    let Some(inspected) = inspected else {
        let logs = dev.logs.lock().unwrap().clone();
        let notable: Vec<&str> = logs.lines().filter(|l| !l.contains("DEBUG")).collect();
        panic!("the agent container did not run: {}", notable.join("\n"));
    };
    assert!(
        !inspected.contains(&secret),
        "the secret is nowhere in the agent's inspect"
    );
    let info: Value = serde_json::from_str::<Value>(&inspected).unwrap()[0].clone();
    assert_eq!(info["HostConfig"]["CapDrop"], json!(["ALL"]));
    assert_eq!(info["HostConfig"]["ReadonlyRootfs"], true);
    let networks = info["NetworkSettings"]["Networks"].as_object().unwrap();
    assert_eq!(
        networks.keys().collect::<Vec<_>>(),
        [&network],
        "the run's network only"
    );
    let dns = info["HostConfig"]["Dns"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        dns.len(),
        1,
        "DNS goes to the proxy, where nothing answers: {dns:?}"
    );
    let env = info["Config"]["Env"].to_string();
    assert!(
        env.contains("HTTPS_PROXY=http://") && env.contains("SSL_CERT_FILE="),
        "{env}"
    );
    let (ok, sidecar_inspect) = docker(&["inspect", &sidecar]);
    assert!(ok, "{sidecar_inspect}");
    assert!(
        !sidecar_inspect.contains(&secret),
        "the value reaches the proxy on stdin only"
    );
    let (ok, net) = docker(&["network", "inspect", &network]);
    assert!(ok, "{net}");
    let net: Value = serde_json::from_str::<Value>(&net).unwrap()[0].clone();
    assert_eq!(net["Internal"], true);
    // The host has no address on the run's bridge: nothing on the host
    // is reachable through a gateway.
    assert_eq!(
        net["Options"]["com.docker.network.bridge.inhibit_ipv4"],
        "true"
    );
    let bridge = format!("br-{}", &net["Id"].as_str().unwrap()[..12]);
    let addrs = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", &bridge])
        .output()
        .unwrap();
    assert!(addrs.status.success(), "{bridge} exists");
    assert!(
        addrs.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&addrs.stdout)
    );
    // Another container on the outside network cannot use the run's proxy.
    let sidecar_info: Value = serde_json::from_str::<Value>(&sidecar_inspect).unwrap()[0].clone();
    let sidecar_outside = sidecar_info["NetworkSettings"]["Networks"][&out.network]["IPAddress"]
        .as_str()
        .unwrap()
        .to_owned();
    let borrow = format!(
        "curl -sS -m 5 -x http://{sidecar_outside}:3128 http://{host}:8080/ && echo borrowed=yes || echo borrowed=no"
    );
    let borrowed = from_outside(&out, &borrow);
    assert!(borrowed.contains("borrowed=no"), "{borrowed}");

    // The result.
    let mut record = Value::Null;
    for _ in 0..600 {
        let (_, r) = get(
            &format!("{}/api/v1/containers/runs/{run_id}", dev.url),
            Some(token),
        )
        .await;
        if r["state"] != "running" && !r["state"].is_null() {
            record = r;
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    let result = &record["result"];
    assert_eq!(result["state"], "succeeded", "{record}");
    let stdout = result["stdout"].as_str().unwrap();
    let line = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(line("allowed"), "hello-allowed", "{stdout}");
    assert_eq!(line("denied"), "403", "{stdout}");
    assert_eq!(line("cred"), "auth-ok echo=Bearer [redacted]", "{stdout}");
    assert_eq!(line("direct"), "blocked", "{stdout}");
    assert_eq!(line("udp"), "blocked", "{stdout}");
    assert_eq!(line("dns"), "blocked", "{stdout}");
    let egress = &result["details"]["egress"];
    assert!(egress["denied"].as_u64().unwrap() >= 1, "{egress}");
    let destinations = egress["destinations"].as_array().unwrap();
    let has = |port: u16, decision: &str| {
        destinations
            .iter()
            .any(|d| d["host"] == host.as_str() && d["port"] == port && d["decision"] == decision)
    };
    assert!(
        has(9090, "deny") && has(8080, "allow") && has(8443, "allow"),
        "{egress}"
    );
    assert!(
        egress["log"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["credential"] == true && d["status"] == 200),
        "{egress}"
    );
    assert!(egress["refused_clients"].as_u64() >= Some(1), "{egress}");

    // The server got the header; the UDP listener got nothing.
    let logs = out.logs();
    // (Header names are case-insensitive; the proxy sends them lowercase.)
    let header = format!("header authorization: bearer {secret}").to_lowercase();
    assert!(logs.to_lowercase().contains(&header), "{logs}");
    assert!(!logs.contains("agent-forged"), "{logs}");
    assert!(!logs.contains("UDP-RECEIVED"), "{logs}");

    // Nowhere else: not the record, the run's output log, the ledger on
    // disk, or the logs.
    assert!(!record.to_string().contains(&secret));
    let mut logs = crate::support::http()
        .get(format!("{}/api/v1/containers/runs/{run_id}/logs", dev.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let output = String::from_utf8_lossy(&logs.body().limit(8 << 20).await.unwrap()).into_owned();
    let stdout_chunks: String = output
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["stream"] == "stdout")
        .filter_map(|v| v["data"].as_str().map(str::to_owned))
        .collect();
    assert!(
        stdout_chunks.contains("auth-ok echo=Bearer [redacted]"),
        "{output}"
    );
    assert!(!output.contains(&secret), "{output}");
    for entry in std::fs::read_dir(dev.data.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains(&secret),
                "{} holds the secret",
                path.display()
            );
        }
    }
    assert!(
        dev.logs.lock().unwrap().contains(&run_id),
        "the logs were captured"
    );
    assert!(
        !dev.logs.lock().unwrap().contains(&secret),
        "the secret is not logged"
    );
    assert!(!dev.printed.lock().unwrap().contains(&secret));

    // The probes do see an open path: from the outside network, the
    // same TCP and UDP probes get through.
    let control = format!(
        "nc -w 3 {ip} 8080 </dev/null >/dev/null 2>&1 && echo direct=open; timeout 8 nslookup leak.example.invalid {ip} >/dev/null 2>&1; sleep 1"
    );
    let probed = from_outside(&out, &control);
    assert!(probed.contains("direct=open"), "{probed}");
    assert!(
        out.logs().contains("UDP-RECEIVED"),
        "the UDP probe reaches an open listener"
    );

    // Nothing left.
    assert!(
        gone("container", &agent) && gone("container", &sidecar),
        "containers removed"
    );
    assert!(gone("network", &network), "network removed");
}

/// A worker whose `agent` profile is sandboxed (allowlist only, the
/// default bridge outside), in-process on real Docker.
async fn sandboxed_worker(egress_image: &str) -> Option<Fixture> {
    let runtime = engine().await?;
    images();
    let mut config: Config = test_config();
    config.worker.egress_image = egress_image.into();
    let mut profile = config.profiles["codex"].clone();
    profile.egress = vec![EgressRoute::Host("example.invalid:443".into())];
    config.profiles.insert("agent".into(), profile);
    Some(Fixture::start_on(runtime, config).await)
}

async fn nothing_left(f: &Fixture, run_id: &str) {
    assert!(f.containers().await.is_empty(), "no container left");
    let networks = f.runtime.list_managed_networks(&f.worker_id).await.unwrap();
    assert!(networks.is_empty(), "no network left: {networks:?}");
    assert!(gone("network", &format!("bus-net-{run_id}")));
}

#[actix_rt::test]
async fn timeout_and_cancel_take_the_sandbox_down_too() {
    let Some(f) = sandboxed_worker(EGRESS).await else {
        return;
    };
    // A sandboxed run gets its files too (beside the sandbox's CA).
    let r = f
        .run(json!({"run_id": "run_sbx_files", "profile": "agent",
            "args": ["sh", "-c", "cat /workspace/f.txt /tmp/g.txt"],
            "files": [{"path": "/workspace/f.txt", "content_base64": "c2J4IGZpbGUK"},
                      {"path": "/tmp/g.txt", "content_base64": "dG1wCg=="}]}))
        .await;
    assert_eq!(
        (&r["state"], &r["stdout"]),
        (&json!("succeeded"), &json!("sbx file\ntmp\n")),
        "{r}"
    );
    nothing_left(&f, "run_sbx_files").await;
    let r = f
        .run(json!({"run_id": "run_sbx_timeout", "profile": "agent", "args": ["sleep", "30"], "timeout_seconds": 1}))
        .await;
    assert_eq!(r["state"], "timed_out", "{r}");
    assert_eq!(
        r["details"]["egress"]["allowlist"],
        json!(["example.invalid:443"])
    );
    nothing_left(&f, "run_sbx_timeout").await;

    let (run, _) = f.start_run(json!({"run_id": "run_sbx_cancel", "owner_account_id": "alice", "profile": "agent", "args": ["sleep", "60"]})).await;
    let deleted = f
        .ask(
            Kind::Delete,
            json!({"run_id": "run_sbx_cancel", "owner_account_id": "alice", "worker_id": f.worker_id}),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(deleted["deleted"], true, "{deleted}");
    let out = within(60, "cancelled result", run).await.unwrap();
    assert_eq!(out.replies[0].payload["state"], "cancelled");
    nothing_left(&f, "run_sbx_cancel").await;
    f.finish().await;
}

#[actix_rt::test]
async fn a_sidecar_that_cannot_start_is_a_clear_error_and_leaves_nothing() {
    let Some(f) = sandboxed_worker("bus-egress:missing").await else {
        return;
    };
    let r = f
        .run(json!({"run_id": "run_sbx_noimage", "profile": "agent", "args": ["true"]}))
        .await;
    let status = f
        .ask(Kind::RunnerStatus, json!({}), Duration::from_secs(10))
        .await;
    assert_eq!(
        status["status"]["details"]["profiles"]["egress proxy"],
        json!({"image": "bus-egress:missing", "present": false}),
        "runner status names the missing proxy image: {status}"
    );
    let message = r["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(r["error"]["type"], "backend_error", "{r}");
    assert!(message.contains("build-egress-image"), "{message}");
    nothing_left(&f, "run_sbx_noimage").await;
    f.finish().await;
}
