//! The event envelope and the rules for event names (`spec/events-api.md`).
//! Input is lenient where the spec says so (both correlation-id
//! spellings, unknown fields ignored); output is exact.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The header of `POST /api/v1/events` that makes a retried publish
/// publish once (ours; the HTTP broker sends its envelope id).
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// The header of the Events API's responses that says its payload limit
/// (ours), so that clients never publish more.
pub const MAX_PAYLOAD_HEADER: &str = "X-Bus-Max-Payload";

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
}
