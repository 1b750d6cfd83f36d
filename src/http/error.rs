//! One error type for every HTTP endpoint, rendered as the contract's
//! `{"error":{"type","message","action"?,"command"?}}` with its status.

use crate::actors::api_provider::ProviderError;
use crate::auth::AuthError;
use crate::broker::BrokerError;
use crate::contract::{ErrorDetail, ErrorType};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

/// An error answered to an HTTP caller.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{detail}")]
pub struct ApiError {
    pub detail: ErrorDetail,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(kind: ErrorType, message: impl Into<String>) -> Self {
        ApiError {
            detail: ErrorDetail::new(kind, message),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(ErrorType::BadRequest, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(ErrorType::Forbidden, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(ErrorType::NotFound, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(ErrorType::Unavailable, message)
    }

    pub fn too_large(limit: usize) -> Self {
        ApiError::new(
            ErrorType::PayloadTooLarge,
            format!("request body is larger than {limit} bytes"),
        )
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl From<ErrorDetail> for ApiError {
    fn from(detail: ErrorDetail) -> Self {
        ApiError {
            detail,
            retry_after: None,
        }
    }
}

impl From<ProviderError> for ApiError {
    fn from(e: ProviderError) -> Self {
        ApiError {
            detail: e.detail(),
            retry_after: e.retry_after(),
        }
    }
}

impl From<actix::MailboxError> for ApiError {
    fn from(e: actix::MailboxError) -> Self {
        ProviderError::from(e).into()
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::new(ErrorType::InvalidAuth, e.to_string())
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        ApiError::new(e.error_type(), e.to_string())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.detail.kind.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status_code());
        if let Some(secs) = self.retry_after {
            resp.insert_header(("Retry-After", secs.to_string()));
        }
        if self.detail.kind == ErrorType::InvalidAuth {
            resp.insert_header(("WWW-Authenticate", "Bearer"));
        }
        resp.json(self.detail.body())
    }
}

/// The JSON 404 for paths no route knows.
pub async fn no_route(req: actix_web::HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(format!(
        "no endpoint {} {}",
        req.method(),
        req.path()
    )))
}

/// A route answering the JSON 405 (with `Allow`) for methods a path does
/// not have.
pub fn not_allowed(allow: &'static str) -> actix_web::Route {
    actix_web::web::to(move |req: actix_web::HttpRequest| async move {
        let e = ApiError::new(
            crate::contract::ErrorType::MethodNotAllowed,
            format!(
                "{} is not allowed on {} (allowed: {allow})",
                req.method(),
                req.path()
            ),
        );
        let mut resp = e.error_response();
        resp.headers_mut().insert(
            actix_web::http::header::ALLOW,
            actix_web::http::header::HeaderValue::from_static(allow),
        );
        resp
    })
}
