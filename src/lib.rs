//! bus-containers: BusDK's provider-neutral container runs.
//!
//! - [`contract`]: wire types (envelope, event names, error bodies)
//! - [`config`]: the `config.toml` file (worker limits, sandbox defaults, profiles)
//! - [`containers`]: the container-events contract (kinds, owners, replies)
//! - [`provider`]: the containers API provider (runs, ledger, usage, billing)
//! - [`request`]: request/reply over the bus (publish + correlation waiter)
//! - [`parse`]: Go-syntax durations and loose booleans for flags and env
//! - [`auth`]: HS256 JWT verification, scopes, the event-name ACL, minting
//! - [`credentials`]: where clients find their token; secret files
//! - [`broker`]: the `Broker` seam and its memory and HTTP backends
//! - [`runtime`]: the container-engine seam (bollard, and a fake for tests)
//! - [`store`]: the run ledger (`RunStore`; SQLite)
//! - [`metrics`]: Prometheus registry of a process
//! - [`http`]: actix-web apps (Events API, probes) and their errors
//! - [`actors`]: subscriptions, waiters, the router and the workers
//! - [`egress`]: `bus egress-proxy`, a sandboxed run's allowlisting proxy
//! - [`worker`]: run planning (profiles, images, hardening) and run results
//! - [`telemetry`]: logging setup
//! - [`cli`]: the `bus` command line
//! - [`bench`]: `bus bench`, measured figures against baselines

pub mod actors;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod config;
pub mod contract;
pub mod credentials;
pub mod egress;
pub mod http;
pub mod metrics;
pub mod parse;
pub mod planning;
pub mod runtime;
pub mod store;
pub mod telemetry;
