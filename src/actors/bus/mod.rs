//! The bus as actors see it: subscriptions that feed an actor, and
//! request/reply with correlation waiters.
//!
//! - [`subscription::Subscription`]: one (name, delivery, group) stream,
//!   resubscribing with backoff when it ends
//! - [`requester::Requester`]: publishes requests and waits for replies
//! - [`dispatcher::ReplyDispatcher`]: routes replies to waiters by
//!   correlation id; counts late and duplicate replies
//! - [`waiter::CorrelationWaiter`]: one pending request and its deadline
//! - [`relay::Relay`]: publishes in order, one at a time
//! - [`edge`]: an event as an actor receives it: envelope fields and a
//!   typed payload

pub mod dispatcher;
pub mod edge;
pub mod relay;
pub mod requester;
pub mod subscription;
pub mod waiter;

pub use edge::{Incoming, Meta};
pub use subscription::{Delivered, Subscription};
