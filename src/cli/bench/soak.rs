//! `bus bench soak`: many runs through `bus dev` (REST API, warm pool on),
//! a fixed share of them cancelled, timed out or fed input, at a steady
//! concurrency. It checks, and fails unless:
//!
//! - every run ends in exactly the state its kind calls for (or, for a
//!   cancelled run, is deleted with its record);
//! - no run is left `running` and no container is left once the stack
//!   has stopped;
//! - the stack's memory stays flat: resident memory at the end is within
//!   `--rss-growth-mib` of what it was half way. (Bounded buffers fill in
//!   the first part: the broker's replay window, 1,000 events per name and
//!   64 MiB in all, and `bus dev`'s in-memory usage log of 10,000
//!   records.) Resident memory is printed at every tenth of the runs.

use super::stack::Stack;
use crate::cli::failure::Failure;
use crate::config::DEFAULT_IMAGE;
use clap::Args;
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct SoakArgs {
    /// Runs in all.
    #[arg(long, default_value_t = 1000)]
    pub runs: usize,
    /// Runs in flight at once.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// Warm containers kept for the codex profile.
    #[arg(long, default_value_t = 4)]
    pub pool_size: usize,
    /// Largest accepted growth of resident memory over the second half.
    #[arg(long, default_value_t = 32.0)]
    pub rss_growth_mib: f64,
    #[arg(long, default_value = DEFAULT_IMAGE)]
    pub image: String,
    /// Run through the multi-process stack while a random part of it is
    /// SIGKILLed and restarted (see `bench soak --faults` in the README).
    #[arg(long)]
    pub faults: bool,
    /// With --faults: how often a part is killed.
    #[arg(long, default_value = "3s", value_parser = crate::parse::parse_duration)]
    pub kill_every: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Plan {
    /// `printf OK`: succeeded.
    Plain,
    /// `sleep 5` with a 1 s timeout: timed_out.
    Timeout,
    /// `sleep 30`, deleted while it runs: the record is gone.
    Cancel,
    /// `cat` fed through the input endpoint: succeeded with the input.
    Input,
    /// `exit 3`: failed.
    Fails,
}

impl Plan {
    /// A mix that repeats every 16 runs, shuffled by a fixed stride.
    fn of(i: usize) -> Plan {
        match (i * 7) % 16 {
            0 | 1 => Plan::Timeout,
            2 | 3 => Plan::Cancel,
            4..=6 => Plan::Input,
            7 => Plan::Fails,
            _ => Plan::Plain,
        }
    }
}

struct Client {
    http: awc::Client,
    base: String,
    token: String,
}

impl Client {
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let req = self
            .http
            .request(
                method.parse().map_err(|_| "method".to_owned())?,
                format!("{}{path}", self.base),
            )
            .bearer_auth(&self.token);
        let mut resp = match body {
            Some(b) => req.send_json(&b).await,
            None => req.send().await,
        }
        .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = resp.status().as_u16();
        let v: Value = resp.json().limit(4 << 20).await.unwrap_or(Value::Null);
        Ok((status, v))
    }
}

/// Drives one run; returns what became of it.
async fn drive(c: &Client, i: usize) -> Result<String, String> {
    let runs = "/api/v1/containers/runs";
    let body = |args: Value, extra: Value| {
        let mut b = json!({"profile": "codex", "args": args});
        if let (Some(o), Some(e)) = (b.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        b
    };
    match Plan::of(i) {
        Plan::Plain | Plan::Fails | Plan::Timeout => {
            let (args, extra) = match Plan::of(i) {
                Plan::Plain => (json!(["sh", "-c", "printf OK"]), json!({})),
                Plan::Fails => (json!(["sh", "-c", "exit 3"]), json!({})),
                _ => (json!(["sleep", "5"]), json!({"timeout_seconds": 1})),
            };
            let (s, v) = c.call("POST", runs, Some(body(args, extra))).await?;
            match (s, v["state"].as_str()) {
                (200, Some(state)) => Ok(state.to_owned()),
                _ => Ok(format!("http {s}: {}", v["error"]["type"])),
            }
        }
        Plan::Cancel => {
            let (s, v) = c
                .call(
                    "POST",
                    runs,
                    Some(body(json!(["sleep", "30"]), json!({"wait": false}))),
                )
                .await?;
            let Some(id) = v["run_id"].as_str().filter(|_| s == 202) else {
                return Ok(format!("http {s}: {}", v["error"]["type"]));
            };
            actix_rt::time::sleep(Duration::from_millis(50 + (i as u64 * 37) % 400)).await;
            let (s, _) = c.call("DELETE", &format!("{runs}/{id}"), None).await?;
            let (gone, _) = c.call("GET", &format!("{runs}/{id}"), None).await?;
            Ok(match (s, gone) {
                (200, 404) => "deleted".to_owned(),
                _ => format!("delete {s}, then GET {gone}"),
            })
        }
        Plan::Input => {
            let (s, v) = c
                .call(
                    "POST",
                    runs,
                    Some(body(
                        json!(["cat"]),
                        json!({"wait": false, "interactive": true, "timeout_seconds": 60}),
                    )),
                )
                .await?;
            let Some(id) = v["run_id"].as_str().filter(|_| s == 202) else {
                return Ok(format!("http {s}: {}", v["error"]["type"]));
            };
            // Until the run has started (it may queue behind others for
            // the engine), input is refused with a retry hint.
            let mut fed = 0;
            for _ in 0..1200 {
                let (s, _) = c
                    .call(
                        "POST",
                        &format!("{runs}/{id}/input"),
                        Some(json!({"data": format!("in{i}"), "eof": true})),
                    )
                    .await?;
                fed = s;
                if s == 200 {
                    break;
                }
                actix_rt::time::sleep(Duration::from_millis(50)).await;
            }
            if fed != 200 {
                return Ok(format!("input refused: {fed}"));
            }
            let (_, v) = c
                .call("GET", &format!("{runs}/{id}/wait?timeout=60s"), None)
                .await?;
            let state = v["state"]
                .as_str()
                .or(v["result"]["state"].as_str())
                .unwrap_or("?");
            let out = v["stdout"]
                .as_str()
                .or(v["result"]["stdout"].as_str())
                .unwrap_or("");
            Ok(if out == format!("in{i}") {
                state.to_owned()
            } else {
                format!("{state} with output {out:?}")
            })
        }
    }
}

fn expected(plan: Plan) -> &'static str {
    match plan {
        Plan::Plain | Plan::Input => "succeeded",
        Plan::Fails => "failed",
        Plan::Timeout => "timed_out",
        Plan::Cancel => "deleted",
    }
}

