//! One public request on its way to the backend: unicast to one worker
//! (runs), broadcast and answered by the worker it names (input, delete),
//! or broadcast and gathered from every live worker (status, runner).
//! Every path ends in a reply: the backend's, checked, or an error.

use super::merge::{Gathered, Part};
use super::workers::LiveSet;
use crate::actors::bus::requester::{Request, Requester};
use crate::actors::bus::waiter::{Expect, Outcome};
use crate::contract::{
    encode, Addressing, ErrorDetail, ErrorType, Publication, Reply, WorkerReply, WORKER_TTL,
};
use prometheus::IntCounter;
use std::time::Duration;

/// One request on its way.
pub(super) struct Forward<Q> {
    pub requester: Requester,
    /// Counts replies refused as malformed.
    pub malformed: IntCounter,
    pub prefix: String,
    pub body: Q,
    pub owner: String,
    pub deadline: Duration,
    pub live: LiveSet,
    /// A durable run: it waits in the work queue for a worker.
    pub durable: bool,
    /// The public request's correlation id: a run goes on under it, and
    /// its worker answers the requester through the router's relay.
    pub correlation_id: String,
}

impl<Q: Gathered> Forward<Q> {
    /// The reply, with the worker that answered (when one did alone);
    /// `None` when the request went on to a worker, which answers itself.
    pub async fn run(mut self) -> Option<WorkerReply<Q::Reply>> {
        match Q::KIND.addressing() {
            Addressing::One => self.one().await,
            Addressing::Targeted => Some(self.targeted().await),
            Addressing::Gathered => Some(unsigned(self.gathered().await)),
        }
    }

    fn request(&self, expect: Expect) -> Request {
        Request::of(&self.prefix, &self.body, self.deadline).expect(expect)
    }

    /// A run: forwarded under its own correlation id, no waiter here — so
    /// a router that restarts loses nothing: whichever router relays the
    /// worker's answer (and every copy the worker sends again) reaches
    /// the requester.
    async fn one(&mut self) -> Option<WorkerReply<Q::Reply>> {
        let mut any_worker = !self.live.live.is_empty() || self.durable;
        if !any_worker {
            if let Some((left, mut known)) = self.live.discovery.take() {
                // Just started: give workers one heartbeat to make themselves known.
                let _ = actix_rt::time::timeout(left, known.wait_for(|n| *n > 0)).await;
                any_worker = *known.borrow() > 0;
            }
        }
        if !any_worker {
            // Nobody would take it: a run on this bus is not queued (on
            // NATS with JetStream, it is: see `durable`).
            return Some(unsigned(Reply::error(
                ErrorType::Unavailable,
                format!(
                    "no live worker on {} (no heartbeat for {}s)",
                    self.prefix,
                    WORKER_TTL.as_secs()
                ),
            )));
        }
        let publication = Publication::new(Q::KIND.request(&self.prefix), encode(&self.body))
            .with_correlation(self.correlation_id.clone());
        match self.requester.publish(publication).await {
            Ok(_) => None,
            Err(e) => Some(unsigned(Reply::error(
                ErrorType::Unavailable,
                format!("could not forward the run: {e}"),
            ))),
        }
    }

    async fn targeted(&mut self) -> WorkerReply<Q::Reply> {
        let expect = match self.body.worker_id() {
            Some(w) => Expect::FromWorker(w.to_owned()),
            None => Expect::First,
        };
        if let Expect::FromWorker(w) = &expect {
            if !self.live.live.contains(w) {
                let run = self.body.run_id().unwrap_or("?");
                return unsigned(Reply::error(
                    ErrorType::NotFound,
                    format!("run {run}: its worker {w} is not alive"),
                ));
            }
        }
        let out = self.requester.request(self.request(expect)).await;
        self.single(out, ErrorType::NotFound)
    }

    async fn gathered(&mut self) -> Reply<Q::Reply> {
        let provider = self
            .prefix
            .rsplit('.')
            .next()
            .unwrap_or("docker")
            .to_owned();
        let live = self.live.live.clone();
        let out = match self
            .requester
            .request(self.request(Expect::Gather(live)))
            .await
        {
            Err(e) => return Reply::Err(e),
            Ok(out) => out,
        };
        let mut parts = Vec::new();
        let mut malformed = Vec::new();
        for event in &out.replies {
            match self.checked(WorkerReply::decode(&event.payload)) {
                Ok(r) => parts.push(Part {
                    worker_id: r.worker_id.unwrap_or_default(),
                    reply: r.reply,
                }),
                Err(why) => {
                    self.malformed.inc();
                    tracing::warn!(kind = Q::KIND.segment(), reason = %why, "malformed gathered reply skipped");
                    malformed.push(why.0);
                }
            }
        }
        if parts.is_empty() && !malformed.is_empty() {
            return Reply::error(ErrorType::MalformedResponse, malformed.join("; "));
        }
        Q::merge(parts, &out.missing, &provider)
    }

    /// A decoded reply, trusted only if it answers this request.
    fn checked(
        &self,
        reply: Result<WorkerReply<Q::Reply>, crate::contract::Malformed>,
    ) -> Result<WorkerReply<Q::Reply>, crate::contract::Malformed> {
        let reply = reply?;
        if let Reply::Ok(r) = &reply.reply {
            Q::check_reply(r, &self.owner)?;
        }
        Ok(reply)
    }

    /// The reply of a one-answer request, checked.
    fn single(
        &self,
        out: Result<Outcome, ErrorDetail>,
        on_timeout: ErrorType,
    ) -> WorkerReply<Q::Reply> {
        let out = match out {
            Ok(out) => out,
            Err(e) => return unsigned(Reply::Err(e)),
        };
        let Some(event) = out.replies.first() else {
            let what = match on_timeout {
                ErrorType::NotFound => "the run's worker did not answer",
                _ => "the backend did not answer",
            };
            return unsigned(Reply::error(
                on_timeout,
                format!(
                    "{what} within {}",
                    crate::parse::format_duration(self.deadline)
                ),
            ));
        };
        match self.checked(WorkerReply::decode(&event.payload)) {
            Ok(r) => r,
            Err(why) => {
                self.malformed.inc();
                tracing::warn!(kind = Q::KIND.segment(), reason = %why, "malformed backend reply");
                unsigned(Reply::error(
                    ErrorType::MalformedResponse,
                    format!("malformed backend reply: {why}"),
                ))
            }
        }
    }
}

/// A reply no single worker gave (the router's own, or a merge).
fn unsigned<R>(reply: Reply<R>) -> WorkerReply<R> {
    WorkerReply {
        worker_id: None,
        reply,
    }
}
