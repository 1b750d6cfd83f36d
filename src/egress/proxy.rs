//! The listener: every client connection is HTTP/1.1. `CONNECT host:port`
//! opens a tunnel (or, on a credential route, an intercepted TLS session,
//! see [`super::mitm`]); an absolute-form request (`GET http://host/...`)
//! is forwarded. Destinations outside the allowlist get 403; every
//! decision is a JSON line on stdout.

use super::ca::RunCa;
use super::decision::{self};
use super::mitm;
use super::policy::{parse_host_port, Destination, Policy, Verdict};
use super::shared::{
    connect_tcp, connect_tls, log, prepare, provider, send_on, text, Body, Shared,
};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// What the proxy is started with.
#[derive(Debug, Clone, Default)]
pub struct ProxySettings {
    pub listen: String,
    pub policy: Policy,
    /// Where to write the per-run CA (`ca.pem`, `ca-key.pem` 0600).
    pub ca_dir: Option<PathBuf>,
    /// Extra PEM certificates trusted upstream, besides the system's.
    pub upstream_ca_pem: Vec<String>,
    /// Clients may connect only from these networks (empty: any).
    pub allow_from: Vec<ipnet::IpNet>,
}

/// Client connections served at once; more wait.
const MAX_CONNECTIONS: usize = 512;
/// How long a client may take to send a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// A bound proxy, ready to serve.
pub struct Proxy {
    listener: TcpListener,
    shared: Arc<Shared>,
}

fn client_config(extra: &[String]) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    for pem in extra {
        let mut found = 0;
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("upstream CA: {e}"))?;
            roots.add(cert).map_err(|e| format!("upstream CA: {e}"))?;
            found += 1;
        }
        if found == 0 {
            return Err("upstream CA: no PEM certificate found".into());
        }
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl Proxy {
    /// Binds the listener and makes the per-run CA (when there are
    /// credential routes, whose values must be resolved by now).
    pub async fn bind(settings: ProxySettings) -> Result<Proxy, String> {
        if let Some(c) = settings
            .policy
            .credentials
            .iter()
            .find(|c| c.value.is_none())
        {
            return Err(format!("the credential for {} has no value", c.destination));
        }
        let ca = if settings.policy.credentials.is_empty() {
            None
        } else {
            let hosts: Vec<Destination> = settings
                .policy
                .credentials
                .iter()
                .map(|c| c.destination.clone())
                .collect();
            let ca = RunCa::new(&hosts)?;
            if let Some(dir) = &settings.ca_dir {
                ca.write_files(dir)
                    .map_err(|e| format!("writing the CA to {}: {e}", dir.display()))?;
            }
            Some(ca)
        };
        let listener = TcpListener::bind(&settings.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
        Ok(Proxy {
            listener,
            shared: Arc::new(Shared {
                policy: settings.policy,
                ca,
                leaves: Mutex::new(HashMap::new()),
                client_tls: Arc::new(client_config(&settings.upstream_ca_pem)?),
                allow_from: settings.allow_from,
            }),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The per-run CA's certificate (PEM), when there is one.
    pub fn ca_pem(&self) -> Option<String> {
        self.shared.ca.as_ref().map(|c| c.cert_pem().to_owned())
    }

    /// Prints the `ready` line (with the CA certificate) on stdout.
    pub fn announce(&self) {
        let listen = self.local_addr().map(|a| a.to_string()).unwrap_or_default();
        decision::emit(&json!({"event": "ready", "listen": listen, "ca_cert": self.ca_pem()}));
    }

    /// Serves connections until the task is dropped.
    pub async fn serve(self) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = match self.listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let shared = self.shared.clone();
            let client = peer.ip().to_canonical();
            if !shared.allow_from.is_empty()
                && !shared.allow_from.iter().any(|n| n.contains(&client))
            {
                decision::emit(
                    &json!({"event": "client_refused", "ts": crate::contract::now_rfc3339(), "client": client.to_string()}),
                );
                continue;
            }
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _slot = slot;
                let service = service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(req, shared).await) }
                });
                if let Err(e) = http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await
                {
                    tracing::debug!(error = %e, "client connection ended");
                }
            });
        }
    }
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r
}

