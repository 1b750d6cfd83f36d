//! `bus bench`: figures measured on this machine, each beside a baseline
//! taken in the same run. Benchmarks print; they never assert timings.

mod events;
mod responder;
mod router;
mod stats;

pub use stats::Summary;

use crate::cli::Failure;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Publish→receive latency and events/s: in-process broker and the
    /// HTTP Events API on loopback.
    Events(events::EventsBenchArgs),
    /// Routed request/reply round trip beside a direct one: memory broker
    /// and HTTP Events API.
    Router(router::RouterBenchArgs),
}

pub fn run(cmd: BenchCommand) -> Result<(), Failure> {
    match cmd {
        BenchCommand::Events(args) => events::run(args),
        BenchCommand::Router(args) => router::run(args),
    }
}
