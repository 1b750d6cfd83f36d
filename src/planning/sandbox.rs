//! A sandboxed run's plan: the internal network of its own, the egress
//! proxy sidecar (`bus egress-proxy` from the worker's `egress_image`),
//! what the sidecar reads on stdin (credential values, by name; upstream
//! CAs), and what the agent container gets once the sidecar is up (the
//! network, proxy variables, a DNS server that answers nothing, and the
//! per-run CA bundle).

use crate::config::{Config, EgressRoute};
use crate::contract::{ErrorDetail, ErrorType};
use crate::egress::SIDECAR_PORT;
use crate::runtime::{labels, ContainerSpec, FileSpec, Hardening, Limits};
use serde_json::json;
use std::collections::BTreeMap;

/// Where the agent finds the per-run CA bundle.
pub const CA_DIR: &str = "/run/bus-egress";
pub const CA_BUNDLE: &str = "/run/bus-egress/ca-bundle.pem";

/// The variables that point common clients at a CA bundle.
pub const CA_VARIABLES: [&str; 5] = [
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
];

/// How a run's sandbox is made.
#[derive(Clone)]
pub struct SandboxPlan {
    /// The run's internal network (its name).
    pub network: String,
    pub network_labels: BTreeMap<String, String>,
    pub sidecar: ContainerSpec,
    /// The sidecar's outside network (joined at create).
    pub outside: String,
    /// What the sidecar reads on stdin: holds secret values.
    pub stdin: String,
    /// The allowlist as configured, for the run record.
    pub allowlist: Vec<String>,
    /// Some route is intercepted: the agent needs the per-run CA.
    pub intercepts: bool,
}

impl std::fmt::Debug for SandboxPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxPlan")
            .field("network", &self.network)
            .field("allowlist", &self.allowlist)
            .field("intercepts", &self.intercepts)
            .finish_non_exhaustive()
    }
}

/// The sandbox of a run of a profile with `egress`; also the secret
/// values the run's output must never show.
pub fn plan_sandbox(
    profile_name: &str,
    routes: &[EgressRoute],
    config: &Config,
    run_labels: &BTreeMap<String, String>,
    run_id: &str,
) -> Result<(SandboxPlan, Secrets), ErrorDetail> {
    let misconfigured = |m: String| ErrorDetail::new(ErrorType::BackendError, m);
    let mut allow = Vec::new();
    let mut credentials = Vec::new();
    let mut env = BTreeMap::new();
    let mut secrets = Secrets::default();
    for route in routes {
        match route {
            EgressRoute::Host(h) => allow.push(h.clone()),
            EgressRoute::Credential(c) => {
                let credential = c.credential().map_err(misconfigured)?;
                let value = std::env::var(&c.value_env)
                    .ok()
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| {
                        misconfigured(format!(
                            "profile {profile_name}: the credential route for {} needs {} in the worker's environment",
                            c.host, c.value_env
                        ))
                    })?;
                secrets.add(value.clone());
                env.insert(c.value_env.clone(), value);
                credentials.push(credential);
            }
        }
    }
    let mut upstream_ca = Vec::new();
    if let Some(path) = config
        .worker
        .egress_upstream_ca
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        upstream_ca.push(
            std::fs::read_to_string(path)
                .map_err(|e| misconfigured(format!("worker.egress_upstream_ca {path}: {e}")))?,
        );
    }
    let mut command: Vec<String> = [
        "--log-format",
        "json",
        "egress-proxy",
        "--listen",
        &format!("0.0.0.0:{SIDECAR_PORT}"),
        "--secrets-stdin",
        "--ca-dir",
        "/tmp/bus-egress",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for a in &allow {
        command.extend(["--allow".to_owned(), a.clone()]);
    }
    for c in &credentials {
        command.extend(["--credential".to_owned(), c.to_arg()]);
    }
    let mut sidecar_labels = run_labels.clone();
    sidecar_labels.insert(labels::ROLE.into(), "egress".into());
    let sidecar = ContainerSpec {
        name: Some(format!("bus-egress-{run_id}")),
        image: config.worker.egress_image.clone(),
        entrypoint: Some(vec!["bus".into()]),
        command,
        env: vec![("RUST_LOG".into(), "warn".into())],
        workdir: None,
        labels: sidecar_labels.clone(),
        stdin: true,
        limits: Limits {
            memory_bytes: Some(128 << 20),
            nano_cpus: Some(500_000_000),
            pids: Some(64),
        },
        hardening: Hardening {
            user: Some("65534:65534".into()),
            ..Hardening::default()
        },
        network: config.worker.egress_network.clone(),
        mounts: vec![],
        dns: vec![],
        volumes: vec![],
    };
    let stdin = json!({"env": env, "upstream_ca": upstream_ca}).to_string();
    Ok((
        SandboxPlan {
            network: format!("bus-net-{run_id}"),
            network_labels: sidecar_labels,
            sidecar,
            outside: config.worker.egress_network.clone(),
            stdin,
            allowlist: routes.iter().map(|r| r.host().to_owned()).collect(),
            intercepts: !credentials.is_empty(),
        },
        secrets,
    ))
}

