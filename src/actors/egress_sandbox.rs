//! `Sandbox`: one sandboxed run's network and egress proxy sidecar, from
//! creation to removal.
//!
//! `Prepare`: create the run's internal network (no host address on it)
//! → create the sidecar on the outside network, serving only the run's
//! subnet (`--allow-from`) → connect it to the internal one → attach → start
//! → hand it its secrets on stdin (then close it) → wait for its `ready`
//! line (which carries the per-run CA certificate) → read its address on
//! the internal network. From then on the sidecar's decision lines are
//! gathered. `Teardown` (after the agent container is gone): stop the
//! sidecar, take the last lines, remove the sidecar and the network, and
//! answer the summary for `details.egress`. Whatever happened, the
//! sidecar and the network are removed when the actor stops.

use crate::contract::run::EgressReport;
use crate::contract::OutputStream;
use crate::egress::decision::Summary;
use crate::planning::sandbox::SandboxPlan;
use crate::runtime::{Chunk, RuntimeError, SharedRuntime};
use actix::prelude::*;
use futures::stream::LocalBoxStream;
use futures::StreamExt;
use serde_json::Value;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// How long a sidecar may take to say it is ready once started, and the
/// whole sandbox to be made (generous: a loaded engine is slow).
const READY_WITHIN: Duration = Duration::from_secs(15);
const PREPARE_WITHIN: Duration = Duration::from_secs(30);

/// The sandbox is up: where the agent's proxy is, and the CA to trust.
#[derive(Debug, Clone)]
pub struct Ready {
    pub proxy_ip: String,
    pub ca_pem: Option<String>,
    /// The run's network (its id).
    pub network: String,
}

/// Make the network and start the sidecar.
#[derive(Message)]
#[rtype(result = "Result<Ready, RuntimeError>")]
pub struct Prepare;

/// Remove everything; answers `details.egress`.
#[derive(Message)]
#[rtype(result = "EgressReport")]
pub struct Teardown;

/// The actor owning one run's sandbox.
pub struct Sandbox {
    plan: SandboxPlan,
    runtime: SharedRuntime,
    run_id: String,
    /// What exists so far, written as each step of `Prepare` completes
    /// (so a stop mid-way still removes it).
    progress: Rc<RefCell<Progress>>,
    summary: Summary,
    partial: Vec<u8>,
    output_done: Arc<AtomicBool>,
    /// The proxy's output ended before teardown (it exited or died).
    exited_early: bool,
    torn_down: bool,
}

/// What `Prepare` got done, also when it failed or was dropped part way.
#[derive(Default)]
struct Progress {
    /// The run's network, by id.
    network: Option<String>,
    sidecar: Option<String>,
    output: Option<LocalBoxStream<'static, Result<Chunk, RuntimeError>>>,
    /// stdout lines that came with or before `ready`.
    early: Vec<String>,
}

impl Sandbox {
    pub fn new(plan: SandboxPlan, runtime: SharedRuntime, run_id: String) -> Self {
        Sandbox {
            plan,
            runtime,
            run_id,
            progress: Rc::new(RefCell::new(Progress::default())),
            summary: Summary::default(),
            partial: Vec::new(),
            output_done: Arc::new(AtomicBool::new(false)),
            exited_early: false,
            torn_down: false,
        }
    }

    fn take_stdout(&mut self, data: &[u8]) {
        self.partial.extend_from_slice(data);
        while let Some(at) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=at).collect();
            self.summary.take_line(&String::from_utf8_lossy(&line));
        }
        if self.partial.len() > 1 << 16 {
            self.partial.clear();
        }
    }

    /// The sidecar and network made so far (taken: removed once).
    fn made(&mut self) -> (Option<String>, Option<String>) {
        let mut p = self.progress.borrow_mut();
        (p.sidecar.take(), p.network.take())
    }
}

fn image_hint(e: RuntimeError, image: &str) -> RuntimeError {
    match e {
        RuntimeError::ImageMissing(m) => RuntimeError::Engine(format!(
            "the egress proxy image {image} is not present on this worker (build it with scripts/build-egress-image): {m}"
        )),
        other => other,
    }
}

