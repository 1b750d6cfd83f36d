//! The run table: each run in flight on this instance — the worker it
//! runs on (from `run.started`), its output so far (from `run.output`,
//! kept up to the cap per stream so a late follower gets all of it), who
//! waits for its end and who follows its log — and the logs endpoint.

use super::messages::{FollowLogs, LogChunk, LogFeed, LogItem};
use super::{ApiProvider, ProviderError};
use crate::actors::bus::Incoming;
use crate::contract::{OutputStream, Reply, RunOutput, RunResult, RunStarted, RunState};
use actix::prelude::*;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Room in a follower's channel: everything a run may still print plus
/// its exit.
const FOLLOWER_ROOM: usize = 4096;

/// One run in flight here.
pub(super) struct LiveRun {
    pub owner: String,
    pub worker_id: Option<String>,
    chunks: Vec<LogChunk>,
    bytes: [usize; 2],
    followers: Vec<mpsc::Sender<LogItem>>,
    waiters: Vec<oneshot::Sender<Reply<RunResult>>>,
}

impl ApiProvider {
    /// Registers a run unless its account is at the concurrent-run limit
    /// (`Err` with how many it has).
    pub(super) fn begin(&mut self, run_id: &str, owner: &str) -> Result<(), usize> {
        let limit = self.config.max_concurrent_runs;
        let n = self.runs.values().filter(|r| r.owner == owner).count();
        if limit > 0 && n >= limit {
            return Err(n);
        }
        self.runs.insert(
            run_id.to_owned(),
            LiveRun {
                owner: owner.to_owned(),
                worker_id: None,
                chunks: Vec::new(),
                bytes: [0, 0],
                followers: Vec::new(),
                waiters: Vec::new(),
            },
        );
        Ok(())
    }

    /// The run ended (or was deleted): waiters and followers get `result`.
    pub(super) fn end(&mut self, run_id: &str, result: &Reply<RunResult>) {
        if let Some(run) = self.runs.remove(run_id) {
            for w in run.waiters {
                let _ = w.send(result.clone());
            }
            for f in run.followers {
                let _ = f.try_send(LogItem::Exit(result.clone()));
            }
        }
    }

    /// Waits for a live run's end: `None` when the run is not live here.
    pub(super) fn await_end(
        &mut self,
        run_id: &str,
    ) -> Option<oneshot::Receiver<Reply<RunResult>>> {
        let run = self.runs.get_mut(run_id)?;
        let (tx, rx) = oneshot::channel();
        run.waiters.push(tx);
        Some(rx)
    }

    /// The worker of a live run, as `run.started` told this instance.
    pub(super) fn live_worker(&self, run_id: &str) -> Option<Option<String>> {
        self.runs.get(run_id).map(|r| r.worker_id.clone())
    }

    /// Whether a run event is about a live run of the owner it names
    /// (run events come from the router or a worker: services only).
    fn live_run(&mut self, meta_service: bool, run_id: &str, owner: &str) -> Option<&mut LiveRun> {
        if !meta_service {
            return None;
        }
        self.runs.get_mut(run_id).filter(|r| r.owner == owner)
    }
}

impl Handler<Incoming<RunStarted>> for ApiProvider {
    type Result = ();

    fn handle(&mut self, msg: Incoming<RunStarted>, ctx: &mut Self::Context) {
        let e = msg.body;
        if e.worker_id.is_empty() {
            return;
        }
        let Some(run) = self.live_run(msg.meta.service, &e.run_id, &e.owner_account_id) else {
            return;
        };
        run.worker_id = Some(e.worker_id.clone());
        let store = self.store.clone();
        ctx.spawn(
            async move {
                if let Err(e) = store.set_worker(&e.run_id, &e.worker_id).await {
                    tracing::warn!(error = %e, "could not record the run's worker");
                }
            }
            .into_actor(self),
        );
    }
}

impl Handler<Incoming<RunOutput>> for ApiProvider {
    type Result = ();

