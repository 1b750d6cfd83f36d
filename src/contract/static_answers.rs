//! The static provider: deterministic answers for every kind, with no
//! engine (self-tests; `--provider static`, `--backend static`).

use super::replies::{
    DeleteRequest, Deleted, InputAccepted, InputRequest, RunnerDeleted, RunnerDetails,
    RunnerStarted, RunnerState, RunnerStatus, RunnerStatusReply, StatusReply,
};
use super::run::{new_run_id, RuntimeInfo};
use super::{now_rfc3339, ErrorType, Reply, RunRequest, RunResult, RunState};

/// A run succeeds at once and prints `static: ` and its command.
pub fn run(request: &RunRequest, owner: &str, worker_id: &str) -> RunResult {
    let words = request.spec.words();
    let now = now_rfc3339();
    RunResult {
        run_id: request
            .run_id
            .clone()
            .filter(|r| !r.is_empty())
            .unwrap_or_else(new_run_id),
        owner_account_id: owner.to_owned(),
        worker_id: worker_id.to_owned(),
        runner_name: "static".into(),
        image: request
            .spec
            .image
            .clone()
            .or_else(|| request.spec.profile.clone())
            .unwrap_or_else(|| "static".into()),
        stdout: format!("static: {}", words.join(" ")),
        args: words,
        exit_code: Some(0),
        state: RunState::Succeeded,
        started_at: Some(now.clone()),
        finished_at: Some(now),
        runtime: RuntimeInfo {
            provider: "static".into(),
            engine_version: None,
        },
        ..RunResult::default()
    }
}

/// Input is accepted (and dropped).
pub fn input(request: &InputRequest) -> InputAccepted {
    InputAccepted {
        accepted: true,
        run_id: request.run_id.clone(),
        bytes: request.bytes().map(|b| b.len()).unwrap_or(0),
    }
}

/// There are no live runs to delete.
pub fn delete(request: &DeleteRequest) -> Reply<Deleted> {
    Reply::error(ErrorType::NotFound, format!("no run {}", request.run_id))
}

/// No live runs.
pub fn status() -> StatusReply {
    StatusReply { items: Vec::new() }
}

/// Always ready.
pub fn runner_status() -> RunnerStatusReply {
    RunnerStatusReply {
        status: RunnerStatus {
            state: RunnerState::Ready,
            provider: Some("static".into()),
            details: Some(RunnerDetails::default()),
            error: None,
        },
    }
}

pub fn runner_start() -> RunnerStarted {
    RunnerStarted::default()
}

pub fn runner_delete() -> RunnerDeleted {
    RunnerDeleted {
        deleted: true,
        removed: None,
    }
}
