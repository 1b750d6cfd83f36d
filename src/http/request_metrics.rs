//! Request counts and latencies of an HTTP app, by route pattern (never by
//! raw path, so run ids do not explode the label set).

use crate::metrics::Metrics;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use std::time::Instant;

/// The families, registered once per process.
#[derive(Clone)]
pub struct RequestMetrics {
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
}

impl RequestMetrics {
    pub fn register(metrics: &Metrics, prefix: &str) -> Self {
        let requests = IntCounterVec::new(
            Opts::new(
                format!("{prefix}_http_requests_total"),
                "HTTP requests by method, route and status.",
            ),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                format!("{prefix}_http_request_seconds"),
                "HTTP request latency by route.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 120.0,
            ]),
            &["route"],
        )
        .expect("valid metric");
        let _ = metrics.registry().register(Box::new(requests.clone()));
        let _ = metrics.registry().register(Box::new(latency.clone()));
        RequestMetrics { requests, latency }
    }

    pub fn observe(&self, method: &str, route: &str, status: u16, started: Instant) {
        self.requests
            .with_label_values(&[method, route, &status.to_string()])
            .inc();
        self.latency
            .with_label_values(&[route])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// The route label of a request: its matched pattern, or `unmatched`.
pub fn route_of(req: &ServiceRequest) -> String {
    req.match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned())
}

/// Observes a finished request.
pub fn finish<B>(
    m: &RequestMetrics,
    method: &str,
    route: &str,
    started: Instant,
    res: &ServiceResponse<B>,
) {
    m.observe(method, route, res.status().as_u16(), started);
}
