//! Request/reply over the bus: publish a request and wait for its reply
//! through a [`CorrelationWaiter`], with a fresh unguessable correlation id
//! (UUIDv4) and a deadline. Used by the router and the API provider.

use super::dispatcher::{Register, ReplyDispatcher, ReplyMetrics};
use crate::actors::bus::subscription::Subscription;
use crate::actors::bus::waiter::{CorrelationWaiter, Expect, Outcome};
use crate::broker::{BrokerError, SharedBroker, SubscribeSpec};
use crate::contract::{encode, WireRequest, WorkerReply};
use crate::contract::{Envelope, ErrorDetail, ErrorType, Publication};
use actix::prelude::*;
use dashmap::DashMap;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// Who this process is on the bus. The memory broker trusts these stamps;
/// a remote Events API stamps its own from the process's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusIdentity {
    pub sub: String,
    pub service: bool,
}

impl BusIdentity {
    pub fn service(sub: impl Into<String>) -> Self {
        BusIdentity {
            sub: sub.into(),
            service: true,
        }
    }

    /// Stamps a publication as this identity.
    pub fn envelope(&self, publication: Publication) -> Envelope {
        Envelope::stamp(publication, &self.sub, self.service)
    }
}

/// One request.
#[derive(Debug, Clone)]
pub struct Request {
    pub name: String,
    pub reply_name: String,
    pub payload: Value,
    pub timeout: Duration,
    pub expect: Expect,
}

impl Request {
    /// A request on `name` answered on the matching `.response` name.
    pub fn new(name: &str, payload: Value, timeout: Duration) -> Self {
        Request {
            name: name.to_owned(),
            reply_name: reply_name(name),
            payload,
            timeout,
            expect: Expect::First,
        }
    }

    pub fn expect(mut self, expect: Expect) -> Self {
        self.expect = expect;
        self
    }

    /// A typed request of `Q`'s kind on `prefix`.
    pub fn of<Q: WireRequest>(prefix: &str, body: &Q, timeout: Duration) -> Self {
        Request::new(&Q::KIND.request(prefix), encode(body), timeout)
    }
}

/// `a.b.request` → `a.b.response`.
pub fn reply_name(request: &str) -> String {
    match request.strip_suffix(".request") {
        Some(stem) => format!("{stem}.response"),
        None => format!("{request}.response"),
    }
}

/// Publishes requests and waits for their replies. Cheap to clone.
#[derive(Clone)]
pub struct Requester {
    inner: Arc<Inner>,
}

struct Inner {
    broker: SharedBroker,
    identity: BusIdentity,
    dispatcher: Addr<ReplyDispatcher>,
    /// Reply names subscribed to (read on every request without a lock
    /// worth the name: a sharded map).
    listening: DashMap<String, Addr<Subscription>>,
    listen_lock: tokio::sync::Mutex<()>,
}

impl Requester {
    /// Starts the reply dispatcher on the current arbiter.
    pub fn new(broker: SharedBroker, identity: BusIdentity, metrics: ReplyMetrics) -> Self {
        Requester {
            inner: Arc::new(Inner {
                broker,
                identity,
                dispatcher: ReplyDispatcher::new(metrics).start(),
                listening: DashMap::new(),
                listen_lock: tokio::sync::Mutex::new(()),
            }),
        }
    }

    pub fn identity(&self) -> &BusIdentity {
        &self.inner.identity
    }

    pub fn broker(&self) -> &SharedBroker {
        &self.inner.broker
    }

    /// Subscribes (broadcast) to a reply name, once.
    pub async fn listen(&self, reply_name: &str) -> Result<(), BrokerError> {
        if self.inner.listening.contains_key(reply_name) {
            return Ok(());
        }
        let _one_at_a_time = self.inner.listen_lock.lock().await;
        if self.inner.listening.contains_key(reply_name) {
            return Ok(());
        }
        let addr = Subscription::start(
            self.inner.broker.clone(),
            SubscribeSpec::broadcast(reply_name)
                .consumer(format!("{}-replies", self.inner.identity.sub)),
            self.inner.dispatcher.clone().recipient(),
        )
        .await?;
        self.inner.listening.insert(reply_name.to_owned(), addr);
        Ok(())
    }

    /// Publishes `payload` as `name` as this process's identity (no reply).
    pub async fn publish(&self, publication: Publication) -> Result<String, BrokerError> {
        self.inner
            .broker
            .publish(self.inner.identity.envelope(publication))
            .await
    }

    /// Publishes a request and waits for its reply (or replies).
    pub async fn request(&self, req: Request) -> Result<Outcome, ErrorDetail> {
        self.listen(&req.reply_name)
            .await
            .map_err(|e| ErrorDetail::new(ErrorType::Unavailable, e.to_string()))?;
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let (waiter, rx) = CorrelationWaiter::new(
            correlation_id.clone(),
            req.expect,
            self.inner.identity.sub.clone(),
            req.timeout,
            self.inner.dispatcher.clone().recipient(),
        );
        let waiter = waiter.start();
        self.inner
            .dispatcher
            .send(Register {
                correlation_id: correlation_id.clone(),
                waiter: waiter.recipient(),
            })
            .await
            .map_err(|e| {
                ErrorDetail::new(ErrorType::Unavailable, format!("reply dispatcher: {e}"))
            })?;
        let publication = Publication::new(req.name, req.payload).with_correlation(correlation_id);
        if let Err(e) = self.publish(publication).await {
            return Err(ErrorDetail::new(ErrorType::Unavailable, e.to_string()));
        }
        rx.await
            .map_err(|_| ErrorDetail::new(ErrorType::Timeout, "the request's waiter went away"))
    }
}

/// The first reply of an outcome, decoded as `R`: `None` when none came,
/// `Some(Err)` when it is malformed.
pub fn first_reply<R: serde::de::DeserializeOwned>(
    outcome: &Outcome,
) -> Option<Result<WorkerReply<R>, crate::contract::Malformed>> {
    outcome
        .replies
        .first()
        .map(|e| WorkerReply::decode(&e.payload))
}
