//! bus-containers: BusDK's provider-neutral container runs.
//!
//! # The map, in the order a run request meets it
//!
//! - [`cli`]: the `bus` command line (every process starts here; `bench`
//!   under it)
//! - [`http`]: actix-web apps — the containers REST API, the Events API,
//!   probes — and their one error type
//! - [`actors`]: the request's path — the API provider, the bus
//!   plumbing, the router, the worker, the container session (and the
//!   runner, warm pool and egress sandbox beside the worker)
//! - [`contract`]: the wire — envelope, names, errors, one type per
//!   payload
//! - [`broker`]: the `Broker` seam: memory, HTTP (a remote Events API),
//!   NATS
//! - [`planning`]: a run request → a container plan (profiles, images,
//!   hardening, mounts, sandbox), and how its end becomes a state
//! - [`runtime`]: the container-engine seam (bollard, and a fake)
//! - [`store`]: the run ledger (`RunStore`: SQLite, NATS KV)
//! - [`egress`]: `bus egress-proxy`, a sandboxed run's allowlisting proxy
//! - [`auth`], [`credentials`]: HS256 JWTs, scopes, the event-name ACL;
//!   where tokens and secrets live
//! - [`config`], [`parse`], [`metrics`], [`telemetry`]: configuration,
//!   Go durations and loose booleans, Prometheus, logging
//!
//! # One run, file by file
//!
//! 1. `http/containers.rs` `create`: the bearer token is checked
//!    (`auth`), the body read strictly (`http/body.rs` `run_body`), and
//!    `CreateRun` sent to the provider.
//! 2. `actors/api_provider/create.rs`: the spec is checked
//!    (`contract/run.rs` `RunSpec::check`), billing asked
//!    (`api_provider/billing.rs`), a place taken in the run table
//!    (`api_provider/logs.rs`, the per-account limit), the ledger record
//!    written `running` (`store`), usage `container_run_requested`
//!    queued (`api_provider/usage.rs`), and the run asked of the backend
//!    seat (`api_provider/backend.rs`, `BusBackend`) with its deadline.
//! 3. `actors/bus/requester.rs`: a correlation id, a
//!    `CorrelationWaiter` (`bus/waiter.rs`) registered with the
//!    `ReplyDispatcher` (`bus/dispatcher.rs`), and the publish of
//!    `bus.containers.run.request` on the broker (`broker/*`).
//! 4. `actors/bus/subscription.rs` delivers it to the router, decoded at
//!    the edge (`bus/edge.rs`) into a `RunRequest`;
//!    `actors/router/mod.rs` applies the owner rule
//!    (`contract/owner.rs`), asks the registry who is alive
//!    (`router/workers.rs`) and forwards it (`router/forward.rs`) to
//!    `bus.docker.run.request`.
//! 5. `actors/docker_worker/admit.rs`: planned (`planning/plan.rs`),
//!    admitted, and started in a session (`docker_worker/seats.rs`),
//!    in a warm container when one is ready (`actors/warm_pool.rs`);
//!    on a durable queue, claimed first (`docker_worker/durable.rs`).
//! 6. `actors/container_session/`: the sandbox (`actors/egress_sandbox.rs`)
//!    when the profile has egress, then create → attach → start
//!    (`start.rs`, through `runtime/docker/`), output as `run.output`
//!    (`output.rs`), the end, inspect, remove and the `RunResult`
//!    (`finish.rs`).
//! 7. Back: the worker answers on `bus.docker.run.response`
//!    (`docker_worker/durable.rs` `reply_then`, signed with its id);
//!    the router's waiter takes it, checks it, and republishes it as
//!    `bus.containers.run.response` under the original correlation id;
//!    the provider's waiter takes it (`BusBackend` checks it again), the
//!    ledger's end is written, usage `container_run_finished`, the run
//!    table ends the run (waiters and log followers get the result), and
//!    the HTTP handler answers 200.
//!
//! `run.started` and `run.output` travel the same way as events: worker
//! → router (`Relay`, in order) → the provider's run table, which feeds
//! `GET .../logs` (`http/containers.rs` `logs`).

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
