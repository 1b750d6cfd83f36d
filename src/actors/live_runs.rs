//! `LiveRuns`: what the API provider knows about its runs in flight — the
//! worker each runs on (from `run.started`), their output (from
//! `run.output`, kept up to the cap per stream so a late follower gets all
//! of it), who waits for them and who follows their logs, and how many
//! each account has (the concurrent-run limit).

use super::bus::Delivered;
use crate::store::SharedStore;
use actix::prelude::*;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use tokio::sync::{mpsc, oneshot};

/// One output chunk as the logs endpoint sends it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogChunk {
    pub seq: u64,
    pub stream: String,
    pub data: String,
}

/// What a log follower receives.
#[derive(Debug, Clone)]
pub enum LogItem {
    Chunk(LogChunk),
    /// The run ended: its result (or error).
    Exit(Value),
}

struct Live {
    owner: String,
    worker_id: Option<String>,
    chunks: Vec<LogChunk>,
    bytes: [usize; 2],
    followers: Vec<mpsc::Sender<LogItem>>,
    waiters: Vec<oneshot::Sender<Value>>,
}

/// The actor.
pub struct LiveRuns {
    runs: HashMap<String, Live>,
    output_cap: usize,
    store: SharedStore,
}

impl LiveRuns {
    pub fn new(output_cap: usize, store: SharedStore) -> Self {
        LiveRuns {
            runs: HashMap::new(),
            output_cap,
            store,
        }
    }

    fn count(&self, owner: &str) -> usize {
        self.runs.values().filter(|r| r.owner == owner).count()
    }
}

impl Actor for LiveRuns {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
    }
}

/// Registers a run unless its account is at `limit` concurrent runs.
#[derive(Message)]
#[rtype(result = "Result<(), usize>")]
pub struct Begin {
    pub run_id: String,
    pub owner: String,
    pub limit: usize,
}

impl Handler<Begin> for LiveRuns {
    type Result = Result<(), usize>;
    fn handle(&mut self, msg: Begin, _: &mut Self::Context) -> Result<(), usize> {
        let n = self.count(&msg.owner);
        if msg.limit > 0 && n >= msg.limit {
            return Err(n);
        }
        self.runs.insert(
            msg.run_id,
            Live {
                owner: msg.owner,
                worker_id: None,
                chunks: Vec::new(),
                bytes: [0, 0],
                followers: Vec::new(),
                waiters: Vec::new(),
            },
        );
        Ok(())
    }
}

/// The run ended (or was deleted): waiters and followers get `result`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct End {
    pub run_id: String,
    pub result: Value,
}

impl Handler<End> for LiveRuns {
    type Result = ();
    fn handle(&mut self, msg: End, _: &mut Self::Context) {
        if let Some(run) = self.runs.remove(&msg.run_id) {
            for w in run.waiters {
                let _ = w.send(msg.result.clone());
            }
            for f in run.followers {
                let _ = f.try_send(LogItem::Exit(msg.result.clone()));
            }
        }
    }
}

/// The worker of a live run, if known.
#[derive(Message)]
#[rtype(result = "Option<Option<String>>")]
pub struct WorkerOf(pub String);

impl Handler<WorkerOf> for LiveRuns {
    type Result = Option<Option<String>>;
    fn handle(&mut self, msg: WorkerOf, _: &mut Self::Context) -> Self::Result {
        self.runs.get(&msg.0).map(|r| r.worker_id.clone())
    }
}

/// Wait for a live run's result: `None` when the run is not live here.
#[derive(Message)]
#[rtype(result = "Option<oneshot::Receiver<Value>>")]
pub struct Await(pub String);

impl Handler<Await> for LiveRuns {
    type Result = Option<oneshot::Receiver<Value>>;
    fn handle(&mut self, msg: Await, _: &mut Self::Context) -> Self::Result {
        let run = self.runs.get_mut(&msg.0)?;
        let (tx, rx) = oneshot::channel();
        run.waiters.push(tx);
        Some(rx)
    }
}

