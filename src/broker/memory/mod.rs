//! The embedded in-memory broker: one [`Hub`] actor owns every topic;
//! [`MemoryBroker`] handles talk to it.
//!
//! Bounds, so memory never grows without limit:
//! - each subscriber has a queue of `queue_capacity` events. **Slow-consumer
//!   policy:** a subscriber whose queue is full when an event arrives is cut
//!   off — its stream ends, the reason is logged and counted — and a unicast
//!   event then goes to the next consumer of the group. Publishers and the
//!   other subscribers never wait for a slow one.
//! - the replay window keeps at most `replay_per_name` events per name and
//!   `replay_bytes` bytes overall; the name published longest ago loses its
//!   window first.
//! - the hub's mailbox is bounded; publishers wait for room (backpressure).

use super::{Broker, BrokerError, Delivery, Event, EventStream, SubscribeSpec};
use crate::contract::Envelope;
use crate::metrics::BusMetrics;
use actix::prelude::*;
use futures::future::LocalBoxFuture;
use futures::StreamExt;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use topic::{Consumer, Topic};

mod topic;

/// Limits of the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub queue_capacity: usize,
    pub replay_per_name: usize,
    pub replay_bytes: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            queue_capacity: 1024,
            replay_per_name: 1000,
            replay_bytes: 64 << 20,
        }
    }
}

/// Why a delivery attempt did not land.
enum Outcome {
    Delivered,
    Skipped,
    Gone,
    CutOff,
}

fn offer(consumer: &Consumer, event: &Arc<Event>) -> Outcome {
    if !consumer.wants(event) {
        return Outcome::Skipped;
    }
    match consumer.tx.try_send(event.clone()) {
        Ok(()) => Outcome::Delivered,
        Err(mpsc::error::TrySendError::Closed(_)) => Outcome::Gone,
        Err(mpsc::error::TrySendError::Full(_)) => Outcome::CutOff,
    }
}

/// The actor that owns every topic of the embedded bus.
pub struct Hub {
    config: HubConfig,
    metrics: BusMetrics,
    topics: HashMap<String, Topic>,
    replay_bytes: usize,
    seq: u64,
    next_consumer: u64,
}

impl Hub {
    pub fn new(config: HubConfig, metrics: BusMetrics) -> Self {
        Hub {
            config,
            metrics,
            topics: HashMap::new(),
            replay_bytes: 0,
            seq: 0,
            next_consumer: 0,
        }
    }

    fn cut_off(&self, name: &str, label: &str) {
        self.metrics.consumers_cut_off.inc();
        self.metrics.open_streams.dec();
        tracing::warn!(
            event = name,
            consumer = label,
            queue = self.config.queue_capacity,
            "slow consumer cut off: its queue was full"
        );
    }

    fn deliver(&mut self, event: &Arc<Event>) {
        let Some(topic) = self.topics.get_mut(&event.name) else {
            return;
        };
        let mut delivered = 0u64;
        let mut cut = Vec::new();
        let mut gone = 0i64;
        topic.broadcast.retain(|c| match offer(c, event) {
            Outcome::Delivered => {
                delivered += 1;
                true
            }
            Outcome::Skipped => true,
            Outcome::Gone => {
                gone += 1;
                false
            }
            Outcome::CutOff => {
                cut.push(c.label.clone());
                false
            }
        });
        let mut undelivered_groups = 0u64;
        for group in topic.groups.values_mut() {
            let mut landed = false;
            let mut tries = group.consumers.len();
            while tries > 0 && !group.consumers.is_empty() {
                tries -= 1;
                let i = group.next % group.consumers.len();
                match offer(&group.consumers[i], event) {
                    Outcome::Delivered => {
                        group.next = i + 1;
                        landed = true;
                        break;
                    }
                    Outcome::Skipped => group.next = i + 1,
                    Outcome::Gone => {
                        group.consumers.remove(i);
                        gone += 1;
                    }
                    Outcome::CutOff => {
                        cut.push(group.consumers.remove(i).label);
                    }
                }
            }
            if landed {
                delivered += 1;
            } else {
                undelivered_groups += 1;
            }
        }
        topic.groups.retain(|_, g| !g.consumers.is_empty());
        self.metrics.delivered.inc_by(delivered);
        self.metrics.dropped_no_consumer.inc_by(undelivered_groups);
        self.metrics.open_streams.sub(gone);
        for label in cut {
            self.cut_off(&event.name, &label);
        }
    }

