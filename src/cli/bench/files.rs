//! `bus bench files`: moving a run's data, beside `docker cp` of the same
//! bytes in the same run. It starts `bus dev` (this binary) and measures:
//!
//! - artifact out: a run writes N MiB of random bytes to
//!   `/workspace/out.bin`, keeps it as an artifact, and the archive is
//!   downloaded (`POST /runs` with `artifacts`, then `GET .../artifacts`),
//!   beside `docker run` of the same command, `docker cp` of the file out
//!   and `docker rm`;
//! - file in: a run is given a file in its request (`files`) and counts
//!   its bytes, beside `docker create`, `docker cp` of the file in and
//!   `docker start -a`. A file travels inside the run request, so it is
//!   bounded by the request body (1 MiB in `bus dev`): this path uses the
//!   largest that fits.
//!
//! Figures are MB/s of the whole operation (run included) and the ratio
//! to the `docker` baseline; nothing is asserted.

use super::e2e::samples;
use super::stack::Stack;
use super::stats::{print_table, Summary};
use crate::cli::failure::Failure;
use crate::config::DEFAULT_IMAGE;
use base64::Engine;
use clap::Args;
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct FilesBenchArgs {
    /// Samples per path.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// MiB written and taken out as an artifact.
    #[arg(long, default_value_t = 10)]
    pub artifact_mib: usize,
    /// MiB of the file given in the run request (the bench's stack takes
    /// up to 32 MiB of files).
    #[arg(long, default_value_t = 10)]
    pub file_mib: usize,
    /// Image to run (built offline by scripts/build-test-image).
    #[arg(long, default_value = DEFAULT_IMAGE)]
    pub image: String,
}