async fn prepare(
    plan: SandboxPlan,
    runtime: SharedRuntime,
    progress: Rc<RefCell<Progress>>,
) -> Result<Ready, RuntimeError> {
    let network = runtime
        .create_network(&plan.network, &plan.network_labels)
        .await?;
    progress.borrow_mut().network = Some(network.clone());
    // The proxy serves only the run's own network, whatever else can
    // reach it on the outside one.
    let subnet = runtime
        .network_subnet(&network)
        .await?
        .ok_or_else(|| RuntimeError::Engine("the run's network has no subnet".into()))?;
    let mut spec = plan.sidecar.clone();
    spec.command.extend(["--allow-from".to_owned(), subnet]);
    let id = runtime
        .create(&spec)
        .await
        .map_err(|e| image_hint(e, &spec.image))?;
    progress.borrow_mut().sidecar = Some(id.clone());
    runtime.connect_network(&network, &id).await?;
    let attached = runtime.attach(&id, true).await?;
    runtime.start(&id).await?;
    if let Some(mut input) = attached.input {
        let written = async {
            input.write_all(plan.stdin.as_bytes()).await?;
            input.flush().await?;
            input.shutdown().await
        }
        .await;
        written.map_err(|e| {
            RuntimeError::Engine(format!("handing the egress proxy its settings: {e}"))
        })?;
    }
    let mut output = attached.output;
    let mut stdout = Vec::new();
    let mut stderr = String::new();
    let mut ca_pem = None;
    let waited = tokio::time::timeout(READY_WITHIN, async {
        while let Some(chunk) = output.next().await {
            let chunk = chunk?;
            match chunk.stream {
                OutputStream::Stderr => {
                    if stderr.len() < 4096 {
                        stderr.push_str(&String::from_utf8_lossy(&chunk.data));
                    }
                }
                OutputStream::Stdout => {
                    stdout.extend_from_slice(&chunk.data);
                    while let Some(at) = stdout.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = stdout.drain(..=at).collect();
                        let line = String::from_utf8_lossy(&line).into_owned();
                        if let Ok(v) = serde_json::from_str::<Value>(line.trim()) {
                            if v["event"] == "ready" {
                                ca_pem = v["ca_cert"].as_str().map(str::to_owned);
                                return Ok(true);
                            }
                        }
                        progress.borrow_mut().early.push(line);
                    }
                }
            }
        }
        Ok::<_, RuntimeError>(false)
    })
    .await;
    match waited {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => {
            return Err(RuntimeError::Engine(format!(
                "the egress proxy exited before it was ready: {}",
                stderr.trim()
            )))
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(RuntimeError::Unavailable(format!(
                "the egress proxy was not ready within {}s",
                READY_WITHIN.as_secs()
            )))
        }
    }
    progress.borrow_mut().output = Some(output);
    if plan.intercepts && ca_pem.is_none() {
        return Err(RuntimeError::Engine(
            "the egress proxy made no CA for its credential routes".into(),
        ));
    }
    let proxy_ip = runtime.network_ip(&id, &network).await?.ok_or_else(|| {
        RuntimeError::Engine("the egress proxy has no address on the run's network".into())
    })?;
    Ok(Ready {
        proxy_ip,
        ca_pem,
        network,
    })
}

