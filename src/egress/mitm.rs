//! A credential route's intercepted session: the agent's TLS ends here
//! (a leaf for the host, signed by the per-run CA), each HTTP/1.1 request
//! gets the route's header (replacing any the agent sent), and goes on
//! over a verified TLS connection of the proxy's own to the same host.

use super::policy::{Credential, Destination};
use super::shared::{connect_tls, log, prepare, strip_hop_by_hop, text, Body, Shared};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Mutex;

/// The upstream connection of one intercepted session, opened at its
/// first request and reopened when the upstream closes it.
type Upstream = Arc<Mutex<Option<SendRequest<Incoming>>>>;

/// Serves one intercepted client connection to its end.
pub async fn serve<IO>(client: IO, dest: Destination, credential: Credential, shared: Arc<Shared>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = match shared.server_config(&dest.host) {
        Ok(c) => c,
        Err(e) => {
            super::decision::emit(
                &serde_json::json!({"event": "error", "message": format!("{dest}: {e}")}),
            );
            return;
        }
    };
    let tls = match tokio_rustls::TlsAcceptor::from(config).accept(client).await {
        Ok(t) => t,
        Err(e) => {
            // Usually an agent that does not trust the per-run CA.
            super::decision::emit(
                &serde_json::json!({"event": "error", "message": format!("TLS from the agent for {dest}: {e} (does it trust SSL_CERT_FILE?)")}),
            );
            return;
        }
    };
    let upstream: Upstream = Arc::new(Mutex::new(None));
    let credential = Arc::new(credential);
    let dest = Arc::new(dest);
    let service = service_fn(move |req| {
        let (upstream, credential, dest, shared) = (
            upstream.clone(),
            credential.clone(),
            dest.clone(),
            shared.clone(),
        );
        async move {
            Ok::<_, std::convert::Infallible>(
                request(req, &dest, &credential, &shared, &upstream).await,
            )
        }
    });
    if let Err(e) = http1::Builder::new()
        .serve_connection(TokioIo::new(tls), service)
        .await
    {
        tracing::debug!(error = %e, "intercepted connection ended");
    }
}

async fn request(
    mut req: Request<Incoming>,
    dest: &Destination,
    credential: &Credential,
    shared: &Shared,
    upstream: &Upstream,
) -> Response<Body> {
    let method = req.method().clone();
    if method == hyper::Method::CONNECT || req.headers().contains_key(hyper::header::UPGRADE) {
        let why = "no CONNECT or upgrade inside an intercepted session";
        log(&method, dest, false, 405, false, Some(why.into()));
        return text(StatusCode::METHOD_NOT_ALLOWED, why);
    }
    prepare(&mut req, dest, true, Some(credential));
    let mut slot = upstream.lock().await;
    // A kept connection that is closed or not ready is opened afresh.
    let mut reusable = false;
    if let Some(sender) = slot.as_mut().filter(|s| !s.is_closed()) {
        reusable = sender.ready().await.is_ok();
    }
    if !reusable {
        let opened = async {
            let io = connect_tls(dest, shared).await?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .map_err(|e| format!("upstream handshake: {e}"))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok::<_, String>(sender)
        }
        .await;
        match opened {
            Ok(sender) => *slot = Some(sender),
            Err(e) => {
                *slot = None;
                log(&method, dest, true, 502, true, Some(e.clone()));
                return text(StatusCode::BAD_GATEWAY, &e);
            }
        }
    }
    let Some(sender) = slot.as_mut() else {
        return text(StatusCode::BAD_GATEWAY, "no upstream connection");
    };
    match sender.send_request(req).await {
        Ok(mut resp) if resp.status() != StatusCode::SWITCHING_PROTOCOLS => {
            strip_hop_by_hop(resp.headers_mut());
            log(&method, dest, true, resp.status().as_u16(), true, None);
            resp.map(|b| b.boxed())
        }
        Ok(_) => {
            *slot = None;
            let why = "protocol upgrades are not supported through the egress proxy";
            log(&method, dest, true, 502, true, Some(why.into()));
            text(StatusCode::BAD_GATEWAY, why)
        }
        Err(e) => {
            *slot = None;
            let e = format!("upstream request: {e}");
            log(&method, dest, true, 502, true, Some(e.clone()));
            text(StatusCode::BAD_GATEWAY, &e)
        }
    }
}
