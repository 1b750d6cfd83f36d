//! Prometheus metrics of one process, rendered in the text format at
//! `/metrics`. Each subsystem registers its own family set into the
//! process's [`Metrics`] registry; nothing is global.

use prometheus::{Encoder, IntCounter, IntGauge, Opts, Registry, TextEncoder};

/// The registry of one process.
#[derive(Clone, Default)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    pub fn new() -> Self {
        Metrics::default()
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Creates and registers a counter. Names are unique per process: a
    /// second registration of a name is left unexported (logged at debug).
    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        let c = IntCounter::with_opts(Opts::new(name, help)).expect("valid metric name");
        if let Err(e) = self.registry.register(Box::new(c.clone())) {
            tracing::debug!(metric = name, error = %e, "metric not registered");
        }
        c
    }

    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        let g = IntGauge::with_opts(Opts::new(name, help)).expect("valid metric name");
        if let Err(e) = self.registry.register(Box::new(g.clone())) {
            tracing::debug!(metric = name, error = %e, "metric not registered");
        }
        g
    }

    /// The text exposition of every registered family.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Counters of the event bus (the memory hub and the Events API server).
#[derive(Clone)]
pub struct BusMetrics {
    pub published: IntCounter,
    pub delivered: IntCounter,
    pub dropped_no_consumer: IntCounter,
    pub consumers_cut_off: IntCounter,
    pub open_streams: IntGauge,
}

impl BusMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        BusMetrics {
            published: metrics.counter("bus_events_published_total", "Events accepted by the bus."),
            delivered: metrics.counter(
                "bus_events_delivered_total",
                "Event copies handed to subscribers.",
            ),
            dropped_no_consumer: metrics.counter(
                "bus_events_dropped_total",
                "Unicast events dropped because no consumer of a group was connected.",
            ),
            consumers_cut_off: metrics.counter(
                "bus_events_slow_consumers_cut_off_total",
                "Subscribers disconnected because their queue was full.",
            ),
            open_streams: metrics.gauge("bus_events_open_streams", "Subscriptions currently open."),
        }
    }
}
