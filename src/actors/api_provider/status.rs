//! `status` (the runner, then the caller's live runs) and the operator's
//! runner requests.

use super::backend::ask;
use super::messages::{
    EntryDetails, RunnerDelete, RunnerStart, RunnerStatus, Status, StatusEntry, StatusView,
};
use super::{ApiProvider, ProviderError};
use crate::contract::replies::{
    RunnerDeleted, RunnerDetails, RunnerStarted, RunnerStatusReply, StatusDetails, StatusRequest,
};
use crate::contract::wire::{RunnerDeleteRequest, RunnerStartRequest, RunnerStatusRequest};
use actix::prelude::*;
use std::time::{Duration, Instant};

impl Handler<Status> for ApiProvider {
    type Result = ResponseActFuture<Self, Result<StatusView, ProviderError>>;

    /// From what was answered within `STATUS_FRESH` where it can, else
    /// from the backend (the runner and the caller's runs at once).
    fn handle(&mut self, msg: Status, _: &mut Self::Context) -> Self::Result {
        let backend = self.backend.clone();
        let timeout = self.config.default_timeout;
        let (runner, runs) = (
            self.status_cache.runner(),
            self.status_cache.runs(&msg.owner),
        );
        let (asked_at, epoch) = (Instant::now(), self.status_cache.epoch(&msg.owner));
        let owner = msg.owner.clone();
        let ask_runner = {
            let backend = backend.clone();
            async move {
                match runner {
                    Some(entry) => (entry, false),
                    None => (runner_entry(&backend, timeout).await, true),
                }
            }
        };
        let ask_runs = async move {
            match runs {
                Some(entries) => Ok((entries, false)),
                None => {
                    let request = StatusRequest {
                        owner_account_id: owner.clone(),
                    };
                    let listed = ask(&backend.status, request, &owner, timeout)
                        .await?
                        .into_result()?;
                    Ok::<_, ProviderError>((run_entries(listed.items, &owner), true))
                }
            }
        };
        Box::pin(
            async move { futures::join!(ask_runner, ask_runs) }
                .into_actor(self)
                .map(move |((runner, runner_new), runs), act, _| {
                    if runner_new {
                        act.status_cache.keep_runner(asked_at, runner.clone());
                    }
                    let (runs, runs_new) = runs?;
                    if runs_new {
                        act.status_cache
                            .keep_runs(&msg.owner, epoch, asked_at, runs.clone());
                    }
                    let mut items = vec![runner];
                    items.extend(runs);
                    Ok(StatusView { items })
                }),
        )
    }
}

/// The runner's entry, or why there is none (`unavailable`).
async fn runner_entry(backend: &super::backend::Backend, timeout: Duration) -> StatusEntry {
    match ask(&backend.runner_status, Default::default(), "", timeout)
        .await
        .and_then(|r| r.into_result())
    {
        Ok(reply) => {
            let s = reply.status;
            let mut details = s.details.unwrap_or_default();
            details.provider = Some(s.provider.unwrap_or_else(|| backend.name.into()));
            StatusEntry {
                id: "runner".into(),
                state: s.state.as_str().into(),
                owner_account_id: None,
                details: EntryDetails::Runner(details),
            }
        }
        Err(e) => StatusEntry {
            id: "runner".into(),
            state: "unavailable".into(),
            owner_account_id: None,
            details: EntryDetails::Runner(RunnerDetails {
                provider: Some(backend.name.into()),
                error: Some(e.message),
                ..Default::default()
            }),
        },
    }
}

/// The caller's live runs as its status lists them.
fn run_entries(items: Vec<crate::contract::replies::StatusItem>, owner: &str) -> Vec<StatusEntry> {
    items
        .into_iter()
        .map(|item| {
            let details = item.details.unwrap_or_default();
            StatusEntry {
                id: item.id,
                state: item.state.as_str().into(),
                owner_account_id: Some(owner.to_owned()),
                details: EntryDetails::Run(StatusDetails {
                    worker_id: details.worker_id,
                    started_at: details.started_at,
                    container_id: None,
                }),
            }
        })
        .collect()
}

impl Handler<RunnerStatus> for ApiProvider {
    type Result = ResponseFuture<Result<RunnerStatusReply, ProviderError>>;

    fn handle(&mut self, _: RunnerStatus, _: &mut Self::Context) -> Self::Result {
        let (seat, timeout) = (
            self.backend.runner_status.clone(),
            self.config.default_timeout,
        );
        Box::pin(async move {
            let request = RunnerStatusRequest::default();
            Ok(ask(&seat, request, "", timeout).await?.into_result()?)
        })
    }
}

impl Handler<RunnerStart> for ApiProvider {
    type Result = ResponseActFuture<Self, Result<RunnerStarted, ProviderError>>;

    /// The runner's state changes: `status` asks again once it is done.
    fn handle(&mut self, _: RunnerStart, _: &mut Self::Context) -> Self::Result {
        let (seat, timeout) = (
            self.backend.runner_start.clone(),
            self.config.default_timeout,
        );
        self.status_cache.forget_runner();
        Box::pin(
            async move {
                let request = RunnerStartRequest::default();
                Ok(ask(&seat, request, "", timeout).await?.into_result()?)
            }
            .into_actor(self)
            .map(|answer, act, _| {
                act.status_cache.forget_runner();
                answer
            }),
        )
    }
}

impl Handler<RunnerDelete> for ApiProvider {
    type Result = ResponseActFuture<Self, Result<RunnerDeleted, ProviderError>>;

    /// The runner's state changes: `status` asks again once it is done.
    fn handle(&mut self, _: RunnerDelete, _: &mut Self::Context) -> Self::Result {
        let (seat, timeout) = (
            self.backend.runner_delete.clone(),
            self.config.default_timeout,
        );
        self.status_cache.forget_runner();
        Box::pin(
            async move {
                let request = RunnerDeleteRequest::default();
                Ok(ask(&seat, request, "", timeout).await?.into_result()?)
            }
            .into_actor(self)
            .map(|answer, act, _| {
                act.status_cache.forget_runner();
                answer
            }),
        )
    }
}
