//! `Runner`: the engine side of a worker — its state
//! (`ready/starting/stopped/unavailable`) from engine pings, the profile
//! images, runner start (ensure images) and delete (remove every managed
//! container), and the orphan reaper.
//!
//! The reaper removes containers labelled with this worker's id whose run
//! no live session holds (what a crash left behind), then its sandboxed
//! runs' networks likewise. It never touches
//! another worker's containers, nor its own live warm pool's, nor those
//! of another live process that shares this worker id (the `bus.process`
//! label, see [`crate::runtime::liveness`]); pooled containers of an
//! earlier, dead process are orphans.

use crate::contract::replies::{
    ProfileImage, RunnerDeleted, RunnerDetails, RunnerStarted, RunnerStatus, RunnerStatusReply,
};
use crate::contract::{ErrorDetail, ErrorType, RunnerState};
use crate::runtime::SharedRuntime;
use actix::prelude::*;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use tokio::sync::watch;

/// Asks the worker which runs it holds (for the reaper).
#[derive(Message)]
#[rtype(result = "HashSet<String>")]
pub struct ListLive;

/// The runner's status.
#[derive(Message)]
#[rtype(result = "RunnerStatusReply")]
pub struct Status;

/// Ensure the profile images.
#[derive(Message)]
#[rtype(result = "Result<RunnerStarted, ErrorDetail>")]
pub struct Start;

/// Remove every container this worker manages.
#[derive(Message)]
#[rtype(result = "Result<RunnerDeleted, ErrorDetail>")]
pub struct RemoveAll;

/// Reap orphans now; returns how many were removed.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Reap;

/// Mark the runner stopped (worker shutting down).
#[derive(Message)]
#[rtype(result = "()")]
pub struct MarkStopped;

/// Settings of a runner.
#[derive(Clone)]
pub struct RunnerConfig {
    pub worker_id: String,
    /// profile → image
    pub images: BTreeMap<String, String>,
    pub ping_every: Duration,
    pub reap_every: Duration,
    /// This process's warm-pool instance (the `bus.pooled` label value).
    pub pool_instance: String,
}

pub struct Runner {
    runtime: SharedRuntime,
    config: RunnerConfig,
    live: Recipient<ListLive>,
    state: watch::Sender<RunnerState>,
    engine: Option<String>,
    last_error: Option<String>,
}

impl Runner {
    pub fn new(
        runtime: SharedRuntime,
        config: RunnerConfig,
        live: Recipient<ListLive>,
    ) -> (Self, watch::Receiver<RunnerState>) {
        let (state, rx) = watch::channel(RunnerState::Starting);
        (
            Runner {
                runtime,
                config,
                live,
                state,
                engine: None,
                last_error: None,
            },
            rx,
        )
    }

    fn ping(&mut self, ctx: &mut Context<Self>) {
        let runtime = self.runtime.clone();
        ctx.spawn(
            async move { runtime.ping().await }
                .into_actor(self)
                .map(|res, act, _| {
                    let current = *act.state.borrow();
                    match res {
                        Ok(info) => {
                            act.engine = Some(info.version);
                            act.last_error = None;
                            if current == RunnerState::Unavailable
                                || current == RunnerState::Starting && act.engine.is_some()
                            {
                                if current == RunnerState::Unavailable {
                                    tracing::info!("container engine reachable again");
                                }
                                act.state.send_replace(RunnerState::Ready);
                            }
                        }
                        Err(e) => {
                            if current != RunnerState::Unavailable
                                && current != RunnerState::Stopped
                            {
                                tracing::warn!(error = %e, "container engine unreachable");
                            }
                            act.last_error = Some(e.to_string());
                            if current != RunnerState::Stopped {
                                act.state.send_replace(RunnerState::Unavailable);
                            }
                        }
                    }
                }),
        );
    }
}

impl Actor for Runner {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.ping(ctx);
        ctx.run_interval(self.config.ping_every, |act, ctx| act.ping(ctx));
        ctx.notify(Reap);
        ctx.run_interval(self.config.reap_every, |_, ctx| ctx.notify(Reap));
    }
}

