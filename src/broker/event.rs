//! An envelope as the broker hands it out: shared between every subscriber
//! and serialised at most once, with the acknowledgement handle of a
//! durable delivery.

use super::BrokerError;
use crate::contract::Envelope;
use bytes::Bytes;
use futures::future::LocalBoxFuture;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The acknowledgement of one durable delivery (a JetStream work-queue
/// message). Until `done`, the broker redelivers the event after its ack
/// wait; `working` pushes that back while a long task runs.
pub trait Ack: Send + Sync {
    /// Handled: never deliver it again.
    fn done(&self) -> LocalBoxFuture<'static, Result<(), BrokerError>>;
    /// Still being handled: restart the ack wait.
    fn working(&self) -> LocalBoxFuture<'static, Result<(), BrokerError>>;
    /// Not handled here: deliver it again (to anyone) after `delay`.
    fn retry_later(&self, delay: Duration) -> LocalBoxFuture<'static, Result<(), BrokerError>>;
    /// How many times it has been delivered, this time included.
    fn deliveries(&self) -> u64;
}

/// A delivered event. Subscribers share one `Arc<Event>`; the NDJSON line
/// is computed once, on first use, for every HTTP stream that sends it.
pub struct Event {
    envelope: Envelope,
    line: OnceLock<Bytes>,
    ack: Option<Arc<dyn Ack>>,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("envelope", &self.envelope)
            .field("durable", &self.ack.is_some())
            .finish()
    }
}

impl Event {
    pub fn new(envelope: Envelope) -> Arc<Self> {
        Arc::new(Event {
            envelope,
            line: OnceLock::new(),
            ack: None,
        })
    }

    /// A durable delivery, acknowledged through `ack`.
    pub fn durable(envelope: Envelope, ack: Arc<dyn Ack>) -> Arc<Self> {
        Arc::new(Event {
            envelope,
            line: OnceLock::new(),
            ack: Some(ack),
        })
    }

    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The acknowledgement handle of a durable delivery.
    pub fn ack(&self) -> Option<&Arc<dyn Ack>> {
        self.ack.as_ref()
    }

    /// The envelope as one NDJSON line, newline included.
    pub fn line(&self) -> &Bytes {
        self.line.get_or_init(|| self.envelope.to_ndjson())
    }
}

impl std::ops::Deref for Event {
    type Target = Envelope;
    fn deref(&self) -> &Envelope {
        &self.envelope
    }
}