/// The agent container, given its sandbox's proxy address (and, when
/// some route is intercepted, the per-run CA's certificate): the run's
/// network only, proxy variables, DNS pointed at the proxy (where nothing
/// answers, so no name is resolved outside the run, whatever the engine's
/// resolver would forward), and the CA bundle as a file.
pub fn sandbox_agent(
    spec: &mut ContainerSpec,
    network: &str,
    proxy_ip: &str,
    ca_pem: Option<&str>,
) -> Vec<FileSpec> {
    spec.network = network.to_owned();
    spec.dns = vec![proxy_ip.to_owned()];
    let proxy = format!("http://{proxy_ip}:{SIDECAR_PORT}");
    let mut env: Vec<(String, String)> = Vec::new();
    for name in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
        env.push((name.into(), proxy.clone()));
    }
    for name in ["NO_PROXY", "no_proxy"] {
        env.push((name.into(), "localhost,127.0.0.1,::1".into()));
    }
    let mut files = Vec::new();
    if let Some(ca) = ca_pem {
        // The run's CA, then the worker's own trust store, so hosts that
        // are tunnelled (not intercepted) still verify.
        let mut bundle = ca.trim_end().to_owned();
        bundle.push('\n');
        let system = std::env::var("SSL_CERT_FILE")
            .ok()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .or_else(|| std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").ok());
        if let Some(system) = system {
            bundle.push_str(&system);
        }
        files.push(FileSpec {
            path: CA_BUNDLE.into(),
            data: bundle.into_bytes(),
            mode: 0o644,
            root: None,
            owner: None,
        });
        spec.volumes.push(CA_DIR.into());
        for name in CA_VARIABLES {
            env.push((name.into(), CA_BUNDLE.into()));
        }
    }
    for (k, v) in env {
        spec.env.retain(|(name, _)| name != &k);
        spec.env.push((k, v));
    }
    files
}

/// Secret values a run's output must not show. Its `Debug` shows how
/// many, never what.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets(Vec<String>);

/// Shorter values are not redacted: they would mangle ordinary output.
pub const REDACT_MIN: usize = 8;

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} values)", self.0.len())
    }
}

