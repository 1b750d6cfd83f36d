//! A run request too large for one bus message arrives as its summary
//! (`request_parts`): the worker takes the run — it counts against
//! capacity, answers `run.query` as running, says `run.accepted` — and a
//! [`PayloadFetch`] asks the run's API provider for the whole request's
//! parts (`run.payload.pull`, again every 2 s for those still missing),
//! puts them together and hands the whole request back, which then goes
//! the way of any request. Parts that have not all come within 30 s end
//! the run `unavailable`; nothing was started.

use super::DockerWorker;
use crate::actors::bus::requester::Requester;
use crate::actors::bus::{Incoming, Meta};
use crate::contract::parts::{assemble, PayloadPart, PayloadPull};
use crate::contract::{encode, ErrorType, Publication, Reply, RunAccepted, RunRequest};
use actix::prelude::*;
use base64::Engine;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Missing parts are asked for again this often.
const PULL_AGAIN: Duration = Duration::from_secs(2);
/// The parts of a request must all be here within this.
const FETCH_WITHIN: Duration = Duration::from_secs(30);

/// A run whose request's parts are on their way.
pub(super) struct Fetching {
    fetch: Addr<PayloadFetch>,
    pub owner: String,
    meta: Meta,
    /// Copies of the request that came meanwhile.
    pub correlation_ids: Vec<String>,
}

/// The whole request's bytes, or why they did not come.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Fetched {
    run_id: String,
    bytes: Result<Vec<u8>, String>,
}

/// Gathers one run request's parts.
pub(super) struct PayloadFetch {
    pull: PayloadPull,
    parts: u32,
    correlation_id: Option<String>,
    prefix: String,
    got: BTreeMap<u32, Vec<u8>>,
    publisher: Requester,
    worker: Recipient<Fetched>,
    begun: Instant,
}

impl PayloadFetch {
    fn ask(&self) {
        let missing: Vec<u32> = (0..self.parts)
            .filter(|i| !self.got.contains_key(i))
            .collect();
        let pull = PayloadPull {
            parts: missing,
            ..self.pull.clone()
        };
        let mut p = Publication::new(format!("{}.run.payload.pull", self.prefix), encode(&pull));
        p.correlation_id = self.correlation_id.clone();
        let publisher = self.publisher.clone();
        actix_rt::spawn(async move {
            if let Err(e) = publisher.publish(p).await {
                tracing::debug!(error = %e, "run.payload.pull not published (asked again)");
            }
        });
    }

    fn done(&self, bytes: Result<Vec<u8>, String>, ctx: &mut Context<Self>) {
        self.worker.do_send(Fetched {
            run_id: self.pull.run_id.clone(),
            bytes,
        });
        ctx.stop();
    }
}

impl Actor for PayloadFetch {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.ask();
        ctx.run_interval(PULL_AGAIN, |act, ctx| {
            if act.begun.elapsed() >= FETCH_WITHIN {
                let have = act.got.len();
                act.done(
                    Err(format!(
                        "{have} of its {} parts came from the API provider within {} s",
                        act.parts,
                        FETCH_WITHIN.as_secs()
                    )),
                    ctx,
                );
                return;
            }
            act.ask();
        });
    }
}

/// One part, for the fetch of its run.
#[derive(Message)]
#[rtype(result = "()")]
struct Part(PayloadPart);

impl Handler<Part> for PayloadFetch {
    type Result = ();

    fn handle(&mut self, Part(part): Part, ctx: &mut Self::Context) {
        if part.parts != self.parts || part.part >= self.parts {
            return;
        }
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&part.data_base64) else {
            return;
        };
        self.got.insert(part.part, bytes);
        if let Some(whole) = assemble(self.parts, &self.got) {
            self.done(Ok(whole), ctx);
        }
    }
}

