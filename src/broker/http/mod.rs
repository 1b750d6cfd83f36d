//! The `Broker` over a remote Events API (`POST /api/v1/events`,
//! `GET /api/v1/events/stream`), with the client semantics of
//! `spec/events-api.md`: listener retry with bounded exponential backoff,
//! 401/403 failing fast, readiness while a required listener is down,
//! bounded publish retries, token refresh from the token file.

mod stream;

use super::listener::ListenerHealth;
use super::{Broker, BrokerError, Delivery, EventStream, SubscribeSpec};
use crate::contract::{Envelope, ErrorBody, Publication};
use crate::credentials::{Token, TokenSource};
use crate::parse::{env_bool, env_duration};
use bytes::BytesMut;
use futures::future::LocalBoxFuture;
use futures::StreamExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stream::{Body, StreamState};

/// The payload limit assumed until the Events API has said its own.
const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;

/// Longest NDJSON line accepted from a stream (payload limit plus room).
const MAX_LINE: usize = 4 << 20;

/// Bounded exponential backoff between listener reconnects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

/// Settings of an [`HttpBroker`].
#[derive(Debug, Clone)]
pub struct HttpBrokerConfig {
    /// `.../api/v1/events`.
    pub endpoint: String,
    pub token: TokenSource,
    /// Read the token source again before each reconnect
    /// (`BUS_EVENTS_TOKEN_REFRESH`).
    pub refresh_token: bool,
    /// Reconnect after EOF or network failure (`BUS_EVENTS_LISTENER_RETRY`).
    pub retry: Option<Backoff>,
    /// `/readyz` fails while a listener is down
    /// (`BUS_EVENTS_LISTENER_REQUIRED`).
    pub required: bool,
    /// Attempts per publish (the same envelope each time).
    pub publish_attempts: u32,
    /// Time allowed for a publish or for a stream's response head.
    pub request_timeout: Duration,
    /// A stream silent for this long (not even a heartbeat) is dead.
    pub idle_timeout: Duration,
}

/// Turns `http://host:port` or `http://host:port/api/v1/events` into the
/// events endpoint.
pub fn events_endpoint(url: &str) -> Result<String, String> {
    let url = url.trim().trim_end_matches('/');
    if url.starts_with("nats://") {
        return Err("nats:// URLs select the NATS backend, not the Events API over HTTP".into());
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "events URL {url:?} must start with http:// (e.g. http://127.0.0.1:8081)"
        ));
    }
    if url.ends_with("/api/v1/events") {
        Ok(url.to_owned())
    } else {
        Ok(format!("{url}/api/v1/events"))
    }
}

impl HttpBrokerConfig {
    /// The spec's defaults and environment variables for `url`.
    pub fn from_env(url: &str, token: TokenSource) -> Result<Self, String> {
        let retry = if env_bool("BUS_EVENTS_LISTENER_RETRY")? {
            let min = env_duration("BUS_EVENTS_LISTENER_RETRY_MIN", Duration::from_secs(1))?;
            let max = env_duration("BUS_EVENTS_LISTENER_RETRY_MAX", Duration::from_secs(30))?;
            Some(Backoff {
                min: min.max(Duration::from_millis(10)),
                max: max.max(min),
            })
        } else {
            None
        };
        Ok(HttpBrokerConfig {
            endpoint: events_endpoint(url)?,
            token,
            refresh_token: env_bool("BUS_EVENTS_TOKEN_REFRESH")?,
            retry,
            required: env_bool("BUS_EVENTS_LISTENER_REQUIRED")?,
            publish_attempts: 3,
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        })
    }
}

thread_local! {
    // awc's client is not Send: one per thread (arbiter).
    static CLIENT: awc::Client = crate::http::client::client(None);
}

fn client() -> awc::Client {
    CLIENT.with(|c| c.clone())
}

/// A broker handle talking to a remote Events API.
#[derive(Clone)]
pub struct HttpBroker {
    inner: Arc<Inner>,
}

