//! The bus as actors see it: subscriptions that feed an actor, and
//! request/reply with correlation waiters.
//!
//! - [`subscription::Subscription`]: one (name, delivery, group) stream,
//!   resubscribing with backoff when it ends
//! - [`requester::Requester`]: publishes requests and waits for replies
//! - [`dispatcher::ReplyDispatcher`]: routes replies to waiters by
//!   correlation id; counts late and duplicate replies
//! - [`waiter::CorrelationWaiter`]: one pending request and its deadline

pub mod dispatcher;
pub mod requester;
pub mod subscription;
pub mod waiter;

pub use subscription::{Delivered, Subscription};
