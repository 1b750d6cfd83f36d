//! actix-web applications: the Events API, and the probes every
//! long-running process serves (`/readyz`, `/healthz`, `/metrics`).

pub mod body;
pub mod error;
pub mod containers;
pub mod events;
pub mod ndjson;
pub mod request_metrics;
pub mod probes;
pub mod server;

pub use error::ApiError;