impl Secrets {
    pub fn add(&mut self, value: String) {
        if value.len() >= REDACT_MIN && !self.0.contains(&value) {
            self.0.push(value);
            // Longest first: a value holding another is replaced whole.
            self.0.sort_by_key(|v| std::cmp::Reverse(v.len()));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn values(&self) -> Vec<String> {
        self.0.clone()
    }

    fn longest(&self) -> usize {
        self.0.first().map(String::len).unwrap_or(0)
    }

    /// One pass that finds the values, leftmost-longest (a value holding
    /// another is matched whole, wherever the output is cut).
    fn matcher(&self) -> Option<aho_corasick::AhoCorasick> {
        if self.0.is_empty() {
            return None;
        }
        aho_corasick::AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::LeftmostLongest)
            .build(&self.0)
            .ok()
    }

    /// `text` with every value replaced by `[redacted]`.
    pub fn redact(&self, text: &str) -> String {
        String::from_utf8_lossy(&self.redact_bytes(text.as_bytes())).into_owned()
    }

    /// `bytes` with every value replaced by `[redacted]` (output is bytes;
    /// a value is matched by its UTF-8 bytes).
    pub fn redact_bytes(&self, bytes: &[u8]) -> Vec<u8> {
        match self.matcher() {
            Some(m) => m.replace_all_bytes(bytes, &vec![&b"[redacted]"[..]; self.0.len()]),
            None => bytes.to_vec(),
        }
    }

    /// `bytes` without a tail that begins a value (output cut at the cap
    /// must not show the start of a secret).
    pub fn without_partial_tail<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        let longest = self.longest().min(bytes.len() + 1);
        for n in (1..longest).rev() {
            let tail = &bytes[bytes.len() - n..];
            if self
                .0
                .iter()
                .any(|v| v.len() > n && v.as_bytes().starts_with(tail))
            {
                return &bytes[..bytes.len() - n];
            }
        }
        bytes
    }
}

/// Live output redacted across chunk boundaries: the raw bytes of each
/// stream that could begin a secret wait for the stream's next chunk, and
/// what goes out is cut only where no match crosses, so the live output
/// is exactly the redaction of the whole.
#[derive(Debug, Default)]
pub struct LiveRedactor {
    held: [Vec<u8>; 2],
}

impl LiveRedactor {
    /// What of `bytes` (after what `stream` held) can go out now.
    pub fn push(&mut self, secrets: &Secrets, stream: usize, bytes: &[u8]) -> Vec<u8> {
        let Some(matcher) = secrets.matcher() else {
            return bytes.to_vec();
        };
        let mut all = std::mem::take(&mut self.held[stream]);
        all.extend_from_slice(bytes);
        // Every value that starts before `cut` ends within `all`: its
        // match is final; one that crosses `cut` goes out whole.
        let mut cut = all.len().saturating_sub(secrets.longest() - 1);
        for m in matcher.find_iter(&all) {
            if m.start() >= cut {
                break;
            }
            cut = cut.max(m.end());
        }
        self.held[stream] = all.split_off(cut);
        secrets.redact_bytes(&all)
    }

