//! Which workers the API provider can tell are alive, and whether it can
//! tell at all. Routers say every second which workers they know
//! (`router.heartbeat`); a standalone worker says so itself
//! (`bus.containers.worker.heartbeat`). A worker is *gone* only when the
//! path to it is known to work and still nobody vouches for it: a router
//! is heard from but does not list it, or — with no router — its own
//! heartbeats have stopped while the provider's bus is up. When nothing is
//! heard at all, nothing is concluded (an outage is not a death).

use super::ApiProvider;
use crate::actors::bus::Incoming;
use crate::contract::{RouterHeartbeat, RunnerState, WorkerHeartbeat, WORKER_TTL};
use actix::prelude::*;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// A router heard from this recently is alive.
const ROUTER_TTL: Duration = Duration::from_secs(5);

/// What the heartbeats have said.
#[derive(Default)]
pub(super) struct Liveness {
    /// router → (when heard, the workers it listed)
    routers: HashMap<String, (Instant, BTreeSet<String>)>,
    /// Standalone workers' own heartbeats.
    direct: HashMap<String, Instant>,
}

impl Liveness {
    fn fresh_routers(&self) -> impl Iterator<Item = &BTreeSet<String>> {
        self.routers
            .values()
            .filter(|(at, _)| at.elapsed() < ROUTER_TTL)
            .map(|(_, w)| w)
    }

    /// Some router is heard from.
    pub fn router_alive(&self) -> bool {
        self.fresh_routers().next().is_some()
    }

    /// Somebody vouches for `worker` now.
    pub fn alive(&self, worker: &str) -> bool {
        self.fresh_routers().any(|w| w.contains(worker))
            || self
                .direct
                .get(worker)
                .is_some_and(|at| at.elapsed() < WORKER_TTL)
    }

    /// `worker` is known to be gone: the path works (a router is heard,
    /// or — standalone — the bus is up and the worker was heard from
    /// before) and nobody vouches for it.
    pub fn gone(&self, worker: &str, bus_up: bool) -> bool {
        if self.alive(worker) {
            return false;
        }
        self.router_alive() || (bus_up && self.direct.contains_key(worker))
    }
}

impl Handler<Incoming<RouterHeartbeat>> for ApiProvider {
    type Result = ();

    fn handle(&mut self, msg: Incoming<RouterHeartbeat>, _: &mut Self::Context) {
        if !msg.meta.service {
            return;
        }
        let beat = msg.body;
        let workers = beat
            .workers
            .into_iter()
            .filter(|w| w.state != RunnerState::Stopped)
            .map(|w| w.worker_id)
            .collect();
        self.liveness
            .routers
            .insert(beat.router_id, (Instant::now(), workers));
        self.liveness
            .routers
            .retain(|_, (at, _)| at.elapsed() < ROUTER_TTL * 12);
    }
}

impl Handler<Incoming<WorkerHeartbeat>> for ApiProvider {
    type Result = ();

    fn handle(&mut self, msg: Incoming<WorkerHeartbeat>, _: &mut Self::Context) {
        if !msg.meta.service || msg.body.worker_id.is_empty() {
            return;
        }
        if msg.body.state == RunnerState::Stopped {
            self.liveness.direct.remove(&msg.body.worker_id);
            return;
        }
        self.liveness
            .direct
            .insert(msg.body.worker_id, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gone_only_when_the_path_is_known_to_work() {
        let mut l = Liveness::default();
        assert!(!l.gone("w1", true), "nothing heard: nothing concluded");
        l.routers
            .insert("r1".into(), (Instant::now(), ["w1".to_owned()].into()));
        assert!(l.alive("w1"));
        assert!(!l.gone("w1", true));
        assert!(l.gone("w2", false), "a live router does not list it");
        l.routers.clear();
        l.direct
            .insert("w3".into(), Instant::now() - WORKER_TTL * 2);
        assert!(l.gone("w3", true), "standalone, silent, with the bus up");
        assert!(!l.gone("w3", false), "standalone, but the bus is down");
    }
}
