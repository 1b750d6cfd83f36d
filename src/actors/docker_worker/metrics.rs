//! The worker's own metrics: live sessions, warm-pool hits and misses,
//! and how long a run takes from admission to a started container.

use crate::metrics::Metrics;
use prometheus::{Histogram, IntCounter, IntGauge};

#[derive(Clone)]
pub struct WorkerMetrics {
    pub live_sessions: IntGauge,
    pub pool_hits: IntCounter,
    pub pool_misses: IntCounter,
    pub start_seconds: Histogram,
}

impl WorkerMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        WorkerMetrics {
            live_sessions: metrics.gauge(
                "bus_worker_live_sessions",
                "Runs this worker is running now",
            ),
            pool_hits: metrics.counter(
                "bus_worker_pool_hits_total",
                "Profile runs that took a warm pooled container",
            ),
            pool_misses: metrics.counter(
                "bus_worker_pool_misses_total",
                "Poolable profile runs that found no warm container and started cold",
            ),
            start_seconds: metrics.histogram(
                "bus_worker_container_start_seconds",
                "From a run's admission to its started container",
                vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            ),
        }
    }
}

impl Default for WorkerMetrics {
    /// Registered nowhere (a worker whose process exports no metrics).
    fn default() -> Self {
        WorkerMetrics::register(&Metrics::new())
    }
}