    fn remember(&mut self, event: Arc<Event>) {
        if self.config.replay_per_name == 0 || self.config.replay_bytes == 0 {
            return;
        }
        let size = event.line().len();
        if size > self.config.replay_bytes {
            return;
        }
        let topic = self.topics.entry(event.name.clone()).or_default();
        topic.replay.push_back(event);
        topic.replay_bytes += size;
        self.replay_bytes += size;
        while topic.replay.len() > self.config.replay_per_name {
            if let Some(old) = topic.replay.pop_front() {
                let n = old.line().len();
                topic.replay_bytes -= n;
                self.replay_bytes -= n;
            }
        }
        while self.replay_bytes > self.config.replay_bytes {
            // The name published longest ago gives up its window first.
            let oldest = self
                .topics
                .iter()
                .filter(|(_, t)| !t.replay.is_empty())
                .min_by_key(|(_, t)| t.last_publish)
                .map(|(n, _)| n.clone());
            let Some(name) = oldest else { break };
            let topic = self.topics.get_mut(&name).expect("topic exists");
            if let Some(old) = topic.replay.pop_front() {
                let n = old.line().len();
                topic.replay_bytes -= n;
                self.replay_bytes -= n;
            }
        }
    }

    fn forget_consumer(&mut self, name: &str, id: u64) {
        let Some(topic) = self.topics.get_mut(name) else {
            return;
        };
        let before = topic.broadcast.len()
            + topic
                .groups
                .values()
                .map(|g| g.consumers.len())
                .sum::<usize>();
        topic.broadcast.retain(|c| c.id != id);
        for g in topic.groups.values_mut() {
            g.consumers.retain(|c| c.id != id);
        }
        topic.groups.retain(|_, g| !g.consumers.is_empty());
        let after = topic.broadcast.len()
            + topic
                .groups
                .values()
                .map(|g| g.consumers.len())
                .sum::<usize>();
        self.metrics.open_streams.sub((before - after) as i64);
        if topic.is_idle() {
            self.topics.remove(name);
        }
    }
}

impl Actor for Hub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
    }
}

/// Publish one stamped envelope.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish(pub Arc<Event>);

impl Handler<Publish> for Hub {
    type Result = ();

    fn handle(&mut self, Publish(event): Publish, _: &mut Self::Context) {
        self.seq += 1;
        self.metrics.published.inc();
        self.deliver(&event);
        let seq = self.seq;
        self.remember(event.clone());
        if let Some(topic) = self.topics.get_mut(&event.name) {
            topic.last_publish = seq;
        }
    }
}

/// Open a subscription: the replay (when asked) and the live queue.
#[derive(Message)]
#[rtype(result = "Subscribed")]
pub struct Subscribe(pub SubscribeSpec);

/// The answer to [`Subscribe`].
pub struct Subscribed {
    pub id: u64,
    pub replay: Vec<Arc<Event>>,
    pub live: Option<mpsc::Receiver<Arc<Event>>>,
}

impl<A, M> actix::dev::MessageResponse<A, M> for Subscribed
where
    A: Actor,
    M: Message<Result = Subscribed>,
{
    fn handle(self, _: &mut A::Context, tx: Option<actix::dev::OneshotSender<Subscribed>>) {
        if let Some(tx) = tx {
            let _ = tx.send(self);
        }
    }
}

