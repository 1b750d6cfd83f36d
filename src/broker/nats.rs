//! The `Broker` on NATS: event names are subjects, unicast groups are
//! queue groups, broadcast is a plain subscription, and replay comes from
//! a JetStream stream (`BUS_REPLAY`) that keeps a bounded window per name.
//!
//! Replay copies go to `bus-replay.<name>`, not to `<name>` itself: a
//! JetStream stream may not share subjects with another stream, and the
//! run-request subjects belong to the durable work queue
//! ([`super::work_queue`]): a run published while no worker is up waits
//! for one. NATS carries no bearer tokens:
//! whoever may connect is trusted like a service, so access is NATS's own
//! (credentials in the URL, network policy). Identity filtering of
//! non-service listeners is applied on receipt.

use super::work_queue::{WorkQueue, DEFAULT_WORK_SUBJECTS};
use super::{Broker, BrokerError, Claim, ClaimRecord, Delivery, Event, EventStream, SubscribeSpec};
use crate::contract::Envelope;
use async_nats::jetstream;
use futures::future::LocalBoxFuture;
use futures::{FutureExt, StreamExt};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// The replay stream's name and subject prefix.
pub const REPLAY_STREAM: &str = "BUS_REPLAY";
const REPLAY_PREFIX: &str = "bus-replay";

/// Settings of a NATS connection.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Events kept per name for replay (0: no replay stream).
    pub replay_per_name: i64,
    /// Bytes kept by the replay stream overall.
    pub replay_bytes: i64,
    /// Messages buffered per subscription before NATS drops (counted).
    pub subscription_capacity: usize,
    /// Subjects made durable work queues (none: every run is at most
    /// once and lost without a live worker, as on the other brokers).
    pub work_subjects: Vec<String>,
    /// How long a durable delivery may go unacknowledged before it is
    /// delivered again (its handler sends progress well within it).
    pub ack_wait: Duration,
}

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            replay_per_name: 1000,
            replay_bytes: 64 << 20,
            subscription_capacity: 65_536,
            work_subjects: DEFAULT_WORK_SUBJECTS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ack_wait: Duration::from_secs(30),
        }
    }
}

/// A broker handle on a NATS server (or cluster).
#[derive(Clone)]
pub struct NatsBroker {
    client: async_nats::Client,
    replay: Option<jetstream::stream::Stream>,
    js: jetstream::Context,
    work: Option<WorkQueue>,
}

impl NatsBroker {
    /// Connects (retrying in the background if the server is not up yet)
    /// and makes sure the replay stream exists when JetStream is enabled.
    pub async fn connect(url: &str, options: NatsOptions) -> Result<Self, BrokerError> {
        let client = async_nats::ConnectOptions::new()
            .name("bus")
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .subscription_capacity(options.subscription_capacity)
            .event_callback(move |event| async move {
                match event {
                    async_nats::Event::SlowConsumer(sid) => {
                        tracing::warn!(subscription = sid, "NATS slow consumer: messages dropped");
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS disconnected; reconnecting")
                    }
                    async_nats::Event::Connected => tracing::info!("NATS connected"),
                    other => tracing::debug!(event = %other, "NATS event"),
                }
            })
            .connect(url)
            .await
            .map_err(|e| BrokerError::Unavailable(format!("NATS {url}: {e}")))?;
        let js = jetstream::new(client.clone());
        let mut replay = None;
        if options.replay_per_name > 0 {
            let config = jetstream::stream::Config {
                name: REPLAY_STREAM.into(),
                subjects: vec![format!("{REPLAY_PREFIX}.>")],
                max_messages_per_subject: options.replay_per_name,
                max_bytes: options.replay_bytes,
                discard: jetstream::stream::DiscardPolicy::Old,
                storage: jetstream::stream::StorageType::Memory,
                ..Default::default()
            };
            match tokio::time::timeout(Duration::from_secs(10), js.get_or_create_stream(config))
                .await
            {
                Ok(Ok(stream)) => replay = Some(stream),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "no JetStream replay stream (is JetStream enabled? nats-server -js); replay is off")
                }
                Err(_) => tracing::warn!("JetStream did not answer; replay is off"),
            }
        }
        let work = if options.work_subjects.is_empty() {
            None
        } else {
            open_work_queue(&js, &options).await?
        };
        Ok(NatsBroker {
            client,
            replay,
            js,
            work,
        })
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }
}

