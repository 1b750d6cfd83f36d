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
use std::collections::BTreeSet;
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
    /// Parts are being sent now; those asked for meanwhile go next, so
    /// sends of one request never overlap.
    sending: bool,
    queued: BTreeSet<u32>,
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
                sending: false,
                queued: BTreeSet::new(),
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

    fn handle(&mut self, msg: Incoming<PayloadPull>, ctx: &mut Self::Context) {
        let pull = msg.body;
        let Some(held) = self.held.get_mut(&pull.run_id) else {
            return; // Another provider's run, or no longer held.
        };
        if !msg.meta.service || held.owner != pull.owner_account_id {
            tracing::warn!(run_id = %pull.run_id, from = %msg.meta.identity_id, "a pull for a run request's parts refused");
            return;
        }
        let n = held.parts.len() as u32;
        held.queued
            .extend(pull.parts.iter().copied().filter(|i| *i < n));
        self.send_parts(&pull.run_id, pull.worker_id, msg.meta.correlation_id, ctx);
    }
}

impl BusBackend {
    /// Sends the parts of `run_id` asked for, one send at a time.
    fn send_parts(
        &mut self,
        run_id: &str,
        worker_id: String,
        correlation_id: Option<String>,
        ctx: &mut Context<Self>,
    ) {
        let Some(held) = self.held.get_mut(run_id) else {
            return;
        };
        if held.sending || held.queued.is_empty() {
            return;
        }
        held.sending = true;
        let wanted = std::mem::take(&mut held.queued);
        let (parts, requester) = (held.parts.clone(), self.requester.clone());
        let (run_id, owner) = (run_id.to_owned(), held.owner.clone());
        let n = parts.len() as u32;
        ctx.spawn(
            async move {
                for i in wanted {
                    let part = PayloadPart {
                        run_id: run_id.clone(),
                        owner_account_id: owner.clone(),
                        worker_id: worker_id.clone(),
                        part: i,
                        parts: n,
                        data_base64: parts[i as usize].clone(),
                    };
                    let mut p = Publication::new(
                        format!("{PUBLIC_PREFIX}.run.payload.part"),
                        encode(&part),
                    );
                    p.correlation_id = correlation_id.clone();
                    if let Err(e) = requester.publish(p).await {
                        tracing::warn!(run_id = %run_id, error = %e, "a part of a run request was not sent (the worker asks again)");
                        break;
                    }
                }
                (run_id, worker_id, correlation_id)
            }
            .into_actor(self)
            .map(|(run_id, worker_id, correlation_id), act, ctx| {
                if let Some(held) = act.held.get_mut(&run_id) {
                    held.sending = false;
                }
                act.send_parts(&run_id, worker_id, correlation_id, ctx);
            }),
        );
    }
}
