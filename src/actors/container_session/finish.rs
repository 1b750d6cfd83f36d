//! Ending a run: its exit (a pooled run's from its exec), the engine's
//! verdict (`OOMKilled`), the result, the container's removal and the
//! sandbox's teardown, then the one reply to the worker.

use super::{ContainerSession, Kill, Phase, SessionNote};
use crate::actors::egress_sandbox::Teardown;
use crate::contract::run::{ArtifactsSummary, RunDetails, RuntimeInfo};
use crate::contract::{ErrorDetail, ErrorType, Reply, RunResult};
use crate::planning::outcome::Ending;
use crate::runtime::{RuntimeError, SharedRuntime};
use actix::prelude::*;
use std::time::{Duration, Instant};

impl ContainerSession {
    /// Sends the run's one reply to its worker.
    pub(super) fn reply(&mut self, reply: Reply<RunResult>) {
        if self.phase == Phase::Replied {
            return;
        }
        self.phase = Phase::Replied;
        self.notify.do_send(SessionNote::Finished {
            run_id: self.plan.run_id.clone(),
            reply,
        });
    }

    /// The run could not start.
    pub(super) fn fail(&mut self, e: RuntimeError, ctx: &mut Context<Self>) {
        if let RuntimeError::NotRunnable { code, reason } = e {
            // As `docker run`: the run failed with the shell's exit code.
            let ending = Ending {
                exit_code: Some(code),
                ..Default::default()
            };
            let mut result = self.result(&ending, Instant::now(), crate::contract::now_rfc3339());
            // A pooled run's refusal is read from its own output, which
            // its command controls: redacted as any output.
            let reason = self.plan.secrets.redact(&reason);
            result.stderr = self
                .plan
                .output_encoding
                .encode(format!("{reason}\n").as_bytes());
            result.reason = Some(reason);
            tracing::info!(run_id = %result.run_id, exit_code = code, reason = ?result.reason, "run failed: its command cannot run");
            self.finish_with(Reply::Ok(result), ctx);
            return;
        }
        let detail = match &e {
            RuntimeError::ImageMissing(why) => ErrorDetail::new(
                ErrorType::BadRequest,
                format!("image {image} is not present on worker {} and could not be pulled ({why}); where no registry can be reached, build it offline: scripts/build-test-image {image}", self.cx.worker_id, image = self.plan.image),
            ),
            RuntimeError::Unavailable(m) => ErrorDetail::new(ErrorType::Unavailable, m.clone()),
            other => ErrorDetail::new(ErrorType::BackendError, other.to_string()),
        };
        tracing::warn!(run_id = %self.plan.run_id, error = %e, "run failed before it started");
        self.finish_with(Reply::Err(detail), ctx);
    }