fn denied(method: &Method, d: &Destination) -> Response<Body> {
    log(
        method,
        d,
        false,
        403,
        false,
        Some("not in the allowlist".into()),
    );
    text(
        StatusCode::FORBIDDEN,
        &format!("bus egress-proxy: {d} is not in this run's allowlist"),
    )
}

async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Response<Body> {
    if req.method() == Method::CONNECT {
        connect(req, shared).await
    } else {
        forward(req, shared).await
    }
}

async fn connect(req: Request<Incoming>, shared: Arc<Shared>) -> Response<Body> {
    let method = req.method().clone();
    let target = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let Ok(dest) = parse_host_port(&target) else {
        let shown: String = target.chars().take(200).collect();
        let unknown = Destination {
            host: shown,
            port: 0,
        };
        log(
            &method,
            &unknown,
            false,
            400,
            false,
            Some("not host:port".into()),
        );
        return text(StatusCode::BAD_REQUEST, "CONNECT needs host:port");
    };
    match shared.policy.decide(&dest) {
        Verdict::Deny => denied(&method, &dest),
        Verdict::Allow => {
            let mut upstream = match connect_tcp(&dest).await {
                Ok(s) => s,
                Err(e) => {
                    log(&method, &dest, true, 502, false, Some(e.clone()));
                    return text(StatusCode::BAD_GATEWAY, &e);
                }
            };
            log(&method, &dest, true, 200, false, None);
            tokio::spawn(async move {
                match hyper::upgrade::on(req).await {
                    Ok(up) => {
                        let mut client = TokioIo::new(up);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
                }
            });
            empty(StatusCode::OK)
        }
        Verdict::Credential(c) => {
            let credential = c.clone();
            log(
                &method,
                &dest,
                true,
                200,
                false,
                Some("intercepted: credential route".into()),
            );
            tokio::spawn(async move {
                match hyper::upgrade::on(req).await {
                    Ok(up) => mitm::serve(TokioIo::new(up), dest, credential, shared).await,
                    Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
                }
            });
            empty(StatusCode::OK)
        }
    }
}

/// A plain proxied request: `GET http://host[:port]/path`.
async fn forward(mut req: Request<Incoming>, shared: Arc<Shared>) -> Response<Body> {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return text(
                StatusCode::BAD_REQUEST,
                "bus egress-proxy is a proxy: send CONNECT host:port, or an absolute URL (http://host/path)",
            )
        }
    };
    let Some(host) = uri.host() else {
        return text(StatusCode::BAD_REQUEST, "the URL has no host");
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if uri.port().is_some() && uri.port_u16().is_none_or(|p| p == 0) {
        return text(StatusCode::BAD_REQUEST, "the URL's port is not 1-65535");
    }
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let dest = Destination { host, port };
    let credential = match shared.policy.decide(&dest) {
        Verdict::Deny => return denied(&method, &dest),
        Verdict::Allow => None,
        // Never a secret over cleartext.
        Verdict::Credential(_) if !https => {
            log(
                &method,
                &dest,
                false,
                403,
                false,
                Some("a credential route needs https".into()),
            );
            return text(
                StatusCode::FORBIDDEN,
                &format!("bus egress-proxy: {dest} carries a credential: use https://"),
            );
        }
        Verdict::Credential(c) => Some(c.clone()),
    };
    prepare(&mut req, &dest, https, credential.as_ref());
    let sent = if https {
        match connect_tls(&dest, &shared).await {
            Ok(io) => send_on(io, req).await,
            Err(e) => Err(e),
        }
    } else {
        match connect_tcp(&dest).await {
            Ok(io) => send_on(io, req).await,
            Err(e) => Err(e),
        }
    };
    match sent {
        Ok(resp) => {
            log(
                &method,
                &dest,
                true,
                resp.status().as_u16(),
                credential.is_some(),
                None,
            );
            resp
        }
        Err(e) => {
            log(
                &method,
                &dest,
                true,
                502,
                credential.is_some(),
                Some(e.clone()),
            );
            text(StatusCode::BAD_GATEWAY, &e)
        }
    }
}
