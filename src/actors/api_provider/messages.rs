//! What the HTTP facade asks the API provider, one message per endpoint,
//! and the shapes it answers with (the REST bodies of
//! `spec/containers-api.md`).

use super::error::ProviderError;
use crate::contract::replies::{
    Deleted, InputAccepted, RunnerDeleted, RunnerDetails, RunnerStarted, RunnerStatusReply,
    StatusDetails,
};
use crate::contract::{OutputStream, Reply, RunResult, RunSpec, RunState};
use actix::prelude::*;
use serde::Serialize;
use std::time::Duration;
use tokio::sync::mpsc;

/// `POST /runs`: billing check → record `running` → usage
/// `container_run_requested` → the backend's run → the record's end →
/// usage `container_run_finished|failed`.
#[derive(Message)]
#[rtype(result = "Result<Created, ProviderError>")]
pub struct CreateRun {
    pub owner: String,
    pub spec: RunSpec,
    /// Answer when the run has ended (`false`: at once, `202`).
    pub wait: bool,
}

/// What creating a run answered.
// A run result moves once per run: not worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Created {
    /// The run ended: its result.
    Done(RunResult),
    /// `"wait": false`: accepted, still running.
    Accepted(String),
}

/// `GET /runs/{id}`: one record of the caller's.
#[derive(Message)]
#[rtype(result = "Result<RunView, ProviderError>")]
pub struct GetRun {
    pub run_id: String,
    pub owner: String,
}

/// A run as the ledger has it.
#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    pub run_id: String,
    pub owner_account_id: String,
    pub state: RunState,
    pub worker_id: Option<String>,
    pub profile: Option<String>,
    pub image: Option<String>,
    pub args: Vec<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
    /// Its result (or why it failed) once finished.
    pub result: Option<Reply<RunResult>>,
}

/// `GET /runs`: the caller's runs, newest first.
#[derive(Message)]
#[rtype(result = "Result<RunPage, ProviderError>")]
pub struct ListRuns {
    pub owner: String,
    pub limit: usize,
    pub before: Option<String>,
}

/// One run in a list.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub run_id: String,
    pub state: RunState,
    pub worker_id: Option<String>,
    pub profile: Option<String>,
    pub image: Option<String>,
    /// The command (ours: so a list says what each run was).
    pub args: Vec<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub exit_code: Option<i64>,
}

/// A page of runs.
#[derive(Debug, Clone, Serialize)]
pub struct RunPage {
    pub items: Vec<RunSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `DELETE /runs/{id}`: a running run is cancelled on its worker; the
/// record goes.
#[derive(Message)]
#[rtype(result = "Result<Deleted, ProviderError>")]
pub struct DeleteRun {
    pub run_id: String,
    pub owner: String,
}

/// `GET /runs/{id}/artifacts`: the run's artifact archive (tar), its
/// owner's only.
#[derive(Message)]
#[rtype(result = "Result<Vec<u8>, ProviderError>")]
pub struct GetArtifacts {
    pub run_id: String,
    pub owner: String,
}

/// `POST /runs/{id}/input`.
#[derive(Message)]
#[rtype(result = "Result<InputAccepted, ProviderError>")]
pub struct SendInput {
    pub run_id: String,
    pub owner: String,
    pub data: Option<Vec<u8>>,
    pub eof: bool,
}

/// `GET /runs/{id}/wait`: the result once the run ends, waiting at most
/// `timeout`.
#[derive(Message)]
#[rtype(result = "Result<Waited, ProviderError>")]
pub struct WaitRun {
    pub run_id: String,
    pub owner: String,
    pub timeout: Duration,
}

/// What a wait found.
// A run result moves once per run: not worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Waited {
    Done(Reply<RunResult>),
    StillRunning,
}

/// `GET /runs/{id}/logs`: what the run printed so far and, when
/// following, the rest as it comes and its end.
#[derive(Message)]
#[rtype(result = "Result<LogFeed, ProviderError>")]
pub struct FollowLogs {
    pub run_id: String,
    pub owner: String,
    pub follow: bool,
}

/// One output chunk as the logs endpoint sends it: `{"seq","stream",
/// "data"}`, or `"data_base64"` for a run whose output is base64.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogChunk {
    pub seq: u64,
    pub stream: OutputStream,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
}

impl LogChunk {
    /// A chunk of `data`, base64 text when `base64`.
    pub fn new(seq: u64, stream: OutputStream, data: String, base64: bool) -> Self {
        let (data, data_base64) = if base64 {
            (None, Some(data))
        } else {
            (Some(data), None)
        };
        LogChunk {
            seq,
            stream,
            data,
            data_base64,
        }
    }

    /// How many bytes of output it carries.
    pub fn output_len(&self) -> usize {
        match (&self.data, &self.data_base64) {
            (Some(d), _) => d.len(),
            (None, Some(b)) => crate::contract::bytes::decoded_exact_len(b),
            (None, None) => 0,
        }
    }
}

/// What a log follower receives.
// A run result moves once per run: not worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum LogItem {
    Chunk(LogChunk),
    /// The run ended: its result (or error).
    Exit(Reply<RunResult>),
}

/// A run's log: the chunks so far, then (when following) the rest.
#[derive(Debug)]
pub struct LogFeed {
    pub so_far: Vec<LogChunk>,
    pub rest: Option<mpsc::Receiver<LogItem>>,
}

/// `GET /status`: the runner, then the caller's live runs.
#[derive(Message)]
#[rtype(result = "Result<StatusView, ProviderError>")]
pub struct Status {
    pub owner: String,
}

/// The details of a status entry: the runner's, or a run's.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum EntryDetails {
    Runner(RunnerDetails),
    Run(StatusDetails),
}

/// One status entry.
#[derive(Debug, Clone, Serialize)]
pub struct StatusEntry {
    pub id: String,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_account_id: Option<String>,
    pub details: EntryDetails,
}

/// The status body.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    pub items: Vec<StatusEntry>,
}

/// `GET /api/internal/containers/runner`.
#[derive(Message)]
#[rtype(result = "Result<RunnerStatusReply, ProviderError>")]
pub struct RunnerStatus;

/// `POST /api/internal/containers/runner`.
#[derive(Message)]
#[rtype(result = "Result<RunnerStarted, ProviderError>")]
pub struct RunnerStart;

/// `DELETE /api/internal/containers/runner`.
#[derive(Message)]
#[rtype(result = "Result<RunnerDeleted, ProviderError>")]
pub struct RunnerDelete;
