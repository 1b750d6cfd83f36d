//! bus-containers: BusDK's provider-neutral container runs.
//!
//! - [`contract`]: wire types (envelope, event names, error bodies)
//! - [`parse`]: Go-syntax durations and loose booleans for flags and env
//! - [`auth`]: HS256 JWT verification, scopes, the event-name ACL, minting
//! - [`credentials`]: where clients find their token; secret files
//! - [`broker`]: the `Broker` seam and its memory and HTTP backends
//! - [`metrics`]: Prometheus registry of a process
//! - [`http`]: actix-web apps (Events API, probes) and their errors
//! - [`telemetry`]: logging setup
//! - [`cli`]: the `bus` command line
//! - [`bench`]: `bus bench`, measured figures against baselines

pub mod auth;
pub mod bench;
pub mod broker;
pub mod cli;
pub mod contract;
pub mod credentials;
pub mod http;
pub mod metrics;
pub mod parse;
pub mod telemetry;
