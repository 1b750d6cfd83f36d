//! `ContainerSession`: one run's container from create to remove.
//!
//! create → attach (before start, so fast output is never missed) → start
//! → `run.started` → output as `run.output` events and captured up to the
//! cap per stream (past the cap the stream is still drained, so the
//! container never blocks on a full pipe) → exit, timeout (kill) or cancel
//! (kill) → inspect (`OOMKilled`) → remove. The container is removed on
//! every path, including errors and the actor being stopped.
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
//! A sandboxed run (a profile with `egress`) first has its [`Sandbox`]
//! made: the agent container is then created on the run's internal
//! network, pointed at the egress proxy, with the per-run CA bundle copied
//! in; after the agent container is removed the sandbox is torn down and
//! its decision summary becomes the result's `details.egress`. Secret
//! values never appear in the output the run reports (`[redacted]`).

use super::sandbox::{Prepare, Sandbox, Teardown};
use crate::actors::bus::requester::Requester;
use crate::contract::{now_rfc3339, ErrorDetail, ErrorType, Publication};
use crate::planning::outcome::{Ending, RunResult};
use crate::planning::sandbox::{sandbox_agent, LiveRedactor};
use crate::planning::utf8::Utf8Carry;
use crate::planning::RunPlan;
use crate::runtime::{
    Attached, Chunk, ExecSpec, FileSpec, OutputStream, RuntimeError, SharedRuntime,
};
use actix::prelude::*;
use serde_json::{json, Value};
use std::pin::Pin;
use std::time::{Duration, Instant};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// What a session needs besides its plan.
#[derive(Clone)]
pub struct SessionContext {
    pub runtime: SharedRuntime,
    pub worker_id: String,
    pub runner_name: String,
    pub engine_version: Option<String>,
    pub output_cap: usize,
    /// Publishes `<prefix>.run.started` and `<prefix>.run.output`.
    pub publisher: Requester,
    pub prefix: String,
}

/// What a session tells its worker.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum SessionNote {
    Started {
        run_id: String,
        container_id: String,
    },
    /// The run's reply: a run result or an error payload.
    Finished { run_id: String, reply: Value },
}

/// Cancel the run (its result follows with state `cancelled`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Cancel;

/// Write to an interactive run's stdin; `eof` closes it afterwards.
#[derive(Message)]
#[rtype(result = "Result<usize, ErrorDetail>")]
pub struct WriteInput {
    pub data: Option<String>,
    pub eof: bool,
}

struct Capture {
    kept: Vec<u8>,
    cap: usize,
    truncated: bool,
    carry: Utf8Carry,
}

impl Capture {
    fn new(cap: usize) -> Self {
        Capture {
            kept: Vec::new(),
            cap,
            truncated: false,
            carry: Utf8Carry::default(),
        }
    }

    /// Keeps what fits under the cap; returns the kept part's text.
    fn take(&mut self, data: &[u8]) -> Option<String> {
        let room = self.cap.saturating_sub(self.kept.len());
        if data.len() > room {
            self.truncated = true;
        }
        let kept = &data[..data.len().min(room)];
        if kept.is_empty() {
            return None;
        }
        self.kept.extend_from_slice(kept);
        Some(self.carry.push(kept)).filter(|t| !t.is_empty())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.kept).into_owned()
    }
}

/// The actor owning one run's container.
pub struct ContainerSession {
    plan: RunPlan,
    cx: SessionContext,
    notify: Recipient<SessionNote>,
    container_id: Option<String>,
    /// A warm-pool container to exec into instead of starting one.
    pooled: Option<String>,
    /// The run's exec, in a pooled container.
    exec_id: Option<String>,
    input: Option<Pin<Box<dyn AsyncWrite>>>,
    stdout: Capture,
    stderr: Capture,
    seq: u64,
    started: Option<(Instant, String)>,
    exit: Option<(i64, Instant, String)>,
    output_done: bool,
    timed_out: bool,
    cancelled: bool,
    finishing: bool,
    removed: bool,
    replied: bool,
    relay: tokio::sync::mpsc::Sender<Publication>,
    dropped_events: u64,
    /// The run's network and egress proxy, while they exist.
    sandbox: Option<Addr<Sandbox>>,
    /// Secret values kept out of live output events.
    live: LiveRedactor,
}

