//! The container-events request kinds (`spec/container-events.md`), their
//! names and how each reaches workers; the groups and timings of the
//! contract.

/// The public prefix the router serves.
pub const PUBLIC_PREFIX: &str = "bus.containers";
/// The unicast group routers share on public requests.
pub const ROUTER_GROUP: &str = "router";
/// The unicast group workers share on run requests.
pub const WORKER_GROUP: &str = "workers";
/// Default deadline of requests other than runs.
pub const DEFAULT_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Added to a run's `timeout_seconds` for its reply deadline.
pub const RUN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);
/// A worker without a heartbeat for this long is gone.
pub const WORKER_TTL: std::time::Duration = std::time::Duration::from_secs(15);
/// A run request without a worker's `run.accepted` this long after it
/// was sent is answered `unavailable` (its `accept_by` is [`ACCEPT_WITHIN`]
/// after sending; the margin covers clocks that differ a little).
pub const ACCEPT_WITHIN: std::time::Duration = std::time::Duration::from_secs(4);
pub const ACCEPT_MARGIN: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a query of a run's worker may take.
pub const QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// Routers publish their view of the live workers this often.
pub const ROUTER_HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Workers publish a heartbeat this often.
pub const HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A run's reply deadline: its `timeout_seconds` plus [`RUN_GRACE`],
/// capped by `cap` (`--request-timeout`); `cap` itself without a timeout.
/// The one copy of this rule: the API provider, the router and a
/// worker's queue check all use it.
pub fn run_deadline(timeout_seconds: Option<i64>, cap: std::time::Duration) -> std::time::Duration {
    match timeout_seconds {
        Some(t) if t > 0 => (std::time::Duration::from_secs(t as u64) + RUN_GRACE).min(cap),
        _ => cap,
    }
}

/// A request kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Run,
    /// Ours: what became of a run (asked of the worker holding it).
    RunQuery,
    Input,
    Delete,
    Status,
    RunnerStatus,
    RunnerStart,
    RunnerDelete,
}

/// How a kind reaches the workers of a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    /// Unicast: one worker runs it.
    One,
    /// Broadcast; only the worker holding the run answers.
    Targeted,
    /// Broadcast; every live worker answers and replies are merged.
    Gathered,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Run,
        Kind::RunQuery,
        Kind::Input,
        Kind::Delete,
        Kind::Status,
        Kind::RunnerStatus,
        Kind::RunnerStart,
        Kind::RunnerDelete,
    ];

    /// The name segment between prefix and `.request`.
    pub fn segment(self) -> &'static str {
        match self {
            Kind::Run => "run",
            Kind::RunQuery => "run.query",
            Kind::Input => "input",
            Kind::Delete => "delete",
            Kind::Status => "status",
            Kind::RunnerStatus => "runner.status",
            Kind::RunnerStart => "runner.start",
            Kind::RunnerDelete => "runner.delete",
        }
    }

    pub fn request(self, prefix: &str) -> String {
        format!("{prefix}.{}.request", self.segment())
    }

    pub fn response(self, prefix: &str) -> String {
        format!("{prefix}.{}.response", self.segment())
    }

    /// The kind of a request name under `prefix`.
    pub fn of_request(prefix: &str, name: &str) -> Option<Kind> {
        let seg = name
            .strip_prefix(prefix)?
            .strip_prefix('.')?
            .strip_suffix(".request")?;
        Kind::ALL.into_iter().find(|k| k.segment() == seg)
    }

    pub fn addressing(self) -> Addressing {
        match self {
            Kind::Run => Addressing::One,
            Kind::Input | Kind::Delete | Kind::RunQuery => Addressing::Targeted,
            Kind::Status | Kind::RunnerStatus | Kind::RunnerStart | Kind::RunnerDelete => {
                Addressing::Gathered
            }
        }
    }

    /// Runner requests are operator requests, not an account's.
    pub fn is_runner(self) -> bool {
        matches!(
            self,
            Kind::RunnerStatus | Kind::RunnerStart | Kind::RunnerDelete
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in Kind::ALL {
            assert_eq!(
                Kind::of_request("bus.docker", &k.request("bus.docker")),
                Some(k)
            );
        }
        assert_eq!(
            Kind::RunnerStatus.request("bus.containers"),
            "bus.containers.runner.status.request"
        );
        assert_eq!(
            Kind::of_request("bus.docker", "bus.docker.runner.request"),
            None
        );
        assert_eq!(
            Kind::of_request("bus.docker", "bus.dockerx.run.request"),
            None
        );
    }
}
