//! A run's output as this instance sees it (from `run.output`, kept up
//! to the cap per stream so a late follower gets all of it), its start
//! (`run.started`: the worker and the ledger learn where it runs), and
//! the logs endpoint.

use super::messages::{FollowLogs, LogChunk, LogFeed, LogItem};
use super::{ApiProvider, ProviderError};
use crate::actors::bus::Incoming;
use crate::contract::{OutputStream, Reply, RunOutput, RunResult, RunStarted, RunState};
use actix::prelude::*;
use std::time::Duration;
use tokio::sync::mpsc;

/// Room in a follower's channel: everything a run may still print plus
/// its exit.
const FOLLOWER_ROOM: usize = 4096;

impl Handler<Incoming<RunStarted>> for ApiProvider {
    type Result = ();

    fn handle(&mut self, msg: Incoming<RunStarted>, ctx: &mut Self::Context) {
        let e = msg.body;
        self.taken(
            msg.meta.service,
            &e.run_id,
            &e.owner_account_id,
            &e.worker_id,
            ctx,
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
        let chunk = LogChunk::new(
            e.seq,
            e.stream,
            e.data,
            e.encoding.as_deref() == Some("base64"),
        );
        if !run.takes_output(e.stream, chunk.output_len(), cap) {
            return;
        }
        run.push_chunk(chunk);
    }
}

/// Whether a result's output is base64.
pub fn base64(r: &RunResult) -> bool {
    r.output_encoding.is_some_and(|e| e.is_base64())
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
    .map(|(seq, (stream, text))| LogChunk::new(seq as u64, stream, text.clone(), base64(r)))
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
                run.follow(tx);
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
