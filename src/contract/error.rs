//! The error body of every error response and error reply:
//! `{"error":{"type","message","action"?,"command"?}}`.

use serde::{Deserialize, Serialize};

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
    /// A request line over the limit (ours: 414).
    UriTooLong,
    /// Request headers over the limit (ours: 431).
    HeadersTooLarge,
    /// A body that is not JSON by its `Content-Type` (ours: 415).
    UnsupportedMediaType,
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
            ErrorType::UriTooLong => "uri_too_long",
            ErrorType::HeadersTooLarge => "headers_too_large",
            ErrorType::UnsupportedMediaType => "unsupported_media_type",
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
            ErrorType::UriTooLong => 414,
            ErrorType::HeadersTooLarge => 431,
            ErrorType::UnsupportedMediaType => 415,
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