    /// The rest of `stream`, at its end (`cut`: the output stopped at
    /// the cap, so a tail that begins a value is dropped).
    pub fn finish(&mut self, secrets: &Secrets, stream: usize, cut: bool) -> Vec<u8> {
        let rest = std::mem::take(&mut self.held[stream]);
        let rest = if cut {
            secrets.without_partial_tail(&rest)
        } else {
            &rest
        };
        secrets.redact_bytes(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        let mut secrets = Secrets::default();
        for v in ["s3cret-1", "ab", "s3cret-1-and-more"] {
            secrets.add(v.to_owned());
        }
        assert_eq!(
            secrets.redact("x s3cret-1 y s3cret-1-and-more"),
            "x [redacted] y [redacted]"
        );
        assert_eq!(secrets.redact("ab"), "ab", "too short to redact safely");
        assert_eq!(format!("{secrets:?}"), "Secrets(2 values)");
    }

    #[test]
    fn a_value_holding_another_is_redacted_whole_at_every_cut() {
        let mut secrets = Secrets::default();
        secrets.add("SECRETPA".into());
        secrets.add("SECRETPASSWORD123".into());
        let text = b"x SECRETPASSWORD123 y SECRETPA z SECRETPASS";
        let whole = secrets.redact_bytes(text);
        assert_eq!(whole, b"x [redacted] y [redacted] z [redacted]SS");
        for a in 0..text.len() {
            for b in a..text.len() {
                let mut live = LiveRedactor::default();
                let mut out = live.push(&secrets, 0, &text[..a]);
                out.extend(live.push(&secrets, 0, &text[a..b]));
                out.extend(live.push(&secrets, 0, &text[b..]));
                out.extend(live.finish(&secrets, 0, false));
                assert_eq!(out, whole, "cut at {a} and {b}");
            }
        }
        // Cut at the cap inside a value: its start is not shown.
        let mut live = LiveRedactor::default();
        let mut out = live.push(&secrets, 0, b"ok SECRETPASSW");
        out.extend(live.finish(&secrets, 0, true));
        assert_eq!(out, b"ok ");
        assert_eq!(secrets.without_partial_tail(b"ok SECRETPASSW"), b"ok ");
        assert_eq!(secrets.without_partial_tail(b"ok SEC"), b"ok ");
        assert_eq!(secrets.without_partial_tail(b"ok"), b"ok");
    }

    #[test]
    fn live_output_is_redacted_across_chunks() {
        let mut secrets = Secrets::default();
        secrets.add("tok-ABCDEFGH".into());
        let mut live = LiveRedactor::default();
        let mut out = Vec::new();
        for chunk in [
            &b"hello tok-AB"[..],
            b"CDEF",
            b"GH bye \xc3",
            b"\xa9\xfftok-ABCDEFGH",
        ] {
            let part = live.push(&secrets, 0, chunk);
            assert!(!part.windows(6).any(|w| w == b"tok-AB"), "{part:?}");
            out.extend_from_slice(&part);
        }
        out.extend_from_slice(&live.finish(&secrets, 0, false));
        assert_eq!(out, b"hello [redacted] bye \xc3\xa9\xff[redacted]");
        assert_eq!(
            LiveRedactor::default().push(&Secrets::default(), 1, b"x"),
            b"x"
        );
    }

    #[test]
    fn the_sidecar_gets_names_and_the_agent_gets_no_secret() {
        std::env::set_var("BUS_SANDBOX_PLAN_TEST_TOKEN", "tok-123456");
        let config = Config::parse(
            r#"
            [profiles.agent]
            image = "x"
            egress = ["a.test:443", { host = "api.test:443", header = "Authorization", value_env = "BUS_SANDBOX_PLAN_TEST_TOKEN", prefix = "Bearer " }]
            "#,
            "t",
        )
        .unwrap();
        let (plan, secrets) = plan_sandbox(
            "agent",
            &config.profiles["agent"].egress,
            &config,
            &BTreeMap::new(),
            "run_1",
        )
        .unwrap();
        assert_eq!(secrets.redact("a tok-123456 b"), "a [redacted] b");
        let argv = plan.sidecar.command.join(" ");
        assert!(argv.contains("--allow a.test:443"), "{argv}");
        assert!(argv.contains(
            "--credential api.test:443=Authorization=BUS_SANDBOX_PLAN_TEST_TOKEN=Bearer "
        ));
        assert!(!argv.contains("tok-123456"), "no value on argv");
        assert!(!format!("{:?}", plan.sidecar.env).contains("tok-123456"));
        assert!(plan.stdin.contains("tok-123456"));
        assert!(!format!("{plan:?}").contains("tok-123456"));
        assert!(plan.intercepts);
        let mut agent = ContainerSpec::default();
        let files = sandbox_agent(&mut agent, &plan.network, "10.9.0.2", Some("-----CA-----"));
        assert_eq!(agent.network, "bus-net-run_1");
        assert_eq!(agent.dns, ["10.9.0.2"]);
        assert!(agent
            .env
            .contains(&("HTTPS_PROXY".into(), "http://10.9.0.2:3128".into())));
        assert!(agent
            .env
            .contains(&("SSL_CERT_FILE".into(), CA_BUNDLE.into())));
        assert!(files[0].data.starts_with(b"-----CA-----\n"));
        assert!(!format!("{agent:?}").contains("tok-123456"));
        std::env::remove_var("BUS_SANDBOX_PLAN_TEST_TOKEN");
        assert_eq!(
            plan_sandbox(
                "agent",
                &config.profiles["agent"].egress,
                &config,
                &BTreeMap::new(),
                "r"
            )
            .unwrap_err()
            .kind,
            ErrorType::BackendError
        );
    }
}