fn docker(args: &[&str]) -> Result<std::process::Output, Failure> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| Failure::error(format!("docker CLI: {e}")))?;
    if !out.status.success() {
        return Err(Failure::error(format!(
            "docker {}: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out)
}

fn name() -> String {
    format!(
        "bus-bench-files-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// `docker run` writing the file, `docker cp` of it out, `docker rm`.
fn docker_out(image: &str, command: &str, dest: &std::path::Path) -> Result<Duration, Failure> {
    let c = name();
    let t0 = Instant::now();
    let ran = docker(&[
        "run",
        "--name",
        &c,
        "--network",
        "none",
        image,
        "sh",
        "-c",
        command,
    ]);
    let copied = ran.and_then(|_| {
        docker(&[
            "cp",
            &format!("{c}:/workspace/out.bin"),
            &dest.display().to_string(),
        ])
    });
    let _ = docker(&["rm", "-f", &c]);
    copied?;
    Ok(t0.elapsed())
}

/// `docker create`, `docker cp` of the file in, `docker start -a`.
fn docker_in(image: &str, file: &std::path::Path, want: usize) -> Result<Duration, Failure> {
    let c = name();
    let t0 = Instant::now();
    let result = (|| {
        docker(&[
            "create",
            "--name",
            &c,
            "--network",
            "none",
            image,
            "sh",
            "-c",
            "wc -c < /in.bin",
        ])?;
        docker(&["cp", &file.display().to_string(), &format!("{c}:/in.bin")])?;
        let out = docker(&["start", "-a", &c])?;
        if String::from_utf8_lossy(&out.stdout).trim() != want.to_string() {
            return Err(Failure::error("docker cp in: the size differs"));
        }
        Ok(())
    })();
    let _ = docker(&["rm", "-f", &c]);
    result?;
    Ok(t0.elapsed())
}

async fn api(
    http: &awc::Client,
    stack: &Stack,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Vec<u8>, Failure> {
    let req = http
        .request(
            method.parse().expect("a method"),
            format!("{}{path}", stack.url),
        )
        .bearer_auth(&stack.token);
    let sent = match body {
        Some(b) => req.send_json(b).await,
        None => req.send().await,
    };
    let mut resp = sent.map_err(|e| Failure::error(format!("{path}: {e}")))?;
    let bytes = resp
        .body()
        .limit(1 << 30)
        .await
        .map_err(|e| Failure::error(format!("{path}: {e}")))?;
    if !resp.status().is_success() {
        return Err(Failure::error(format!(
            "{path}: {} {}",
            resp.status(),
            String::from_utf8_lossy(&bytes)
        )));
    }
    Ok(bytes.to_vec())
}

fn rate_row(name: &str, samples: Vec<Duration>, bytes: usize) -> Summary {
    let total: f64 = samples.iter().map(Duration::as_secs_f64).sum();
    let mb_per_s = if total > 0.0 {
        bytes as f64 * samples.len() as f64 / total / 1e6
    } else {
        0.0
    };
    Summary::new(name, samples, mb_per_s)
}

pub fn run(args: FilesBenchArgs) -> Result<(), Failure> {
    let stack = Stack::start(&args.image, 0, 8)?;
    actix_rt::System::new().block_on(measure(&args, &stack))
}

/// A run through the REST API: its result.
async fn post_run(http: &awc::Client, stack: &Stack, body: &Value) -> Result<Value, Failure> {
    serde_json::from_slice(&api(http, stack, "POST", "/api/v1/containers/runs", Some(body)).await?)
        .map_err(|e| Failure::error(format!("a run's result: {e}")))
}

async fn measure(args: &FilesBenchArgs, stack: &Stack) -> Result<(), Failure> {
    let http = crate::http::client::client(Some(Duration::from_secs(600)));
    let scratch = tempfile_dir()?;
    let n = args.runs;

    let out_bytes = args.artifact_mib << 20;
    let generate = format!("head -c {out_bytes} /dev/urandom > /workspace/out.bin");
    let dest = scratch.join("out.bin");
    let base = samples(n, Duration::ZERO, || async {
        docker_out(
            &args.image,
            &format!("mkdir -p /workspace && {generate}"),
            &dest,
        )
    })
    .await?;
    let body = json!({
        "profile": "codex",
        "args": ["sh", "-c", generate],
        "artifacts": ["/workspace/out.bin"],
        "timeout_seconds": 300,
    });
    let ours = samples(n, Duration::ZERO, || async {
        let t0 = Instant::now();
        let result = post_run(&http, stack, &body).await?;
        let run = format!(
            "/api/v1/containers/runs/{}",
            result["run_id"].as_str().unwrap_or_default()
        );
        let tar = api(&http, stack, "GET", &format!("{run}/artifacts"), None).await?;
        let took = t0.elapsed();
        if tar.len() < out_bytes || result["state"] != "succeeded" {
            return Err(Failure::error(format!(
                "an artifact run came back short: {} bytes, {}",
                tar.len(),
                result["state"]
            )));
        }
        let _ = api(&http, stack, "DELETE", &run, None).await;
        Ok(took)
    })
    .await?;
    print_table(
        &format!(
            "{} MiB artifact out (per second = MB/s; baseline: docker run + docker cp)",
            args.artifact_mib
        ),
        &[
            rate_row(
                "docker run + docker cp out + docker rm (baseline)",
                base,
                out_bytes,
            ),
            rate_row(
                "REST run with artifacts + GET .../artifacts",
                ours,
                out_bytes,
            ),
        ],
    );

    let in_bytes = args.file_mib << 20;
    let data: Vec<u8> = (0..in_bytes).map(|i| (i * 7 + i / 251) as u8).collect();
    let local = scratch.join("in.bin");
    std::fs::write(&local, &data)?;
    let base = samples(n, Duration::ZERO, || async {
        docker_in(&args.image, &local, in_bytes)
    })
    .await?;
    let body = json!({
        "profile": "codex",
        "args": ["sh", "-c", "wc -c < /workspace/in.bin"],
        "files": [{"path": "/workspace/in.bin",
                   "content_base64": base64::engine::general_purpose::STANDARD.encode(&data)}],
        "timeout_seconds": 300,
    });
    let want = in_bytes.to_string();
    let ours = samples(n, Duration::ZERO, || async {
        let t0 = Instant::now();
        let result = post_run(&http, stack, &body).await?;
        let took = t0.elapsed();
        if result["stdout"].as_str().map(str::trim) != Some(want.as_str()) {
            return Err(Failure::error(format!(
                "a file run came back wrong: {result}"
            )));
        }
        Ok(took)
    })
    .await?;
    print_table(
        &format!(
            "{} MiB file in (per second = MB/s; baseline: docker create + docker cp + docker start)",
            args.file_mib
        ),
        &[
            rate_row("docker create + docker cp in + docker start -a (baseline)", base, in_bytes),
            rate_row("REST run with files", ours, in_bytes),
        ],
    );
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf, Failure> {
    let dir = std::env::temp_dir().join(name());
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
