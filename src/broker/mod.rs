//! The bus seen from a program: publish an envelope, subscribe to a name.
//!
//! `Broker` is the seam every backend implements — the embedded in-memory
//! hub ([`memory`]), a remote Events API over HTTP ([`http`]) — and that
//! one conformance suite (`tests/broker_conformance.rs`) checks. A broker
//! handle is shared across threads; the futures and streams it returns run
//! on the calling actix arbiter (awc's client is not `Send`).

pub mod claim;
pub mod event;
pub mod http;
pub mod listener;
pub mod memory;
pub mod nats;
pub mod work_queue;

pub use claim::{claim_key, run_id_of_envelope, Claim, ClaimRecord};
pub use event::{Ack, Event};
pub use listener::ListenerHealth;

use crate::contract::{Envelope, ErrorType};
use futures::future::LocalBoxFuture;
use futures::stream::LocalBoxStream;
use std::sync::Arc;
use std::time::Duration;

/// How events of one name reach a subscriber.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Delivery {
    /// Every subscriber gets every event.
    Broadcast,
    /// Each event goes to exactly one subscriber of the group; every group
    /// gets its own copy.
    Unicast { group: String },
}

impl Delivery {
    pub fn unicast(group: impl Into<String>) -> Self {
        Delivery::Unicast {
            group: group.into(),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Delivery::Broadcast => "broadcast",
            Delivery::Unicast { .. } => "unicast",
        }
    }
}

/// One subscription request.
#[derive(Debug, Clone)]
pub struct SubscribeSpec {
    pub name: String,
    pub delivery: Delivery,
    /// A label for logs and metrics (`consumer=` on the HTTP stream).
    pub consumer: String,
    /// First send the stored events of `name`.
    pub replay: bool,
    /// Keep the stream open for new events (`false`: close after replay).
    pub follow: bool,
    /// Only envelopes published by this identity (identity filtering);
    /// `None` for services that see every identity.
    pub identity: Option<String>,
}

impl SubscribeSpec {
    pub fn broadcast(name: impl Into<String>) -> Self {
        SubscribeSpec {
            name: name.into(),
            delivery: Delivery::Broadcast,
            consumer: "default".into(),
            replay: false,
            follow: true,
            identity: None,
        }
    }

    pub fn unicast(name: impl Into<String>, group: impl Into<String>) -> Self {
        SubscribeSpec {
            delivery: Delivery::unicast(group),
            ..SubscribeSpec::broadcast(name)
        }
    }

    pub fn consumer(mut self, consumer: impl Into<String>) -> Self {
        self.consumer = consumer.into();
        self
    }

    pub fn replay(mut self, replay: bool) -> Self {
        self.replay = replay;
        self
    }

    pub fn follow(mut self, follow: bool) -> Self {
        self.follow = follow;
        self
    }

    pub fn only_identity(mut self, identity: impl Into<String>) -> Self {
        self.identity = Some(identity.into());
        self
    }
}

/// Why a broker call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    #[error("events backend unavailable: {0}")]
    Unavailable(String),
    /// The bus could not even be reached: what was to be published
    /// certainly was not.
    #[error("events backend unreachable: {0}")]
    NotConnected(String),
    #[error("not authorised by the events API: {0}")]
    Auth(String),
    #[error("forbidden by the events API: {0}")]
    Forbidden(String),
    #[error("rejected by the events API: {0}")]
    BadRequest(String),
    #[error("event payload too large: {0}")]
    TooLarge(String),
    #[error("subscription closed: {0}")]
    Closed(String),
}

impl BrokerError {
    /// The contract error type a server answers with for this failure.
    pub fn error_type(&self) -> ErrorType {
        match self {
            BrokerError::Unavailable(_) | BrokerError::NotConnected(_) | BrokerError::Closed(_) => {
                ErrorType::Unavailable
            }
            BrokerError::Auth(_) => ErrorType::InvalidAuth,
            BrokerError::Forbidden(_) => ErrorType::Forbidden,
            BrokerError::BadRequest(_) => ErrorType::BadRequest,
            BrokerError::TooLarge(_) => ErrorType::PayloadTooLarge,
        }
    }

    /// Auth failures are final: retrying with the same token cannot help.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            BrokerError::Auth(_) | BrokerError::Forbidden(_) | BrokerError::BadRequest(_)
        )
    }
}

/// The events a subscription yields, in publish order. An `Err` item is
/// the reason the stream ends.
pub type EventStream = LocalBoxStream<'static, Result<Arc<Event>, BrokerError>>;

/// A message bus backend.
pub trait Broker: Send + Sync + 'static {
    /// Publishes a stamped envelope; returns the id it is known by (a
    /// remote Events API assigns its own and stamps its own identity).
    fn publish(&self, envelope: Envelope) -> LocalBoxFuture<'static, Result<String, BrokerError>>;

    /// Opens a subscription.
    fn subscribe(
        &self,
        spec: SubscribeSpec,
    ) -> LocalBoxFuture<'static, Result<EventStream, BrokerError>>;

    /// `Ok` while the backend can be used (for `/readyz`).
    fn ready(&self) -> Result<(), BrokerError>;

    /// Where this process's listeners report whether they are connected
    /// (the Events API over HTTP; other backends know it themselves).
    fn listeners(&self) -> Option<Arc<ListenerHealth>> {
        None
    }

    /// The largest event payload the bus carries, if it has a limit: no
    /// publish may exceed it (a larger result travels in parts).
    fn max_payload(&self) -> Option<usize> {
        None
    }

    /// A short name for logs and metrics: `memory`, `http`, `nats`.
    fn kind(&self) -> &'static str;

    /// `Some(ack wait)` when `name` is a durable work queue: a unicast
    /// subscription gets each event with an [`Ack`], a published event is
    /// kept until a subscriber takes it (even if none is up yet), and an
    /// event not acknowledged within the ack wait is delivered again.
    fn durable(&self, _name: &str) -> Option<Duration> {
        None
    }

    /// Claims `key` for `record.holder`, unless somebody claimed it first.
    /// Brokers without durable names deliver at most once already: every
    /// claim wins.
    fn claim(
        &self,
        _key: &str,
        _record: ClaimRecord,
    ) -> LocalBoxFuture<'static, Result<Claim, BrokerError>> {
        Box::pin(async { Ok(Claim::Won { revision: 0 }) })
    }

    /// Rewrites a claim: only if it is still at `expected` (`None`:
    /// unconditionally). `Ok(Some(revision))` when written, `Ok(None)`
    /// when somebody else changed it first.
    fn update_claim(
        &self,
        _key: &str,
        _record: ClaimRecord,
        _expected: Option<u64>,
    ) -> LocalBoxFuture<'static, Result<Option<u64>, BrokerError>> {
        Box::pin(async { Ok(Some(0)) })
    }
}

/// A broker handle shared by every actor of a process.
pub type SharedBroker = Arc<dyn Broker>;
