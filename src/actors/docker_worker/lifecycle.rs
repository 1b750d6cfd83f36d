//! A worker's heartbeats (`<prefix>.worker.heartbeat`, the first once the
//! engine's state is known) and its graceful stop: cancel every run,
//! wait (bounded) for their containers to go, empty the warm pool, say
//! `stopped` in a last heartbeat.

use super::DockerWorker;
use crate::actors::bus::subscription;
use crate::actors::container_session::Cancel;
use crate::actors::runner;
use crate::actors::warm_pool;
use crate::contract::{encode, Publication, WorkerHeartbeat};
use actix::prelude::*;
use std::time::Duration;

/// Cancels every run, waits for their containers to be removed (bounded),
/// publishes a last `stopped` heartbeat and stops the worker.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl DockerWorker {
    pub(super) fn start_heartbeats(&mut self, ctx: &mut Context<Self>) {
        ctx.run_later(Duration::from_millis(300), |act, _| act.heartbeat());
        ctx.run_interval(self.config.heartbeat_every, |act, _| act.heartbeat());
    }

    fn heartbeat(&self) {
        let beat = WorkerHeartbeat {
            worker_id: self.config.worker_id().to_owned(),
            provider: self
                .runtime()
                .map(|r| r.provider())
                .unwrap_or("static")
                .to_owned(),
            state: self.state(),
            runs: self.sessions.len(),
            capacity: self.config.settings.config.worker.capacity,
        };
        let publication = Publication::new(
            format!("{}.worker.heartbeat", self.config.prefix),
            encode(&beat),
        );
        let publisher = self.publisher.clone();
        actix_rt::spawn(async move {
            if let Err(e) = publisher.publish(publication).await {
                tracing::debug!(error = %e, "heartbeat not published");
            }
        });
    }
}

impl Handler<Shutdown> for DockerWorker {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.on_stopped.push(tx);
        if !self.stopping {
            self.stopping = true;
            for s in self.subscriptions.drain(..) {
                s.do_send(subscription::Stop);
            }
            for live in self.sessions.values() {
                live.seat.cancel.do_send(Cancel);
            }
            self.abandon_fetches(ctx);
            if let Some(r) = &self.runner {
                r.stopped.do_send(runner::MarkStopped);
            }
            // Wait (bounded) for the cancelled sessions to remove their
            // containers and, a little longer, for their results to be
            // recorded; then empty the warm pool.
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            let mut done = false;
            let mut idle_since = None;
            ctx.run_interval(Duration::from_millis(50), move |act, ctx| {
                let idle = act.sessions.is_empty() && act.settles == 0 && act.pending == 0;
                let now = std::time::Instant::now();
                if idle && idle_since.is_none() {
                    idle_since = Some(now);
                }
                let recorded = act.retained.is_empty()
                    || idle_since.is_some_and(|t| now - t >= Duration::from_secs(5));
                if done || !(idle && recorded || now >= deadline) {
                    return;
                }
                done = true;
                act.heartbeat();
                match act.pool.take() {
                    Some(pool) => ctx.wait(
                        pool.drain
                            .send(warm_pool::Drain)
                            .into_actor(act)
                            .map(|_, _, ctx| ctx.stop()),
                    ),
                    None => ctx.stop(),
                }
            });
        }
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}