    /// The exec's exit, once its output has ended.
    pub(super) fn read_exec_exit(&mut self, exec_id: String, ctx: &mut Context<Self>) {
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
            .map(|code, act, ctx| act.on_exit(code, ctx)),
        );
    }

    /// Once the process has ended and its output is read: inspect, make
    /// the result, finish.
    pub(super) fn maybe_finish(&mut self, ctx: &mut Context<Self>) {
        if self.output_open {
            return;
        }
        let Phase::Exited {
            code,
            at: ended,
            ref finished_at,
        } = self.phase
        else {
            return;
        };
        let finished_at = finished_at.clone();
        self.phase = Phase::Finishing;
        let id = self.container_id.clone().unwrap_or_default();
        let runtime = self.cx.runtime.clone();
        // A pooled run's container outlives its process: nothing to inspect.
        let pooled = self.exec_id.is_some();
        ctx.wait(
            async move {
                if pooled {
                    Ok(Default::default())
                } else {
                    runtime.inspect(&id).await
                }
            }
            .into_actor(self)
            .map(move |inspected, act, ctx| {
                if let Some(refused) = act.exec_refused(code) {
                    act.fail(refused, ctx);
                    return;
                }
                let info = inspected.unwrap_or_default();
                let ending = Ending {
                    exit_code: if code >= 0 { Some(code) } else { info.exit_code },
                    oom_killed: info.oom_killed,
                    timed_out: act.kill == Some(Kill::Timeout),
                    cancelled: act.kill == Some(Kill::Cancel),
                };
                let result = act.result(&ending, ended, finished_at);
                tracing::info!(run_id = %result.run_id, state = %result.state, exit_code = ?result.exit_code, duration_ms = result.duration_ms, "run finished");
                act.finish_with(Reply::Ok(result), ctx);
            }),
        );
    }

    /// A pooled run whose exec the engine could not start exits 126 with
    /// the engine's message as its only output: the run failed as a cold
    /// one would have (127 or 126, the reason, no output of its own).
    fn exec_refused(&mut self, code: i64) -> Option<RuntimeError> {
        if self.exec_id.is_none() || code != 126 || self.stdout.truncated {
            return None;
        }
        let said = self.stdout.text();
        if !said.starts_with("OCI runtime exec failed") && !said.starts_with("crun: ") {
            return None;
        }
        let (code, reason) = crate::runtime::not_runnable(said.trim())?;
        self.stdout = super::output::Capture::new(self.cx.output_cap);
        Some(RuntimeError::NotRunnable { code, reason })
    }

    pub(super) fn result(&self, ending: &Ending, ended: Instant, finished_at: String) -> RunResult {
        let (t0, started_at) = self.started.clone().unwrap_or((ended, finished_at.clone()));
        let signal = if self.kill.is_some() {
            Some("SIGKILL")
        } else {
            ending.signal()
        };
        let encoding = self.plan.output_encoding;
        // Cut at the cap, a stream's last bytes may begin a secret.
        let shown = |c: &super::output::Capture| {
            let kept = c.bytes();
            let kept = if c.truncated {
                self.plan.secrets.without_partial_tail(kept)
            } else {
                kept
            };
            self.plan.secrets.redact_bytes(kept)
        };
        let stdout = shown(&self.stdout);
        let stderr = shown(&self.stderr);
        RunResult {
            run_id: self.plan.run_id.clone(),
            owner_account_id: self.plan.owner.clone(),
            worker_id: self.cx.worker_id.clone(),
            runner_name: self.cx.runner_name.clone(),
            image: self.plan.image.clone(),
            args: self.plan.args.clone(),
            exit_code: ending.exit_code,
            signal: signal.map(str::to_owned),
            state: ending.state(),
            stdout: encoding.encode(&stdout),
            stderr: encoding.encode(&stderr),
            stdout_truncated: self.stdout.truncated,
            stderr_truncated: self.stderr.truncated,
            output_encoding: encoding.is_base64().then_some(encoding),
            stdout_lossy: !encoding.is_base64() && std::str::from_utf8(&stdout).is_err(),
            stderr_lossy: !encoding.is_base64() && std::str::from_utf8(&stderr).is_err(),
            duration_ms: ended.duration_since(t0).as_millis() as u64,
            started_at: Some(started_at),
            finished_at: Some(finished_at),
            runtime: RuntimeInfo {
                provider: self.cx.runtime.provider().to_owned(),
                engine_version: self.cx.engine_version.clone(),
            },
            profile: self.plan.profile.clone(),
            reason: None,
            details: None,
            artifacts: None,
            artifacts_tar_base64: None,
            result_parts: None,
        }
    }

    /// Removes the container, then the sandbox (a sandboxed run's result
    /// gets its `details.egress`), then replies (a cold run's result
    /// means its container is gone), then stops. A pooled run replies
    /// first: its process has ended, and removing the idle container it
    /// ran in is not worth the wait (the session still removes it before
    /// it stops).
    pub(super) fn finish_with(&mut self, reply: Reply<RunResult>, ctx: &mut Context<Self>) {
        if self.phase != Phase::Replied {
            self.phase = Phase::Finishing;
        }
        let container = self.container_id.take();
        let sandbox = self.sandbox.take();
        if container.is_none() && sandbox.is_none() {
            self.reply(reply);
            ctx.stop();
            return;
        }
        if self.exec_id.is_some() {
            self.reply(reply.clone());
        }
        // A run's artifacts are archived before its container goes (they
        // are on its per-run volumes, so a stopped container still has them).
        let artifacts = match (&reply, &container) {
            (Reply::Ok(_), Some(id))
                if self.exec_id.is_none() && !self.plan.artifacts.is_empty() =>
            {
                Some((id.clone(), self.plan.artifacts.clone()))
            }
            _ => None,
        };
        let cap = self.cx.artifact_cap;
        let runtime = self.cx.runtime.clone();
        ctx.wait(
            async move {
                let archived = match artifacts {
                    Some((id, paths)) => Some(archive(&runtime, &id, &paths, cap).await),
                    None => None,
                };
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
                        Some(seat) => seat.teardown.send(Teardown).await.ok(),
                        None => None,
                    }
                };
                (futures::join!(remove, teardown).1, archived)
            }
            .into_actor(self)
            .map(move |(egress, archived), act, ctx| {
                let mut reply = reply;
                if let (Some(egress), Reply::Ok(result)) = (egress, &mut reply) {
                    result.details = Some(RunDetails {
                        egress: Some(egress),
                    });
                }
                if let (Some((tar, summary)), Reply::Ok(result)) = (archived, &mut reply) {
                    tracing::info!(run_id = %result.run_id, bytes = summary.bytes, truncated = summary.truncated, missing = summary.missing.len(), "artifacts archived");
                    result.artifacts_tar_base64 = (!tar.is_empty())
                        .then(|| crate::contract::bytes::base64_encode(&tar));
                    result.artifacts = Some(summary);
                }
                act.reply(reply);
                ctx.stop();
            }),
        );
    }
}

/// The longest a run's artifacts take to archive: an engine that stalls
/// holds the run's end (and its container) no longer than this.
const ARCHIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The archive of a run's artifact `paths` in container `id`, at most
/// `cap` bytes, and what became of each path.
async fn archive(
    runtime: &SharedRuntime,
    id: &str,
    paths: &[String],
    cap: usize,
) -> (Vec<u8>, ArtifactsSummary) {
    let mut packer = crate::runtime::archive::Packer::new(cap);
    let by = tokio::time::Instant::now() + ARCHIVE_TIMEOUT;
    for path in paths {
        if packer.truncated() {
            // Past the limit: the rest are neither archived nor missing.
            break;
        }
        let download = tokio::time::timeout_at(by, runtime.download(id, path, packer.room()));
        let Ok(download) = download.await else {
            packer.failed(
                path,
                format!(
                    "{path}: the engine took over {} s to archive the artifacts",
                    ARCHIVE_TIMEOUT.as_secs()
                ),
            );
            break;
        };
        match download {
            Ok(download) => packer.add(path, download),
            // Not archived, the others are: through a link.
            Err(crate::runtime::RuntimeError::NotFound(why)) => packer.refused(path, why),
            Err(e) => packer.failed(path, format!("{path}: {e}")),
        }
    }
    packer.finish()
}