impl Handler<Status> for Runner {
    type Result = ResponseActFuture<Self, RunnerStatusReply>;

    fn handle(&mut self, _: Status, _: &mut Self::Context) -> Self::Result {
        let runtime = self.runtime.clone();
        let images = self.config.images.clone();
        Box::pin(
            async move {
                let mut profiles = BTreeMap::new();
                for (profile, image) in images {
                    let seen = match runtime.image_present(&image).await {
                        Ok(p) => ProfileImage {
                            image,
                            present: Some(p),
                            error: None,
                        },
                        Err(e) => ProfileImage {
                            image,
                            present: None,
                            error: Some(e.to_string()),
                        },
                    };
                    profiles.insert(profile, seen);
                }
                profiles
            }
            .into_actor(self)
            .map(|profiles, act, _| {
                let provider = act.runtime.provider().to_owned();
                let mut state = *act.state.borrow();
                let mut error = act.last_error.clone();
                let missing: Vec<String> = profiles
                    .iter()
                    .filter(|(_, p)| p.present == Some(false))
                    .map(|(key, p)| {
                        format!(
                            "{key}: image {} is missing (runner start pulls it; offline: {})",
                            p.image,
                            crate::config::build_hint(key, &p.image)
                        )
                    })
                    .collect();
                if state == RunnerState::Ready && !missing.is_empty() {
                    // Its runs would fail: not ready until runner start.
                    state = RunnerState::Stopped;
                    error = Some(missing.join("; "));
                }
                RunnerStatusReply {
                    status: RunnerStatus {
                        state,
                        provider: Some(provider.clone()),
                        details: Some(RunnerDetails {
                            provider: Some(provider),
                            worker_id: Some(act.config.worker_id.clone()),
                            engine_version: act.engine.clone(),
                            profiles,
                            error,
                            ..Default::default()
                        }),
                        error: None,
                    },
                }
            }),
        )
    }
}

impl Handler<Start> for Runner {
    type Result = ResponseActFuture<Self, Result<RunnerStarted, ErrorDetail>>;

    fn handle(&mut self, _: Start, _: &mut Self::Context) -> Self::Result {
        let before = *self.state.borrow();
        if before != RunnerState::Unavailable {
            self.state.send_replace(RunnerState::Starting);
        }
        let runtime = self.runtime.clone();
        let egress = self.config.images.get("egress proxy").cloned();
        let images: Vec<String> = self
            .config
            .images
            .values()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        Box::pin(
            async move {
                runtime.ping().await.map_err(|e| ErrorDetail::new(ErrorType::Unavailable, e.to_string()))?;
                for image in images {
                    if runtime.image_present(&image).await.unwrap_or(false) {
                        continue;
                    }
                    tracing::info!(%image, "pulling a profile image");
                    let log_image = image.clone();
                    runtime
                        .pull(&image, Box::new(move |line| tracing::debug!(image = %log_image, "{line}")))
                        .await
                        .map_err(|e| {
                            let script = if egress.as_deref() == Some(image.as_str()) {
                                "scripts/build-egress-image target/release/bus"
                            } else {
                                "scripts/build-test-image"
                            };
                            ErrorDetail::new(
                                ErrorType::Unavailable,
                                format!("image {image} is missing and could not be pulled ({e}); where no registry can be reached, build it locally with {script} {image}"),
                            )
                        })?;
                }
                Ok(RunnerStarted::default())
            }
            .into_actor(self)
            .map(move |res, act, _| {
                let after = if before == RunnerState::Unavailable { RunnerState::Unavailable } else { RunnerState::Ready };
                act.state.send_replace(after);
                res
            }),
        )
    }
}

impl Handler<RemoveAll> for Runner {
    type Result = ResponseFuture<Result<RunnerDeleted, ErrorDetail>>;

