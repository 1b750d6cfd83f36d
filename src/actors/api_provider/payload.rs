//! A run request too large for one bus message: the backend publishes
//! its summary (the request without `files`, `stdin`, `stdin_base64`,
//! with `request_parts`) and holds the whole request's parts
//! ([`crate::contract::parts`]) until the worker that takes the run asks
//! for them (`run.payload.pull`, relayed by the router); it answers with
//! `run.payload.part` events (the router forwards them to the backend's
//! prefix). Parts are held until the run's result is recorded, it is
//! withdrawn, or an hour has passed, and at most [`HELD_MAX_BYTES`] in
//! all (the oldest go first).

use super::backend::BusBackend;
use crate::actors::bus::Incoming;
use crate::contract::parts::{parts_of, PayloadPart, PayloadPull};
use crate::contract::{encode, Publication, RunRequest, RunSpec, PUBLIC_PREFIX};
use actix::prelude::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Parts are held at most this long.
const HELD_FOR: Duration = Duration::from_secs(3600);
/// The most bytes of parts held at once.
const HELD_MAX_BYTES: usize = 1 << 30;

/// The parts of one run's request.
pub struct Held {
    owner: String,
    parts: Arc<Vec<String>>,
    at: Instant,
}

impl Held {
    fn bytes(&self) -> usize {
        self.parts.iter().map(String::len).sum()
    }
}

impl BusBackend {
    /// What to publish for `request`: itself when it fits one bus
    /// message, else its summary (and its parts are held).
    pub(super) fn payload_of(&mut self, request: &RunRequest) -> serde_json::Value {
        let whole = encode(request);
        let limit = self.requester.broker().max_payload();
        let bytes = serde_json::to_vec(&whole).expect("a request serialises");
        let (Some(parts), Some(run_id)) = (parts_of(&bytes, limit), request.run_id.clone()) else {
            return whole;
        };
        let summary = RunRequest {
            spec: RunSpec {
                files: None,
                stdin: None,
                stdin_base64: None,
                ..request.spec.clone()
            },
            request_parts: Some(parts.len() as u32),
            ..request.clone()
        };
        tracing::debug!(run_id = %run_id, parts = parts.len(), bytes = bytes.len(), "a run request goes in parts");
        self.prune_held();
        self.held.insert(
            run_id,
            Held {
                owner: request.owner_account_id.clone().unwrap_or_default(),
                parts: Arc::new(parts),
                at: Instant::now(),
            },
        );
        encode(&summary)
    }

    /// No more parts for `run_id` (recorded, withdrawn).
    pub(super) fn release(&mut self, run_id: &str) {
        self.held.remove(run_id);
    }

    fn prune_held(&mut self) {
        self.held.retain(|_, h| h.at.elapsed() < HELD_FOR);
        let mut total: usize = self.held.values().map(Held::bytes).sum();
        while total > HELD_MAX_BYTES {
            let Some(oldest) = self
                .held
                .iter()
                .min_by_key(|(_, h)| h.at)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            tracing::warn!(run_id = %oldest, "the parts of a run request are dropped (too many held)");
            if let Some(h) = self.held.remove(&oldest) {
                total -= h.bytes();
            }
        }
    }
}

impl Handler<Incoming<PayloadPull>> for BusBackend {
    type Result = ();

    fn handle(&mut self, msg: Incoming<PayloadPull>, _: &mut Self::Context) {
        let pull = msg.body;
        let Some(held) = self.held.get(&pull.run_id) else {
            return; // Another provider's run, or no longer held.
        };
        if !msg.meta.service || held.owner != pull.owner_account_id {
            tracing::warn!(run_id = %pull.run_id, from = %msg.meta.identity_id, "a pull for a run request's parts refused");
            return;
        }
        let (parts, requester) = (held.parts.clone(), self.requester.clone());
        let correlation = msg.meta.correlation_id;
        actix_rt::spawn(async move {
            let n = parts.len() as u32;
            for i in pull.parts.iter().copied().filter(|i| *i < n) {
                let part = PayloadPart {
                    run_id: pull.run_id.clone(),
                    owner_account_id: pull.owner_account_id.clone(),
                    worker_id: pull.worker_id.clone(),
                    part: i,
                    parts: n,
                    data_base64: parts[i as usize].clone(),
                };
                let mut p =
                    Publication::new(format!("{PUBLIC_PREFIX}.run.payload.part"), encode(&part));
                p.correlation_id = correlation.clone();
                if let Err(e) = requester.publish(p).await {
                    tracing::warn!(run_id = %pull.run_id, error = %e, "a part of a run request was not sent (the worker asks again)");
                    return;
                }
            }
        });
    }
}
