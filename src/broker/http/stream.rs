//! One HTTP subscription between polls: the NDJSON lines of its stream
//! parsed as they come, heartbeats skipped, and — with listener retry —
//! the stream connected again after EOF, a failure or silence, with a
//! bounded exponential backoff (replay only on the first connection).

use super::super::listener::ListenerGuard;
use super::{Inner, MAX_LINE};
use crate::broker::{BrokerError, Event, SubscribeSpec};
use crate::contract::Envelope;
use bytes::{Buf, BytesMut};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// A stream response's body.
pub(super) type Body =
    futures::stream::LocalBoxStream<'static, Result<bytes::Bytes, awc::error::PayloadError>>;

/// The state of one HTTP subscription between polls.
pub(super) struct StreamState {
    pub(super) inner: Arc<Inner>,
    pub(super) spec: SubscribeSpec,
    pub(super) guard: ListenerGuard,
    pub(super) response: Option<Body>,
    pub(super) buf: BytesMut,
    pub(super) backoff: Duration,
    pub(super) done: bool,
}

impl StreamState {
    /// The next complete, non-empty line in the buffer, parsed.
    fn next_buffered(&mut self) -> Option<Result<Arc<Event>, BrokerError>> {
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            let line = self.buf.split_to(pos + 1);
            let line = line.strip_suffix(b"\n").unwrap_or(&line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue; // heartbeat
            }
            match serde_json::from_slice::<Envelope>(line) {
                Ok(env) => return Some(Ok(Event::new(env))),
                Err(e) => {
                    tracing::warn!(event = %self.spec.name, error = %e, "skipping a malformed line on the events stream")
                }
            }
        }
        None
    }

    /// Reads until an event, the end, or a failure.
    pub(super) async fn next(mut self) -> Option<(Result<Arc<Event>, BrokerError>, Self)> {
        loop {
            if let Some(item) = self.next_buffered() {
                return Some((item, self));
            }
            if self.done {
                return None;
            }
            let Some(mut resp) = self.response.take() else {
                // Disconnected: reconnect (replay only ever on the first
                // connection, or it would repeat events).
                actix_rt::time::sleep(self.backoff).await;
                self.inner.refresh();
                match self.inner.connect(&self.spec, false).await {
                    Ok(resp) => {
                        tracing::info!(event = %self.spec.name, "events stream reconnected");
                        self.guard.set_connected(true);
                        self.response = Some(resp);
                        self.backoff = self.inner.config.retry.map(|r| r.min).unwrap_or_default();
                    }
                    Err(e) if e.is_fatal() => {
                        self.done = true;
                        return Some((Err(e), self));
                    }
                    Err(e) => {
                        let max = self.inner.config.retry.map(|r| r.max).unwrap_or_default();
                        tracing::warn!(event = %self.spec.name, error = %e, retry_in = ?self.backoff, "events stream reconnect failed");
                        self.backoff = (self.backoff * 2).min(max);
                    }
                }
                continue;
            };
            let idle = self.inner.config.idle_timeout;
            let ended = match actix_rt::time::timeout(idle, resp.next()).await {
                Ok(Some(Ok(chunk))) => {
                    self.buf.extend_from_slice(chunk.chunk());
                    if self.buf.len() > MAX_LINE {
                        Some(format!("a line longer than {MAX_LINE} bytes"))
                    } else {
                        self.response = Some(resp);
                        None
                    }
                }
                Ok(Some(Err(e))) => Some(format!("read failed: {e}")),
                Ok(None) => Some("the server closed the stream".to_owned()),
                Err(_) => Some(format!("no data or heartbeat for {idle:?}")),
            };
            let Some(reason) = ended else { continue };
            self.buf.clear();
            self.guard.set_connected(false);
            if !self.spec.follow && reason.contains("closed") {
                self.done = true;
                continue;
            }
            if self.inner.config.retry.is_none() {
                self.done = true;
                return Some((Err(BrokerError::Closed(reason)), self));
            }
            tracing::warn!(event = %self.spec.name, reason = %reason, "events stream lost; reconnecting");
        }
    }
}
