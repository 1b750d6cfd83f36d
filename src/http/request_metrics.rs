//! Request counts and latencies of an HTTP app, by route pattern (never by
//! raw path, so run ids do not explode the label set).

use crate::metrics::Metrics;
use actix_web::dev::ServiceRequest;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use std::collections::HashMap;
use std::rc::Rc;
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

/// One server worker's view of the families: each route's label handles
/// resolved once, and the route of each fixed path (one whose pattern is
/// the path itself, like `/healthz`) remembered, so a request costs no
/// label hashing, no allocation and no route scan after the first.
pub struct LocalMetrics {
    shared: RequestMetrics,
    routes: std::cell::RefCell<HashMap<String, Rc<str>>>,
    counters: std::cell::RefCell<HashMap<CounterKey, prometheus::IntCounter>>,
    latencies: std::cell::RefCell<HashMap<Rc<str>, prometheus::Histogram>>,
}

/// A request counter's labels: method, route, status.
type CounterKey = (actix_web::http::Method, Rc<str>, u16);

/// At most this many fixed paths are remembered per worker.
const MAX_FIXED_ROUTES: usize = 256;

impl LocalMetrics {
    pub fn new(shared: RequestMetrics) -> Self {
        LocalMetrics {
            shared,
            routes: Default::default(),
            counters: Default::default(),
            latencies: Default::default(),
        }
    }

    /// The route label of a request.
    pub fn route(&self, req: &ServiceRequest) -> Rc<str> {
        if let Some(route) = self.routes.borrow().get(req.path()) {
            return route.clone();
        }
        let route: Rc<str> = route_of(req).into();
        let mut routes = self.routes.borrow_mut();
        if *route == *req.path() && routes.len() < MAX_FIXED_ROUTES {
            routes.insert(req.path().to_owned(), route.clone());
        }
        route
    }

    pub fn observe(
        &self,
        method: &actix_web::http::Method,
        route: &Rc<str>,
        status: u16,
        started: Instant,
    ) {
        let key = (method.clone(), route.clone(), status);
        let counter = self.counters.borrow().get(&key).cloned();
        let counter = counter.unwrap_or_else(|| {
            let c = self.shared.requests.with_label_values(&[
                method.as_str(),
                route,
                &status.to_string(),
            ]);
            self.counters.borrow_mut().insert(key, c.clone());
            c
        });
        counter.inc();
        let latency = self.latencies.borrow().get(route).cloned();
        let latency = latency.unwrap_or_else(|| {
            let h = self.shared.latency.with_label_values(&[route]);
            self.latencies.borrow_mut().insert(route.clone(), h.clone());
            h
        });
        latency.observe(started.elapsed().as_secs_f64());
    }
}
