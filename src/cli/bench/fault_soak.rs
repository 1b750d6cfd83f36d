//! `bus bench soak --faults`: runs through the multi-process stack — the
//! Events API, two routers, a Docker worker and the containers API, each
//! a process of this binary — while a random one of them is SIGKILLed and
//! started again every `--kill-every`. It fails unless:
//!
//! - every run ends in exactly one state, none left `running`;
//! - what ran agrees with what was answered: `succeeded` ran exactly once,
//!   `error` (never started) never ran, `lost` at most once — counted by
//!   each run writing its own token to a shared workspace;
//! - every run's usage records match its ledger record (`requested`, then
//!   `finished` with its billed seconds, or `failed`);
//! - no container of the stack is left.
//!
//! The runs are asked `"wait": false` and followed in the ledger, so a
//! killed API provider loses no answer it gave; a request whose POST the
//! kill cut off is looked up by its token in the run list.

use super::fault_stack::{free_port, Procs, PARTS};
use super::soak::SoakArgs;
use crate::cli::failure::Failure;
use crate::runtime::docker::{docker_host, DockerRuntime};
use crate::runtime::ContainerRuntime;
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One run as the soak asked for it.
#[derive(Debug, Clone)]
struct Asked {
    token: String,
    run_id: Option<String>,
}

struct Api {
    http: awc::Client,
    base: String,
    token: String,
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Option<(u16, Value)> {
        let req = self
            .http
            .request(method.parse().ok()?, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(30));
        let mut resp = match body {
            Some(b) => req.send_json(&b).await,
            None => req.send().await,
        }
        .ok()?;
        let status = resp.status().as_u16();
        Some((
            status,
            resp.json().limit(16 << 20).await.unwrap_or(Value::Null),
        ))
    }

    /// Asks for a run until the API answers (a POST cut off by a kill
    /// leaves `run_id` unknown).
    async fn ask(&self, token: String, i: usize) -> Asked {
        let nap = (i * 37) % 300;
        let body = json!({
            "profile": "codex",
            "args": ["sh", "-c", format!("echo {token} >> /workspace/ran; sleep 0.{nap:03}")],
            "timeout_seconds": 60,
            "wait": false,
        });
        match self
            .call("POST", "/api/v1/containers/runs", Some(body))
            .await
        {
            Some((202, v)) => Asked {
                token,
                run_id: v["run_id"].as_str().map(str::to_owned),
            },
            // Refused before it was recorded, or the API away, or the
            // POST cut off by a kill (it may have been recorded: it is
            // looked up by its token later).
            _ => Asked {
                token,
                run_id: None,
            },
        }
    }

    async fn record(&self, run_id: &str) -> Option<Value> {
        match self
            .call("GET", &format!("/api/v1/containers/runs/{run_id}"), None)
            .await
        {
            Some((200, v)) => Some(v),
            _ => None,
        }
    }
}

fn executions(dir: &Path) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for line in std::fs::read_to_string(dir.join("workspace/ran"))
        .unwrap_or_default()
        .lines()
    {
        *out.entry(line.trim().to_owned()).or_default() += 1;
    }
    out
}

