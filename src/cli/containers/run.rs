//! `bus containers run`: create a run, then wait for it in the
//! foreground like `docker run` — live output (`--format text`) or the
//! result (`json`, `tsv`) — with a spinner on a terminal, stdin forwarding
//! (`-i`), and Ctrl-C to cancel (a second Ctrl-C leaves).

use super::super::Failure;
use super::client::{ApiFailure, Client, EXIT_PLATFORM};
use super::output::{cell, Format, Out};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

/// `timed_out` → 124, as `timeout(1)`.
pub const EXIT_TIMED_OUT: u8 = 124;
/// Cancelled (Ctrl-C) → 130, as a shell's SIGINT.
pub const EXIT_CANCELLED: u8 = 130;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A profile of the server (e.g. codex).
    #[arg(long, conflicts_with = "image")]
    pub profile: Option<String>,
    /// An explicit image (must be allowed by the worker; needs a command).
    #[arg(long)]
    pub image: Option<String>,
    /// The run's timeout in seconds (0: the profile's default).
    #[arg(long)]
    pub timeout_seconds: Option<u64>,
    /// Print the run id and return at once.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Forward this terminal's stdin to the run.
    #[arg(long, short = 'i')]
    pub interactive: bool,
    /// Environment for the run, NAME=VALUE; a bare NAME copies this
    /// shell's value (left out when unset). Repeatable; wins over
    /// --env-file.
    #[arg(short = 'e', long = "env", value_name = "NAME[=VALUE]")]
    pub env: Vec<String>,
    /// Read environment from a file: NAME=VALUE lines (a bare NAME copies
    /// this shell's value), `#` comments and blank lines skipped.
    /// Repeatable.
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<std::path::PathBuf>,
    /// The working directory inside the container (absolute).
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Copy a local file (or a directory, recursively) into the run
    /// before it starts: LOCAL[:PATH], PATH absolute under the run's
    /// workdir or /tmp (default: the workdir, -w or /workspace, plus
    /// LOCAL's name). Repeatable.
    #[arg(long = "file", value_name = "LOCAL[:PATH]")]
    pub files: Vec<String>,
    /// Archive this path (under the workdir or /tmp) after the command
    /// ends, kept with the run: `bus containers artifacts RUN_ID -x DIR`
    /// downloads it. Repeatable.
    #[arg(long = "artifact", value_name = "PATH")]
    pub artifacts: Vec<String>,
    /// The command (after `--`). A flag this command does not know, before
    /// `--`, is a usage error.
    #[arg(trailing_var_arg = true)]
    pub command: Vec<String>,
}

impl RunArgs {
    fn body(&self) -> Result<Value, Failure> {
        if self.profile.is_none() && self.image.is_none() {
            return Err(Failure::usage("give --profile NAME or --image IMAGE"));
        }
        let mut env = BTreeMap::new();
        for path in &self.env_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure::usage(format!("--env-file {}: {e}", path.display())))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim_start();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let at = format!("--env-file {}:{}", path.display(), n + 1);
                add_env(&mut env, line, &at, false)?;
            }
        }
        for e in &self.env {
            add_env(&mut env, e, "-e", true)?;
        }
        let mut body = json!({"wait": false});
        if let Some(p) = &self.profile {
            body["profile"] = json!(p);
        }
        if let Some(i) = &self.image {
            body["image"] = json!(i);
        }
        if !self.command.is_empty() {
            body["command"] = json!(self.command);
        }
        if let Some(t) = self.timeout_seconds {
            body["timeout_seconds"] = json!(t);
        }
        if !env.is_empty() {
            body["env"] = json!(env);
        }
        if self.interactive {
            body["interactive"] = json!(true);
        }
        if let Some(w) = &self.workdir {
            if !w.starts_with('/') {
                return Err(Failure::usage(format!(
                    "-w {w:?}: the working directory must be an absolute path"
                )));
            }
            body["workdir"] = json!(w);
        }
        let workdir = self
            .workdir
            .clone()
            .unwrap_or_else(|| "/workspace".to_owned());
        let mut files = Vec::new();
        for item in &self.files {
            local_files(item, &workdir, &mut files)?;
        }
        if !files.is_empty() {
            body["files"] = json!(files);
        }
        for path in &self.artifacts {
            if !crate::contract::run::plain_absolute_path(path) {
                return Err(Failure::usage(format!(
                    "--artifact {path:?}: give an absolute path without '.' or '..' parts"
                )));
            }
        }
        if !self.artifacts.is_empty() {
            body["artifacts"] = json!(self.artifacts);
        }
        Ok(body)
    }
}

/// `LOCAL[:PATH]` as run `files` entries: a file, or a directory's files
/// (recursively, symbolic links skipped), with their permission bits.
fn local_files(item: &str, workdir: &str, out: &mut Vec<Value>) -> Result<(), Failure> {
    let (local, target) = match item.find(":/") {
        Some(i) => (&item[..i], item[i + 1..].to_owned()),
        None => {
            let name = std::path::Path::new(item.trim_end_matches('/'))
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| Failure::usage(format!("--file {item:?}: no file name")))?;
            (item, format!("{}/{name}", workdir.trim_end_matches('/')))
        }
    };
    collect_files(std::path::Path::new(local), &target, out)
}

