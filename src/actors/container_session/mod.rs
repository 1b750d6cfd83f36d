//! `ContainerSession`: one run's container from create to remove.
//!
//! Its life is a [`Phase`]: `Starting` (sandbox, create, attach **before**
//! start so fast output is never missed, start — [`start`]) → `Running`
//! (`run.started`, output as `run.output` events and captured up to the
//! cap per stream, drained past it so the container never blocks on a
//! full pipe — [`output`]) → `Exited` (its exit code; killed at the
//! timeout or on cancel, the reason kept as a [`Kill`]) → `Finishing`
//! (inspect for `OOMKilled`, remove, tear the sandbox down — [`finish`])
//! → `Replied`. The container is removed on every path, including errors
//! and the actor being stopped.
//!
//! A warm-pool run skips create and start: the run's command is exec'd,
//! attached, into an idle pooled container made for its profile, and its
//! exit code is the exec's. Everything else (output, input, timeout and
//! cancel by killing the container, removal) is the same. If the exec
//! cannot start, the pooled container is removed and the run goes cold.
//! An out-of-memory kill of a pooled run's process leaves the container
//! running, so the engine's `OOMKilled` flag is not set: such a run
//! reports `failed` with SIGKILL (exit 137).
//!
//! A sandboxed run (a profile with `egress`) first has its sandbox made
//! (through the [`SandboxSeat`]): the agent container is then created on
//! the run's internal network, pointed at the egress proxy, with the
//! per-run CA bundle copied in; after the agent container is removed the
//! sandbox is torn down and its report becomes the result's
//! `details.egress`. Secret values never appear in the output the run
//! reports (`[redacted]`).
//!
//! Messages in: [`Cancel`], [`WriteInput`]. Out, to its worker:
//! [`SessionNote`].

mod finish;
mod output;
mod start;

use crate::actors::bus::relay::Relay;
use crate::actors::egress_sandbox::{Prepare, Sandbox, Teardown};
use crate::contract::{ErrorDetail, ErrorType, Reply, RunResult};
use crate::planning::sandbox::{LiveRedactor, SandboxPlan};
use crate::planning::RunPlan;
use crate::runtime::SharedRuntime;
use actix::prelude::*;
use output::Capture;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// A run's sandbox as its session reaches it.
#[derive(Clone)]
pub struct SandboxSeat {
    pub prepare: Recipient<Prepare>,
    pub teardown: Recipient<Teardown>,
}

/// Makes the sandbox of one run (a real [`Sandbox`], or a mock).
pub type SandboxFactory =
    Arc<dyn Fn(SandboxPlan, SharedRuntime, String) -> SandboxSeat + Send + Sync>;

/// The real sandbox: a [`Sandbox`] actor on the current arbiter.
pub fn real_sandbox() -> SandboxFactory {
    Arc::new(|plan, runtime, run_id| {
        let addr = Sandbox::new(plan, runtime, run_id).start();
        SandboxSeat {
            prepare: addr.clone().recipient(),
            teardown: addr.recipient(),
        }
    })
}

/// What a session needs besides its plan.
#[derive(Clone)]
pub struct SessionContext {
    pub runtime: SharedRuntime,
    pub worker_id: String,
    pub runner_name: String,
    pub engine_version: Option<String>,
    pub output_cap: usize,
    /// The largest archive of a run's artifacts.
    pub artifact_cap: usize,
    /// Publishes `<prefix>.run.started` and `<prefix>.run.output`.
    pub publisher: crate::actors::bus::requester::Requester,
    pub prefix: String,
    pub sandbox: SandboxFactory,
}

/// What a session tells its worker.
// A run result moves once per run: not worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum SessionNote {
    Started {
        run_id: String,
        container_id: String,
    },
    /// The run's reply: its result, or why it could not run.
    Finished {
        run_id: String,
        reply: Reply<RunResult>,
    },
}

/// Cancel the run (its result follows with state `cancelled`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Cancel;

/// Write to an interactive run's stdin; `eof` closes it afterwards.
#[derive(Message)]
#[rtype(result = "Result<usize, ErrorDetail>")]
pub struct WriteInput {
    pub data: Vec<u8>,
    pub eof: bool,
}

/// Where a session is in its run's life.
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// Making the sandbox, the container or the exec.
    Starting,
    /// The command runs.
    Running,
    /// The process has ended (its output may still be draining).
    Exited {
        code: i64,
        at: Instant,
        finished_at: String,
    },
    /// Inspecting, removing and tearing down.
    Finishing,
    /// The reply has gone to the worker.
    Replied,
}

/// Why the session killed the run's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    Timeout,
    Cancel,
}

