//! The containers API over HTTP, for the CLI.

use super::super::Failure;
use crate::contract::ErrorBody;
use crate::credentials::Token;
use serde_json::Value;
use std::time::Duration;

/// Exit code when the platform (not the container) failed.
pub const EXIT_PLATFORM: u8 = 125;

/// An API answer that is not a success.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: u16,
    pub body: Option<ErrorBody>,
    pub message: String,
}

impl ApiFailure {
    /// A non-2xx answer: its status and `{"error":{...}}` body.
    fn from_answer(status: u16, bytes: &[u8]) -> Self {
        let body: Option<ErrorBody> = serde_json::from_slice(bytes).ok();
        let message = match &body {
            Some(b) => format!(
                "{} ({}): {}",
                describe(status),
                b.error.kind,
                b.error.message
            ),
            None => format!("{} (HTTP {status})", describe(status)),
        };
        ApiFailure {
            status,
            body,
            message,
        }
    }

    /// The CLI failure: the message, with the server's guidance under it.
    pub fn into_failure(self, code: u8) -> Failure {
        let mut text = self.message;
        if let Some(b) = &self.body {
            if let Some(a) = &b.error.action {
                text.push_str(&format!("\n  action: {a}"));
            }
            if let Some(c) = &b.error.command {
                text.push_str(&format!("\n  command: {c}"));
            }
        }
        Failure {
            code,
            message: text,
            detail: self
                .body
                .as_ref()
                .and_then(|b| serde_json::to_value(&b.error).ok()),
        }
    }
}

/// A client of one API origin with one token.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Token,
    timeout: Duration,
    http: awc::Client,
}

impl Client {
    pub fn new(origin: &str, token: Token, timeout: Duration) -> Result<Self, Failure> {
        let origin = origin.trim().trim_end_matches('/');
        if !(origin.starts_with("http://") || origin.starts_with("https://")) {
            return Err(Failure::usage(format!(
                "--api-url {origin:?} must start with http:// or https://"
            )));
        }
        Ok(Client {
            base: origin.to_owned(),
            token,
            timeout,
            http: crate::http::client::client(None),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// One JSON request; `Err` for transport failures and non-2xx answers.
    pub async fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), ApiFailure> {
        let req = self
            .http
            .request(method.parse().expect("a valid method"), self.url(path))
            .bearer_auth(self.token.expose())
            .timeout(self.timeout);
        let sent = match body {
            Some(b) => req.send_json(b).await,
            None => req.send().await,
        };
        let mut resp = sent.map_err(|e| ApiFailure {
            status: 0,
            body: None,
            message: match e {
                awc::error::SendRequestError::Timeout => format!(
                    "the API did not answer within {} (HTTP timeout; see --timeout)",
                    crate::parse::format_duration(self.timeout)
                ),
                other => format!("cannot reach the API at {}: {other}", self.base),
            },
        })?;
        let status = resp.status().as_u16();
        let bytes = resp.body().limit(64 << 20).await.map_err(|e| ApiFailure {
            status,
            body: None,
            message: format!("reading the API's answer: {e}"),
        })?;
        if (200..300).contains(&status) {
            let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Ok((status, v));
        }
        Err(ApiFailure::from_answer(status, &bytes))
    }

    /// A streaming GET (logs); the response body is read by the caller.
    pub async fn stream(
        &self,
        path: &str,
    ) -> Result<
        awc::ClientResponse<
            impl futures::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>>,
        >,
        ApiFailure,
    > {
        let mut resp = self
            .http
            .get(self.url(path))
            .bearer_auth(self.token.expose())
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| ApiFailure {
                status: 0,
                body: None,
                message: format!("cannot reach the API at {}: {e}", self.base),
            })?;
        let status = resp.status().as_u16();
        if status != 200 {
            let bytes = resp.body().limit(1 << 20).await.unwrap_or_default();
            return Err(ApiFailure::from_answer(status, &bytes));
        }
        Ok(resp)
    }
}

fn describe(status: u16) -> &'static str {
    match status {
        400 => "bad request",
        401 => "not authenticated",
        402 => "billing required",
        403 => "forbidden",
        404 => "not found",
        409 => "conflict",
        413 => "request too large",
        429 => "rate limited",
        502 => "bad gateway",
        503 => "service unavailable",
        _ => "request failed",
    }
}
