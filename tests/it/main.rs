//! Black-box tests: real HTTP servers on 127.0.0.1:0, the real `bus`
//! binary, real Docker and NATS where a test says so. One test binary
//! keeps the build lean; each file is one area.

mod support;

mod api_processes;
mod broker_conformance;

mod cli_containers;
mod cli_events;
mod containers_api;
mod delivery;
mod dev_stack;
mod docker_pool;
mod docker_worker;
mod egress_proxy;
mod events_api;
mod fault_matrix;
mod faults;
mod fuzz;
mod http_listener;
mod memory_broker;
mod nats_backend;
mod nats_scale;
mod podman_worker;
mod router;
mod router_processes;
mod run_artifacts;
mod run_bytes;
mod sandbox;
mod server_flags;
mod tls_clients;
mod worker_actors;
mod worker_processes;