impl Handler<Subscribe> for Hub {
    type Result = Subscribed;

    fn handle(&mut self, Subscribe(spec): Subscribe, _: &mut Self::Context) -> Subscribed {
        self.next_consumer += 1;
        let id = self.next_consumer;
        let replay = if spec.replay {
            self.topics
                .get(&spec.name)
                .map(|t| {
                    t.replay
                        .iter()
                        .filter(|e| spec.identity.as_deref().is_none_or(|w| w == e.identity_id))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        if !spec.follow {
            return Subscribed {
                id,
                replay,
                live: None,
            };
        }
        let (tx, rx) = mpsc::channel(self.config.queue_capacity.max(1));
        let consumer = Consumer {
            id,
            label: spec.consumer.clone(),
            identity: spec.identity.clone(),
            tx,
        };
        let topic = self.topics.entry(spec.name.clone()).or_default();
        match spec.delivery {
            Delivery::Broadcast => topic.broadcast.push(consumer),
            Delivery::Unicast { group } => topic
                .groups
                .entry(group)
                .or_default()
                .consumers
                .push(consumer),
        }
        self.metrics.open_streams.inc();
        Subscribed {
            id,
            replay,
            live: Some(rx),
        }
    }
}

/// A subscription's stream was dropped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub name: String,
    pub id: u64,
}

impl Handler<Unsubscribe> for Hub {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Self::Context) {
        self.forget_consumer(&msg.name, msg.id);
    }
}

/// Tells the hub when a subscriber's stream is dropped, so the topic does
/// not keep a dead consumer until its next publish.
struct DropGuard {
    hub: Addr<Hub>,
    name: String,
    id: u64,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.hub.do_send(Unsubscribe {
            name: std::mem::take(&mut self.name),
            id: self.id,
        });
    }
}

/// A handle on the embedded hub. Cloning is cheap; every clone talks to
/// the same hub.
#[derive(Clone)]
pub struct MemoryBroker {
    hub: Addr<Hub>,
}

impl MemoryBroker {
    /// Starts a hub on the current arbiter. Must run inside an actix System.
    pub fn start(config: HubConfig, metrics: BusMetrics) -> Self {
        MemoryBroker {
            hub: Hub::new(config, metrics).start(),
        }
    }

    pub fn hub(&self) -> &Addr<Hub> {
        &self.hub
    }
}

impl Broker for MemoryBroker {
    fn publish(&self, envelope: Envelope) -> LocalBoxFuture<'static, Result<String, BrokerError>> {
        let hub = self.hub.clone();
        Box::pin(async move {
            let id = envelope.id.clone();
            hub.send(Publish(Event::new(envelope)))
                .await
                .map_err(|e| BrokerError::Unavailable(format!("memory hub: {e}")))?;
            Ok(id)
        })
    }

    fn subscribe(
        &self,
        spec: SubscribeSpec,
    ) -> LocalBoxFuture<'static, Result<EventStream, BrokerError>> {
        let hub = self.hub.clone();
        Box::pin(async move {
            let name = spec.name.clone();
            let sub = hub
                .send(Subscribe(spec))
                .await
                .map_err(|e| BrokerError::Unavailable(format!("memory hub: {e}")))?;
            let replay = futures::stream::iter(sub.replay.into_iter().map(Ok));
            let stream: EventStream = match sub.live {
                None => replay.boxed_local(),
                Some(rx) => {
                    let guard = DropGuard {
                        hub,
                        name,
                        id: sub.id,
                    };
                    let live = ReceiverStream::new(rx).map(move |e| {
                        let _keep = &guard;
                        Ok(e)
                    });
                    replay.chain(live).boxed_local()
                }
            };
            Ok(stream)
        })
    }

    fn ready(&self) -> Result<(), BrokerError> {
        if self.hub.connected() {
            Ok(())
        } else {
            Err(BrokerError::Unavailable("memory hub stopped".into()))
        }
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
