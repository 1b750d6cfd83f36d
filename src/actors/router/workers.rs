//! `WorkerRegistry`: the workers a router knows are alive, from their
//! heartbeats. A worker without a heartbeat for the TTL, or one that
//! said it stopped, is gone. Just after start, a request that finds no
//! worker may wait a little for a first heartbeat (discovery).

use crate::actors::bus::Incoming;
use crate::contract::{RunnerState, WorkerHeartbeat};
use actix::prelude::*;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Who is alive, and whether a first heartbeat may still be coming.
#[derive(Debug, Clone)]
pub struct LiveSet {
    pub live: BTreeSet<String>,
    /// The live workers' last heartbeats.
    pub beats: Vec<WorkerHeartbeat>,
    /// Time left to wait for a first worker, and the count to watch.
    pub discovery: Option<(Duration, watch::Receiver<usize>)>,
}

/// Asks for the live workers.
#[derive(Message)]
#[rtype(result = "LiveSet")]
pub struct Live;

/// The registry actor.
pub struct WorkerRegistry {
    ttl: Duration,
    discovery_wait: Duration,
    started: Instant,
    workers: HashMap<String, (Instant, WorkerHeartbeat)>,
    known: watch::Sender<usize>,
}

impl WorkerRegistry {
    pub fn new(ttl: Duration, discovery_wait: Duration) -> Self {
        WorkerRegistry {
            ttl,
            discovery_wait,
            started: Instant::now(),
            workers: HashMap::new(),
            known: watch::channel(0).0,
        }
    }

    fn live(&mut self) -> BTreeSet<String> {
        let ttl = self.ttl;
        self.workers
            .retain(|_, (seen, beat)| seen.elapsed() < ttl && beat.state != RunnerState::Stopped);
        self.workers.keys().cloned().collect()
    }
}

impl Actor for WorkerRegistry {
    type Context = Context<Self>;
}

impl Handler<Incoming<WorkerHeartbeat>> for WorkerRegistry {
    type Result = ();

    fn handle(&mut self, beat: Incoming<WorkerHeartbeat>, _: &mut Self::Context) {
        let beat = beat.body;
        if beat.worker_id.is_empty() {
            return;
        }
        if !self.workers.contains_key(&beat.worker_id) {
            tracing::info!(worker_id = %beat.worker_id, state = beat.state.as_str(), "worker joined");
        }
        self.workers
            .insert(beat.worker_id.clone(), (Instant::now(), beat));
        let n = self.live().len();
        self.known.send_replace(n);
    }
}

impl Handler<Live> for WorkerRegistry {
    type Result = MessageResult<Live>;

    fn handle(&mut self, _: Live, _: &mut Self::Context) -> Self::Result {
        let discovery = self
            .discovery_wait
            .checked_sub(self.started.elapsed())
            .map(|left| (left, self.known.subscribe()));
        let live = self.live();
        MessageResult(LiveSet {
            beats: self.workers.values().map(|(_, b)| b.clone()).collect(),
            live,
            discovery,
        })
    }
}
