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

impl Handler<Status> for ApiProvider {
    type Result = ResponseFuture<Result<StatusView, ProviderError>>;

    fn handle(&mut self, msg: Status, _: &mut Self::Context) -> Self::Result {
        let backend = self.backend.clone();
        let timeout = self.config.default_timeout;
        Box::pin(async move {
            let runner = match ask(&backend.runner_status, Default::default(), "", timeout)
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
            };
            let mut items = vec![runner];
            let request = StatusRequest {
                owner_account_id: msg.owner.clone(),
            };
            let listed = ask(&backend.status, request, &msg.owner, timeout)
                .await?
                .into_result()?;
            for item in listed.items {
                let details = item.details.unwrap_or_default();
                items.push(StatusEntry {
                    id: item.id,
                    state: item.state.as_str().into(),
                    owner_account_id: Some(msg.owner.clone()),
                    details: EntryDetails::Run(StatusDetails {
                        worker_id: details.worker_id,
                        started_at: details.started_at,
                        container_id: None,
                    }),
                });
            }
            Ok(StatusView { items })
        })
    }
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
    type Result = ResponseFuture<Result<RunnerStarted, ProviderError>>;

    fn handle(&mut self, _: RunnerStart, _: &mut Self::Context) -> Self::Result {
        let (seat, timeout) = (
            self.backend.runner_start.clone(),
            self.config.default_timeout,
        );
        Box::pin(async move {
            let request = RunnerStartRequest::default();
            Ok(ask(&seat, request, "", timeout).await?.into_result()?)
        })
    }
}

impl Handler<RunnerDelete> for ApiProvider {
    type Result = ResponseFuture<Result<RunnerDeleted, ProviderError>>;

    fn handle(&mut self, _: RunnerDelete, _: &mut Self::Context) -> Self::Result {
        let (seat, timeout) = (
            self.backend.runner_delete.clone(),
            self.config.default_timeout,
        );
        Box::pin(async move {
            let request = RunnerDeleteRequest::default();
            Ok(ask(&seat, request, "", timeout).await?.into_result()?)
        })
    }
}