impl ContainerSession {
    pub fn new(plan: RunPlan, cx: SessionContext, notify: Recipient<SessionNote>) -> Self {
        let (relay, mut rx) = tokio::sync::mpsc::channel::<Publication>(256);
        let publisher = cx.publisher.clone();
        actix_rt::spawn(async move {
            // One at a time: a run's events stay in order.
            while let Some(p) = rx.recv().await {
                if let Err(e) = publisher.publish(p).await {
                    tracing::debug!(error = %e, "run event not published");
                }
            }
        });
        ContainerSession {
            stdout: Capture::new(cx.output_cap),
            stderr: Capture::new(cx.output_cap),
            plan,
            cx,
            notify,
            container_id: None,
            pooled: None,
            exec_id: None,
            input: None,
            seq: 0,
            started: None,
            exit: None,
            output_done: false,
            timed_out: false,
            cancelled: false,
            finishing: false,
            removed: false,
            replied: false,
            relay,
            dropped_events: 0,
            sandbox: None,
            live: LiveRedactor::default(),
        }
    }

    /// Runs in this idle warm-pool container (made for the plan's profile).
    pub fn pooled(mut self, container_id: String) -> Self {
        self.pooled = Some(container_id);
        self
    }

    fn event(&mut self, name: &str, payload: Value) {
        let publication = Publication::new(format!("{}.{name}", self.cx.prefix), payload);
        if self.relay.try_send(publication).is_err() {
            self.dropped_events += 1;
            if self.dropped_events == 1 {
                tracing::warn!(run_id = %self.plan.run_id, "run events are not keeping up; dropping live output events (the result keeps the output)");
            }
        }
    }

    fn reply(&mut self, reply: Value) {
        if self.replied {
            return;
        }
        self.replied = true;
        self.notify.do_send(SessionNote::Finished {
            run_id: self.plan.run_id.clone(),
            reply,
        });
    }

    fn fail(&mut self, e: RuntimeError, ctx: &mut Context<Self>) {
        let detail = match &e {
            RuntimeError::NotFound(m) if m.to_lowercase().contains("image") => ErrorDetail::new(
                ErrorType::BadRequest,
                format!("image {} is not present on worker {} (runner start pulls profile images; offline, build it with scripts/build-test-image)", self.plan.image, self.cx.worker_id),
            ),
            RuntimeError::Unavailable(m) => ErrorDetail::new(ErrorType::Unavailable, m.clone()),
            other => ErrorDetail::new(ErrorType::BackendError, other.to_string()),
        };
        tracing::warn!(run_id = %self.plan.run_id, error = %e, "run failed before it started");
        self.finish_with(json!({ "error": detail }), ctx);
    }

    /// Removes the container, then the sandbox (a sandboxed run's result
    /// gets its `details.egress`), then replies (a cold run's result
    /// means its container is gone), then stops. A pooled run replies
    /// first: its process has ended, and removing the idle container it
    /// ran in is not worth the wait (the session still removes it before
    /// it stops).
    fn finish_with(&mut self, reply: Value, ctx: &mut Context<Self>) {
        let container = self.container_id.clone().filter(|_| !self.removed);
        let sandbox = self.sandbox.take();
        if container.is_none() && sandbox.is_none() {
            self.reply(reply);
            ctx.stop();
            return;
        }
        if container.is_some() {
            self.removed = true;
        }
        if self.exec_id.is_some() {
            self.reply(reply.clone());
        }
        let runtime = self.cx.runtime.clone();
        ctx.wait(
            async move {
                let remove = async {
                    if let Some(id) = container {
                        if let Err(e) = runtime.remove(&id).await {
                            tracing::error!(container = %id, error = %e, "could not remove a run container");
                        }
                    }
                };
                // The sandbox comes down alongside (its network goes once
                // the container has left it).
                let teardown = async {
                    match sandbox {
                        Some(addr) => addr.send(Teardown).await.ok(),
                        None => None,
                    }
                };
                futures::join!(remove, teardown).1
            }
            .into_actor(self)
            .map(move |egress, act, ctx| {
                let mut reply = reply;
                if let Some(egress) = egress.filter(|_| reply.get("error").is_none()) {
                    reply["details"] = json!({ "egress": egress });
                }
                act.reply(reply);
                ctx.stop();
            }),
        );
    }

