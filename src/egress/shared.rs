//! What the plain proxy path and a credential route share: the proxy's
//! state (policy, per-run CA and leaf cache, upstream TLS), decision
//! logging, upstream connections and request preparation.

use super::ca::RunCa;
use super::decision::{emit_decision, Decision};
use super::policy::{Credential, Destination, Policy};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A response body of either side.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// How long an upstream connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// State shared by every connection.
pub struct Shared {
    pub policy: Policy,
    pub(super) ca: Option<RunCa>,
    /// Leaf configs per host, and when each was made.
    pub(super) leaves: Mutex<HashMap<String, (Instant, Arc<ServerConfig>)>>,
    pub client_tls: Arc<ClientConfig>,
    pub(super) allow_from: Vec<ipnet::IpNet>,
}

/// A leaf is replaced after this long (it is valid for a day).
const LEAF_REFRESH: Duration = Duration::from_secs(12 * 3600);

pub(super) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
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

/// Logs one decision.
pub fn log(
    method: &Method,
    d: &Destination,
    allowed: bool,
    status: u16,
    credential: bool,
    reason: Option<String>,
) {
    emit_decision(&Decision {
        ts: crate::contract::now_rfc3339(),
        decision: if allowed { "allow" } else { "deny" }.into(),
        method: method.as_str().to_owned(),
        host: d.host.clone(),
        port: d.port,
        status: Some(status),
        credential,
        reason,
    });
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