pub fn run(args: SoakArgs) -> Result<(), Failure> {
    let stack = Stack::start(&args.image, args.pool_size, args.concurrency)?;
    let client = Client {
        http: crate::http::client::client(Some(Duration::from_secs(120))),
        base: stack.url.clone(),
        token: stack.token.clone(),
    };
    let started = Instant::now();
    let tenth = (args.runs / 10).max(1);
    let (outcomes, rss) = actix_rt::System::new().block_on(async {
        let mut done = 0usize;
        let mut rss: Vec<f64> = Vec::new();
        let mut outcomes: BTreeMap<(Plan, String), usize> = BTreeMap::new();
        let mut stream = futures::stream::iter(0..args.runs)
            .map(|i| {
                let c = &client;
                async move { (i, drive(c, i).await) }
            })
            .buffer_unordered(args.concurrency.max(1));
        while let Some((i, outcome)) = stream.next().await {
            let what = outcome.unwrap_or_else(|e| format!("error: {e}"));
            *outcomes.entry((Plan::of(i), what)).or_default() += 1;
            done += 1;
            if done.is_multiple_of(tenth) {
                rss.push(stack.rss_mib());
            }
        }
        // Nothing is left running: every page of the ledger.
        let mut running = 0;
        let mut before: Option<String> = None;
        loop {
            let path = match &before {
                Some(b) => format!("/api/v1/containers/runs?limit=1000&before={b}"),
                None => "/api/v1/containers/runs?limit=1000".to_owned(),
            };
            let Ok((200, page)) = client.call("GET", &path, None).await else {
                running = usize::MAX;
                break;
            };
            let items = page["items"].as_array().cloned().unwrap_or_default();
            running += items.iter().filter(|r| r["state"] == "running").count();
            match page["next"].as_str() {
                Some(next) => before = Some(next.to_owned()),
                None => break,
            }
        }
        (outcomes_with(outcomes, running), rss)
    });
    let wall = started.elapsed();
    let rss_end = stack.rss_mib();
    let rss_half = rss
        .get(rss.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(rss_end);
    let peak = stack.peak_rss_mib();
    drop(stack); // SIGTERM: the stack stops and removes its containers
    let leaked = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", "label=bus.worker_id=dev"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(usize::MAX);

    println!(
        "\n### soak: {} runs, {} at a time\n",
        args.runs, args.concurrency
    );
    println!("| kind | outcome | runs | expected |");
    println!("|---|---|---:|---|");
    let mut wrong = 0;
    for ((plan, what), n) in &outcomes.0 {
        let ok = what == expected(*plan);
        if !ok {
            wrong += n;
        }
        println!(
            "| {plan:?} | {what} | {n} | {} |",
            if ok { "yes" } else { "NO" }
        );
    }
    println!(
        "\nwall {:.1} s ({:.1} runs/s); left running {}; containers left {}; RSS half way {:.0} MiB, at the end {:.0} MiB, peak {:.0} MiB",
        wall.as_secs_f64(),
        args.runs as f64 / wall.as_secs_f64(),
        outcomes.1,
        leaked,
        rss_half,
        rss_end,
        peak
    );
    let series: Vec<String> = rss.iter().map(|m| format!("{m:.0}")).collect();
    println!("RSS (MiB) at each tenth of the runs: {}", series.join(", "));
    let mut failures = Vec::new();
    if wrong > 0 {
        failures.push(format!("{wrong} runs did not end as expected"));
    }
    if outcomes.1 > 0 {
        failures.push(format!("{} runs are still running", outcomes.1));
    }
    if leaked > 0 {
        failures.push(format!("{leaked} containers were left behind"));
    }
    if rss_end - rss_half > args.rss_growth_mib {
        failures.push(format!(
            "memory grew {:.0} MiB over the second half (limit {:.0})",
            rss_end - rss_half,
            args.rss_growth_mib
        ));
    }
    if failures.is_empty() {
        println!("soak OK");
        Ok(())
    } else {
        Err(Failure::error(format!(
            "soak failed: {}",
            failures.join("; ")
        )))
    }
}

type Outcomes = (BTreeMap<(Plan, String), usize>, usize);

fn outcomes_with(mut outcomes: BTreeMap<(Plan, String), usize>, running: usize) -> Outcomes {
    outcomes.retain(|_, n| *n > 0);
    (outcomes, running)
}