    fn handle(&mut self, _: RemoveAll, _: &mut Self::Context) -> Self::Result {
        let runtime = self.runtime.clone();
        let worker = self.config.worker_id.clone();
        Box::pin(async move {
            let all = runtime
                .list_managed(&worker)
                .await
                .map_err(|e| ErrorDetail::new(ErrorType::Unavailable, e.to_string()))?;
            let mut removed = 0;
            for c in all {
                match runtime.remove(&c.id).await {
                    Ok(()) => removed += 1,
                    Err(e) => tracing::warn!(container = %c.id, error = %e, "could not remove"),
                }
            }
            for n in runtime
                .list_managed_networks(&worker)
                .await
                .unwrap_or_default()
            {
                if let Err(e) = runtime.remove_network(&n.id).await {
                    tracing::warn!(network = %n.id, error = %e, "could not remove");
                }
            }
            tracing::info!(removed, "runner delete: removed managed containers");
            Ok(RunnerDeleted {
                deleted: true,
                removed: Some(removed),
            })
        })
    }
}

impl Handler<Reap> for Runner {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, _: Reap, _: &mut Self::Context) -> Self::Result {
        let runtime = self.runtime.clone();
        let worker = self.config.worker_id.clone();
        let live = self.live.clone();
        let pool = self.config.pool_instance.clone();
        Box::pin(async move {
            // Runs held before the listing or after it are not orphans: a
            // run that ends meanwhile has its container removed by its own
            // session (asking only after would call that one an orphan).
            let before = live.send(ListLive).await.unwrap_or_default();
            let Ok(all) = runtime.list_managed(&worker).await else {
                return 0;
            };
            let networks = runtime
                .list_managed_networks(&worker)
                .await
                .unwrap_or_default();
            if all.is_empty() && networks.is_empty() {
                return 0;
            }
            let mut held = live.send(ListLive).await.unwrap_or_default();
            held.extend(before);
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let mut removed = 0;
            for c in all
                .into_iter()
                .filter(|c| c.pool.as_deref() != Some(pool.as_str()) && !held.contains(&c.run_id))
                .filter(|c| is_orphan(c, now))
            {
                match runtime.remove(&c.id).await {
                    Ok(()) => {
                        removed += 1;
                        tracing::warn!(container = %c.id, run_id = %c.run_id, "removed an orphaned run container");
                    }
                    Err(e) => {
                        tracing::warn!(container = %c.id, error = %e, "could not remove an orphan")
                    }
                }
            }
            // A sandboxed run's network, once its containers are gone.
            for n in networks
                .into_iter()
                .filter(|n| !held.contains(&n.run_id) && is_orphan(n, now))
            {
                match runtime.remove_network(&n.id).await {
                    Ok(()) => {
                        removed += 1;
                        tracing::warn!(network = %n.id, run_id = %n.run_id, "removed an orphaned run network");
                    }
                    Err(e) => {
                        tracing::warn!(network = %n.id, error = %e, "could not remove an orphaned network")
                    }
                }
            }
            removed
        })
    }
}

/// Whether a container (or network) of this worker id that no live
/// session here holds is an orphan: made by this process, by a process
/// that is gone, or by one whose liveness cannot be told and whose run is
/// past its deadline. What a live process of the same worker id holds
/// (a second stack sharing the id) is never taken.
fn is_orphan(c: &crate::runtime::Managed, now: i64) -> bool {
    use crate::runtime::liveness::{Liveness, ProcessMark};
    let Some(mark) = c.process.as_deref() else {
        return true; // Made before containers carried their process.
    };
    let past_deadline = c.deadline.is_some_and(|d| d < now);
    match ProcessMark::parse(mark).map(|m| m.liveness()) {
        None | Some(Liveness::This) | Some(Liveness::Dead) => true,
        Some(Liveness::Alive) => false,
        Some(Liveness::Unknown) => past_deadline,
    }
}

impl Handler<MarkStopped> for Runner {
    type Result = ();
    fn handle(&mut self, _: MarkStopped, _: &mut Self::Context) {
        self.state.send_replace(RunnerState::Stopped);
    }
}
