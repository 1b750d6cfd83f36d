//! The run table: each run in flight on this instance, what is known of
//! its fate (accepted by which worker, queried, parts of its result), its
//! output so far, and who waits for its end or follows its log. The
//! account's count of runs in it is the concurrent-run limit.

use super::messages::{LogChunk, LogItem};
use super::ApiProvider;
use crate::contract::{OutputStream, Reply, RunResult};
use std::collections::BTreeMap;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Inputs held for a run no worker has taken yet; more are `503`.
pub(super) const MAX_EARLY_INPUTS: usize = 64;

/// One run in flight here.
pub(super) struct LiveRun {
    pub owner: String,
    /// The correlation id its request went out under.
    pub correlation_id: String,
    /// The worker that took it (`run.accepted`, `run.started`).
    pub worker_id: Option<String>,
    pub accepted_at: Option<Instant>,
    /// Unaccepted past this, it is refused (`None`: a durable queue, or
    /// a run adopted after a restart).
    pub accept_by: Option<Instant>,
    /// Its reply deadline.
    pub deadline: Instant,
    /// A query of its worker is out.
    pub querying: bool,
    /// Adopted at start-up: to be asked of its worker from this time.
    pub verify_at: Option<Instant>,
    /// Its end is being recorded: nothing else changes it.
    pub finishing: bool,
    /// Its record was deleted (its cancel is on the way): it no longer
    /// counts against its account's concurrent runs.
    pub deleted: bool,
    /// A result that came in parts: the parts so far, and its response.
    pub parts: BTreeMap<u32, Vec<u8>>,
    pub parts_bytes: usize,
    pub summary: Option<(u32, Option<String>)>,
    pub chunks: Vec<LogChunk>,
    bytes: [usize; 2],
    followers: Vec<mpsc::Sender<LogItem>>,
    waiters: Vec<oneshot::Sender<Reply<RunResult>>>,
    /// Input sent before a worker took it: told the worker once one does.
    taken_waiters: Vec<oneshot::Sender<String>>,
}

impl LiveRun {
    pub fn new(owner: &str, correlation_id: String, deadline: Instant) -> Self {
        LiveRun {
            owner: owner.to_owned(),
            correlation_id,
            worker_id: None,
            accepted_at: None,
            accept_by: None,
            deadline,
            querying: false,
            verify_at: None,
            finishing: false,
            deleted: false,
            parts: BTreeMap::new(),
            parts_bytes: 0,
            summary: None,
            chunks: Vec::new(),
            bytes: [0, 0],
            followers: Vec::new(),
            waiters: Vec::new(),
            taken_waiters: Vec::new(),
        }
    }

    /// A worker has it.
    pub fn accepted(&mut self, worker_id: &str) {
        if self.accepted_at.is_none() {
            self.accepted_at = Some(Instant::now());
        }
        self.worker_id = Some(worker_id.to_owned());
        for w in self.taken_waiters.drain(..) {
            let _ = w.send(worker_id.to_owned());
        }
    }

    /// Whether `len` more bytes of `stream` are kept (under the cap).
    pub fn takes_output(&mut self, stream: OutputStream, len: usize, cap: usize) -> bool {
        let i = stream.index();
        if self.bytes[i] >= cap {
            return false;
        }
        self.bytes[i] += len;
        true
    }

    pub fn push_chunk(&mut self, chunk: LogChunk) {
        self.followers
            .retain(|f| f.try_send(LogItem::Chunk(chunk.clone())).is_ok());
        self.chunks.push(chunk);
    }

    pub fn follow(&mut self, tx: mpsc::Sender<LogItem>) {
        self.followers.retain(|f| !f.is_closed());
        self.followers.push(tx);
    }
}

impl ApiProvider {
    /// Registers a run unless its account is at the concurrent-run limit
    /// (`Err` with how many it has).
    pub(super) fn begin(&mut self, run_id: &str, run: LiveRun) -> Result<(), usize> {
        let limit = self.config.max_concurrent_runs;
        let n = self
            .runs
            .values()
            .filter(|r| r.owner == run.owner && !r.deleted)
            .count();
        if limit > 0 && n >= limit {
            return Err(n);
        }
        self.status_cache.forget(&run.owner);
        self.runs.insert(run_id.to_owned(), run);
        Ok(())
    }

    /// The run ended (or was deleted): waiters and followers get `result`.
    pub(super) fn end(&mut self, run_id: &str, result: &Reply<RunResult>) {
        if let Some(run) = self.runs.remove(run_id) {
            self.status_cache.forget(&run.owner);
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

    /// Waits for a live run's worker (input sent before it started):
    /// `None` when the run is not live here or [`MAX_EARLY_INPUTS`] wait
    /// already. The sender is dropped when the run ends unstarted.
    pub(super) fn await_taken(&mut self, run_id: &str) -> Option<oneshot::Receiver<String>> {
        let run = self.runs.get_mut(run_id)?;
        // Those that stopped waiting (timed out, client gone) do not count.
        run.taken_waiters.retain(|w| !w.is_closed());
        let (tx, rx) = oneshot::channel();
        match &run.worker_id {
            Some(w) => {
                let _ = tx.send(w.clone());
            }
            None if run.taken_waiters.len() >= MAX_EARLY_INPUTS => return None,
            None => run.taken_waiters.push(tx),
        }
        Some(rx)
    }

    /// The worker of a live run, as this instance knows it.
    pub(super) fn live_worker(&self, run_id: &str) -> Option<Option<String>> {
        self.runs.get(run_id).map(|r| r.worker_id.clone())
    }

    /// A live run of the owner a run event names (run events come from a
    /// router or a worker: services only).
    pub(super) fn live_run(
        &mut self,
        service: bool,
        run_id: &str,
        owner: &str,
    ) -> Option<&mut LiveRun> {
        if !service {
            return None;
        }
        self.runs.get_mut(run_id).filter(|r| r.owner == owner)
    }
}
