//! `bus containers ...`: the end-user client of the containers REST API.

mod artifacts;
mod client;
mod output;
mod run;

use super::{refuse_literal_token, Failure};
use crate::credentials::TokenSource;
use crate::parse::parse_duration;
use client::{Client, EXIT_PLATFORM};
use futures::StreamExt;
use output::{cell, print_error, ColorChoice, Format, Out};
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

pub use run::{exit_code_of, RunArgs};

#[derive(Debug, clap::Args)]
pub struct ContainersArgs {
    /// API origin (default: BUS_AI_API_URL, then BUS_API_BASE_URL, then
    /// http://127.0.0.1:8080).
    #[arg(long, global = true)]
    pub api_url: Option<String>,
    /// Read the bearer token from this file.
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// Refused: tokens do not belong on the command line.
    #[arg(long, global = true, hide = true)]
    pub token: Option<String>,
    /// HTTP timeout per request (Go duration: 30s, 2m).
    #[arg(long, global = true, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Output format.
    #[arg(long, global = true, value_enum)]
    pub format: Option<Format>,
    /// Write output to this file instead of stdout.
    #[arg(short = 'o', long, global = true)]
    pub output: Option<PathBuf>,
    /// Change to this directory first.
    #[arg(short = 'C', long = "chdir", global = true)]
    pub chdir: Option<PathBuf>,
    /// No spinner or progress messages.
    #[arg(short = 'q', long, global = true)]
    pub quiet: bool,
    /// Colour: auto (terminal, unless NO_COLOR), always, never.
    #[arg(long, global = true, value_enum, default_value_t)]
    pub color: ColorChoice,
    /// No colour (same as --color never).
    #[arg(long, global = true)]
    pub no_color: bool,
    #[command(subcommand)]
    pub command: ContainersCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ContainersCommand {
    /// The runner, then your live runs.
    Status,
    /// Run a command in a fresh container: `run --profile codex -- sh -c 'printf OK'`.
    Run(RunArgs),
    /// Your runs, newest first.
    Runs {
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// List runs older than this run id (the previous page's `next`).
        #[arg(long)]
        before: Option<String>,
    },
    /// Delete a run (a running one is cancelled first).
    Delete { run_id: String },
    /// A run's output; `-f` follows it to the end.
    Logs {
        run_id: String,
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Send input to an interactive run (DATA, or this process's stdin).
    Input {
        run_id: String,
        /// The text to send (default: read stdin).
        data: Option<String>,
        /// Close the run's stdin after this input.
        #[arg(long)]
        eof: bool,
    },
    /// Wait for a run to finish; exits like `run`.
    Wait { run_id: String },
    /// Download a run's artifacts: the tar archive to -o FILE.tar (or a
    /// pipe), or extracted into -x DIR (paths keep their full names:
    /// /workspace/out is DIR/workspace/out).
    Artifacts {
        run_id: String,
        /// Extract the archive into this directory (created if missing).
        #[arg(short = 'x', long = "extract", value_name = "DIR")]
        extract: Option<PathBuf>,
    },
}

fn api_url(args: &ContainersArgs) -> String {
    args.api_url
        .clone()
        .or_else(|| {
            std::env::var("BUS_AI_API_URL")
                .ok()
                .filter(|v| !v.is_empty())
        })
        .or_else(|| {
            std::env::var("BUS_API_BASE_URL")
                .ok()
                .filter(|v| !v.is_empty())
        })
        .unwrap_or_else(|| "http://127.0.0.1:8080".to_owned())
}

/// Runs a `bus containers` command; returns the exit code. With `--format
/// json` every failure is a JSON error object on stderr.
pub fn main(args: ContainersArgs) -> Result<u8, Failure> {
    let json = args.format == Some(Format::Json);
    match command(args) {
        Err(f) if json && !f.message.is_empty() => {
            eprintln!("{}", f.to_json());
            Err(Failure::with_code(f.code, String::new()))
        }
        other => other,
    }
}

fn command(args: ContainersArgs) -> Result<u8, Failure> {
    refuse_literal_token(&args.token)?;
    if let Some(dir) = &args.chdir {
        std::env::set_current_dir(dir)
            .map_err(|e| Failure::usage(format!("-C {}: {e}", dir.display())))?;
    }
    let source = TokenSource::lookup(
        args.token_file.as_deref(),
        &["BUS_AI_TOKEN", "BUS_API_TOKEN"],
    )
    .map_err(Failure::usage)?;
    let token = source.load().map_err(Failure::usage)?;
    let json_errors = args.format == Some(Format::Json);
    let format = args.format.unwrap_or_default();
    let mut out = Out::new(
        format,
        args.quiet,
        args.color,
        args.no_color,
        args.output.as_deref(),
    )?;
    let color = out.color;
    let client = Client::new(
        &api_url(&args),
        token,
        args.timeout.unwrap_or(Duration::from_secs(60)),
    )?;
    let result = actix_rt::System::new().block_on(dispatch(client, &mut out, args.command));
    match result {
        Ok(code) => Ok(code),
        Err(f) if json_errors => Err(f),
        Err(f) => {
            if !f.message.is_empty() {
                print_error(color, &f.message);
            }
            Err(Failure::with_code(f.code, String::new()))
        }
    }
}

/// A run's command as a shell would show it, cut to a table cell (tabs
/// and newlines flattened so tsv stays one row).
fn command_cell(args: &serde_json::Value) -> String {
    const MAX: usize = 40;
    let words: Vec<&str> = args
        .as_array()
        .map(|a| a.iter().filter_map(|w| w.as_str()).collect())
        .unwrap_or_default();
    let line: String = shell_words::join(words)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.chars().count() > MAX {
        format!("{}…", line.chars().take(MAX - 1).collect::<String>())
    } else {
        line
    }
}

async fn dispatch(
    client: Client,
    out: &mut Out,
    command: ContainersCommand,
) -> Result<u8, Failure> {
    let fail = |e: client::ApiFailure| e.into_failure(1);
    match command {
        ContainersCommand::Run(args) => run::run(client, out, args).await,
        ContainersCommand::Status => {
            let (_, v) = client
                .json("GET", "/api/v1/containers/status", None)
                .await
                .map_err(fail)?;
            if out.format == Format::Json {
                out.json(&v)?;
            } else {
                let rows: Vec<Vec<String>> = v["items"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|i| {
                        let d = &i["details"];
                        let detail = if i["id"] == "runner" {
                            cell(&d["provider"])
                        } else {
                            cell(&d["worker_id"])
                        };
                        let since = if i["id"] == "runner" {
                            "-".to_owned()
                        } else {
                            cell(&d["started_at"])
                        };
                        vec![cell(&i["id"]), cell(&i["state"]), detail, since]
                    })
                    .collect();
                out.table(&["ID", "STATE", "PROVIDER/WORKER", "STARTED"], &rows)?;
            }
            Ok(0)
        }
        ContainersCommand::Runs { limit, before } => {
            let mut path = format!("/api/v1/containers/runs?limit={limit}");
            if let Some(b) = before {
                path.push_str(&format!("&before={b}"));
            }
            let (_, v) = client.json("GET", &path, None).await.map_err(fail)?;
            if out.format == Format::Json {
                out.json(&v)?;
            } else {
                let rows: Vec<Vec<String>> = v["items"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|r| {
                        let what = if r["profile"].is_string() {
                            cell(&r["profile"])
                        } else {
                            cell(&r["image"])
                        };
                        vec![
                            cell(&r["run_id"]),
                            cell(&r["state"]),
                            cell(&r["exit_code"]),
                            what,
                            command_cell(&r["args"]),
                            cell(&r["created_at"]),
                        ]
                    })
                    .collect();
                out.table(
                    &[
                        "RUN_ID",
                        "STATE",
                        "EXIT",
                        "PROFILE/IMAGE",
                        "COMMAND",
                        "CREATED",
                    ],
                    &rows,
                )?;
                if let Some(next) = v["next"].as_str() {
                    if !out.quiet && out.format == Format::Text {
                        eprintln!("more: --before {next}");
                    }
                }
            }
            Ok(0)
        }
        ContainersCommand::Delete { run_id } => {
            let (_, v) = client
                .json("DELETE", &format!("/api/v1/containers/runs/{run_id}"), None)
                .await
                .map_err(fail)?;
            match out.format {
                Format::Json => out.json(&v)?,
                Format::Text => out.line(&format!("deleted {run_id}"))?,
                Format::Tsv => out.table(&["run_id", "deleted"], &[vec![run_id, "true".into()]])?,
            }
            Ok(0)
        }
        ContainersCommand::Input { run_id, data, eof } => {
            // DATA is text; stdin is sent as its exact bytes.
            let body = match data {
                Some(d) => json!({"data": d, "eof": eof}),
                None => {
                    let mut bytes = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)?;
                    json!({"data_base64": crate::contract::bytes::base64_encode(&bytes), "eof": eof})
                }
            };
            let (_, v) = client
                .json(
                    "POST",
                    &format!("/api/v1/containers/runs/{run_id}/input"),
                    Some(&body),
                )
                .await
                .map_err(fail)?;
            match out.format {
                Format::Json => out.json(&v)?,
                Format::Text => {
                    out.line(&format!("sent {} bytes to {run_id}", cell(&v["bytes"])))?
                }
                Format::Tsv => {
                    out.table(&["run_id", "bytes"], &[vec![run_id, cell(&v["bytes"])]])?
                }
            }
            Ok(0)
        }
        ContainersCommand::Logs { run_id, follow } => {
            let mut resp = client
                .stream(&format!(
                    "/api/v1/containers/runs/{run_id}/logs?follow={follow}"
                ))
                .await
                .map_err(fail)?;
            if out.format == Format::Tsv {
                out.line("seq\tstream\tdata")?;
            }
            let mut buf = Vec::new();
            let mut code = 0;
            while let Some(chunk) = resp.next().await {
                buf.extend_from_slice(
                    &chunk.map_err(|e| Failure::error(format!("the log stream broke: {e}")))?,
                );
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                        continue;
                    };
                    match out.format {
                        Format::Json => out.raw(&line)?,
                        Format::Tsv => {
                            if let Some(r) = v.get("exit") {
                                out.line(&format!("-\texit\t{}", cell(&r["state"])))?;
                            } else {
                                out.line(&format!(
                                    "{}\t{}\t{}",
                                    cell(&v["seq"]),
                                    cell(&v["stream"]),
                                    output::tsv_escape(&String::from_utf8_lossy(
                                        &output::chunk_bytes(&v)
                                    ))
                                ))?;
                            }
                        }
                        Format::Text => {
                            if v.get("exit").is_none() {
                                let data = output::chunk_bytes(&v);
                                if v["stream"] == "stderr" {
                                    let mut e = std::io::stderr();
                                    let _ = e.write_all(&data);
                                    let _ = e.flush();
                                } else {
                                    out.raw(&data)?;
                                }
                            }
                        }
                    }
                    if let Some(r) = v.get("exit") {
                        code = if r.get("error").is_some() {
                            EXIT_PLATFORM
                        } else {
                            exit_code_of(r)
                        };
                    }
                }
            }
            Ok(if follow { code } else { 0 })
        }
        ContainersCommand::Artifacts { run_id, extract } => {
            artifacts::download(&client, out, &run_id, extract).await
        }
        ContainersCommand::Wait { run_id } => {
            let v = run::poll_result(&client, &run_id)
                .await
                .map_err(|e| e.into_failure(EXIT_PLATFORM))?;
            match out.format {
                Format::Json => out.json(&v)?,
                Format::Text => {
                    out.raw(&output::result_bytes(&v, "stdout"))?;
                    let _ = std::io::stderr().write_all(&output::result_bytes(&v, "stderr"));
                }
                Format::Tsv => {
                    let cols = ["run_id", "state", "exit_code", "duration_ms"];
                    let row: Vec<String> = cols.iter().map(|c| cell(&v[*c])).collect();
                    out.table(&cols, &[row])?;
                }
            }
            Ok(exit_code_of(&v))
        }
    }
}