impl DockerWorker {
    /// Takes a run whose request came as its summary, and fetches the
    /// rest (the caller has checked that the worker may take it).
    pub(super) fn fetch_payload(
        &mut self,
        meta: Meta,
        request: RunRequest,
        owner: String,
        parts: u32,
        ctx: &mut Context<Self>,
    ) {
        let run_id = request.run_id.clone().unwrap_or_default();
        tracing::info!(run_id = %run_id, parts, "run request in parts; fetching it");
        self.pending += 1;
        if meta.ack.is_none() {
            // Taken within its accept-by time: its requester waits for
            // its answer, whatever the fetch brings.
            let accepted = RunAccepted {
                run_id: run_id.clone(),
                owner_account_id: owner.clone(),
                worker_id: self.config.worker_id().to_owned(),
                timeout_seconds: None,
            };
            let p = Publication::new(
                format!("{}.run.accepted", self.config.prefix),
                encode(&accepted),
            );
            let publisher = self.publisher.clone();
            actix_rt::spawn(async move {
                if let Err(e) = publisher.publish(p).await {
                    tracing::debug!(error = %e, "run.accepted not published");
                }
            });
        }
        let fetch = PayloadFetch {
            pull: PayloadPull {
                run_id: run_id.clone(),
                owner_account_id: owner.clone(),
                worker_id: self.config.worker_id().to_owned(),
                parts: Vec::new(),
            },
            parts,
            correlation_id: meta.correlation_id.clone(),
            prefix: self.config.prefix.clone(),
            got: BTreeMap::new(),
            publisher: self.publisher.clone(),
            worker: ctx.address().recipient(),
            begun: Instant::now(),
        }
        .start();
        self.fetching.insert(
            run_id,
            Fetching {
                fetch,
                owner,
                meta,
                correlation_ids: Vec::new(),
            },
        );
    }
}

impl Handler<Fetched> for DockerWorker {
    type Result = ();

    fn handle(&mut self, msg: Fetched, ctx: &mut Self::Context) {
        let Some(f) = self.fetching.remove(&msg.run_id) else {
            return;
        };
        self.pending -= 1;
        let Fetching {
            owner,
            meta,
            correlation_ids,
            ..
        } = f;
        let whole = msg.bytes.and_then(|bytes| {
            let request: RunRequest = serde_json::from_slice(&bytes)
                .map_err(|e| format!("its parts do not make a run request: {e}"))?;
            let same = request.run_id.as_deref() == Some(msg.run_id.as_str())
                && request.owner_account_id.as_deref() == Some(owner.as_str());
            if !same {
                return Err("its parts are another run's".to_owned());
            }
            Ok(request)
        });
        match whole {
            Ok(mut request) => {
                request.request_parts = None;
                // It was taken within its accept-by time.
                request.accept_by = None;
                self.on_whole_run(meta, request, owner, ctx);
                if let Some(live) = self.sessions.get_mut(&msg.run_id) {
                    live.correlation_ids.extend(correlation_ids);
                }
            }
            Err(why) => {
                tracing::warn!(run_id = %msg.run_id, reason = %why, "a run request's parts did not come; not started");
                let reply = Reply::error(
                    ErrorType::Unavailable,
                    format!("the run request was not started: {why}"),
                );
                let ack = meta.ack.clone();
                self.answer(meta.correlation_id.clone(), reply.clone(), ack, ctx);
                for corr in correlation_ids {
                    self.answer(Some(corr), reply.clone(), None, ctx);
                }
            }
        }
    }
}

impl Handler<Incoming<PayloadPart>> for DockerWorker {
    type Result = ();

    fn handle(&mut self, msg: Incoming<PayloadPart>, _: &mut Self::Context) {
        if !msg.meta.service {
            return;
        }
        let part = msg.body;
        match self.fetching.get(&part.run_id) {
            Some(f) if f.owner == part.owner_account_id => f.fetch.do_send(Part(part)),
            _ => {} // Another worker's run.
        }
    }
}
