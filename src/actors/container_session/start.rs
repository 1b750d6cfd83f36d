//! Starting a run: cold (sandbox first when the profile has egress, then
//! create → copy files → attach → start) or pooled (exec into a warm
//! container; cold if that fails); then `run.started`, stdin, the
//! timeout and the wait for the exit.

use super::{ContainerSession, Kill, Phase, SessionNote};
use crate::actors::egress_sandbox::Prepare;
use crate::contract::{encode, now_rfc3339, Publication, RunStarted};
use crate::planning::sandbox::sandbox_agent;
use crate::runtime::{Attached, ExecSpec, FileSpec, RuntimeError};
use actix::prelude::*;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

impl ContainerSession {
    /// Starts the run's own container; a sandboxed run's sandbox first.
    pub(super) fn start_cold(&mut self, ctx: &mut Context<Self>) {
        let Some(plan) = self.plan.sandbox.clone() else {
            self.create_and_start(self.plan.files.clone(), ctx);
            return;
        };
        let seat = (self.cx.sandbox)(plan, self.cx.runtime.clone(), self.plan.run_id.clone());
        self.sandbox = Some(seat.clone());
        ctx.wait(seat.prepare.send(Prepare).into_actor(self).map(|res, act, ctx| {
            let ready = match res {
                Ok(r) => r,
                Err(_) => Err(RuntimeError::Engine("the run's sandbox stopped".into())),
            };
            match ready {
                Ok(ready) => {
                    let mut files = sandbox_agent(
                        &mut act.plan.spec,
                        &ready.network,
                        &ready.proxy_ip,
                        ready.ca_pem.as_deref(),
                    );
                    files.extend(act.plan.files.iter().cloned());
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
        let files_again = files.clone();
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
                }
                // Not on this engine: pulled on demand (once), then created.
                Err((None, RuntimeError::ImageMissing(_))) if !act.pulled => {
                    act.pull_then_start(files_again, ctx)
                }
                Err((id, e)) => {
                    act.container_id = id;
                    act.fail(e, ctx);
                }
            }),
        );
    }

    /// Pulls the run's image without blocking the session (a cancel is
    /// heard meanwhile; input is answered "retry"), then starts it —
    /// unless it was cancelled, which ends it with no container made.
    fn pull_then_start(&mut self, files: Vec<FileSpec>, ctx: &mut Context<Self>) {
        self.pulled = true;
        self.pulling = true;
        let runtime = self.cx.runtime.clone();
        let image = self.plan.spec.image.clone();
        ctx.spawn(
            async move { pull(runtime.as_ref(), &image).await }
                .into_actor(self)
                .map(move |pulled, act, ctx| {
                    act.pulling = false;
                    if act.kill == Some(Kill::Cancel) {
                        tracing::info!(run_id = %act.plan.run_id, "run cancelled while its image was pulled; not started");
                        let ending = crate::planning::outcome::Ending {
                            cancelled: true,
                            ..Default::default()
                        };
                        let result = act.result(&ending, Instant::now(), now_rfc3339());
                        return act.finish_with(crate::contract::Reply::Ok(result), ctx);
                    }
                    match pulled {
                        Ok(()) => act.create_and_start(files, ctx),
                        Err(e) => act.fail(e, ctx),
                    }
                }),
        );
    }

    /// Execs the run's command into its warm-pool container.
    pub(super) fn start_pooled(&mut self, id: String, ctx: &mut Context<Self>) {
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

    /// Publishes a run event through the session's ordered relay; under
    /// load live events are dropped (the result keeps the output).
    pub(super) fn event<T: serde::Serialize>(&mut self, name: &str, payload: &T) {
        let publication = Publication::new(format!("{}.{name}", self.cx.prefix), encode(payload));
        if self.relay.try_send(publication).is_err() {
            self.dropped_events += 1;
            if self.dropped_events == 1 {
                tracing::warn!(run_id = %self.plan.run_id, "run events are not keeping up; dropping live output events (the result keeps the output)");
            }
        }
    }

    fn on_started(&mut self, id: String, attached: Attached, ctx: &mut Context<Self>) {
        self.phase = Phase::Running;
        self.started = Some((Instant::now(), now_rfc3339()));
        self.notify.do_send(SessionNote::Started {
            run_id: self.plan.run_id.clone(),
            container_id: id.clone(),
        });
        let started = RunStarted {
            run_id: self.plan.run_id.clone(),
            owner_account_id: self.plan.owner.clone(),
            worker_id: self.cx.worker_id.clone(),
            container_id: id.clone(),
        };
        self.event("run.started", &started);
        ctx.add_stream(attached.output);
        self.input = attached.input;
        if let Some(data) = self.plan.stdin.clone() {
            // Fed, then closed (only the write half: output keeps flowing).
            if let Some(mut input) = self.input.take() {
                ctx.spawn(
                    async move {
                        let _ = input.write_all(&data).await;
                        let _ = input.shutdown().await;
                    }
                    .into_actor(self),
                );
            }
        }
        if self.kill.is_some() {
            // Cancelled while it was starting.
            self.kill_container(ctx);
        }
        ctx.run_later(self.plan.timeout, |act, ctx| {
            if !act.exited() && act.kill.is_none() {
                tracing::info!(run_id = %act.plan.run_id, timeout = ?act.plan.timeout, "run timed out; killing it");
            }
            act.kill(Kill::Timeout, ctx);
        });
        if self.exec_id.is_some() {
            return; // The exec's exit is read when its output ends.
        }
        let runtime = self.cx.runtime.clone();
        ctx.spawn(async move { runtime.wait(&id).await }.into_actor(self).map(|res, act, ctx| {
            let code = match res {
                Ok(code) => code,
                Err(e) => {
                    tracing::warn!(run_id = %act.plan.run_id, error = %e, "wait failed; reading the exit from inspect");
                    -1
                }
            };
            act.on_exit(code, ctx);
            // Output normally ends with the container; don't wait forever if not.
            ctx.run_later(Duration::from_secs(2), |act, ctx| {
                act.output_open = false;
                act.maybe_finish(ctx);
            });
        }));
    }

    /// The process ended with `code` (-1: unknown).
    pub(super) fn on_exit(&mut self, code: i64, ctx: &mut Context<Self>) {
        if !matches!(self.phase, Phase::Starting | Phase::Running) {
            return;
        }
        self.phase = Phase::Exited {
            code,
            at: Instant::now(),
            finished_at: now_rfc3339(),
        };
        self.maybe_finish(ctx);
    }
}

/// How long a run waits for its image to be pulled.
const PULL_WITHIN: Duration = Duration::from_secs(300);

/// Pulls a run's missing image; an image no registry serves stays
/// `ImageMissing`, with the engine's words.
async fn pull(
    runtime: &dyn crate::runtime::ContainerRuntime,
    image: &str,
) -> Result<(), RuntimeError> {
    tracing::info!(image, "the run's image is not on this engine; pulling it");
    let log_image = image.to_owned();
    let pulling = runtime.pull(
        image,
        Box::new(move |line| tracing::debug!(image = %log_image, "{line}")),
    );
    match actix_rt::time::timeout(PULL_WITHIN, pulling).await {
        Err(_) => Err(RuntimeError::ImageMissing(format!(
            "the pull did not finish within {}s",
            PULL_WITHIN.as_secs()
        ))),
        Ok(Ok(())) => Ok(()),
        Ok(Err(RuntimeError::Unavailable(m))) => Err(RuntimeError::Unavailable(m)),
        Ok(Err(e)) => Err(RuntimeError::ImageMissing(e.to_string())),
    }
}
