//! `bus bench e2e`: the whole stack as a user meets it. It starts `bus
//! dev` (this binary) with a warm pool on a private port and data
//! directory, then measures in the same run:
//!
//! - `sh -c 'printf OK'` latency: plain `docker run --rm --network none`
//!   (the baseline) and `docker exec` into a running container; then
//!   through the REST API and through the CLI (`bus containers run`),
//!   cold (an explicit-image run) and pooled (a profile run);
//! - REST status throughput (`GET /status`, JWT checked on every request)
//!   under a loopback load generator, beside `/healthz` of the same server;
//! - N concurrent runs: successes, p50/p99, and the stack's peak RSS.
//!
//! Results print as markdown tables (ratios against the baseline) and,
//! with `--json`, as JSON.

use super::stack::Stack;
use super::stats::{print_table, Summary};
use super::worker::docker_run;
use crate::cli::failure::Failure;
use crate::config::DEFAULT_IMAGE;
use clap::Args;
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct E2eBenchArgs {
    /// Sequential runs per latency path.
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Warm containers kept for the codex profile.
    #[arg(long, default_value_t = 4)]
    pub pool_size: usize,
    /// Runs started at once for the concurrency figure (0: skip it).
    #[arg(long, default_value_t = 200)]
    pub concurrent: usize,
    /// Requests for the status throughput figure.
    #[arg(long, default_value_t = 2000)]
    pub status_requests: usize,
    /// Image to run (built offline by scripts/build-test-image).
    #[arg(long, default_value = DEFAULT_IMAGE)]
    pub image: String,
    /// Print the results as JSON too.
    #[arg(long)]
    pub json: bool,
    /// Also write the results as JSON to this file (for charts).
    #[arg(long)]
    pub json_out: Option<std::path::PathBuf>,
}

const COMMAND: [&str; 3] = ["sh", "-c", "printf OK"];

fn timed(what: &str, mut cmd: Command) -> Result<Duration, Failure> {
    let t0 = Instant::now();
    let out = cmd
        .output()
        .map_err(|e| Failure::error(format!("{what}: {e}")))?;
    let took = t0.elapsed();
    if !out.status.success() || !String::from_utf8_lossy(&out.stdout).contains("OK") {
        return Err(Failure::error(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(took)
}

fn docker(args: &[&str]) -> Command {
    let mut cmd = Command::new("docker");
    cmd.args(args);
    cmd
}

fn cli(stack: &Stack, run: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("own path"));
    cmd.args([
        "containers",
        "--api-url",
        &stack.url,
        "run",
        "--format",
        "text",
    ])
    .args(run)
    .arg("--")
    .args(COMMAND)
    .env("BUS_API_TOKEN", &stack.token)
    .env("BUS_CONFIG_DIR", &stack.dir);
    cmd
}

fn client() -> awc::Client {
    crate::http::client::client(Some(Duration::from_secs(300)))
}

async fn post_run(client: &awc::Client, stack: &Stack, body: &Value) -> Result<Value, String> {
    let mut resp = client
        .post(format!("{}/api/v1/containers/runs", stack.url))
        .bearer_auth(&stack.token)
        .send_json(body)
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let v: Value = resp
        .json()
        .limit(4 << 20)
        .await
        .map_err(|e| e.to_string())?;
    if status.is_success() && v["stdout"] == "OK" {
        Ok(v)
    } else {
        Err(format!("{status}: {v}"))
    }
}

/// Sequential samples of `one`, pausing `gap` between them (untimed).
pub(super) async fn samples<F, Fut>(
    n: usize,
    gap: Duration,
    mut one: F,
) -> Result<Vec<Duration>, Failure>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Duration, Failure>>,
{
    one().await?; // warm up
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        if !gap.is_zero() {
            actix_rt::time::sleep(gap).await;
        }
        out.push(one().await?);
    }
    Ok(out)
}

fn summary(name: &str, s: Vec<Duration>) -> Summary {
    let total: f64 = s.iter().map(Duration::as_secs_f64).sum();
    let rate = if total > 0.0 {
        s.len() as f64 / total
    } else {
        0.0
    };
    Summary::new(name, s, rate)
}

pub fn run(args: E2eBenchArgs) -> Result<(), Failure> {
    let stack = Stack::start(&args.image, args.pool_size, args.concurrent)?;
    let image = args.image.clone();
    let idle = format!(
        "bus-bench-exec-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    timed("docker run -d", {
        let mut c = docker(&[
            "run",
            "-d",
            "--rm",
            "--network",
            "none",
            "--name",
            &idle,
            &image,
            "sleep",
            "3600",
        ]);
        c.stdout(Stdio::null());
        c
    })
    .ok();
    let result = actix_rt::System::new().block_on(measure(&args, &stack, &idle));
    let _ = docker(&["rm", "-f", &idle]).output();
    result
}