fn collect_files(
    local: &std::path::Path,
    target: &str,
    out: &mut Vec<Value>,
) -> Result<(), Failure> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(local)
        .map_err(|e| Failure::usage(format!("--file {}: {e}", local.display())))?;
    if meta.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(local)
            .map_err(|e| Failure::usage(format!("--file {}: {e}", local.display())))?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let kind = entry
                .file_type()
                .map_err(|e| Failure::usage(e.to_string()))?;
            // Files and directories only: no links, pipes or devices.
            if !kind.is_file() && !kind.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let sub = format!("{}/{name}", target.trim_end_matches('/'));
            collect_files(&entry.path(), &sub, out)?;
        }
        return Ok(());
    }
    if !meta.is_file() {
        return Err(Failure::usage(format!(
            "--file {}: not a regular file or directory",
            local.display()
        )));
    }
    let data = std::fs::read(local)
        .map_err(|e| Failure::usage(format!("--file {}: {e}", local.display())))?;
    out.push(json!({
        "path": target,
        "content_base64": crate::contract::bytes::base64_encode(&data),
        "mode": format!("{:04o}", meta.permissions().mode() & 0o777),
    }));
    Ok(())
}

/// `NAME=VALUE`, or a bare `NAME` copied from this process's environment
/// (left out when it is unset), as `docker run -e` does.
/// A bad name is shown only when `echo` (a file's line may be a value).
fn add_env(
    env: &mut BTreeMap<String, String>,
    item: &str,
    at: &str,
    echo: bool,
) -> Result<(), Failure> {
    let (name, value) = match item.split_once('=') {
        Some((k, v)) => (k, Some(v.to_owned())),
        None => (item, std::env::var(item).ok()),
    };
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        let shown = if echo {
            format!(" {name:?}")
        } else {
            String::new()
        };
        return Err(Failure::usage(format!(
            "{at}:{shown} not a variable name (letters, digits and '_'; use NAME=VALUE)"
        )));
    }
    if let Some(value) = value {
        env.insert(name.to_owned(), value);
    }
    Ok(())
}

/// The exit code a result maps to.
pub fn exit_code_of(result: &Value) -> u8 {
    match result.get("state").and_then(Value::as_str) {
        Some("timed_out") => EXIT_TIMED_OUT,
        Some("cancelled") => EXIT_CANCELLED,
        _ => match result.get("exit_code").and_then(Value::as_i64) {
            Some(code) => code.clamp(0, 255) as u8,
            None => EXIT_PLATFORM,
        },
    }
}

fn spinner(quiet: bool, run_id: &str) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_message(format!("running {run_id}"));
    pb.enable_steady_tick(Duration::from_millis(100));
    pb
}