    fn handle(&mut self, msg: Incoming<RunOutput>, _: &mut Self::Context) {
        let cap = self.config.output_cap;
        let e = msg.body;
        let Some(run) = self.live_run(msg.meta.service, &e.run_id, &e.owner_account_id) else {
            return;
        };
        let i = e.stream.index();
        if run.bytes[i] >= cap {
            return;
        }
        run.bytes[i] += e.data.len();
        let chunk = LogChunk {
            seq: e.seq,
            stream: e.stream,
            data: e.data,
        };
        run.followers
            .retain(|f| f.try_send(LogItem::Chunk(chunk.clone())).is_ok());
        run.chunks.push(chunk);
    }
}

/// The log lines of a finished run, from its result.
pub fn chunks_of_result(result: &Reply<RunResult>) -> Vec<LogChunk> {
    let Reply::Ok(r) = result else {
        return Vec::new();
    };
    [
        (OutputStream::Stdout, &r.stdout),
        (OutputStream::Stderr, &r.stderr),
    ]
    .into_iter()
    .filter(|(_, text)| !text.is_empty())
    .enumerate()
    .map(|(seq, (stream, text))| LogChunk {
        seq: seq as u64,
        stream,
        data: text.clone(),
    })
    .collect()
}

/// A finished run's whole log, as a feed.
fn finished_feed(result: Reply<RunResult>) -> LogFeed {
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(LogItem::Exit(result.clone()));
    LogFeed {
        so_far: chunks_of_result(&result),
        rest: Some(rx),
    }
}

impl Handler<FollowLogs> for ApiProvider {
    type Result = ResponseActFuture<Self, Result<LogFeed, ProviderError>>;

    fn handle(&mut self, msg: FollowLogs, _: &mut Self::Context) -> Self::Result {
        let owned = self.owned(&msg.run_id, &msg.owner);
        Box::pin(owned.into_actor(self).map(move |record, act, ctx| {
            let record = record?;
            if let Some(run) = act.runs.get_mut(&msg.run_id) {
                let so_far = run.chunks.clone();
                if !msg.follow {
                    return Ok(LogFeed { so_far, rest: None });
                }
                let (tx, rx) = mpsc::channel(FOLLOWER_ROOM);
                run.followers.retain(|f| !f.is_closed());
                run.followers.push(tx);
                return Ok(LogFeed {
                    so_far,
                    rest: Some(rx),
                });
            }
            match (record.state, record.result) {
                (RunState::Running, _) if !msg.follow => Ok(LogFeed {
                    so_far: Vec::new(),
                    rest: None,
                }),
                (RunState::Running, _) => {
                    // Running on another instance: watch the ledger for its end.
                    let (tx, rx) = mpsc::channel(1);
                    let store = act.store.clone();
                    let run_id = msg.run_id.clone();
                    ctx.spawn(
                        async move {
                            loop {
                                actix_rt::time::sleep(Duration::from_millis(500)).await;
                                if tx.is_closed() {
                                    return;
                                }
                                match store.get(&run_id).await {
                                    Ok(Some(r)) if r.state != RunState::Running => {
                                        let result = super::runs::stored_result(r.result);
                                        for chunk in chunks_of_result(&result) {
                                            let _ = tx.send(LogItem::Chunk(chunk)).await;
                                        }
                                        let _ = tx.send(LogItem::Exit(result)).await;
                                        return;
                                    }
                                    Ok(None) => {
                                        let _ = tx
                                            .send(LogItem::Exit(Reply::Ok(RunResult {
                                                run_id: run_id.clone(),
                                                state: RunState::Cancelled,
                                                ..Default::default()
                                            })))
                                            .await;
                                        return;
                                    }
                                    _ => {}
                                }
                            }
                        }
                        .into_actor(act),
                    );
                    Ok(LogFeed {
                        so_far: Vec::new(),
                        rest: Some(rx),
                    })
                }
                (_, result) => Ok(finished_feed(super::runs::stored_result(result))),
            }
        }))
    }
}
