//! `bus egress-proxy`: the egress proxy of a sandboxed run (see
//! [`crate::egress`]). Credential values are read by name from the
//! environment or, with `--secrets-stdin`, from a JSON object on stdin;
//! never from argv.

use super::failure::Failure;
use crate::egress::policy::{Allow, Credential};
use crate::egress::{Policy, Proxy, ProxySettings};
use clap::Args;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct EgressProxyArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3128", value_name = "ADDR")]
    pub listen: String,
    /// A destination clients may reach, `host:port` (`*.example.com:443`
    /// for its subdomains). Repeat for more; anything else gets 403.
    #[arg(long = "allow", value_name = "HOST:PORT")]
    pub allow: Vec<String>,
    /// `HOST:PORT=HEADER=ENV_NAME[=PREFIX]`: set HEADER to PREFIX plus the
    /// value of ENV_NAME on every request to HOST:PORT (allowed by this
    /// route), terminating its TLS with a per-run CA. Repeatable.
    #[arg(long = "credential", value_name = "ROUTE")]
    pub credentials: Vec<String>,
    /// Write the per-run CA here: `ca.pem`, and `ca-key.pem` (mode 0600).
    #[arg(long, value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,
    /// A PEM file of CA certificates trusted upstream besides the system's.
    #[arg(long, value_name = "FILE")]
    pub upstream_ca: Vec<PathBuf>,
    /// Serve clients from these networks only (`10.1.0.0/16`;
    /// repeatable; unset: any client).
    #[arg(long = "allow-from", value_name = "CIDR")]
    pub allow_from: Vec<String>,
    /// Read `{"env":{"NAME":"value"},"upstream_ca":["PEM"]}` from stdin
    /// before listening: credential values (by name) and upstream CAs.
    #[arg(long)]
    pub secrets_stdin: bool,
}

/// What `--secrets-stdin` reads.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdinSecrets {
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub upstream_ca: Vec<String>,
}

impl std::fmt::Debug for StdinSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only.
        f.debug_struct("StdinSecrets")
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("upstream_ca", &self.upstream_ca.len())
            .finish()
    }
}

fn read_stdin() -> Result<StdinSecrets, Failure> {
    let mut text = String::new();
    std::io::stdin()
        .take(4 << 20)
        .read_to_string(&mut text)
        .map_err(|e| Failure::usage(format!("--secrets-stdin: reading stdin: {e}")))?;
    // The message never quotes the input: it holds secrets.
    serde_json::from_str(&text).map_err(|e| {
        Failure::usage(format!(
            "--secrets-stdin: expected a JSON object {{\"env\":{{...}},\"upstream_ca\":[...]}} (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

pub fn run(args: EgressProxyArgs) -> Result<(), Failure> {
    let mut policy = Policy {
        allow: args
            .allow
            .iter()
            .map(|a| Allow::parse(a))
            .collect::<Result<_, _>>()
            .map_err(|e| Failure::usage(format!("--allow {e}")))?,
        credentials: args
            .credentials
            .iter()
            .map(|c| Credential::parse(c))
            .collect::<Result<_, _>>()
            .map_err(|e| Failure::usage(format!("--credential {e}")))?,
    };
    let stdin = if args.secrets_stdin {
        read_stdin()?
    } else {
        StdinSecrets::default()
    };
    policy
        .resolve(|name| {
            stdin
                .env
                .get(name)
                .cloned()
                .or_else(|| std::env::var(name).ok())
        })
        .map_err(Failure::usage)?;
    let mut upstream_ca_pem = stdin.upstream_ca;
    for path in &args.upstream_ca {
        upstream_ca_pem.push(
            std::fs::read_to_string(path)
                .map_err(|e| Failure::usage(format!("--upstream-ca {}: {e}", path.display())))?,
        );
    }
    let allow_from = args
        .allow_from
        .iter()
        .map(|c| {
            c.parse::<ipnet::IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    Failure::usage(format!(
                        "--allow-from {c:?}: expected a CIDR such as 10.1.0.0/16"
                    ))
                })
        })
        .collect::<Result<_, _>>()?;
    let settings = ProxySettings {
        listen: args.listen,
        policy,
        ca_dir: args.ca_dir,
        upstream_ca_pem,
        allow_from,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let proxy = Proxy::bind(settings).await.map_err(Failure::error)?;
        proxy.announce();
        tracing::info!(listen = %proxy.local_addr()?, "egress proxy listening");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = proxy.serve() => {}
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(())
    })
}
