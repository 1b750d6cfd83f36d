//! `bus bench`: figures measured on this machine, each beside a baseline
//! taken in the same run. Benchmarks print; they never assert timings.

mod e2e;
mod events;
mod fault_soak;
mod fault_stack;
mod files;
mod nats;
mod responder;
mod router;
mod soak;
mod stack;
mod stats;
mod worker;

pub use stats::Summary;

use crate::cli::failure::Failure;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Publish→receive latency and events/s: in-process broker and the
    /// HTTP Events API on loopback.
    Events(events::EventsBenchArgs),
    /// Routed request/reply round trip beside a direct one: memory broker
    /// and HTTP Events API.
    Router(router::RouterBenchArgs),
    /// The stack as a user meets it (`bus dev` with a warm pool): printf
    /// OK through the REST API and the CLI, cold and pooled, beside
    /// `docker run --rm` and `docker exec`; status throughput; many runs
    /// at once.
    E2e(e2e::E2eBenchArgs),
    /// 1,000 runs at concurrency 50 with random cancels, timeouts and
    /// inputs: each ends in exactly one state, no container is left, and
    /// memory stays flat (fails otherwise).
    Soak(soak::SoakArgs),
    /// Routed status throughput on NATS with one and two workers, beside
    /// a direct request, and the cost of reply filtering.
    Nats(nats::NatsBenchArgs),
    /// End-to-end run latency through the Docker worker beside
    /// `docker run --rm`.
    Worker(worker::WorkerBenchArgs),
    /// A run's data in and out (files in the request, artifacts out, in
    /// MB/s) beside `docker cp` of the same bytes.
    Files(files::FilesBenchArgs),
}

pub fn run(cmd: BenchCommand) -> Result<(), Failure> {
    match cmd {
        BenchCommand::Events(args) => events::run(args),
        BenchCommand::Router(args) => router::run(args),
        BenchCommand::Nats(args) => nats::run(args),
        BenchCommand::E2e(args) => e2e::run(args),
        BenchCommand::Soak(args) if args.faults => fault_soak::run(args),
        BenchCommand::Soak(args) => soak::run(args),
        BenchCommand::Worker(args) => worker::run(args),
        BenchCommand::Files(args) => files::run(args),
    }
}