/// Follow a live run's output: what it printed so far, then a stream of
/// the rest and its exit (`follow: false`: only what it printed so far).
#[derive(Message)]
#[rtype(result = "Option<(Vec<LogChunk>, Option<mpsc::Receiver<LogItem>>)>")]
pub struct Follow {
    pub run_id: String,
    pub follow: bool,
}

impl Handler<Follow> for LiveRuns {
    type Result = Option<(Vec<LogChunk>, Option<mpsc::Receiver<LogItem>>)>;
    fn handle(&mut self, msg: Follow, _: &mut Self::Context) -> Self::Result {
        let run = self.runs.get_mut(&msg.run_id)?;
        let so_far = run.chunks.clone();
        if !msg.follow {
            return Some((so_far, None));
        }
        // Room for everything the run may still print plus its exit.
        let (tx, rx) = mpsc::channel(4096);
        run.followers.retain(|f| !f.is_closed());
        run.followers.push(tx);
        Some((so_far, Some(rx)))
    }
}

/// Live runs of an account (status).
#[derive(Message)]
#[rtype(result = "Vec<(String, Option<String>)>")]
pub struct OwnerRuns(pub String);

impl Handler<OwnerRuns> for LiveRuns {
    type Result = MessageResult<OwnerRuns>;
    fn handle(&mut self, msg: OwnerRuns, _: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.runs
                .iter()
                .filter(|(_, r)| r.owner == msg.0)
                .map(|(id, r)| (id.clone(), r.worker_id.clone()))
                .collect(),
        )
    }
}

/// How many runs are in flight.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct InFlight;

impl Handler<InFlight> for LiveRuns {
    type Result = usize;
    fn handle(&mut self, _: InFlight, _: &mut Self::Context) -> usize {
        self.runs.len()
    }
}

impl Handler<Delivered> for LiveRuns {
    type Result = ();

    fn handle(&mut self, Delivered(event): Delivered, ctx: &mut Self::Context) {
        // Run events come from the router or a worker: services only.
        if !event.service {
            return;
        }
        let p = &event.payload;
        let Some(run_id) = p.get("run_id").and_then(Value::as_str) else {
            return;
        };
        let Some(run) = self.runs.get_mut(run_id) else {
            return;
        };
        if p.get("owner_account_id").and_then(Value::as_str) != Some(run.owner.as_str()) {
            return;
        }
        if event.name.ends_with(".run.started") {
            if let Some(w) = p.get("worker_id").and_then(Value::as_str) {
                run.worker_id = Some(w.to_owned());
                let (store, run_id, w) = (self.store.clone(), run_id.to_owned(), w.to_owned());
                ctx.spawn(
                    async move {
                        if let Err(e) = store.set_worker(&run_id, &w).await {
                            tracing::warn!(error = %e, "could not record the run's worker");
                        }
                    }
                    .into_actor(self),
                );
            }
            return;
        }
        let stream = p.get("stream").and_then(Value::as_str).unwrap_or("stdout");
        let data = p.get("data").and_then(Value::as_str).unwrap_or("");
        let i = usize::from(stream == "stderr");
        if run.bytes[i] >= self.output_cap {
            return;
        }
        run.bytes[i] += data.len();
        let chunk = LogChunk {
            seq: p
                .get("seq")
                .and_then(Value::as_u64)
                .unwrap_or(run.chunks.len() as u64),
            stream: if i == 1 {
                "stderr".into()
            } else {
                "stdout".into()
            },
            data: data.to_owned(),
        };
        run.followers
            .retain(|f| f.try_send(LogItem::Chunk(chunk.clone())).is_ok());
        run.chunks.push(chunk);
    }
}

/// The log lines of a finished run, from its result.
pub fn chunks_of_result(result: &Value) -> Vec<LogChunk> {
    let mut out = Vec::new();
    for stream in ["stdout", "stderr"] {
        if let Some(text) = result
            .get(stream)
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            out.push(LogChunk {
                seq: out.len() as u64,
                stream: stream.into(),
                data: text.to_owned(),
            });
        }
    }
    out
}

/// The final line of a log stream.
pub fn exit_line(result: &Value) -> Value {
    json!({ "exit": result })
}
