//! A caller's runs: read, list, delete, feed input to, wait for. Every
//! one is looked up in the ledger first: another account's run is 403,
//! an unknown one 404.

use super::backend::ask;
use super::messages::{
    DeleteRun, GetArtifacts, GetRun, ListRuns, RunPage, RunSummary, RunView, SendInput, WaitRun,
    Waited,
};
use super::{ApiProvider, ProviderError};
use crate::contract::replies::{DeleteRequest, Deleted, InputAccepted, InputRequest};
use crate::contract::run::valid_run_id;
use crate::contract::{decode, ErrorType, Reply, RunResult, RunState};
use crate::store::{RunRecord, SharedStore};
use actix::prelude::*;
use futures::future::LocalBoxFuture;
use serde_json::Value;
use std::time::Duration;

/// A stored result, read back (one that cannot be read is an error).
pub(super) fn stored_result(result: Option<Value>) -> Reply<RunResult> {
    match result {
        Some(v) => Reply::decode(&v).unwrap_or_else(|why| {
            Reply::error(
                ErrorType::Internal,
                format!("the stored result cannot be read: {why}"),
            )
        }),
        None => Reply::error(ErrorType::Unavailable, "the run has no stored result"),
    }
}

fn view(r: RunRecord) -> RunView {
    RunView {
        result: r.result.map(|v| stored_result(Some(v))),
        run_id: r.run_id,
        owner_account_id: r.owner_account_id,
        state: r.state,
        worker_id: r.worker_id,
        profile: r.profile,
        image: r.image,
        args: r.args,
        created_at: r.created_at,
        finished_at: r.finished_at,
    }
}

fn summary(r: RunRecord) -> RunSummary {
    let exit_code = r
        .result
        .as_ref()
        .and_then(|v| decode::<RunResult>(v).ok())
        .and_then(|res| res.exit_code);
    RunSummary {
        run_id: r.run_id,
        state: r.state,
        worker_id: r.worker_id,
        profile: r.profile,
        image: r.image,
        args: r.args,
        created_at: r.created_at,
        finished_at: r.finished_at,
        exit_code,
    }
}

/// A record of `owner`'s, or 404/403.
async fn owned_record(
    store: SharedStore,
    run_id: String,
    owner: String,
) -> Result<RunRecord, ProviderError> {
    if !valid_run_id(&run_id) {
        return Err(ProviderError::NotFound(format!("no run {run_id}")));
    }
    let record = store
        .get(&run_id)
        .await?
        .ok_or_else(|| ProviderError::NotFound(format!("no run {run_id}")))?;
    if record.owner_account_id != owner {
        return Err(ProviderError::Forbidden(format!(
            "run {run_id} belongs to another account"
        )));
    }
    Ok(record)
}

impl ApiProvider {
    /// Looks up a record of `owner`'s.
    pub(super) fn owned(
        &self,
        run_id: &str,
        owner: &str,
    ) -> LocalBoxFuture<'static, Result<RunRecord, ProviderError>> {
        Box::pin(owned_record(
            self.store.clone(),
            run_id.to_owned(),
            owner.to_owned(),
        ))
    }

    /// The worker of a run: as `run.started` told this instance, else as
    /// the ledger has it.
    fn worker_of(&self, record: &RunRecord) -> Option<String> {
        match self.live_worker(&record.run_id) {
            Some(w) => w,
            None => record.worker_id.clone(),
        }
    }
}

impl Handler<GetRun> for ApiProvider {
    type Result = ResponseFuture<Result<RunView, ProviderError>>;

    fn handle(&mut self, msg: GetRun, _: &mut Self::Context) -> Self::Result {
        let owned = self.owned(&msg.run_id, &msg.owner);
        Box::pin(async move { owned.await.map(view) })
    }
}

impl Handler<ListRuns> for ApiProvider {
    type Result = ResponseFuture<Result<RunPage, ProviderError>>;

    fn handle(&mut self, msg: ListRuns, _: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move {
            if msg.before.as_deref().is_some_and(|b| !valid_run_id(b)) {
                return Err(ProviderError::BadRequest("before must be a run id".into()));
            }
            let page = store.list(&msg.owner, msg.limit, msg.before).await?;
            Ok(RunPage {
                items: page.items.into_iter().map(summary).collect(),
                next: page.next,
            })
        })
    }
}

impl Handler<DeleteRun> for ApiProvider {
    type Result = ResponseActFuture<Self, Result<Deleted, ProviderError>>;

