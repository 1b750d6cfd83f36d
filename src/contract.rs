//! Wire types shared by every program on the bus: the event envelope, the
//! rules for event names, and the error body (`{"error":{...}}`).
//!
//! These shapes are the contract other BusDK programs speak; see
//! `spec/events-api.md`. Input is lenient where the spec says so (both
//! correlation-id spellings, unknown fields ignored); output is exact.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Longest event name the bus accepts.
pub const MAX_NAME_LEN: usize = 200;

/// One event as it travels on the bus. Every field but `name` and
/// `payload` is stamped by the broker, never trusted from a caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(default)]
    pub id: String,
    pub name: String,
    #[serde(
        rename = "correlationId",
        alias = "correlation_id",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub correlation_id: Option<String>,
    #[serde(default)]
    pub identity_id: String,
    #[serde(default)]
    pub service: bool,
    #[serde(default)]
    pub time: String,
    #[serde(default)]
    pub payload: Value,
}

impl Envelope {
    /// Stamps a publication with a fresh id, the publisher's identity and
    /// service role, and the current time.
    pub fn stamp(publication: Publication, identity_id: &str, service: bool) -> Self {
        Envelope {
            id: new_event_id(),
            name: publication.name,
            correlation_id: publication.correlation_id,
            identity_id: identity_id.to_owned(),
            service,
            time: now_rfc3339(),
            payload: publication.payload,
        }
    }

    /// The envelope as one NDJSON line (with the trailing newline).
    pub fn to_ndjson(&self) -> bytes::Bytes {
        let mut line = serde_json::to_vec(self).expect("an envelope always serialises");
        line.push(b'\n');
        line.into()
    }
}

/// What a publisher sends: `POST /api/v1/events` body. Unknown fields
/// (older clients send `delivery`, `group`, and stamped fields) are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Publication {
    pub name: String,
    #[serde(
        rename = "correlationId",
        alias = "correlation_id",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub correlation_id: Option<String>,
    #[serde(default)]
    pub payload: Value,
}

impl Publication {
    pub fn new(name: impl Into<String>, payload: Value) -> Self {
        Publication {
            name: name.into(),
            correlation_id: None,
            payload,
        }
    }

    pub fn with_correlation(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }
}

/// `evt_` + a UUIDv7: unique and time-sortable.
pub fn new_event_id() -> String {
    format!("evt_{}", uuid::Uuid::now_v7().simple())
}

/// Current UTC time as RFC 3339 with milliseconds (`2026-11-25T12:00:00.123Z`).
pub fn now_rfc3339() -> String {
    let now = OffsetDateTime::now_utc();
    let now = now
        .replace_nanosecond(now.millisecond() as u32 * 1_000_000)
        .unwrap_or(now);
    now.format(&Rfc3339).unwrap_or_default()
}

/// Why an event name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("event name is empty")]
    Empty,
    #[error("event name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error("event name {0:?} has an empty segment")]
    EmptySegment(String),
    #[error("event name {0:?} may only use lowercase letters, digits, '_' and '-' in dot-separated segments (no wildcards)")]
    BadCharacter(String),
}

/// Checks an event name: lowercase dot-separated segments of `[a-z0-9_-]`,
/// 1..=200 characters, no empty segment, no wildcards.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    for segment in name.split('.') {
        if segment.is_empty() {
            return Err(NameError::EmptySegment(name.to_owned()));
        }
        let ok = segment
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !ok {
            return Err(NameError::BadCharacter(name.to_owned()));
        }
    }
    Ok(())
}

/// The error types of the contract, each with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    BadRequest,
    InvalidAuth,
    BillingRequired,
    Forbidden,
    NotFound,
    /// The path exists; the method does not (ours: 405).
    MethodNotAllowed,
    /// The run is not in a state that allows this (ours: 409).
    Conflict,
    PayloadTooLarge,
    RateLimited,
    Timeout,
    Unavailable,
    BackendError,
    MalformedResponse,
    BadGateway,
    Internal,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::BadRequest => "bad_request",
            ErrorType::InvalidAuth => "invalid_auth",
            ErrorType::BillingRequired => "billing_required",
            ErrorType::Forbidden => "forbidden",
            ErrorType::NotFound => "not_found",
            ErrorType::MethodNotAllowed => "method_not_allowed",
            ErrorType::Conflict => "conflict",
            ErrorType::PayloadTooLarge => "payload_too_large",
            ErrorType::RateLimited => "rate_limited",
            ErrorType::Timeout => "timeout",
            ErrorType::Unavailable => "unavailable",
            ErrorType::BackendError => "backend_error",
            ErrorType::MalformedResponse => "malformed_response",
            ErrorType::BadGateway => "bad_gateway",
            ErrorType::Internal => "internal",
        }
    }

    /// The HTTP status the contract maps this type to.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorType::BadRequest => 400,
            ErrorType::InvalidAuth => 401,
            ErrorType::BillingRequired => 402,
            ErrorType::Forbidden => 403,
            ErrorType::NotFound => 404,
            ErrorType::MethodNotAllowed => 405,
            ErrorType::Conflict => 409,
            ErrorType::PayloadTooLarge => 413,
            ErrorType::RateLimited => 429,
            ErrorType::Timeout | ErrorType::Unavailable => 503,
            ErrorType::BackendError | ErrorType::MalformedResponse | ErrorType::BadGateway => 502,
            ErrorType::Internal => 500,
        }
    }
}

impl std::fmt::Display for ErrorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The inner part of `{"error":{"type","message","action"?,"command"?}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ErrorDetail {
    #[serde(rename = "type")]
    pub kind: ErrorType,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

impl ErrorDetail {
    pub fn new(kind: ErrorType, message: impl Into<String>) -> Self {
        ErrorDetail {
            kind,
            message: message.into(),
            action: None,
            command: None,
        }
    }

    pub fn with_guidance(mut self, action: impl Into<String>, command: impl Into<String>) -> Self {
        self.action = Some(action.into());
        self.command = Some(command.into());
        self
    }

    /// The full error body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.clone(),
        }
    }
}

/// `{"error":{...}}`, the body of every error response and error reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names() {
        for ok in ["a", "bus.containers.run.request", "x-y_z.0"] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name(&"a".repeat(201)), Err(NameError::TooLong));
        assert!(validate_name(&"a".repeat(200)).is_ok());
        for bad in ["a..b", ".a", "a.", "A.b", "a.*", "a.>", "a b", "ä"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn both_correlation_spellings_in_camel_out() {
        let snake: Publication =
            serde_json::from_value(json!({"name":"a","correlation_id":"c1","delivery":"x"}))
                .unwrap();
        let camel: Publication =
            serde_json::from_value(json!({"name":"a","correlationId":"c1"})).unwrap();
        assert_eq!(snake.correlation_id.as_deref(), Some("c1"));
        assert_eq!(snake, camel);
        let env = Envelope::stamp(snake, "me", true);
        let out = serde_json::to_value(&env).unwrap();
        assert_eq!(out["correlationId"], "c1");
        assert!(out.get("correlation_id").is_none());
        assert!(env.id.starts_with("evt_"));
        assert!(env.time.ends_with('Z'), "{}", env.time);
    }

    #[test]
    fn error_body_shape() {
        let body = ErrorDetail::new(ErrorType::BillingRequired, "no")
            .with_guidance("set up billing", "bus billing setup")
            .body();
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            json!({"error":{"type":"billing_required","message":"no","action":"set up billing","command":"bus billing setup"}})
        );
        assert_eq!(ErrorType::MalformedResponse.http_status(), 502);
    }
}