struct Inner {
    config: HttpBrokerConfig,
    /// The Events API's payload limit, as its responses say.
    max_payload: std::sync::atomic::AtomicUsize,
    token: Mutex<Token>,
    health: Arc<ListenerHealth>,
}

impl HttpBroker {
    pub fn new(config: HttpBrokerConfig) -> Result<Self, String> {
        let token = config.token.load()?;
        Ok(HttpBroker {
            inner: Arc::new(Inner {
                config,
                max_payload: std::sync::atomic::AtomicUsize::new(DEFAULT_MAX_PAYLOAD),
                token: Mutex::new(token),
                health: ListenerHealth::new(),
            }),
        })
    }

    pub fn health(&self) -> &Arc<ListenerHealth> {
        &self.inner.health
    }
}

impl Inner {
    /// Notes the payload limit a response states.
    fn learn(&self, head: &awc::http::header::HeaderMap) {
        if let Some(n) = head
            .get(crate::contract::MAX_PAYLOAD_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
        {
            self.max_payload
                .store(n, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn token(&self) -> Token {
        self.token.lock().expect("token lock").clone()
    }

    fn refresh(&self) {
        if !self.config.refresh_token {
            return;
        }
        match self.config.token.load() {
            Ok(t) => *self.token.lock().expect("token lock") = t,
            Err(e) => {
                tracing::warn!(error = %e, "token refresh failed; keeping the previous token")
            }
        }
    }

    async fn publish_once(&self, body: &Publication, key: &str) -> Result<String, BrokerError> {
        let mut resp = client()
            .post(&self.config.endpoint)
            .bearer_auth(self.token().expose())
            .insert_header((crate::contract::IDEMPOTENCY_KEY, key))
            .timeout(self.config.request_timeout)
            .send_json(body)
            .await
            .map_err(|e| {
                let what = format!("POST {}: {e}", self.config.endpoint);
                match e {
                    // Nothing was sent.
                    awc::error::SendRequestError::Connect(_) => BrokerError::NotConnected(what),
                    _ => BrokerError::Unavailable(what),
                }
            })?;
        let status = resp.status().as_u16();
        self.learn(resp.headers());
        let bytes = resp
            .body()
            .limit(1 << 20)
            .await
            .map_err(|e| BrokerError::Unavailable(format!("reading publish reply: {e}")))?;
        if status == 202 || status == 200 {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            return Ok(v["id"].as_str().unwrap_or_default().to_owned());
        }
        Err(status_error(status, &bytes))
    }

    async fn connect(&self, spec: &SubscribeSpec, replay: bool) -> Result<Body, BrokerError> {
        let group = match &spec.delivery {
            Delivery::Broadcast => "default",
            Delivery::Unicast { group } => group.as_str(),
        };
        let query = [
            ("name", spec.name.as_str()),
            ("delivery", spec.delivery.as_str()),
            ("group", group),
            ("consumer", spec.consumer.as_str()),
            ("replay", if replay { "true" } else { "false" }),
            ("follow", if spec.follow { "true" } else { "false" }),
        ];
        let url = format!("{}/stream", self.config.endpoint);
        let req = client()
            .get(&url)
            .bearer_auth(self.token().expose())
            .timeout(self.config.request_timeout)
            .query(&query)
            .map_err(|e| BrokerError::BadRequest(format!("bad stream query: {e}")))?;
        let mut resp = req
            .send()
            .await
            .map_err(|e| BrokerError::Unavailable(format!("GET {url}: {e}")))?;
        let status = resp.status().as_u16();
        if status == 200 {
            self.learn(resp.headers());
            return Ok(resp.boxed_local());
        }
        let bytes = resp.body().limit(1 << 16).await.unwrap_or_default();
        Err(status_error(status, &bytes))
    }
}

/// Maps an Events API error status (and its `{"error":{...}}` body) to a
/// broker error.
fn status_error(status: u16, body: &[u8]) -> BrokerError {
    let message = serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.error.message)
        .unwrap_or_else(|_| format!("HTTP {status}"));
    match status {
        401 => BrokerError::Auth(message),
        403 => BrokerError::Forbidden(message),
        400 | 404 => BrokerError::BadRequest(message),
        413 => BrokerError::TooLarge(message),
        _ => BrokerError::Unavailable(message),
    }
}

impl Broker for HttpBroker {
    fn publish(&self, envelope: Envelope) -> LocalBoxFuture<'static, Result<String, BrokerError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            // Every attempt is the same envelope: the Events API publishes
            // it once however many of them reach it.
            let key = envelope.id.clone();
            let body = Publication {
                name: envelope.name,
                correlation_id: envelope.correlation_id,
                payload: envelope.payload,
            };
            let attempts = inner.config.publish_attempts.max(1);
            let mut delay = Duration::from_millis(100);
            let mut attempt = 1;
            // Whether any attempt may have reached the Events API.
            let mut maybe_sent = false;
            loop {
                match inner.publish_once(&body, &key).await {
                    Ok(id) => return Ok(id),
                    Err(e @ (BrokerError::Unavailable(_) | BrokerError::NotConnected(_)))
                        if attempt < attempts =>
                    {
                        maybe_sent |= matches!(e, BrokerError::Unavailable(_));
                        tracing::debug!(error = %e, attempt, "publish failed; retrying");
                        actix_rt::time::sleep(delay).await;
                        delay *= 2;
                        attempt += 1;
                    }
                    Err(BrokerError::NotConnected(e)) if maybe_sent => {
                        return Err(BrokerError::Unavailable(e))
                    }
                    Err(e) => return Err(e),
                }
            }
        })
    }

