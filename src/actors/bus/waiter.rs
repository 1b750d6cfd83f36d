//! `CorrelationWaiter`: one pending request. It owns the request's
//! deadline and the channel its requester waits on, accepts replies only
//! from services or the requester's own identity, and resolves exactly
//! once: with the reply (or every gathered reply), or at the deadline.

use crate::broker::Event;
use actix::prelude::*;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Which replies complete a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// The first acceptable reply.
    First,
    /// The first acceptable reply whose payload names this `worker_id`.
    FromWorker(String),
    /// One reply from each of these workers (replies from others are kept
    /// too); resolves early once all have answered.
    Gather(BTreeSet<String>),
}

/// How a request ended.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub replies: Vec<Arc<Event>>,
    /// The deadline passed before the request was complete.
    pub timed_out: bool,
    /// Gathered workers that did not answer.
    pub missing: Vec<String>,
}

/// A waiter has resolved.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WaiterDone {
    pub correlation_id: String,
    pub timed_out: bool,
}

/// A reply for the waiter of its correlation id.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reply(pub Arc<Event>);

/// The actor waiting for one request's replies.
pub struct CorrelationWaiter {
    correlation_id: String,
    expect: Expect,
    requester: String,
    deadline: Duration,
    tx: Option<oneshot::Sender<Outcome>>,
    replies: Vec<Arc<Event>>,
    answered: BTreeSet<String>,
    done: Recipient<WaiterDone>,
}

impl CorrelationWaiter {
    pub fn new(
        correlation_id: String,
        expect: Expect,
        requester: String,
        deadline: Duration,
        done: Recipient<WaiterDone>,
    ) -> (Self, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        let waiter = CorrelationWaiter {
            correlation_id,
            expect,
            requester,
            deadline,
            tx: Some(tx),
            replies: Vec::new(),
            answered: BTreeSet::new(),
            done,
        };
        (waiter, rx)
    }

    fn finish(&mut self, timed_out: bool, ctx: &mut Context<Self>) {
        let Some(tx) = self.tx.take() else { return };
        let missing = match &self.expect {
            Expect::Gather(all) => all.difference(&self.answered).cloned().collect(),
            _ => Vec::new(),
        };
        let _ = tx.send(Outcome {
            replies: std::mem::take(&mut self.replies),
            timed_out,
            missing,
        });
        self.done.do_send(WaiterDone {
            correlation_id: self.correlation_id.clone(),
            timed_out,
        });
        ctx.stop();
    }

    fn complete(&self) -> bool {
        match &self.expect {
            Expect::First | Expect::FromWorker(_) => !self.replies.is_empty(),
            Expect::Gather(all) => all.is_subset(&self.answered),
        }
    }
}

impl Actor for CorrelationWaiter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Expect::Gather(all) = &self.expect {
            if all.is_empty() {
                // Nobody to ask: complete at once rather than at the deadline.
                return self.finish(false, ctx);
            }
        }
        ctx.run_later(self.deadline, |act, ctx| act.finish(true, ctx));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        // Stopped from outside (shutdown): the requester still gets an answer.
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Outcome {
                replies: std::mem::take(&mut self.replies),
                timed_out: true,
                missing: Vec::new(),
            });
            self.done.do_send(WaiterDone {
                correlation_id: self.correlation_id.clone(),
                timed_out: true,
            });
        }
    }
}

impl Handler<Reply> for CorrelationWaiter {
    type Result = ();

    fn handle(&mut self, Reply(event): Reply, ctx: &mut Self::Context) {
        if self.tx.is_none() {
            return;
        }
        if !(event.service || event.identity_id == self.requester) {
            tracing::warn!(
                correlation_id = %self.correlation_id,
                from = %event.identity_id,
                "ignoring a reply from neither a service nor the requester"
            );
            return;
        }
        let worker = event
            .payload
            .get("worker_id")
            .and_then(|w| w.as_str())
            .unwrap_or("");
        match &self.expect {
            Expect::First => {}
            Expect::FromWorker(w) if w == worker => {}
            Expect::FromWorker(_) => return,
            Expect::Gather(_) => {
                if !self.answered.insert(worker.to_owned()) {
                    tracing::debug!(correlation_id = %self.correlation_id, worker, "duplicate gathered reply ignored");
                    return;
                }
            }
        }
        self.replies.push(event);
        if self.complete() {
            self.finish(false, ctx);
        }
    }
}
