//! The request head's limits, answered with the JSON error body: a
//! request target over [`MAX_URI_BYTES`] is `414 uri_too_long`; more than
//! [`MAX_HEADERS`] headers or over [`MAX_HEADER_BYTES`] of them is
//! `431 headers_too_large`. Both sit well below actix-http's own parser
//! limits (96 headers, a 128 KiB head), which answer without a body; a
//! gateway in front (nginx's `large_client_header_buffers`) catches heads
//! that large first.

use super::error::ApiError;
use crate::contract::ErrorType;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::ResponseError;

pub const MAX_URI_BYTES: usize = 8 * 1024;
pub const MAX_HEADERS: usize = 64;
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// What is wrong with a request head, if anything.
pub fn check(req: &ServiceRequest) -> Option<ApiError> {
    let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > MAX_URI_BYTES {
        return Some(ApiError::new(
            ErrorType::UriTooLong,
            format!("the request target is {target} bytes; the limit is {MAX_URI_BYTES}"),
        ));
    }
    let headers = req.headers();
    let count = headers.len();
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if count > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return Some(ApiError::new(
            ErrorType::HeadersTooLarge,
            format!(
                "the request has {count} headers in {bytes} bytes; the limits are {MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes"
            ),
        ));
    }
    None
}

/// The middleware (`App::wrap(from_fn(limits::head))`).
pub async fn head(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if let Some(e) = check(&req) {
        let res = e.error_response();
        return Ok(req.into_response(res));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}
