//! `bus egress-proxy`: a sandboxed run's only way out.
//!
//! The proxy sits on a run's internal network and on an outside one. It
//! speaks HTTP CONNECT (tunnels) and plain HTTP proxying (absolute-form
//! requests), lets through only the `host:port` pairs of its allowlist
//! (anything else gets 403), and writes every decision as a JSON line on
//! stdout, which the worker summarises into the run record.
//!
//! A credential route (`HOST:PORT=HEADER=ENV`) keeps a secret out of the
//! agent: the proxy holds the value, terminates the agent's TLS for that
//! host with a per-run CA (its key never leaves the proxy; written only
//! with mode 0600), sets the header and re-encrypts upstream.
//!
//! - [`policy`]: the allowlist and credential routes
//! - [`ca`]: the per-run CA and the leaf certificates it signs
//! - [`decision`]: the JSON decision lines and their summary
//! - [`proxy`]: the listener, CONNECT tunnels and plain HTTP forwarding
//! - [`mitm`]: TLS termination and header injection for credential routes
//! - [`shared`]: what both paths use: the proxy's state, decision logging,
//!   upstream connections, request preparation

pub mod ca;
pub mod decision;
pub mod mitm;
pub mod policy;
pub mod proxy;
pub mod shared;

pub use policy::{Credential, Policy};
pub use proxy::{Proxy, ProxySettings};

/// The port the worker's sidecar listens on.
pub const SIDECAR_PORT: u16 = 3128;