/// Opens the durable work queue. Without JetStream on the server, runs
/// are at most once and need a live worker (logged). Any other failure is
/// retried for a minute and then fatal: a process on plain subscriptions
/// beside others on the work queue would take every request twice.
async fn open_work_queue(
    js: &jetstream::Context,
    options: &NatsOptions,
) -> Result<Option<WorkQueue>, BrokerError> {
    let until = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let opened = WorkQueue::open(js, &options.work_subjects, options.ack_wait);
        let why = match tokio::time::timeout(Duration::from_secs(10), opened).await {
            Ok(Ok(queue)) => return Ok(Some(queue)),
            Ok(Err(e)) => e,
            Err(_) => "JetStream did not answer".to_owned(),
        };
        let lower = why.to_lowercase();
        if lower.contains("not enabled") || lower.contains("no responders") {
            tracing::warn!(error = %why, "JetStream is off (nats-server -js turns it on): no durable work queue, so a run needs a live worker");
            return Ok(None);
        }
        if std::time::Instant::now() >= until {
            return Err(BrokerError::Unavailable(format!("NATS work queue: {why}")));
        }
        tracing::warn!(error = %why, "could not open the durable work queue; retrying");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn parse(payload: &[u8]) -> Option<Arc<Event>> {
    match serde_json::from_slice::<Envelope>(payload) {
        Ok(env) => Some(Event::new(env)),
        Err(e) => {
            tracing::warn!(error = %e, "skipping a malformed message on NATS");
            None
        }
    }
}

/// The stored events of `name`, oldest first.
async fn replayed(
    stream: &jetstream::stream::Stream,
    name: &str,
) -> Result<Vec<Arc<Event>>, BrokerError> {
    let unavailable = |e: String| BrokerError::Unavailable(format!("NATS replay: {e}"));
    let mut consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: format!("{REPLAY_PREFIX}.{name}"),
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let pending = consumer
        .info()
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .num_pending;
    let mut out = Vec::with_capacity(pending as usize);
    if pending == 0 {
        return Ok(out);
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    while (out.len() as u64) < pending {
        match tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
            Ok(Some(Ok(m))) => out.extend(parse(&m.payload)),
            Ok(Some(Err(e))) => return Err(unavailable(e.to_string())),
            Ok(None) | Err(_) => break,
        }
    }
    Ok(out)
}

impl Broker for NatsBroker {
    fn publish(&self, envelope: Envelope) -> LocalBoxFuture<'static, Result<String, BrokerError>> {
        let client = self.client.clone();
        let replay = self.replay.is_some();
        let durable = self
            .durable(&envelope.name)
            .is_some()
            .then(|| self.js.clone());
        async move {
            let payload: bytes::Bytes = serde_json::to_vec(&envelope)
                .expect("an envelope serialises")
                .into();
            let fail = |e: async_nats::PublishError| {
                BrokerError::Unavailable(format!("NATS publish: {e}"))
            };
            if let Some(js) = durable {
                // Stored before it counts as published.
                let unstored =
                    |e: String| BrokerError::Unavailable(format!("NATS work queue: {e}"));
                // The envelope id lets JetStream drop a retried copy.
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", envelope.id.as_str());
                js.publish_with_headers(envelope.name.clone(), headers, payload.clone())
                    .await
                    .map_err(|e| unstored(e.to_string()))?
                    .await
                    .map_err(|e| unstored(e.to_string()))?;
            } else {
                client
                    .publish(envelope.name.clone(), payload.clone())
                    .await
                    .map_err(fail)?;
            }
            if replay {
                client
                    .publish(format!("{REPLAY_PREFIX}.{}", envelope.name), payload)
                    .await
                    .map_err(fail)?;
            }
            Ok(envelope.id)
        }
        .boxed_local()
    }

    fn subscribe(
        &self,
        spec: SubscribeSpec,
    ) -> LocalBoxFuture<'static, Result<EventStream, BrokerError>> {
        let this = self.clone();
        async move {
            let fail = |e: async_nats::SubscribeError| {
                BrokerError::Unavailable(format!("NATS subscribe: {e}"))
            };
            if let (Some(work), Delivery::Unicast { .. }, true, None) =
                (&this.work, &spec.delivery, spec.follow, &spec.identity)
            {
                if work.covers(&spec.name) {
                    return work.consume(&spec.name).await;
                }
            }
            // Live first, so nothing published during the replay is missed.
            let live = if spec.follow {
                Some(match &spec.delivery {
                    Delivery::Broadcast => this
                        .client
                        .subscribe(spec.name.clone())
                        .await
                        .map_err(fail)?,
                    Delivery::Unicast { group } => this
                        .client
                        .queue_subscribe(spec.name.clone(), group.clone())
                        .await
                        .map_err(fail)?,
                })
            } else {
                None
            };
            let stored = match (&this.replay, spec.replay) {
                (Some(stream), true) => replayed(stream, &spec.name).await?,
                _ => Vec::new(),
            };
            let identity = spec.identity.clone();
            let keep =
                move |e: &Arc<Event>| identity.as_deref().is_none_or(|who| who == e.identity_id);
            let seen: HashSet<String> = stored.iter().map(|e| e.id.clone()).collect();
            let keep_stored = keep.clone();
            let head =
                futures::stream::iter(stored.into_iter().filter(move |e| keep_stored(e)).map(Ok));
            let stream: EventStream = match live {
                None => head.boxed_local(),
                Some(sub) => {
                    let tail = sub.filter_map(move |m| {
                        let event = parse(&m.payload).filter(|e| keep(e) && !seen.contains(&e.id));
                        futures::future::ready(event.map(Ok))
                    });
                    head.chain(tail).boxed_local()
                }
            };
            Ok(stream)
        }
        .boxed_local()
    }

    fn ready(&self) -> Result<(), BrokerError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            other => Err(BrokerError::Unavailable(format!("NATS is {other:?}"))),
        }
    }

    fn kind(&self) -> &'static str {
        "nats"
    }

    fn max_payload(&self) -> Option<usize> {
        Some(self.client.max_payload()).filter(|n| *n > 0)
    }

    fn durable(&self, name: &str) -> Option<Duration> {
        self.work
            .as_ref()
            .filter(|w| w.covers(name))
            .map(|w| w.ack_wait)
    }

    fn claim(
        &self,
        key: &str,
        record: ClaimRecord,
    ) -> LocalBoxFuture<'static, Result<Claim, BrokerError>> {
        match &self.work {
            Some(work) => work.claim(key, record),
            None => async { Ok(Claim::Won { revision: 0 }) }.boxed_local(),
        }
    }

    fn update_claim(
        &self,
        key: &str,
        record: ClaimRecord,
        expected: Option<u64>,
    ) -> LocalBoxFuture<'static, Result<Option<u64>, BrokerError>> {
        match &self.work {
            Some(work) => work.update_claim(key, record, expected),
            None => async { Ok(Some(0)) }.boxed_local(),
        }
    }
}
