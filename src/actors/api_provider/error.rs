//! Why the API provider refused or could not answer a request: one enum,
//! mapped to HTTP once (`http::error`).

use crate::contract::{ErrorDetail, ErrorType};
use crate::store::StoreError;

/// A refusal or failure of the API provider.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    /// The run is not in a state that allows this.
    #[error("{0}")]
    Conflict(String),
    #[error("{message}")]
    RateLimited { message: String, retry_after: u64 },
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after: Option<u64>,
    },
    /// Refused with the contract's own error (a backend's error reply, a
    /// billing refusal with its guidance), mapped as the contract says.
    #[error("{0}")]
    Refused(ErrorDetail),
    #[error(transparent)]
    Ledger(#[from] StoreError),
    /// The provider actor is gone (the process is stopping).
    #[error("the API provider is stopping")]
    Stopping,
}

impl ProviderError {
    pub fn unavailable(message: impl Into<String>) -> Self {
        ProviderError::Unavailable {
            message: message.into(),
            retry_after: None,
        }
    }

    /// The error a caller gets, as the contract maps it: a backend's
    /// `timeout` is 503 `unavailable`, `backend_error` and
    /// `malformed_response` are 502 `bad_gateway`.
    pub fn detail(&self) -> ErrorDetail {
        let plain = |kind, m: &str| ErrorDetail::new(kind, m);
        match self {
            ProviderError::BadRequest(m) => plain(ErrorType::BadRequest, m),
            ProviderError::NotFound(m) => plain(ErrorType::NotFound, m),
            ProviderError::Forbidden(m) => plain(ErrorType::Forbidden, m),
            ProviderError::Conflict(m) => plain(ErrorType::Conflict, m),
            ProviderError::RateLimited { message, .. } => plain(ErrorType::RateLimited, message),
            ProviderError::Unavailable { message, .. } => plain(ErrorType::Unavailable, message),
            ProviderError::Refused(e) => {
                let kind = match e.kind {
                    ErrorType::Timeout => ErrorType::Unavailable,
                    ErrorType::BackendError | ErrorType::MalformedResponse => ErrorType::BadGateway,
                    other => other,
                };
                ErrorDetail { kind, ..e.clone() }
            }
            ProviderError::Ledger(e) => plain(ErrorType::Unavailable, &e.to_string()),
            ProviderError::Stopping => plain(ErrorType::Unavailable, &self.to_string()),
        }
    }

    /// Seconds for a `Retry-After` header.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ProviderError::RateLimited { retry_after, .. } => Some(*retry_after),
            ProviderError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl From<ErrorDetail> for ProviderError {
    fn from(e: ErrorDetail) -> Self {
        ProviderError::Refused(e)
    }
}

impl From<actix::MailboxError> for ProviderError {
    fn from(_: actix::MailboxError) -> Self {
        ProviderError::Stopping
    }
}
