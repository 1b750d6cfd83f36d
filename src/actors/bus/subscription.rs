//! `Subscription`: one broker stream feeding one recipient, each event
//! decoded at the edge into the recipient's own message type (events
//! that decode to nothing are skipped).
//!
//! When the stream ends (a memory subscriber cut off as too slow, an HTTP
//! stream lost without listener retry) the actor subscribes again with a
//! bounded exponential backoff; auth failures stop it. Delivery to the
//! recipient is backpressured: when its mailbox is full the stream is not
//! polled until there is room.

use crate::broker::{BrokerError, Event, SharedBroker, SubscribeSpec};
use actix::prelude::*;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// One event from a subscription.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Delivered(pub Arc<Event>);

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Turns an event into the recipient's message (`None`: not for it).
pub type Decode<M> = Box<dyn Fn(Arc<Event>) -> Option<M>>;

/// The actor owning one subscription.
pub struct Subscription<M: Message<Result = ()> + Send + 'static = Delivered> {
    /// Says whether this subscription is connected, where the broker
    /// keeps account (readiness).
    health: Option<crate::broker::listener::ListenerGuard>,
    broker: SharedBroker,
    spec: SubscribeSpec,
    decode: Decode<M>,
    target: Recipient<M>,
    backoff: Duration,
    first: Option<oneshot::Sender<Result<(), BrokerError>>>,
}

impl Subscription<Delivered> {
    /// Starts a subscription that hands over events as they are (bus
    /// plumbing: the reply dispatcher).
    pub async fn start(
        broker: SharedBroker,
        spec: SubscribeSpec,
        target: Recipient<Delivered>,
    ) -> Result<Addr<Subscription>, BrokerError> {
        Subscription::start_decoded(broker, spec, Box::new(|e| Some(Delivered(e))), target).await
    }
}

impl<M: Message<Result = ()> + Send + 'static> Subscription<M> {
    /// Starts a subscription on the current arbiter and waits until its
    /// first subscribe call has answered, so nothing published after this
    /// returns can be missed.
    pub async fn start_decoded(
        broker: SharedBroker,
        spec: SubscribeSpec,
        decode: Decode<M>,
        target: Recipient<M>,
    ) -> Result<Addr<Subscription<M>>, BrokerError> {
        let (tx, rx) = oneshot::channel();
        let health = broker.listeners().map(|h| h.register(&spec.name));
        let addr = Subscription {
            health,
            broker,
            spec,
            decode,
            target,
            backoff: MIN_BACKOFF,
            first: Some(tx),
        }
        .start();
        match rx.await {
            Ok(Ok(())) => Ok(addr),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(BrokerError::Unavailable("subscription stopped".into())),
        }
    }

    fn subscribe(&mut self, ctx: &mut Context<Self>) {
        let fut = self.broker.subscribe(self.spec.clone());
        ctx.wait(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(stream) => {
                act.connected(true);
                if let Some(tx) = act.first.take() {
                    let _ = tx.send(Ok(()));
                } else {
                    tracing::info!(event = %act.spec.name, "resubscribed");
                }
                act.backoff = MIN_BACKOFF;
                ctx.add_stream(stream);
            }
            Err(e) if e.is_fatal() || act.first.is_some() => {
                tracing::error!(event = %act.spec.name, error = %e, "subscription failed");
                if let Some(tx) = act.first.take() {
                    let _ = tx.send(Err(e));
                }
                ctx.stop();
            }
            Err(e) => {
                tracing::warn!(event = %act.spec.name, error = %e, retry_in = ?act.backoff, "resubscribe failed");
                act.retry_later(ctx);
            }
        }));
    }

    fn connected(&self, up: bool) {
        if let Some(h) = &self.health {
            h.set_connected(up);
        }
    }

    fn retry_later(&mut self, ctx: &mut Context<Self>) {
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        ctx.run_later(delay, |act, ctx| act.subscribe(ctx));
    }
}

impl<M: Message<Result = ()> + Send + 'static> Actor for Subscription<M> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.subscribe(ctx);
    }
}

impl<M: Message<Result = ()> + Send + 'static> StreamHandler<Result<Arc<Event>, BrokerError>>
    for Subscription<M>
{
    fn handle(&mut self, item: Result<Arc<Event>, BrokerError>, ctx: &mut Self::Context) {
        match item {
            Ok(event) => match (self.decode)(event).map(|m| self.target.try_send(m)) {
                None => {}
                Some(Ok(())) => {}
                Some(Err(SendError::Full(msg))) => {
                    // Hold the stream until the recipient has room.
                    ctx.wait(self.target.send(msg).into_actor(self).map(|_, _, _| ()));
                }
                Some(Err(SendError::Closed(_))) => ctx.stop(),
            },
            Err(e) if e.is_fatal() => {
                tracing::error!(event = %self.spec.name, error = %e, "subscription refused");
                ctx.stop();
            }
            Err(e) => {
                tracing::warn!(event = %self.spec.name, error = %e, "subscription interrupted")
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        if !self.target.connected() {
            ctx.stop();
            return;
        }
        if !self.spec.follow {
            ctx.stop();
            return;
        }
        self.connected(false);
        tracing::warn!(event = %self.spec.name, "subscription ended; subscribing again");
        // Replay only ever on the first subscription, or events repeat.
        self.spec.replay = false;
        self.retry_later(ctx);
    }
}

/// Stops a subscription.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

impl<M: Message<Result = ()> + Send + 'static> Handler<Stop> for Subscription<M> {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