/// Removes the sidecar, then the network (which may still be held a
/// moment by a container being removed).
async fn remove_all(
    runtime: SharedRuntime,
    sidecar: Option<String>,
    network: Option<String>,
    run_id: String,
) {
    if let Some(id) = sidecar {
        if let Err(e) = runtime.remove(&id).await {
            tracing::error!(run_id = %run_id, container = %id, error = %e, "could not remove an egress proxy");
        }
    }
    if let Some(net) = network {
        for attempt in 0..100 {
            match runtime.remove_network(&net).await {
                Ok(()) => return,
                Err(e) if attempt == 99 => {
                    tracing::error!(run_id = %run_id, network = %net, error = %e, "could not remove a run's network")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

impl Actor for Sandbox {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        if self.torn_down {
            return;
        }
        let (sidecar, network) = self.made();
        if network.is_some() || sidecar.is_some() {
            actix_rt::spawn(remove_all(
                self.runtime.clone(),
                sidecar,
                network,
                self.run_id.clone(),
            ));
        }
    }
}

impl Handler<Prepare> for Sandbox {
    // Atomic: a Teardown that comes meanwhile waits until the sandbox is
    // made (or has failed), then removes all of it.
    type Result = AtomicResponse<Self, Result<Ready, RuntimeError>>;

    fn handle(&mut self, _: Prepare, _: &mut Self::Context) -> Self::Result {
        let (plan, runtime, progress) = (
            self.plan.clone(),
            self.runtime.clone(),
            self.progress.clone(),
        );
        AtomicResponse::new(Box::pin(
            async move {
                match tokio::time::timeout(PREPARE_WITHIN, prepare(plan, runtime, progress)).await {
                    Ok(result) => result,
                    Err(_) => Err(RuntimeError::Unavailable(format!(
                        "the run's sandbox was not made within {}s",
                        PREPARE_WITHIN.as_secs()
                    ))),
                }
            }
            .into_actor(self)
            .map(|result, act, ctx| {
                let (output, early) = {
                    let mut p = act.progress.borrow_mut();
                    (p.output.take(), std::mem::take(&mut p.early))
                };
                for line in &early {
                    act.summary.take_line(line);
                }
                match output {
                    Some(output) => {
                        ctx.add_stream(output);
                    }
                    None => act.output_done.store(true, Ordering::Relaxed),
                }
                if let Err(e) = &result {
                    tracing::warn!(run_id = %act.run_id, error = %e, "the run's sandbox could not be made");
                }
                result
            }),
        ))
    }
}

impl Handler<Teardown> for Sandbox {
    type Result = ResponseActFuture<Self, EgressReport>;

    fn handle(&mut self, _: Teardown, _: &mut Self::Context) -> Self::Result {
        let runtime = self.runtime.clone();
        let sidecar = self.progress.borrow().sidecar.clone();
        let done = self.output_done.clone();
        self.exited_early = done.load(Ordering::Relaxed) && sidecar.is_some();
        Box::pin(
            async move {
                if let Some(id) = &sidecar {
                    let _ = runtime.kill(id).await;
                    // The last decision lines arrive before the stream ends.
                    for _ in 0..100 {
                        if done.load(Ordering::Relaxed) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            .into_actor(self)
            .then(|_, act, _| {
                act.torn_down = true;
                let (sidecar, network) = act.made();
                remove_all(act.runtime.clone(), sidecar, network, act.run_id.clone()).into_actor(act)
            })
            .map(|_, act, ctx| {
                let mut summary = act.summary.report(&act.plan.allowlist);
                // Egress stopped working part way through the run.
                summary.proxy_exited_early = act.exited_early;
                if act.summary.denied() > 0 {
                    tracing::info!(run_id = %act.run_id, denied = act.summary.denied(), "the run's egress proxy refused destinations");
                }
                ctx.stop();
                summary
            }),
        )
    }
}

impl StreamHandler<Result<Chunk, RuntimeError>> for Sandbox {
    fn handle(&mut self, item: Result<Chunk, RuntimeError>, _: &mut Self::Context) {
        match item {
            Ok(Chunk {
                stream: OutputStream::Stdout,
                data,
            }) => self.take_stdout(&data),
            Ok(Chunk { data, .. }) => {
                tracing::debug!(run_id = %self.run_id, line = %String::from_utf8_lossy(&data).trim(), "egress proxy")
            }
            Err(e) => tracing::debug!(run_id = %self.run_id, error = %e, "egress proxy output"),
        }
    }

    fn finished(&mut self, _: &mut Self::Context) {
        let rest = std::mem::take(&mut self.partial);
        self.summary.take_line(&String::from_utf8_lossy(&rest));
        self.output_done.store(true, Ordering::Relaxed);
    }
}