    fn kill(&mut self, ctx: &mut Context<Self>) {
        let Some(id) = self.container_id.clone() else {
            return;
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

    fn on_started(&mut self, id: String, attached: Attached, ctx: &mut Context<Self>) {
        let now = (Instant::now(), now_rfc3339());
        self.started = Some(now);
        self.notify.do_send(SessionNote::Started {
            run_id: self.plan.run_id.clone(),
            container_id: id.clone(),
        });
        self.event(
            "run.started",
            json!({"run_id": self.plan.run_id, "owner_account_id": self.plan.owner, "worker_id": self.cx.worker_id, "container_id": id}),
        );
        ctx.add_stream(attached.output);
        self.input = attached.input;
        if let Some(data) = self.plan.stdin.clone() {
            // Fed, then closed (only the write half: output keeps flowing).
            if let Some(mut input) = self.input.take() {
                ctx.spawn(
                    async move {
                        let _ = input.write_all(data.as_bytes()).await;
                        let _ = input.shutdown().await;
                    }
                    .into_actor(self),
                );
            }
        }
        ctx.run_later(self.plan.timeout, |act, ctx| {
            if act.exit.is_none() && !act.cancelled {
                tracing::info!(run_id = %act.plan.run_id, timeout = ?act.plan.timeout, "run timed out; killing it");
                act.timed_out = true;
                act.kill(ctx);
            }
        });
        if self.exec_id.is_some() {
            return; // The exec's exit is read when its output ends.
        }
        let runtime = self.cx.runtime.clone();
        let wait_id = id.clone();
        ctx.spawn(async move { runtime.wait(&wait_id).await }.into_actor(self).map(|res, act, ctx| {
            let code = match res {
                Ok(code) => code,
                Err(e) => {
                    tracing::warn!(run_id = %act.plan.run_id, error = %e, "wait failed; reading the exit from inspect");
                    -1
                }
            };
            act.exit = Some((code, Instant::now(), now_rfc3339()));
            // Output normally ends with the container; don't wait forever if not.
            ctx.run_later(Duration::from_secs(2), |act, ctx| {
                act.output_done = true;
                act.maybe_finish(ctx);
            });
            act.maybe_finish(ctx);
        }));
    }

    /// Starts the run's own container; a sandboxed run's sandbox first.
    fn start_cold(&mut self, ctx: &mut Context<Self>) {
        let Some(plan) = self.plan.sandbox.clone() else {
            self.create_and_start(Vec::new(), ctx);
            return;
        };
        let sandbox = Sandbox::new(plan, self.cx.runtime.clone(), self.plan.run_id.clone()).start();
        self.sandbox = Some(sandbox.clone());
        ctx.wait(sandbox.send(Prepare).into_actor(self).map(|res, act, ctx| {
            let ready = match res {
                Ok(r) => r,
                Err(_) => Err(RuntimeError::Engine("the run's sandbox stopped".into())),
            };
            match ready {
                Ok(ready) => {
                    let files = sandbox_agent(
                        &mut act.plan.spec,
                        &ready.network,
                        &ready.proxy_ip,
                        ready.ca_pem.as_deref(),
                    );
                    tracing::info!(run_id = %act.plan.run_id, proxy = %ready.proxy_ip, network = %ready.network, "sandbox ready");
                    act.create_and_start(files, ctx);
                }
                Err(e) => act.fail(e, ctx),
            }
        }));
    }

    /// Creates the run's container, copies `files` in, attaches and
    /// starts it.
    fn create_and_start(&mut self, files: Vec<FileSpec>, ctx: &mut Context<Self>) {
        let runtime = self.cx.runtime.clone();
        let spec = self.plan.spec.clone();
        // Until the container runs, other messages (cancel, input) wait.
        ctx.wait(
            async move {
                let id = runtime.create(&spec).await.map_err(|e| (None, e))?;
                if !files.is_empty() {
                    if let Err(e) = runtime.upload(&id, &files).await {
                        return Err((Some(id), e));
                    }
                }
                let attached = match runtime.attach(&id, spec.stdin).await {
                    Ok(a) => a,
                    Err(e) => return Err((Some(id), e)),
                };
                if let Err(e) = runtime.start(&id).await {
                    return Err((Some(id), e));
                }
                Ok((id, attached))
            }
            .into_actor(self)
            .map(|res, act, ctx| match res {
                Ok((id, attached)) => {
                    act.container_id = Some(id.clone());
                    act.on_started(id, attached, ctx);
                    if act.cancelled {
                        act.kill(ctx);
                    }
                }
                Err((id, e)) => {
                    act.container_id = id;
                    act.fail(e, ctx);
                }
            }),
        );
    }

    /// Execs the run's command into its warm-pool container.
    fn start_pooled(&mut self, id: String, ctx: &mut Context<Self>) {
        let runtime = self.cx.runtime.clone();
        let exec = ExecSpec {
            command: self.plan.spec.command.clone(),
            env: self.plan.spec.env.clone(),
            workdir: self.plan.spec.workdir.clone(),
            stdin: self.plan.spec.stdin,
        };
        let container = id.clone();
        ctx.wait(
            async move { runtime.exec(&container, &exec).await }
                .into_actor(self)
                .map(move |res, act, ctx| match res {
                    Ok((exec_id, attached)) => {
                        act.container_id = Some(id.clone());
                        act.exec_id = Some(exec_id);
                        act.on_started(id, attached, ctx);
                        if act.cancelled {
                            act.kill(ctx);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(run_id = %act.plan.run_id, container = %id, error = %e, "could not exec into a warm-pool container; starting the run cold");
                        let runtime = act.cx.runtime.clone();
                        actix_rt::spawn(async move {
                            let _ = runtime.remove(&id).await;
                        });
                        act.start_cold(ctx);
                    }
                }),
        );
    }

    /// The exec's exit, once its output has ended.
    fn read_exec_exit(&mut self, exec_id: String, ctx: &mut Context<Self>) {
        let runtime = self.cx.runtime.clone();
        ctx.spawn(
            async move {
                // The engine marks the exec done a moment after its output ends.
                for _ in 0..40 {
                    match runtime.exec_exit(&exec_id).await {
                        Ok(Some(code)) => return code,
                        Ok(None) => actix_rt::time::sleep(Duration::from_millis(25)).await,
                        Err(_) => break,
                    }
                }
                -1
            }
            .into_actor(self)
            .map(|code, act, ctx| {
                act.exit = Some((code, Instant::now(), now_rfc3339()));
                act.maybe_finish(ctx);
            }),
        );
    }

    fn maybe_finish(&mut self, ctx: &mut Context<Self>) {
        if self.finishing || !self.output_done {
            return;
        }
        let Some((code, ended, finished_at)) = self.exit.clone() else {
            return;
        };
        self.finishing = true;
        let id = self.container_id.clone().unwrap_or_default();
        let runtime = self.cx.runtime.clone();
        // A pooled run's container outlives its process: nothing to inspect.
        let pooled = self.exec_id.is_some();
        ctx.wait(async move { if pooled { Ok(Default::default()) } else { runtime.inspect(&id).await } }.into_actor(self).map(move |inspected, act, ctx| {
            let info = inspected.unwrap_or_default();
            let ending = Ending {
                exit_code: if code >= 0 { Some(code) } else { info.exit_code },
                oom_killed: info.oom_killed,
                timed_out: act.timed_out,
                cancelled: act.cancelled,
            };
            let (t0, started_at) = act.started.clone().unwrap_or((ended, finished_at.clone()));
            let signal = if act.timed_out || act.cancelled { Some("SIGKILL") } else { ending.signal() };
            let result = RunResult {
                run_id: act.plan.run_id.clone(),
                owner_account_id: act.plan.owner.clone(),
                worker_id: act.cx.worker_id.clone(),
                runner_name: act.cx.runner_name.clone(),
                image: act.plan.image.clone(),
                args: act.plan.args.clone(),
                exit_code: ending.exit_code,
                signal: signal.map(str::to_owned),
                state: ending.state(),
                stdout: act.plan.secrets.redact(&act.stdout.text()),
                stderr: act.plan.secrets.redact(&act.stderr.text()),
                stdout_truncated: act.stdout.truncated,
                stderr_truncated: act.stderr.truncated,
                duration_ms: ended.duration_since(t0).as_millis() as u64,
                started_at,
                finished_at,
                runtime: json!({"provider": act.cx.runtime.provider(), "engine_version": act.cx.engine_version}),
                profile: act.plan.profile.clone(),
            };
            tracing::info!(run_id = %result.run_id, state = %result.state, exit_code = ?result.exit_code, duration_ms = result.duration_ms, "run finished");
            act.finish_with(serde_json::to_value(result).unwrap_or_default(), ctx);
        }));
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
        let container = self.container_id.clone().filter(|_| !self.removed);
        let sandbox = self.sandbox.take();
        if container.is_some() || sandbox.is_some() {
            let runtime = self.cx.runtime.clone();
            actix_rt::spawn(async move {
                if let Some(id) = container {
                    let _ = runtime.remove(&id).await;
                }
                if let Some(addr) = sandbox {
                    let _ = addr.send(Teardown).await;
                }
            });
        }
        if !self.replied {
            self.reply(json!({"error": ErrorDetail::new(ErrorType::Unavailable, "the worker stopped before the run finished")}));
        }
    }
}

impl StreamHandler<Result<Chunk, RuntimeError>> for ContainerSession {
    fn handle(&mut self, item: Result<Chunk, RuntimeError>, _: &mut Self::Context) {
        let chunk = match item {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(run_id = %self.plan.run_id, error = %e, "output stream error");
                return;
            }
        };
        let capture = match chunk.stream {
            OutputStream::Stdout => &mut self.stdout,
            OutputStream::Stderr => &mut self.stderr,
        };
        if let Some(text) = capture.take(&chunk.data) {
            let index = (chunk.stream == OutputStream::Stderr) as usize;
            let text = self.live.push(&self.plan.secrets, index, &text);
            if text.is_empty() {
                return;
            }
            let seq = self.seq;
            self.seq += 1;
            let payload = json!({"run_id": self.plan.run_id, "owner_account_id": self.plan.owner, "seq": seq, "stream": chunk.stream.as_str(), "data": text});
            self.event("run.output", payload);
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        for stream in [OutputStream::Stdout, OutputStream::Stderr] {
            let capture = match stream {
                OutputStream::Stdout => &mut self.stdout,
                OutputStream::Stderr => &mut self.stderr,
            };
            let index = (stream == OutputStream::Stderr) as usize;
            let mut rest = self
                .live
                .push(&self.plan.secrets, index, &capture.carry.finish());
            rest.push_str(&self.live.finish(&self.plan.secrets, index));
            if !rest.is_empty() {
                let seq = self.seq;
                self.seq += 1;
                let payload = json!({"run_id": self.plan.run_id, "owner_account_id": self.plan.owner, "seq": seq, "stream": stream.as_str(), "data": rest});
                self.event("run.output", payload);
            }
        }
        self.output_done = true;
        match self.exec_id.clone() {
            Some(exec_id) if self.exit.is_none() => self.read_exec_exit(exec_id, ctx),
            _ => self.maybe_finish(ctx),
        }
    }
}

impl Handler<Cancel> for ContainerSession {
    type Result = ();

    fn handle(&mut self, _: Cancel, ctx: &mut Self::Context) {
        if self.exit.is_some() || self.cancelled {
            return;
        }
        tracing::info!(run_id = %self.plan.run_id, "run cancelled");
        self.cancelled = true;
        self.kill(ctx);
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
        if self.exit.is_some() {
            return refuse("the run has already ended");
        }
        let Some(mut input) = self.input.take() else {
            return refuse("the run's stdin is already closed");
        };
        let data = msg.data.unwrap_or_default();
        let eof = msg.eof;
        AtomicResponse::new(Box::pin(
            async move {
                let written = async {
                    input.write_all(data.as_bytes()).await?;
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
