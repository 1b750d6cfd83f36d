//! Durable run requests on NATS: a JetStream work-queue stream
//! (`BUS_WORK`) over the run-request subjects, one durable pull consumer
//! per unicast group and subject, explicit acknowledgement, and claims in
//! a key-value bucket (`bus_claims`) so a redelivered request never runs
//! twice.
//!
//! A work-queue stream may not share subjects with another stream; the
//! replay stream therefore keeps its copies under `bus-replay.<name>`.

use super::{Ack, BrokerError, Claim, ClaimRecord, Event, EventStream};
use crate::contract::Envelope;
use async_nats::jetstream::{self, consumer, kv, stream, AckKind};
use futures::future::LocalBoxFuture;
use futures::{FutureExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;

/// The work-queue stream.
pub const WORK_STREAM: &str = "BUS_WORK";
/// The claims bucket.
pub const CLAIMS_BUCKET: &str = "bus_claims";
/// The default durable subjects: every prefix's run requests.
pub const DEFAULT_WORK_SUBJECTS: &[&str] = &["bus.*.run.request"];
/// How long an unclaimed request, and a claim, are kept.
const KEEP: Duration = Duration::from_secs(24 * 3600);

fn unavailable(what: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("NATS {what}: {e}"))
}

/// Whether subject `name` matches NATS subject `pattern` (`*` one token,
/// `>` the rest).
pub fn subject_matches(pattern: &str, name: &str) -> bool {
    let mut names = name.split('.');
    for p in pattern.split('.') {
        match (p, names.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(n)) if p == n => {}
            _ => return false,
        }
    }
    names.next().is_none()
}

/// Opens (creating) a key-value bucket. Its stream is made directly: the
/// client's own `create_key_value` queries account info that servers
/// before 2.10 answer in a shape it cannot read.
pub async fn key_value(
    js: &jetstream::Context,
    bucket: &str,
    max_age: Duration,
) -> Result<kv::Store, String> {
    if let Ok(kv) = js.get_key_value(bucket).await {
        return Ok(kv);
    }
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        duplicate_window: Duration::from_secs(120),
        storage: stream::StorageType::File,
        ..Default::default()
    };
    js.get_or_create_stream(config).await.map_err(|e| {
        format!("creating the KV bucket {bucket} (is JetStream on? nats-server -js): {e}")
    })?;
    js.get_key_value(bucket)
        .await
        .map_err(|e| format!("opening the KV bucket {bucket}: {e}"))
}

/// The durable side of a NATS connection.
#[derive(Clone)]
pub struct WorkQueue {
    stream: stream::Stream,
    claims: kv::Store,
    subjects: Vec<String>,
    pub ack_wait: Duration,
    batch: usize,
}

impl WorkQueue {
    /// Makes sure the stream and the claims bucket exist.
    pub async fn open(
        js: &jetstream::Context,
        subjects: &[String],
        ack_wait: Duration,
    ) -> Result<Self, String> {
        let config = stream::Config {
            name: WORK_STREAM.into(),
            subjects: subjects.to_vec(),
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            max_age: KEEP,
            ..Default::default()
        };
        let stream = js
            .get_or_create_stream(config)
            .await
            .map_err(|e| format!("the work-queue stream {WORK_STREAM}: {e}"))?;
        let claims = key_value(js, CLAIMS_BUCKET, KEEP).await?;
        Ok(WorkQueue {
            stream,
            claims,
            subjects: subjects.to_vec(),
            ack_wait,
            batch: 16,
        })
    }

    pub fn covers(&self, name: &str) -> bool {
        self.subjects.iter().any(|p| subject_matches(p, name))
    }