    fn handle(&mut self, msg: DeleteRun, _: &mut Self::Context) -> Self::Result {
        let owned = self.owned(&msg.run_id, &msg.owner);
        let (seat, store, timeout) = (
            self.backend.delete.clone(),
            self.store.clone(),
            self.config.default_timeout,
        );
        let artifacts = self.artifacts.clone();
        Box::pin(owned.into_actor(self).then(move |record, act, _| {
            let worker = record.as_ref().ok().and_then(|r| act.worker_of(r));
            async move {
                let record = record?;
                if record.state == RunState::Running {
                    let cancel = DeleteRequest {
                        run_id: msg.run_id.clone(),
                        owner_account_id: msg.owner.clone(),
                        worker_id: worker.clone(),
                    };
                    match ask(&seat, cancel, &msg.owner, timeout).await {
                        Ok(Reply::Ok(_)) => {}
                        Ok(Reply::Err(e)) if e.kind == ErrorType::NotFound => {}
                        Ok(Reply::Err(e)) => return Err(e.into()),
                        Err(e) if e.kind == ErrorType::Timeout && worker.is_none() => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                store.delete(&msg.run_id).await?;
                if let Some(artifacts) = artifacts {
                    // One that fails here goes at the next sweep.
                    if let Err(e) = artifacts.remove(&msg.run_id).await {
                        tracing::warn!(run_id = %msg.run_id, error = %e, "a deleted run's artifacts were not removed yet");
                    }
                }
                Ok(Deleted {
                    deleted: true,
                    run_id: msg.run_id,
                    owner_account_id: msg.owner,
                })
            }
            .into_actor(act)
            .map(|deleted, act, _| {
                if let Ok(d) = &deleted {
                    // Its slot is free now, not when the cancel's result
                    // comes back.
                    if let Some(run) = act.runs.get_mut(&d.run_id) {
                        run.deleted = true;
                    }
                    act.status_cache.forget(&d.owner_account_id);
                }
                deleted
            })
        }))
    }
}

impl Handler<GetArtifacts> for ApiProvider {
    type Result = ResponseFuture<Result<Vec<u8>, ProviderError>>;

    fn handle(&mut self, msg: GetArtifacts, _: &mut Self::Context) -> Self::Result {
        let owned = self.owned(&msg.run_id, &msg.owner);
        let artifacts = self.artifacts.clone();
        Box::pin(async move {
            owned.await?;
            let none = || ProviderError::NotFound(format!("run {} kept no artifacts", msg.run_id));
            let store = artifacts.ok_or_else(none)?;
            store.get(&msg.run_id).await?.ok_or_else(none)
        })
    }
}

/// How long input sent before its run was taken waits for a worker.
const EARLY_INPUT_WAIT: Duration = Duration::from_secs(30);

impl Handler<SendInput> for ApiProvider {
    type Result = ResponseActFuture<Self, Result<InputAccepted, ProviderError>>;

    fn handle(&mut self, msg: SendInput, _: &mut Self::Context) -> Self::Result {
        let owned = self.owned(&msg.run_id, &msg.owner);
        let (seat, timeout) = (self.backend.input.clone(), self.config.default_timeout);
        Box::pin(owned.into_actor(self).then(move |record, act, _| {
            let worker = record.as_ref().ok().and_then(|r| act.worker_of(r));
            // Sent before a worker took the run (`run -d -i`): held here
            // until one does, then delivered (the session holds it until
            // its container runs).
            let taken = match (&record, &worker) {
                (Ok(r), None) if r.state == RunState::Running => act.await_taken(&msg.run_id),
                _ => None,
            };
            async move {
                let record = record?;
                if record.state != RunState::Running {
                    return Err(ProviderError::Conflict(format!(
                        "run {} has ended ({})",
                        msg.run_id, record.state
                    )));
                }
                let worker = match (worker, taken) {
                    (Some(w), _) => w,
                    (None, Some(taken)) => {
                        match tokio::time::timeout(EARLY_INPUT_WAIT, taken).await {
                            Ok(Ok(w)) => w,
                            Ok(Err(_)) => {
                                return Err(ProviderError::Conflict(format!(
                                    "run {} ended before it started",
                                    msg.run_id
                                )))
                            }
                            Err(_) => {
                                return Err(ProviderError::Unavailable {
                                    message: format!(
                                        "run {} has not started within {}s",
                                        msg.run_id,
                                        EARLY_INPUT_WAIT.as_secs()
                                    ),
                                    retry_after: Some(1),
                                })
                            }
                        }
                    }
                    (None, None) => {
                        return Err(ProviderError::Unavailable {
                            message: format!("run {} has not started yet", msg.run_id),
                            retry_after: Some(1),
                        })
                    }
                };
                let input = InputRequest {
                    run_id: msg.run_id,
                    owner_account_id: msg.owner.clone(),
                    worker_id: Some(worker),
                    eof: msg.eof,
                    ..Default::default()
                }
                .with_bytes(msg.data);
                Ok(ask(&seat, input, &msg.owner, timeout)
                    .await?
                    .into_result()?)
            }
            .into_actor(act)
        }))
    }
}

impl Handler<WaitRun> for ApiProvider {
    type Result = ResponseActFuture<Self, Result<Waited, ProviderError>>;

    fn handle(&mut self, msg: WaitRun, _: &mut Self::Context) -> Self::Result {
        let owned = self.owned(&msg.run_id, &msg.owner);
        let store = self.store.clone();
        Box::pin(owned.into_actor(self).then(move |record, act, _| {
            let live = record
                .as_ref()
                .ok()
                .filter(|r| r.state == RunState::Running)
                .and_then(|_| act.await_end(&msg.run_id));
            async move {
                let record = record?;
                if record.state != RunState::Running {
                    return Ok(Waited::Done(stored_result(record.result)));
                }
                let deadline = tokio::time::Instant::now() + msg.timeout;
                if let Some(rx) = live {
                    return Ok(match tokio::time::timeout_at(deadline, rx).await {
                        Ok(Ok(result)) => Waited::Done(result),
                        _ => Waited::StillRunning,
                    });
                }
                // Running elsewhere (another instance): watch the ledger.
                while tokio::time::Instant::now() < deadline {
                    actix_rt::time::sleep(Duration::from_millis(250)).await;
                    match store.get(&msg.run_id).await {
                        Ok(Some(r)) if r.state != RunState::Running => {
                            return Ok(Waited::Done(stored_result(r.result)))
                        }
                        Ok(None) => {
                            return Err(ProviderError::NotFound(format!("no run {}", msg.run_id)))
                        }
                        _ => {}
                    }
                }
                Ok(Waited::StillRunning)
            }
            .into_actor(act)
        }))
    }
}
