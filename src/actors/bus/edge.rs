//! The edge between the bus and an actor: an event's envelope fields
//! ([`Meta`]) beside its payload decoded into a contract type
//! ([`Incoming`]). Subscriptions decode here, once, so actors receive
//! typed messages and never look into raw JSON.

use crate::broker::{Ack, Event};
use std::sync::Arc;

/// An event's envelope, without its payload.
#[derive(Clone)]
pub struct Meta {
    pub id: String,
    pub name: String,
    pub correlation_id: Option<String>,
    /// The publisher (stamped by the broker).
    pub identity_id: String,
    /// The publisher holds the service role.
    pub service: bool,
    /// When it was published (RFC 3339).
    pub time: String,
    /// The acknowledgement of a durable delivery.
    pub ack: Option<Arc<dyn Ack>>,
}

impl std::fmt::Debug for Meta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meta")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("correlation_id", &self.correlation_id)
            .field("identity_id", &self.identity_id)
            .field("service", &self.service)
            .field("durable", &self.ack.is_some())
            .finish()
    }
}

impl Meta {
    pub fn of(event: &Event) -> Meta {
        Meta {
            id: event.id.clone(),
            name: event.name.clone(),
            correlation_id: event.correlation_id.clone(),
            identity_id: event.identity_id.clone(),
            service: event.service,
            time: event.time.clone(),
            ack: event.ack().cloned(),
        }
    }
}

/// A decoded event: who sent it and what it says. `T` is the payload's
/// contract type (or `Result<T, crate::contract::Malformed>` where a malformed payload must
/// be answered rather than dropped).
#[derive(Debug, Clone)]
pub struct Incoming<T> {
    pub meta: Meta,
    pub body: T,
}

impl<T> Incoming<T> {
    /// Decodes `event`'s payload as `T`; `Err` says why it is malformed.
    pub fn decode(event: &Event) -> Incoming<Result<T, crate::contract::Malformed>>
    where
        T: serde::de::DeserializeOwned,
    {
        Incoming {
            meta: Meta::of(event),
            body: crate::contract::decode(&event.payload),
        }
    }
}

impl<T: 'static> actix::Message for Incoming<T> {
    type Result = ();
}

impl<Q: crate::contract::WireRequest> Incoming<Result<Q, crate::contract::Malformed>> {
    /// Who the request acts for (the effective-owner rule).
    pub fn owner(&self) -> Result<String, crate::contract::ErrorDetail> {
        let payload_owner = self.body.as_ref().ok().and_then(|q| q.owner());
        crate::contract::owner::effective_owner(
            self.meta.service,
            &self.meta.identity_id,
            payload_owner,
            Q::KIND,
        )
    }
}

/// Decodes every event as a request of `Q` (a malformed one still
/// arrives, to be answered).
pub fn requests<Q: crate::contract::WireRequest>(
) -> super::subscription::Decode<Incoming<Result<Q, crate::contract::Malformed>>> {
    Box::new(|e| Some(Incoming::<Q>::decode(&e)))
}

/// Decodes every event as a `T`; one that does not decode is skipped
/// (and logged): events have nobody to answer.
pub fn events<T: serde::de::DeserializeOwned + 'static>() -> super::subscription::Decode<Incoming<T>>
{
    Box::new(|e| match crate::contract::decode::<T>(&e.payload) {
        Ok(body) => Some(Incoming {
            meta: Meta::of(&e),
            body,
        }),
        Err(why) => {
            tracing::warn!(event = %e.name, from = %e.identity_id, error = %why, "skipping a malformed event");
            None
        }
    })
}
