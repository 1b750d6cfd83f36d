//! The listener: every client connection is HTTP/1.1. `CONNECT host:port`
//! opens a tunnel (or, on a credential route, an intercepted TLS session,
//! see [`super::mitm`]); an absolute-form request (`GET http://host/...`)
//! is forwarded. Destinations outside the allowlist get 403; every
//! decision is a JSON line on stdout.

use super::ca::RunCa;
use super::decision::{self, Decision};
use super::mitm;
use super::policy::{parse_host_port, Credential, Destination, Policy, Verdict};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

/// A response body of either side.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// How long an upstream connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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

/// State shared by every connection.
pub struct Shared {
    pub policy: Policy,
    ca: Option<RunCa>,
    /// Leaf configs per host, and when each was made.
    leaves: Mutex<HashMap<String, (Instant, Arc<ServerConfig>)>>,
    pub client_tls: Arc<ClientConfig>,
    allow_from: Vec<ipnet::IpNet>,
}

/// A leaf is replaced after this long (it is valid for a day).
const LEAF_REFRESH: Duration = Duration::from_secs(12 * 3600);
/// Client connections served at once; more wait.
const MAX_CONNECTIONS: usize = 512;
/// How long a client may take to send a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Shared {
    /// The TLS server config the agent sees for `host` (a leaf of the
    /// per-run CA), made once per host.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, String> {
        let mut leaves = self.leaves.lock().expect("leaf cache");
        if let Some((made, c)) = leaves.get(host) {
            if made.elapsed() < LEAF_REFRESH {
                return Ok(c.clone());
            }
        }
        let ca = self.ca.as_ref().ok_or("no CA: no credential routes")?;
        let leaf = ca.leaf(host)?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(leaf.chain, leaf.key)
            .map_err(|e| e.to_string())?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        leaves.insert(host.to_owned(), (Instant::now(), config.clone()));
        Ok(config)
    }
}

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

/// A short text answer from the proxy itself.
pub fn text(status: StatusCode, message: &str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{message}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r
}

/// Logs one decision.
pub fn log(
    method: &Method,
    d: &Destination,
    allowed: bool,
    status: u16,
    credential: bool,
    reason: Option<String>,
) {
    Decision {
        ts: crate::contract::now_rfc3339(),
        decision: if allowed { "allow" } else { "deny" }.into(),
        method: method.as_str().to_owned(),
        host: d.host.clone(),
        port: d.port,
        status: Some(status),
        credential,
        reason,
    }
    .emit();
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

/// Opens a TCP connection to `d`, bounded in time.
pub async fn connect_tcp(d: &Destination) -> Result<TcpStream, String> {
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((d.host.as_str(), d.port)),
    )
    .await
    {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(format!("connecting to {d}: {e}")),
        Err(_) => Err(format!("connecting to {d}: timed out")),
    }
}

/// Opens a TLS connection to `d`, verified against the upstream roots.
pub async fn connect_tls(
    d: &Destination,
    shared: &Shared,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let tcp = connect_tcp(d).await?;
    let name = ServerName::try_from(d.host.clone()).map_err(|e| format!("{d}: {e}"))?;
    tokio_rustls::TlsConnector::from(shared.client_tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS to {d}: {e}"))
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

/// Headers that belong to one hop, never forwarded.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        "connection",
        "proxy-connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
    ] {
        headers.remove(name);
    }
}

/// Prepares a request for `d`: origin-form target, the destination's
/// Host, no hop-by-hop headers, the credential header when there is one.
pub fn prepare(
    req: &mut Request<Incoming>,
    d: &Destination,
    https: bool,
    credential: Option<&Credential>,
) {
    let mut target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    if !target.starts_with('/') {
        target.insert(0, '/');
    }
    *req.uri_mut() = target
        .parse::<Uri>()
        .unwrap_or_else(|_| Uri::from_static("/"));
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    let default_port = d.port == if https { 443 } else { 80 };
    let host = if default_port {
        d.host.clone()
    } else {
        d.to_string()
    };
    if let Ok(v) = HeaderValue::from_str(&host) {
        headers.insert(header::HOST, v);
    }
    if let Some(c) = credential {
        if let (Ok(name), Some(Ok(mut value))) = (
            HeaderName::from_bytes(c.header.as_bytes()),
            c.value.as_deref().map(HeaderValue::from_str),
        ) {
            value.set_sensitive(true);
            headers.insert(name, value);
        }
    }
}

/// Sends one request on a fresh connection `io`.
pub async fn send_on<S>(io: S, req: Request<Incoming>) -> Result<Response<Body>, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("upstream handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("upstream request: {e}"))?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Err("protocol upgrades are not supported through the egress proxy".into());
    }
    strip_hop_by_hop(resp.headers_mut());
    Ok(resp.map(|b| b.boxed()))
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
