//! `ReplyDispatcher`: hands each reply to the waiter of its correlation id.
//!
//! Reply streams are broadcast, so a process also sees replies meant for
//! other processes (unmatched, ignored). A reply for a request that already
//! ended is counted: *late* if that request timed out, *duplicate* if it
//! was answered. Recently ended ids are remembered in a bounded window.

use super::subscription::Delivered;
use super::waiter::{Reply, WaiterDone};
use crate::metrics::Metrics;
use actix::prelude::*;
use prometheus::IntCounter;
use std::collections::{HashMap, VecDeque};

/// How many ended requests are remembered for late/duplicate counting.
const RECENT: usize = 16_384;

/// Counters of one process's reply handling.
#[derive(Clone)]
pub struct ReplyMetrics {
    pub late: IntCounter,
    pub duplicate: IntCounter,
    pub timeouts: IntCounter,
}

impl ReplyMetrics {
    /// Registers the counters as `<prefix>_replies_late_total` and so on.
    pub fn register(metrics: &Metrics, prefix: &str) -> Self {
        ReplyMetrics {
            late: metrics.counter(
                &format!("{prefix}_replies_late_total"),
                "Replies that arrived after their request timed out (dropped).",
            ),
            duplicate: metrics.counter(
                &format!("{prefix}_replies_duplicate_total"),
                "Replies to a request that was already answered (ignored).",
            ),
            timeouts: metrics.counter(
                &format!("{prefix}_requests_timed_out_total"),
                "Requests whose deadline passed before they were complete.",
            ),
        }
    }
}

/// Routes replies to waiters.
pub struct ReplyDispatcher {
    waiters: HashMap<String, Recipient<Reply>>,
    recent: HashMap<String, bool>,
    order: VecDeque<String>,
    metrics: ReplyMetrics,
}

impl ReplyDispatcher {
    pub fn new(metrics: ReplyMetrics) -> Self {
        ReplyDispatcher {
            waiters: HashMap::new(),
            recent: HashMap::new(),
            order: VecDeque::new(),
            metrics,
        }
    }
}

impl Actor for ReplyDispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
    }
}

/// A waiter for `correlation_id` is ready for replies.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Register {
    pub correlation_id: String,
    pub waiter: Recipient<Reply>,
}

impl Handler<Register> for ReplyDispatcher {
    type Result = ();
    fn handle(&mut self, msg: Register, _: &mut Self::Context) {
        self.waiters.insert(msg.correlation_id, msg.waiter);
    }
}

impl Handler<WaiterDone> for ReplyDispatcher {
    type Result = ();
    fn handle(&mut self, msg: WaiterDone, _: &mut Self::Context) {
        if self.waiters.remove(&msg.correlation_id).is_none() {
            return;
        }
        if msg.timed_out {
            self.metrics.timeouts.inc();
        }
        if self.order.len() >= RECENT {
            if let Some(old) = self.order.pop_front() {
                self.recent.remove(&old);
            }
        }
        self.order.push_back(msg.correlation_id.clone());
        self.recent.insert(msg.correlation_id, msg.timed_out);
    }
}

impl Handler<Delivered> for ReplyDispatcher {
    type Result = ();
    fn handle(&mut self, Delivered(event): Delivered, _: &mut Self::Context) {
        let Some(id) = event.correlation_id.as_deref() else {
            return;
        };
        if let Some(waiter) = self.waiters.get(id) {
            waiter.do_send(Reply(event));
            return;
        }
        match self.recent.get(id) {
            Some(true) => {
                self.metrics.late.inc();
                tracing::info!(correlation_id = id, event = %event.name, "late reply dropped");
            }
            Some(false) => {
                self.metrics.duplicate.inc();
                tracing::debug!(correlation_id = id, event = %event.name, "duplicate reply ignored");
            }
            None => {}
        }
    }
}