pub fn run(args: SoakArgs) -> Result<(), Failure> {
    let dir =
        std::env::temp_dir().join(format!("bus-fault-soak-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(dir.join("workspace"))?;
    std::fs::create_dir_all(dir.join("data"))?;
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "[worker]\ncapacity = {}\n[profiles.codex]\nimage = \"{}\"\n",
            args.concurrency * 2 + 8,
            args.image
        ),
    )?;
    let secret = {
        use base64::Engine;
        let bytes: Vec<u8> = (0..2)
            .flat_map(|_| *uuid::Uuid::new_v4().as_bytes())
            .collect();
        format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
    };
    let mut procs = Procs {
        exe: std::env::current_exe()?,
        secret,
        events_port: free_port()?,
        api_port: free_port()?,
        worker_id: format!("soak-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        running: BTreeMap::new(),
        usage: None,
        dir: dir.clone(),
    };
    for part in PARTS {
        procs.start(part)?;
    }
    let usage = Arc::new(Mutex::new(Vec::new()));
    procs.listen_usage(usage.clone())?;
    let user = procs.token("soak-user", "container:read container:run container:delete");
    let base = format!("http://127.0.0.1:{}", procs.api_port);
    let worker_id = procs.worker_id.clone();
    let kill_every = args.kill_every;
    let (runs, concurrency) = (args.runs, args.concurrency);
    println!("## bench soak --faults: {runs} runs at concurrency {concurrency}, a random part SIGKILLed and restarted every {kill_every:?}");
    let procs = Arc::new(Mutex::new(procs));
    let stack = procs.clone();
    let outcome = actix_rt::System::new().block_on(async move {
        let procs = stack;
        let api = Api {
            http: crate::http::client::client(None),
            base,
            token: user,
        };
        // Up first.
        let mut up = false;
        for _ in 0..300 {
            if let Some((200, v)) = api
                .call(
                    "POST",
                    "/api/v1/containers/runs",
                    Some(json!({"profile": "codex", "args": ["true"]})),
                )
                .await
            {
                if v["state"] == "succeeded" {
                    up = true;
                    break;
                }
            }
            actix_rt::time::sleep(Duration::from_millis(200)).await;
        }
        if !up {
            return Err(Failure::error("the stack never ran a run"));
        }
        let t0 = Instant::now();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let killer = {
            let (procs, done) = (procs.clone(), done.clone());
            actix_rt::spawn(async move {
                let mut kills: BTreeMap<&'static str, usize> = BTreeMap::new();
                let mut n = 0usize;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    actix_rt::time::sleep(kill_every).await;
                    if done.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    n += 1;
                    let part = PARTS[(n * 7 + n / 3) % PARTS.len()];
                    procs.lock().expect("procs").kill(part);
                    actix_rt::time::sleep(Duration::from_millis(150 + (n as u64 * 97) % 800)).await;
                    let _ = procs.lock().expect("procs").start(part);
                    *kills.entry(part).or_default() += 1;
                }
                kills
            })
        };
        let api = std::rc::Rc::new(api);
        // Each slot asks for a run and follows it to its end, so that
        // `concurrency` runs are in flight at once.
        let asked: Vec<Asked> = futures::stream::iter(0..runs)
            .map(|i| {
                let api = api.clone();
                async move {
                    let token = format!("t{i}x{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
                    let asked = api.ask(token, i).await;
                    if let Some(run_id) = &asked.run_id {
                        let until = Instant::now() + Duration::from_secs(120);
                        while Instant::now() < until {
                            if let Some(r) = api.record(run_id).await {
                                if r["state"] != "running" {
                                    break;
                                }
                            }
                            actix_rt::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                    asked
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let kills = killer.await.unwrap_or_default();
        // Every part up again, then the runs settle.
        let mut records: BTreeMap<String, Value> = BTreeMap::new();
        let settle_by = Instant::now() + Duration::from_secs(180);
        let all_runs = |api: std::rc::Rc<Api>| async move {
            let mut found = Vec::new();
            let mut before: Option<String> = None;
            loop {
                let path = match &before {
                    Some(b) => format!("/api/v1/containers/runs?limit=1000&before={b}"),
                    None => "/api/v1/containers/runs?limit=1000".to_owned(),
                };
                let Some((200, page)) = api.call("GET", &path, None).await else {
                    return None;
                };
                found.extend(page["items"].as_array().cloned().unwrap_or_default());
                match page["next"].as_str() {
                    Some(n) => before = Some(n.to_owned()),
                    None => return Some(found),
                }
            }
        };
        loop {
            let mut pending = 0;
            for a in &asked {
                let Some(run_id) = &a.run_id else { continue };
                if records.get(run_id).is_some_and(|r| r["state"] != "running") {
                    continue;
                }
                match api.record(run_id).await {
                    Some(r) if r["state"] != "running" => {
                        records.insert(run_id.clone(), r);
                    }
                    _ => pending += 1,
                }
            }
            if pending == 0 || Instant::now() > settle_by {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(500)).await;
        }
        // The asks whose POST was cut off: by their token, in the list.
        let listed = all_runs(api.clone()).await.unwrap_or_default();
        let mut by_token: BTreeMap<String, String> = BTreeMap::new();
        for item in &listed {
            if let Some(id) = item["run_id"].as_str() {
                if let Some(r) = api.record(id).await {
                    let cmd = r["args"].to_string();
                    for a in asked.iter().filter(|a| a.run_id.is_none()) {
                        if cmd.contains(&a.token) {
                            by_token.insert(a.token.clone(), id.to_owned());
                            if r["state"] != "running" {
                                records.insert(id.to_owned(), r.clone());
                            }
                        }
                    }
                }
            }
        }
        // Let anything that could still run late have its chance.
        actix_rt::time::sleep(Duration::from_secs(10)).await;
        let took = t0.elapsed();
        Ok((asked, records, by_token, kills, took))
    });
    let (asked, records, by_token, kills, took) = outcome?;
    let ran = executions(&dir);
    let usage = usage.lock().expect("usage").clone();
    let mut problems = Vec::new();
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    for a in &asked {
        let run_id = a.run_id.clone().or_else(|| by_token.get(&a.token).cloned());
        let times = ran.get(&a.token).copied().unwrap_or(0);
        let Some(run_id) = run_id else {
            *states.entry("never recorded".into()).or_default() += 1;
            if times != 0 {
                problems.push(format!("{}: never recorded, yet ran {times}×", a.token));
            }
            continue;
        };
        let Some(record) = records.get(&run_id) else {
            *states.entry("still running".into()).or_default() += 1;
            problems.push(format!("{run_id}: never settled"));
            continue;
        };
        let state = record["state"].as_str().unwrap_or("?").to_owned();
        *states.entry(state.clone()).or_default() += 1;
        let ok_times = match state.as_str() {
            "succeeded" => times == 1,
            "error" => times == 0,
            "lost" => times <= 1,
            _ => false,
        };
        if !ok_times {
            problems.push(format!("{run_id}: {state} but ran {times}×"));
        }
        // As a consumer counts them: once per event_id (a restarted
        // provider sends a running run's `requested` again).
        let mut ids = std::collections::BTreeSet::new();
        let mine: Vec<&Value> = usage
            .iter()
            .filter(|u| u["data"]["run_id"] == run_id.as_str())
            .filter(|u| ids.insert(u["event_id"].to_string()))
            .collect();
        let types: Vec<&str> = mine
            .iter()
            .filter_map(|u| u["event_type"].as_str())
            .collect();
        let want_end = if state == "succeeded" {
            "container_run_finished"
        } else {
            "container_run_failed"
        };
        if types != ["container_run_requested", want_end] {
            problems.push(format!("{run_id}: {state} with usage {types:?}"));
        } else if state == "succeeded" {
            let ms = record["result"]["duration_ms"].as_u64().unwrap_or(0);
            if mine[1]["data"]["meters"]["bus_container_runtime_seconds"] != ms.div_ceil(1000) {
                problems.push(format!(
                    "{run_id}: billed {} for {ms} ms",
                    mine[1]["data"]["meters"]
                ));
            }
        }
    }
    let left = actix_rt::System::new().block_on(async move {
        let runtime = DockerRuntime::new("docker", &docker_host());
        for _ in 0..60 {
            let c = runtime.list_managed(&worker_id).await.unwrap_or_default();
            let n = runtime
                .list_managed_networks(&worker_id)
                .await
                .unwrap_or_default();
            if c.is_empty() && n.is_empty() {
                return 0;
            }
            actix_rt::time::sleep(Duration::from_millis(500)).await;
        }
        runtime
            .list_managed(&worker_id)
            .await
            .map(|c| c.len())
            .unwrap_or(0)
    });
    if left > 0 {
        problems.push(format!("{left} containers left behind"));
    }
    drop(procs);
    if problems.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!(
            "(the stack's ledger and logs are kept in {})",
            dir.display()
        );
    }
    println!("\n| | |\n|---|---|");
    println!("| runs | {} in {:.1} s |", asked.len(), took.as_secs_f64());
    for (state, n) in &states {
        println!("| ended {state} | {n} |");
    }
    for (part, n) in &kills {
        println!("| {part} SIGKILLed and restarted | {n}× |");
    }
    println!(
        "| executions counted | {} (never twice, none refused-but-ran: {}) |",
        ran.values().sum::<usize>(),
        if problems.is_empty() { "yes" } else { "no" }
    );
    println!("| containers left | {left} |");
    if problems.is_empty() {
        println!("\nsoak with faults: every run ended in one state that matches what ran; usage agrees; nothing left");
        Ok(())
    } else {
        for p in problems.iter().take(30) {
            eprintln!("problem: {p}");
        }
        Err(Failure::error(format!("{} problems", problems.len())))
    }
}