/// Waits for the result by long-polling `/wait`, each poll well inside
/// the HTTP timeout.
pub(super) async fn poll_result(client: &Client, run_id: &str) -> Result<Value, ApiFailure> {
    let poll = client
        .timeout()
        .saturating_sub(Duration::from_secs(2))
        .clamp(Duration::from_secs(1), Duration::from_secs(25));
    loop {
        let path = format!(
            "/api/v1/containers/runs/{run_id}/wait?timeout={}s",
            poll.as_secs()
        );
        match client.json("GET", &path, None).await {
            Ok((200, v)) => return Ok(v),
            Ok(_) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The result of our own foreground run.
async fn wait_result(client: &Client, run_id: &str) -> Result<Value, ApiFailure> {
    match poll_result(client, run_id).await {
        // Deleted while we waited (our own Ctrl-C): it was cancelled.
        Err(e) if e.status == 404 => Ok(json!({"run_id": run_id, "state": "cancelled"})),
        other => other,
    }
}

/// Streams the run's output to stdout/stderr until its exit line.
async fn follow_output(
    client: &Client,
    run_id: &str,
    out: &mut Out,
    pb: &ProgressBar,
) -> Result<Value, ApiFailure> {
    let mut resp = client
        .stream(&format!(
            "/api/v1/containers/runs/{run_id}/logs?follow=true"
        ))
        .await?;
    let mut buf = Vec::new();
    while let Some(chunk) = resp.next().await {
        let chunk = chunk.map_err(|e| ApiFailure {
            status: 0,
            body: None,
            message: format!("the log stream broke: {e}"),
        })?;
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            if let Some(result) = v.get("exit") {
                return Ok(result.clone());
            }
            let data = super::output::chunk_bytes(&v);
            pb.suspend(|| {
                if v.get("stream").and_then(Value::as_str) == Some("stderr") {
                    let mut e = std::io::stderr();
                    let _ = e.write_all(&data);
                    let _ = e.flush();
                } else {
                    let _ = out.raw(&data);
                }
            });
        }
    }
    // The stream ended without an exit line: ask for the result.
    wait_result(client, run_id).await
}

/// Forwards this process's stdin to the run, then closes it.
fn forward_stdin(client: Client, run_id: String) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<Vec<u8>>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.blocking_send(None);
                    break;
                }
                Ok(n) => {
                    if tx.blocking_send(Some(buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    });
    actix_rt::spawn(async move {
        while let Some(item) = rx.recv().await {
            let body = match &item {
                Some(data) => {
                    json!({"data_base64": crate::contract::bytes::base64_encode(data), "eof": false})
                }
                None => json!({"eof": true}),
            };
            let path = format!("/api/v1/containers/runs/{run_id}/input");
            // The run may not have started yet: retry briefly.
            for _ in 0..100 {
                match client.json("POST", &path, Some(&body)).await {
                    Err(e) if e.status == 503 => {
                        actix_rt::time::sleep(Duration::from_millis(100)).await
                    }
                    _ => break,
                }
            }
            if item.is_none() {
                break;
            }
        }
    });
}

fn print_result(out: &mut Out, result: &Value) -> Result<(), Failure> {
    match out.format {
        Format::Json => out.json(result),
        Format::Tsv => {
            let cols = [
                "run_id",
                "state",
                "exit_code",
                "duration_ms",
                "worker_id",
                "stdout_truncated",
                "stderr_truncated",
            ];
            let row: Vec<String> = cols
                .iter()
                .map(|c| cell(result.get(*c).unwrap_or(&Value::Null)))
                .collect();
            out.table(&cols, &[row])
        }
        Format::Text => Ok(()),
    }
}

/// Runs `args`; returns the exit code.
pub async fn run(client: Client, out: &mut Out, args: RunArgs) -> Result<u8, Failure> {
    let mut body = args.body()?;
    if out.format == Format::Text && !args.detach {
        // Printed here as the exact bytes the run wrote (a detached run
        // keeps text output for whoever reads it later).
        body["output_encoding"] = json!("base64");
    }
    // Take SIGINT from the start, so a Ctrl-C as the run begins cancels it
    // rather than killing this process with the run left going.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| Failure::error(format!("cannot watch for Ctrl-C: {e}")))?;
    let (_, accepted) = client
        .json("POST", "/api/v1/containers/runs", Some(&body))
        .await
        .map_err(|e| e.into_failure(EXIT_PLATFORM))?;
    let run_id = accepted
        .get("run_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if accepted.get("state").and_then(Value::as_str) != Some("running") {
        // Already finished (a server that ignores "wait": false).
        print_result(out, &accepted)?;
        return Ok(exit_code_of(&accepted));
    }
    if args.detach {
        match out.format {
            Format::Json => out.json(&accepted)?,
            Format::Text => out.line(&run_id)?,
            Format::Tsv => out.table(
                &["run_id", "state"],
                &[vec![run_id.clone(), "running".into()]],
            )?,
        }
        return Ok(0);
    }
    if args.interactive {
        forward_stdin(client.clone(), run_id.clone());
    }
    let pb = spinner(out.quiet, &run_id);
    let text = out.format == Format::Text;
    let mut interrupts = 0;
    let outcome = {
        let waiting = async {
            if text {
                follow_output(&client, &run_id, out, &pb).await
            } else {
                wait_result(&client, &run_id).await
            }
        };
        tokio::pin!(waiting);
        loop {
            tokio::select! {
                r = &mut waiting => break Some(r),
                _ = sigint.recv() => {
                    interrupts += 1;
                    if interrupts >= 2 {
                        break None;
                    }
                    pb.suspend(|| eprintln!("bus: cancelling {run_id} (press Ctrl-C again to leave at once)"));
                    let (c, id) = (client.clone(), run_id.clone());
                    actix_rt::spawn(async move {
                        if let Err(e) = c.json("DELETE", &format!("/api/v1/containers/runs/{id}"), None).await {
                            eprintln!("bus: could not cancel {id}: {}", e.message);
                        }
                    });
                }
            }
        }
    };
    pb.finish_and_clear();
    let Some(outcome) = outcome else {
        eprintln!("bus: left {run_id}; it was cancelled");
        return Ok(EXIT_CANCELLED);
    };
    let result = outcome.map_err(|e| e.into_failure(EXIT_PLATFORM))?;
    if let Some(err) = result.get("error") {
        let message = format!(
            "the run failed ({}): {}",
            err.get("type").and_then(Value::as_str).unwrap_or("error"),
            err.get("message").and_then(Value::as_str).unwrap_or("")
        );
        return Err(Failure::with_code(EXIT_PLATFORM, message));
    }
    print_result(out, &result)?;
    if let Some(a) = result
        .get("artifacts")
        .filter(|_| !out.quiet && out.format == Format::Text)
    {
        if std::io::stderr().is_terminal() {
            let state = match a["truncated"].as_bool() {
                Some(true) => " (truncated at the size limit)",
                _ => "",
            };
            eprintln!(
                "bus: artifacts: {} bytes{state}; download: bus containers artifacts {run_id} -x DIR",
                a["bytes"]
            );
        }
    }
    Ok(exit_code_of(&result))
}