async fn measure(args: &E2eBenchArgs, stack: &Stack, idle: &str) -> Result<(), Failure> {
    let image = args.image.as_str();
    let http = client();
    // Let the pool fill before the first pooled sample.
    let refill = Duration::from_millis(if args.pool_size > 0 { 600 } else { 0 });
    actix_rt::time::sleep(Duration::from_secs(2)).await;
    let n = args.runs;
    let mut rows = Vec::new();
    rows.push(summary(
        "docker run --rm --network none (baseline)",
        samples(n, Duration::ZERO, || async { docker_run(image) }).await?,
    ));
    rows.push(summary(
        "docker exec into a running container",
        samples(n, Duration::ZERO, || async {
            timed(
                "docker exec",
                docker(&["exec", idle, "sh", "-c", "printf OK"]),
            )
        })
        .await?,
    ));
    let cold_body = json!({"image": image, "command": COMMAND});
    let pooled_body = json!({"profile": "codex", "args": COMMAND});
    for (label, body, gap) in [
        (
            "REST API, cold (explicit image)",
            &cold_body,
            Duration::ZERO,
        ),
        ("REST API, pooled (codex profile)", &pooled_body, refill),
    ] {
        let s = samples(n, gap, || async {
            let t0 = Instant::now();
            post_run(&http, stack, body).await.map_err(Failure::error)?;
            Ok(t0.elapsed())
        })
        .await?;
        rows.push(summary(label, s));
    }
    for (label, run, gap) in [
        (
            "CLI, cold (explicit image)",
            vec!["--image", image],
            Duration::ZERO,
        ),
        (
            "CLI, pooled (codex profile)",
            vec!["--profile", "codex"],
            refill,
        ),
    ] {
        let s = samples(n, gap, || async {
            timed("bus containers run", cli(stack, &run))
        })
        .await?;
        rows.push(summary(label, s));
    }
    print_table(
        "printf OK end to end (baseline: docker run --rm --network none)",
        &rows,
    );
    let base = rows[0].p50_us;
    let ratio = |name: &str| {
        rows.iter()
            .find(|r| r.name.starts_with(name))
            .map(|r| r.p50_us / base)
            .unwrap_or(f64::NAN)
    };
    println!(
        "\np50 ratios to docker run --rm: REST pooled {:.2}x, CLI pooled {:.2}x, REST cold {:.2}x, CLI cold {:.2}x",
        ratio("REST API, pooled"),
        ratio("CLI, pooled"),
        ratio("REST API, cold"),
        ratio("CLI, cold")
    );

    // REST status throughput, every request's JWT checked, beside the
    // same server's /healthz (no token, no state) measured the same way.
    let probe = throughput(&http, stack, "/healthz", false, args.status_requests, 64).await?;
    let status = throughput(
        &http,
        stack,
        "/api/v1/containers/status",
        true,
        args.status_requests,
        64,
    )
    .await?;
    print_table(
        "GET /status, 64 in flight (JWT checked per request; baseline: /healthz of the same server)",
        &[probe.clone(), status.clone()],
    );

    // Many runs at once.
    let mut concurrent = json!(null);
    if args.concurrent > 0 {
        let t0 = Instant::now();
        let outcomes = futures::future::join_all((0..args.concurrent).map(|i| {
            let http = &http;
            let body = if i % 2 == 0 { &pooled_body } else { &cold_body };
            async move {
                let t = Instant::now();
                (post_run(http, stack, body).await, t.elapsed())
            }
        }))
        .await;
        let wall = t0.elapsed();
        let ok: Vec<Duration> = outcomes
            .iter()
            .filter(|(r, _)| r.is_ok())
            .map(|(_, d)| *d)
            .collect();
        let failed: Vec<&String> = outcomes
            .iter()
            .filter_map(|(r, _)| r.as_ref().err())
            .collect();
        let s = Summary::new(
            &format!("{} concurrent runs (half pooled)", args.concurrent),
            ok.clone(),
            ok.len() as f64 / wall.as_secs_f64(),
        );
        let rss = stack.peak_rss_mib();
        print_table(
            &format!("{} runs started at once", args.concurrent),
            std::slice::from_ref(&s),
        );
        println!(
            "\nsucceeded {}/{} in {:.1} s; peak RSS of the stack {:.0} MiB",
            ok.len(),
            args.concurrent,
            wall.as_secs_f64(),
            rss
        );
        if let Some(e) = failed.first() {
            println!("first failure: {e}");
        }
        concurrent = json!({"runs": args.concurrent, "succeeded": ok.len(), "wall_s": wall.as_secs_f64(), "p50_us": s.p50_us, "p99_us": s.p99_us, "peak_rss_mib": rss});
    }
    let all =
        json!({"latency": rows, "status": status, "healthz": probe, "concurrent": concurrent});
    let text = serde_json::to_string_pretty(&all).unwrap_or_default();
    if args.json {
        println!("{text}");
    }
    if let Some(path) = &args.json_out {
        std::fs::write(path, &text)?;
    }
    Ok(())
}

/// Requests per second of `GET path` with `lanes` in flight (with the
/// stack's token when `auth`).
async fn throughput(
    http: &awc::Client,
    stack: &Stack,
    path: &str,
    auth: bool,
    requests: usize,
    lanes: usize,
) -> Result<Summary, Failure> {
    let url = format!("{}{path}", stack.url);
    let one = || async {
        let t0 = Instant::now();
        let mut req = http.get(&url);
        if auth {
            req = req.bearer_auth(&stack.token);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Failure::error(format!("GET {path}: {e}")))?;
        if !resp.status().is_success() {
            return Err(Failure::error(format!("GET {path}: {}", resp.status())));
        }
        Ok::<Duration, Failure>(t0.elapsed())
    };
    for _ in 0..20 {
        one().await?;
    }
    let per = requests.div_ceil(lanes);
    let t0 = Instant::now();
    let all = futures::future::join_all((0..lanes).map(|_| async {
        let mut got = Vec::with_capacity(per);
        for _ in 0..per {
            got.push(one().await?);
        }
        Ok::<_, Failure>(got)
    }))
    .await;
    let wall = t0.elapsed();
    let mut samples = Vec::new();
    for lane in all {
        samples.extend(lane?);
    }
    let rate = samples.len() as f64 / wall.as_secs_f64();
    let name = if auth {
        format!("GET {path}")
    } else {
        format!("GET {path} (baseline)")
    };
    Ok(Summary::new(&name, samples, rate))
}
