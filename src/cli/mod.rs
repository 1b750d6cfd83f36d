//! The `bus` command line: BusDK's command names, one binary. Invoked as
//! `bus-<group>-<name>` (a link), it behaves as `bus <group> <name>`.

mod auth;
pub mod bench;
pub mod busfile;
pub mod containers;
pub mod dev;
pub mod egress;
mod events;
pub mod failure;
mod guard;
mod integration;
pub mod process;
pub mod serve_containers;
mod serve_events;
mod token;
mod worker;

use crate::telemetry::LogFormat;
use clap::{Parser, Subcommand};
pub use failure::{Failure, EXIT_USAGE};
use std::ffi::OsString;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "bus",
    version,
    about = "BusDK container runs: events bus, router, workers, REST API and client",
    propagate_version = true
)]
pub struct Cli {
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The whole stack in one process on the embedded broker (local development).
    Dev(dev::DevArgs),
    /// API servers.
    #[command(name = "api-provider", subcommand)]
    ApiProvider(ApiProviderCommand),
    /// The containers API client: status, run, runs, delete, logs, input, wait.
    Containers(containers::ContainersArgs),
    /// Integrations on the bus: the router and the workers.
    #[command(subcommand)]
    Integration(IntegrationCommand),
    /// Publish to and listen on the Events API.
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// Operator tools.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Local credentials: `bus auth token --scope "..."`.
    #[command(subcommand)]
    Auth(auth::AuthCommand),
    /// Measure this machine: figures beside baselines taken in the same run.
    #[command(subcommand)]
    Bench(crate::cli::bench::BenchCommand),
    /// The egress proxy of a sandboxed run: an allowlist of host:port,
    /// credential headers the agent never sees, a JSON decision log.
    #[command(name = "egress-proxy")]
    EgressProxy(egress::EgressProxyArgs),
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApiProviderCommand {
    /// The Events API server (the bus).
    Events(serve_events::EventsServerArgs),
    /// The containers REST API.
    Containers(serve_containers::ContainersServerArgs),
}

#[derive(Debug, Subcommand)]
pub enum IntegrationCommand {
    /// The router: public bus.containers.* requests to a backend prefix.
    Containers(integration::RouterArgs),
    /// The Docker worker: runs requests in real containers.
    Docker(worker::WorkerArgs),
    /// The same worker against Podman's Docker-compatible API.
    Podman(worker::WorkerArgs),
    /// A worker's guardian (started by the worker itself): removes the
    /// worker's containers once the worker process is gone.
    #[command(hide = true)]
    Guard(guard::GuardArgs),
}

#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Mint tokens.
    Token(token::TokenArgs),
}

/// `bus-api-provider-events ARGS` → `bus api-provider events ARGS`.
pub fn expand_argv0(args: Vec<OsString>) -> Vec<OsString> {
    let Some(first) = args.first() else {
        return args;
    };
    let base = std::path::Path::new(first)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("bus")
        .to_owned();
    let Some(rest) = base.strip_prefix("bus-") else {
        return args;
    };
    let mut words: Vec<OsString> = vec!["bus".into()];
    if let Some(name) = rest.strip_prefix("api-provider-") {
        words.extend(["api-provider".into(), name.into()]);
    } else if let Some((group, name)) = rest.split_once('-') {
        words.extend([group.into(), name.into()]);
    } else {
        words.push(rest.into());
    }
    words.extend(args.into_iter().skip(1));
    words
}

/// Prints one line on stdout; a closed pipe is an error, not a panic.
pub fn print_line(text: &str) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|_| out.flush())
        .map_err(Failure::write)
}

/// Refuses a literal token given on the command line.
pub fn refuse_literal_token(given: &Option<String>) -> Result<(), Failure> {
    if given.is_some() {
        return Err(Failure::usage(format!(
            "tokens are not accepted on the command line (they leak through the process list and shell history); use --token-file FILE, the BUS_API_TOKEN environment variable, or the file {}",
            crate::credentials::api_token_file().display()
        )));
    }
    Ok(())
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let args = expand_argv0(std::env::args_os().collect());
    // `bus FILE.bus`: a file of commands.
    if args.len() == 2 && args[1].to_string_lossy().ends_with(".bus") {
        let path = std::path::PathBuf::from(&args[1]);
        let result = busfile::run(&path, |words| {
            let argv = std::iter::once("bus".to_owned()).chain(words);
            match Cli::try_parse_from(argv) {
                Ok(cli) => run(cli),
                Err(e) => {
                    let _ = e.print();
                    Err(Failure::with_code(EXIT_USAGE, String::new()))
                }
            }
        });
        return finish(result);
    }
    match Cli::try_parse_from(args) {
        Ok(cli) => finish(run(cli)),
        Err(e) => {
            let _ = e.print();
            ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 })
        }
    }
}

fn finish(result: Result<u8, Failure>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("bus: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}

fn run(cli: Cli) -> Result<u8, Failure> {
    let quiet_default = matches!(
        cli.command,
        Command::Events(_)
            | Command::Operator(_)
            | Command::Bench(_)
            | Command::Containers(_)
            | Command::Completions { .. }
    );
    crate::telemetry::init(cli.log_format, if quiet_default { "warn" } else { "info" });
    let done = |r: Result<(), Failure>| r.map(|_| 0);
    match cli.command {
        Command::ApiProvider(ApiProviderCommand::Events(args)) => done(serve_events::run(args)),
        Command::ApiProvider(ApiProviderCommand::Containers(args)) => {
            done(serve_containers::run(args))
        }
        Command::Containers(args) => containers::main(args),
        Command::Dev(args) => done(dev::run(args)),
        Command::Events(cmd) => done(events::run(cmd)),
        Command::Integration(IntegrationCommand::Containers(args)) => {
            done(integration::run_router(args))
        }
        Command::Integration(IntegrationCommand::Docker(args)) => {
            done(worker::run_worker(args, worker::Flavour::Docker))
        }
        Command::Integration(IntegrationCommand::Guard(args)) => done(guard::run(args)),
        Command::Integration(IntegrationCommand::Podman(args)) => {
            done(worker::run_worker(args, worker::Flavour::Podman))
        }
        Command::Operator(OperatorCommand::Token(args)) => done(token::run(args)),
        Command::Auth(cmd) => done(auth::run(cmd)),
        Command::EgressProxy(args) => done(egress::run(args)),
        Command::Bench(cmd) => done(crate::cli::bench::run(cmd)),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "bus", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)?;
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::expand_argv0;

    fn expand(words: &[&str]) -> Vec<String> {
        expand_argv0(words.iter().map(|w| w.into()).collect())
            .into_iter()
            .map(|w| w.into_string().unwrap())
            .collect()
    }

    #[test]
    fn argv0_links() {
        assert_eq!(expand(&["/usr/bin/bus", "x"]), ["/usr/bin/bus", "x"]);
        assert_eq!(
            expand(&["/usr/local/bin/bus-api-provider-events", "--addr", "a"]),
            ["bus", "api-provider", "events", "--addr", "a"]
        );
        assert_eq!(
            expand(&["bus-operator-token", "issue"]),
            ["bus", "operator", "token", "issue"]
        );
        assert_eq!(
            expand(&["bus-containers", "status"]),
            ["bus", "containers", "status"]
        );
        assert_eq!(
            expand(&["bus-integration-docker"]),
            ["bus", "integration", "docker"]
        );
    }
}
