//! actix-web applications: the Events API, and the probes every
//! long-running process serves (`/readyz`, `/healthz`, `/metrics`).

pub mod body;
pub mod client;
pub mod containers;
pub mod error;
pub mod events;
pub mod idempotency;
pub mod limits;
pub mod ndjson;
pub mod peer;
pub mod probes;
pub mod request_metrics;
pub mod server;
pub mod stream_slots;

pub use error::ApiError;
