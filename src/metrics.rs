//! Prometheus metrics of one process, rendered in the text format at
//! `/metrics`. Each subsystem registers its own family set into the
//! process's [`Metrics`] registry; nothing is global.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntGauge, Opts, Registry, TextEncoder,
};

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

    pub fn histogram(&self, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
        let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
            .expect("valid metric name");
        if let Err(e) = self.registry.register(Box::new(h.clone())) {
            tracing::debug!(metric = name, error = %e, "metric not registered");
        }
        h
    }

    /// The text exposition of every registered family, then this
    /// process's resident memory, open file descriptors and CPU time.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        let mut text = String::from_utf8(out).unwrap_or_default();
        text.push_str(&process_metrics());
        text
    }
}

/// `process_*` from `/proc/self` (Linux; nothing elsewhere).
fn process_metrics() -> String {
    let mut out = String::new();
    let page = 4096u64;
    if let Some(rss) = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
    {
        out.push_str(&format!(
            "# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}\n",
            rss * page
        ));
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.push_str(&format!(
            "# HELP process_open_fds Number of open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {}\n",
            fds.count()
        ));
    }
    if let Some(ticks) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s[s.rfind(')')? + 1..].to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime: fields 14 and 15 of stat, 12 and 13 after ')'.
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
    {
        // USER_HZ is 100 on every Linux this runs on.
        out.push_str(&format!(
            "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}\n",
            ticks as f64 / 100.0
        ));
    }
    out
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