    fn subscribe(
        &self,
        spec: SubscribeSpec,
    ) -> LocalBoxFuture<'static, Result<EventStream, BrokerError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let guard = inner.health.register(&spec.name);
            let backoff = inner.config.retry.map(|r| r.min).unwrap_or_default();
            let response = match inner.connect(&spec, spec.replay).await {
                Ok(resp) => {
                    guard.set_connected(true);
                    Some(resp)
                }
                Err(e) if e.is_fatal() || inner.config.retry.is_none() => return Err(e),
                Err(e) => {
                    tracing::warn!(event = %spec.name, error = %e, "events stream not connected yet; retrying");
                    None
                }
            };
            let state = StreamState {
                inner,
                spec,
                guard,
                response,
                buf: BytesMut::new(),
                backoff,
                done: false,
            };
            let stream: EventStream =
                futures::stream::unfold(state, StreamState::next).boxed_local();
            Ok(stream)
        })
    }

    fn listeners(&self) -> Option<Arc<ListenerHealth>> {
        Some(self.inner.health.clone())
    }

    /// Not ready while any listener is disconnected (a stream lost, the
    /// Events API away): such a process would miss what it listens for.
    fn ready(&self) -> Result<(), BrokerError> {
        let down = self.inner.health.down();
        if down.is_empty() {
            Ok(())
        } else {
            Err(BrokerError::Unavailable(format!(
                "events listener not connected: {}",
                down.join(", ")
            )))
        }
    }

    fn kind(&self) -> &'static str {
        "http"
    }

    fn max_payload(&self) -> Option<usize> {
        Some(
            self.inner
                .max_payload
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::events_endpoint;

    #[test]
    fn endpoint_forms() {
        assert_eq!(
            events_endpoint("http://127.0.0.1:8081").unwrap(),
            "http://127.0.0.1:8081/api/v1/events"
        );
        assert_eq!(
            events_endpoint("http://h:1/api/v1/events/").unwrap(),
            "http://h:1/api/v1/events"
        );
        assert!(events_endpoint("ftp://x").is_err());
    }
}
