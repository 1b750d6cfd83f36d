//! The events of a run and of a worker: `run.started`, `run.output` and
//! `worker.heartbeat`.

use super::RunnerState;
use serde::{Deserialize, Serialize};

/// `run.started`: the run's container runs, on this worker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunStarted {
    pub run_id: String,
    pub owner_account_id: String,
    pub worker_id: String,
    #[serde(default, deserialize_with = "super::lenient::null_default")]
    pub container_id: String,
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    #[default]
    Stdout,
    Stderr,
}

impl OutputStream {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        }
    }

    /// 0 for stdout, 1 for stderr (per-stream arrays).
    pub fn index(self) -> usize {
        usize::from(self == OutputStream::Stderr)
    }
}

/// `run.output`: one chunk of a run's output; `seq` increases by one per
/// chunk per run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunOutput {
    pub run_id: String,
    pub owner_account_id: String,
    #[serde(default, deserialize_with = "super::lenient::null_default")]
    pub seq: u64,
    #[serde(default, deserialize_with = "super::lenient::null_default")]
    pub stream: OutputStream,
    #[serde(default, deserialize_with = "super::lenient::null_default")]
    pub data: String,
    /// `base64` when `data` carries raw bytes so encoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
}

/// `worker.heartbeat`, every few seconds from every worker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerHeartbeat {
    pub worker_id: String,
    #[serde(default, deserialize_with = "super::lenient::null_default")]
    pub provider: String,
    #[serde(default = "ready")]
    pub state: RunnerState,
    #[serde(default, deserialize_with = "super::lenient::null_default")]
    pub runs: usize,
    #[serde(default, deserialize_with = "super::lenient::null_default")]
    pub capacity: usize,
}

fn ready() -> RunnerState {
    RunnerState::Ready
}

/// `run.accepted` (ours): a worker has taken the run and will answer it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunAccepted {
    pub run_id: String,
    pub owner_account_id: String,
    pub worker_id: String,
    /// The timeout the worker enforces (the request's, else its profile's):
    /// the requester's deadline shrinks to it plus the grace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

/// `run.recorded` (ours): the API provider has recorded the run's result;
/// its worker may forget it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunRecorded {
    pub run_id: String,
    pub owner_account_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
}

/// `run.result.part` (ours): one part of a result too large for one bus
/// message — the base64 of a slice of its JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResultPart {
    pub run_id: String,
    pub owner_account_id: String,
    #[serde(default)]
    pub worker_id: String,
    pub part: u32,
    pub parts: u32,
    pub data_base64: String,
}

/// `router.heartbeat` (ours): a router's view of the live workers, every
/// second on `bus.containers.router.heartbeat`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouterHeartbeat {
    pub router_id: String,
    #[serde(default)]
    pub workers: Vec<WorkerHeartbeat>,
}