    /// Takes `name`'s requests. A work-queue stream allows one consumer
    /// per subject, so there is one durable consumer per subject, shared
    /// by every subscriber of it whatever its group (a subject has one
    /// kind of consumer: the routers of `bus.containers`, the workers of
    /// `bus.docker`).
    pub async fn consume(&self, name: &str) -> Result<EventStream, BrokerError> {
        let durable = format!("work__{}", super::claim::clean(name));
        let config = consumer::pull::Config {
            durable_name: Some(durable.clone()),
            filter_subject: name.to_owned(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: -1,
            max_ack_pending: 10_000,
            ..Default::default()
        };
        let consumer: consumer::PullConsumer = self
            .stream
            .get_or_create_consumer(&durable, config.clone())
            .await
            .map_err(|e| unavailable("work-queue consumer", e))?;
        if consumer.cached_info().config.ack_wait != self.ack_wait {
            // Made by a process with another --nats-ack-wait: the server's
            // value would govern redelivery, so make it this one.
            if let Err(e) = self.stream.update_consumer(config).await {
                tracing::error!(consumer = %durable, error = %e, "the work-queue consumer keeps another ack wait than --nats-ack-wait; give every process the same value");
            }
        }
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.batch)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
            .map_err(|e| unavailable("work-queue consumer", e))?;
        let stream = messages.filter_map(|m| async move {
            match m {
                Ok(m) => match serde_json::from_slice::<Envelope>(&m.payload) {
                    Ok(env) => Some(Ok(Event::durable(env, Arc::new(NatsAck(m))))),
                    Err(e) => {
                        tracing::warn!(error = %e, "dropping a malformed message from the work queue");
                        let _ = m.ack_with(AckKind::Term).await;
                        None
                    }
                },
                Err(e) => {
                    // Missed heartbeats and the like: the stream goes on.
                    tracing::debug!(error = %e, "work-queue consumer");
                    None
                }
            }
        });
        Ok(stream.boxed_local())
    }

    pub fn claim(
        &self,
        key: &str,
        record: ClaimRecord,
    ) -> LocalBoxFuture<'static, Result<Claim, BrokerError>> {
        let kv = self.claims.clone();
        let key = key.to_owned();
        async move {
            let value = serde_json::to_vec(&record).expect("a claim serialises");
            match kv.create(&key, value.into()).await {
                Ok(revision) => return Ok(Claim::Won { revision }),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(unavailable("claim", e)),
            }
            let entry = kv
                .entry(&key)
                .await
                .map_err(|e| unavailable("claim", e))?
                .ok_or_else(|| unavailable("claim", "the claim vanished"))?;
            let record: ClaimRecord = serde_json::from_slice(&entry.value)
                .map_err(|e| unavailable("claim", format!("unreadable claim: {e}")))?;
            Ok(Claim::Held {
                record,
                revision: entry.revision,
            })
        }
        .boxed_local()
    }

    pub fn update_claim(
        &self,
        key: &str,
        record: ClaimRecord,
        expected: Option<u64>,
    ) -> LocalBoxFuture<'static, Result<Option<u64>, BrokerError>> {
        let kv = self.claims.clone();
        let key = key.to_owned();
        async move {
            let value: bytes::Bytes = serde_json::to_vec(&record)
                .expect("a claim serialises")
                .into();
            match expected {
                None => kv
                    .put(&key, value)
                    .await
                    .map(Some)
                    .map_err(|e| unavailable("claim", e)),
                Some(revision) => match kv.update(&key, value, revision).await {
                    Ok(revision) => Ok(Some(revision)),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
                    Err(e) => Err(unavailable("claim", e)),
                },
            }
        }
        .boxed_local()
    }
}

/// The acknowledgement of one work-queue message.
struct NatsAck(jetstream::Message);

impl NatsAck {
    fn send(&self, kind: AckKind) -> LocalBoxFuture<'static, Result<(), BrokerError>> {
        let m = self.0.clone();
        async move {
            m.ack_with(kind)
                .await
                .map_err(|e| unavailable("acknowledgement", e))
        }
        .boxed_local()
    }
}

impl Ack for NatsAck {
    fn done(&self) -> LocalBoxFuture<'static, Result<(), BrokerError>> {
        self.send(AckKind::Ack)
    }

    fn working(&self) -> LocalBoxFuture<'static, Result<(), BrokerError>> {
        self.send(AckKind::Progress)
    }

    fn retry_later(&self, delay: Duration) -> LocalBoxFuture<'static, Result<(), BrokerError>> {
        self.send(AckKind::Nak(Some(delay)))
    }

    fn deliveries(&self) -> u64 {
        self.0
            .info()
            .map(|i| i.delivered.max(1) as u64)
            .unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use super::subject_matches;

    #[test]
    fn subjects_match_like_nats() {
        assert!(subject_matches(
            "bus.*.run.request",
            "bus.docker.run.request"
        ));
        assert!(!subject_matches(
            "bus.*.run.request",
            "bus.docker.run.response"
        ));
        assert!(!subject_matches("bus.*.run.request", "bus.a.b.run.request"));
        assert!(!subject_matches("bus.*.run.request", "bus.docker.run"));
        assert!(subject_matches("bus.>", "bus.docker.run"));
        assert!(!subject_matches("bus.>", "bus"));
        assert!(subject_matches("a.b", "a.b"));
    }
}