/// The actor owning one run's container.
pub struct ContainerSession {
    plan: RunPlan,
    cx: SessionContext,
    notify: Recipient<SessionNote>,
    phase: Phase,
    kill: Option<Kill>,
    /// The run's container while it exists (taken when it is removed).
    container_id: Option<String>,
    /// A warm-pool container to exec into instead of starting one.
    pooled: Option<String>,
    /// The run's exec, in a pooled container.
    exec_id: Option<String>,
    input: Option<Pin<Box<dyn AsyncWrite>>>,
    /// The attach stream is still open.
    output_open: bool,
    stdout: Capture,
    stderr: Capture,
    seq: u64,
    started: Option<(Instant, String)>,
    /// `run.started` and `run.output`, in order.
    relay: Relay,
    dropped_events: u64,
    /// The run's network and egress proxy, while they exist.
    sandbox: Option<SandboxSeat>,
    /// Secret values kept out of live output events.
    live: LiveRedactor,
    /// Its image was pulled on demand (once at most).
    pulled: bool,
    /// The pull is under way: the container does not exist yet.
    pulling: bool,
}

impl ContainerSession {
    pub fn new(plan: RunPlan, cx: SessionContext, notify: Recipient<SessionNote>) -> Self {
        ContainerSession {
            stdout: Capture::new(cx.output_cap),
            stderr: Capture::new(cx.output_cap),
            relay: Relay::start(cx.publisher.clone(), 256),
            plan,
            cx,
            notify,
            phase: Phase::Starting,
            kill: None,
            container_id: None,
            pooled: None,
            exec_id: None,
            input: None,
            output_open: true,
            seq: 0,
            started: None,
            dropped_events: 0,
            sandbox: None,
            live: LiveRedactor::default(),
            pulled: false,
            pulling: false,
        }
    }

    /// Runs in this idle warm-pool container (made for the plan's profile).
    pub fn pooled(mut self, container_id: String) -> Self {
        self.pooled = Some(container_id);
        self
    }

    fn exited(&self) -> bool {
        !matches!(self.phase, Phase::Starting | Phase::Running)
    }

    /// Kills the run's process (its container), remembering why.
    fn kill(&mut self, why: Kill, ctx: &mut Context<Self>) {
        if self.exited() || self.kill.is_some() {
            return;
        }
        self.kill = Some(why);
        self.kill_container(ctx);
    }

    fn kill_container(&mut self, ctx: &mut Context<Self>) {
        let Some(id) = self.container_id.clone() else {
            return; // Still starting: killed once it runs.
        };
        let runtime = self.cx.runtime.clone();
        ctx.spawn(
            async move {
                if let Err(e) = runtime.kill(&id).await {
                    tracing::warn!(container = %id, error = %e, "kill failed");
                }
            }
            .into_actor(self),
        );
    }
}

impl Actor for ContainerSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        match self.pooled.clone() {
            Some(id) => self.start_pooled(id, ctx),
            None => self.start_cold(ctx),
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        let container = self.container_id.take();
        let sandbox = self.sandbox.take();
        if container.is_some() || sandbox.is_some() {
            let runtime = self.cx.runtime.clone();
            actix_rt::spawn(async move {
                if let Some(id) = container {
                    let _ = runtime.remove(&id).await;
                }
                if let Some(seat) = sandbox {
                    let _ = seat.teardown.send(Teardown).await;
                }
            });
        }
        self.reply(Reply::error(
            ErrorType::Unavailable,
            "the worker stopped before the run finished",
        ));
    }
}

impl Handler<Cancel> for ContainerSession {
    type Result = ();

    fn handle(&mut self, _: Cancel, ctx: &mut Self::Context) {
        if !self.exited() && self.kill.is_none() {
            tracing::info!(run_id = %self.plan.run_id, "run cancelled");
        }
        self.kill(Kill::Cancel, ctx);
    }
}

impl Handler<WriteInput> for ContainerSession {
    type Result = AtomicResponse<Self, Result<usize, ErrorDetail>>;

    fn handle(&mut self, msg: WriteInput, _: &mut Self::Context) -> Self::Result {
        let refuse = |m: &str| {
            AtomicResponse::new(Box::pin(fut::ready(Err(ErrorDetail::new(
                ErrorType::BadRequest,
                m,
            )))))
        };
        if !self.plan.interactive {
            return refuse("this run was not created with \"interactive\": true");
        }
        if self.exited() {
            return refuse("the run has already ended");
        }
        if self.pulling {
            return AtomicResponse::new(Box::pin(fut::ready(Err(ErrorDetail::new(
                ErrorType::Unavailable,
                "the run's image is being pulled; send the input again in a moment",
            )))));
        }
        let Some(mut input) = self.input.take() else {
            return refuse("the run's stdin is already closed");
        };
        let data = msg.data;
        let eof = msg.eof;
        AtomicResponse::new(Box::pin(
            async move {
                let written = async {
                    input.write_all(&data).await?;
                    input.flush().await?;
                    if eof {
                        input.shutdown().await?;
                    }
                    Ok::<_, std::io::Error>(())
                }
                .await;
                (input, written, data.len())
            }
            .into_actor(self)
            .map(move |(input, written, n), act, _| {
                if !eof {
                    act.input = Some(input);
                }
                written.map(|_| n).map_err(|e| {
                    ErrorDetail::new(ErrorType::BackendError, format!("writing to stdin: {e}"))
                })
            }),
        ))
    }
}
