//! `/readyz`, `/healthz` and `/metrics`, served by every long-running
//! process (on its API port, or on `--addr` for router and workers).

use super::ApiError;
use crate::metrics::Metrics;
use actix_web::{web, HttpResponse};
use std::sync::Arc;

/// Says whether the process can do its work right now.
pub type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What the probes look at.
#[derive(Clone)]
pub struct Probes {
    pub ready: ReadyCheck,
    pub metrics: Metrics,
}

async fn readyz(probes: web::Data<Probes>) -> Result<HttpResponse, ApiError> {
    (probes.ready)().map_err(ApiError::unavailable)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"ok": true})))
}

/// The same bytes every time: nothing is built per probe.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(actix_web::http::header::ContentType::json())
        .body(actix_web::web::Bytes::from_static(br#"{"ok":true}"#))
}

async fn metrics(probes: web::Data<Probes>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(probes.metrics.render())
}

/// Mounts the three probes.
pub fn configure(cfg: &mut web::ServiceConfig, probes: Probes) {
    use super::error::not_allowed;
    cfg.app_data(web::Data::new(probes))
        .service(
            web::resource("/readyz")
                .route(web::get().to(readyz))
                .default_service(not_allowed("GET")),
        )
        .service(
            web::resource("/healthz")
                .route(web::get().to(healthz))
                .default_service(not_allowed("GET")),
        )
        .service(
            web::resource("/metrics")
                .route(web::get().to(metrics))
                .default_service(not_allowed("GET")),
        );
}
