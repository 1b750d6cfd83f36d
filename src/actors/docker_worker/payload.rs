//! A run request too large for one bus message arrives as its summary
//! (`request_parts`): the worker takes the run — it counts against
//! capacity, answers `run.query` as running, says `run.accepted` — and a
//! [`PayloadFetch`] asks the run's API provider for the whole request's
//! parts (`run.payload.pull`; again, for those still missing, when 2 s
//! pass with none arriving), puts them together and hands the whole
//! request back, which then goes the way of any request.
//!
//! A fetch that cannot finish never starts the run: parts that have not
//! all come within 30 s, a delete, or the worker stopping end it — with
//! an `unavailable` (or, deleted, `not_found`) answer, or, on a durable
//! queue, by putting the request back for a later try. A durable request
//! being fetched is kept in progress, so it is not redelivered meanwhile.
//! A summary asking for more parts than its files could need is refused
//! `payload_too_large` before anything is fetched.

use super::DockerWorker;
use crate::actors::bus::requester::Requester;
use crate::actors::bus::{Incoming, Meta};
use crate::contract::parts::{assemble, PayloadPart, PayloadPull};
use crate::contract::{encode, ErrorType, Publication, Reply, RunRequest};
use actix::prelude::*;
use base64::Engine;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Missing parts are asked for again this often.
const PULL_AGAIN: Duration = Duration::from_secs(2);
/// The parts of a request must all be here within this.
const FETCH_WITHIN: Duration = Duration::from_secs(30);
/// Room in a request beyond its files (stdin, env, args, JSON).
const REQUEST_ROOM: usize = 2 << 20;

/// A run whose request's parts are on their way.
pub(super) struct Fetching {
    fetch: Addr<PayloadFetch>,
    pub owner: String,
    meta: Meta,
    /// Copies of the request that came meanwhile.
    pub correlation_ids: Vec<String>,
}

/// Stops a fetch (its run is deleted, or the worker stops).
#[derive(Message)]
#[rtype(result = "()")]
struct Abandon;

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
    /// The most bytes one part and the whole request may decode to.
    part_max: usize,
    total_max: usize,
    total: usize,
    publisher: Requester,
    worker: Recipient<Fetched>,
    begun: Instant,
    /// When a part last arrived (or the parts were asked for).
    progress: Instant,
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
            if act.progress.elapsed() >= PULL_AGAIN {
                act.progress = Instant::now();
                act.ask();
            }
        });
    }
}

impl Handler<Abandon> for PayloadFetch {
    type Result = ();
    fn handle(&mut self, _: Abandon, ctx: &mut Self::Context) {
        ctx.stop();
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
        if self.got.contains_key(&part.part) || part.data_base64.len() / 4 * 3 > self.part_max {
            return;
        }
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&part.data_base64) else {
            return;
        };
        self.total += bytes.len();
        if self.total > self.total_max {
            let most = self.total_max;
            return self.done(
                Err(format!("its parts come to more than {most} bytes")),
                ctx,
            );
        }
        self.progress = Instant::now();
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
        // What its parts may come to: its files (at most this worker's
        // limit, in base64) and room for the rest.
        let total_max = self
            .config
            .settings
            .config
            .worker
            .max_files_bytes
            .saturating_mul(4)
            .div_ceil(3)
            .saturating_add(REQUEST_ROOM);
        let room = self
            .publisher
            .broker()
            .max_payload()
            .unwrap_or(1 << 20)
            .saturating_sub(crate::contract::parts::ENVELOPE_ROOM)
            .max(4096);
        let part_max = room / 4 * 3;
        if (parts as usize).saturating_sub(1).saturating_mul(part_max) > total_max {
            let reply = Reply::error(
                ErrorType::PayloadTooLarge,
                format!(
                    "the run request comes in {parts} parts, more than this worker takes (files of at most {} bytes)",
                    self.config.settings.config.worker.max_files_bytes
                ),
            );
            return self.answer(meta.correlation_id.clone(), reply, meta.ack.clone(), ctx);
        }
        tracing::info!(run_id = %run_id, parts, "run request in parts; fetching it");
        self.pending += 1;
        if meta.ack.is_none() {
            // Taken within its accept-by time: its requester waits for
            // its answer, whatever the fetch brings.
            self.say_accepted(&run_id, &owner, None);
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
            part_max,
            total_max,
            total: 0,
            publisher: self.publisher.clone(),
            worker: ctx.address().recipient(),
            begun: Instant::now(),
            progress: Instant::now(),
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
                self.end_fetch(&msg.run_id, owner, meta, correlation_ids, reply, ctx);
            }
        }
    }
}

impl DockerWorker {
    /// A fetch that ended without its run: on a durable queue the
    /// request goes back (a later try, or another worker, which may
    /// claim it meanwhile — so this worker says nothing); otherwise every
    /// caller gets `reply`, kept and sent again until it is recorded
    /// like any final result (the run was accepted: its provider waits
    /// for an answer).
    fn end_fetch(
        &mut self,
        run_id: &str,
        owner: String,
        meta: Meta,
        correlation_ids: Vec<String>,
        reply: Reply<crate::contract::RunResult>,
        ctx: &mut Context<Self>,
    ) {
        if let Some(ack) = &meta.ack {
            let delay = if self.stopping {
                Duration::ZERO
            } else {
                PULL_AGAIN
            };
            super::durable::settle("return a durable request", ack.retry_later(delay));
            return;
        }
        let callers = meta
            .correlation_id
            .into_iter()
            .chain(correlation_ids)
            .collect();
        self.finish_run(run_id.to_owned(), owner, callers, reply, None, ctx);
    }

    /// Stops the fetch of `run_id`, if there is one, answering as
    /// [`Self::end_fetch`] does; `true` when there was one.
    pub(super) fn abandon_fetch(
        &mut self,
        run_id: &str,
        reply: Reply<crate::contract::RunResult>,
        ctx: &mut Context<Self>,
    ) -> bool {
        let Some(f) = self.fetching.remove(run_id) else {
            return false;
        };
        self.pending -= 1;
        f.fetch.do_send(Abandon);
        self.end_fetch(run_id, f.owner, f.meta, f.correlation_ids, reply, ctx);
        true
    }

    /// Stops every fetch (the worker is stopping).
    pub(super) fn abandon_fetches(&mut self, ctx: &mut Context<Self>) {
        let ids: Vec<String> = self.fetching.keys().cloned().collect();
        for run_id in ids {
            let reply = Reply::error(
                ErrorType::Unavailable,
                "the worker stopped before the run's request had come; it was not started",
            );
            self.abandon_fetch(&run_id, reply, ctx);
        }
    }

    /// Keeps the durable requests being fetched in progress.
    pub(super) fn keep_fetches_alive(&self) {
        for f in self.fetching.values() {
            if let Some(ack) = &f.meta.ack {
                super::durable::settle("extend a durable request", ack.working());
            }
        }
    }

    /// A copy of a run being fetched: it waits with it; a durable copy
    /// is the request delivered again, whose acknowledgement is now the
    /// one to use. `None` when the run is not being fetched.
    pub(super) fn join_fetch(
        &mut self,
        run_id: &str,
        owner: &str,
        meta: &Meta,
    ) -> Option<Result<(), ()>> {
        let f = self.fetching.get_mut(run_id)?;
        if f.owner != owner {
            return Some(Err(()));
        }
        match &meta.ack {
            Some(ack) => {
                super::durable::settle("extend a durable request", ack.working());
                f.meta.ack = Some(ack.clone());
            }
            None => f
                .correlation_ids
                .extend(meta.correlation_id.iter().cloned()),
        }
        Some(Ok(()))
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
