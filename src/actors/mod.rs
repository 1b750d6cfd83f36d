//! The actors that sit on the broker. Each owns one thing:
//!
//! - [`subscription::Subscription`]: one (name, delivery, group) stream,
//!   resubscribing with backoff when it ends
//! - [`waiter::CorrelationWaiter`]: one pending request and its deadline
//! - [`dispatcher::ReplyDispatcher`]: routes replies to waiters by
//!   correlation id; counts late and duplicate replies
//! - [`router::Router`]: public `bus.containers.*` requests → a backend prefix
//! - [`docker_worker::DockerWorker`]: a worker's requests; one
//!   [`session::ContainerSession`] per run, [`runner::Runner`] for the
//!   engine's state and the reaper, [`pool::WarmPool`] for idle containers,
//!   [`sandbox::Sandbox`] for a sandboxed run's network and egress proxy
//! - [`live_runs::LiveRuns`]: the API provider's runs in flight
//!
//! Peers are held as `Recipient<M>` where a test may put a mock in the seat.

pub mod bus;
pub mod docker_worker;
pub mod live_runs;
pub mod pool;
pub mod router;
pub mod runner;
pub mod sandbox;
pub mod session;

pub use bus::{Delivered, Subscription};
