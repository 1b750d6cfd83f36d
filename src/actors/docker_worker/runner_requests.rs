//! `status` (the caller's live runs here) and the runner requests, for
//! the router's gather.

use super::DockerWorker;
use crate::actors::bus::Incoming;
use crate::actors::container_session::Cancel;
use crate::actors::runner;
use crate::contract::replies::{StatusDetails, StatusItem, StatusReply, StatusRequest};
use crate::contract::wire::{RunnerDeleteRequest, RunnerStartRequest, RunnerStatusRequest};
use crate::contract::{ErrorDetail, ErrorType, Reply, RunState, WireRequest};
use actix::prelude::*;
use futures::future::LocalBoxFuture;

impl Handler<Incoming<Result<StatusRequest, crate::contract::Malformed>>> for DockerWorker {
    type Result = ();

    fn handle(
        &mut self,
        msg: Incoming<Result<StatusRequest, crate::contract::Malformed>>,
        ctx: &mut Self::Context,
    ) {
        let Some((msg, owner)) = self.admit_request(msg, ctx) else {
            return;
        };
        let items = self
            .sessions
            .iter()
            .filter(|(_, l)| l.owner == owner)
            .map(|(id, l)| StatusItem {
                id: id.clone(),
                state: RunState::Running,
                owner_account_id: Some(l.owner.clone()),
                details: Some(StatusDetails {
                    worker_id: Some(self.config.worker_id().to_owned()),
                    started_at: Some(l.started_at.clone()),
                    container_id: l.container_id.clone(),
                }),
            })
            .collect();
        let reply = Reply::Ok(StatusReply { items });
        self.reply::<StatusRequest>(msg.meta.correlation_id, reply, ctx);
    }
}

impl DockerWorker {
    /// Asks the runner and answers with what it says.
    fn ask_runner<Q: WireRequest>(
        &mut self,
        corr: Option<String>,
        ask: impl FnOnce(&super::RunnerSeat) -> LocalBoxFuture<'static, Result<Q::Reply, ErrorDetail>>,
        ctx: &mut Context<Self>,
    ) {
        let Some(runner) = &self.runner else {
            return;
        };
        ctx.spawn(ask(runner).into_actor(self).map(move |res, act, ctx| {
            act.reply::<Q>(corr, res.into(), ctx);
        }));
    }
}

fn gone(e: MailboxError) -> ErrorDetail {
    ErrorDetail::new(ErrorType::Unavailable, e.to_string())
}

impl Handler<Incoming<Result<RunnerStatusRequest, crate::contract::Malformed>>> for DockerWorker {
    type Result = ();

    fn handle(
        &mut self,
        msg: Incoming<Result<RunnerStatusRequest, crate::contract::Malformed>>,
        ctx: &mut Self::Context,
    ) {
        let Some((msg, _)) = self.admit_request(msg, ctx) else {
            return;
        };
        self.ask_runner::<RunnerStatusRequest>(
            msg.meta.correlation_id,
            |r| {
                let fut = r.status.send(runner::Status);
                Box::pin(async move { fut.await.map_err(gone) })
            },
            ctx,
        );
    }
}

impl Handler<Incoming<Result<RunnerStartRequest, crate::contract::Malformed>>> for DockerWorker {
    type Result = ();

    fn handle(
        &mut self,
        msg: Incoming<Result<RunnerStartRequest, crate::contract::Malformed>>,
        ctx: &mut Self::Context,
    ) {
        let Some((msg, _)) = self.admit_request(msg, ctx) else {
            return;
        };
        self.ask_runner::<RunnerStartRequest>(
            msg.meta.correlation_id,
            |r| {
                let fut = r.start.send(runner::Start);
                Box::pin(async move { fut.await.map_err(gone)? })
            },
            ctx,
        );
    }
}

impl Handler<Incoming<Result<RunnerDeleteRequest, crate::contract::Malformed>>> for DockerWorker {
    type Result = ();

    fn handle(
        &mut self,
        msg: Incoming<Result<RunnerDeleteRequest, crate::contract::Malformed>>,
        ctx: &mut Self::Context,
    ) {
        let Some((msg, _)) = self.admit_request(msg, ctx) else {
            return;
        };
        for live in self.sessions.values() {
            live.seat.cancel.do_send(Cancel);
        }
        self.ask_runner::<RunnerDeleteRequest>(
            msg.meta.correlation_id,
            |r| {
                let fut = r.remove_all.send(runner::RemoveAll);
                Box::pin(async move {
                    let mut done = fut.await.map_err(gone)??;
                    // The gathered reply carries no count.
                    done.removed = None;
                    Ok(done)
                })
            },
            ctx,
        );
    }
}
