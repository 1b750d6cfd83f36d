//! What the router relays without keeping any state: the backend's run
//! events (`run.started`, `run.output`, `run.accepted`,
//! `run.result.part`, `run.payload.pull`) and the workers' answers to
//! runs, to the public names under their correlation ids, and the API
//! provider's `run.recorded` and `run.payload.part` back to the backend —
//! all in arrival order, through one
//! [`Relay`](crate::actors::bus::relay::Relay).

use super::{unsigned, Router, RouterBackend};
use crate::actors::bus::Incoming;
use crate::contract::parts::{PayloadPart, PayloadPull};
use crate::contract::{
    encode, ErrorType, Kind, Malformed, Publication, Reply, ResultPart, RunAccepted, RunOutput,
    RunRecorded, RunResult, RunStarted, WorkerReply, PUBLIC_PREFIX,
};
use actix::prelude::*;

impl Router {
    /// Republishes a backend run event under the public name, in order.
    pub(super) fn relay<T: serde::Serialize>(
        &mut self,
        name: &str,
        msg: Incoming<T>,
        ctx: &mut Context<Self>,
    ) {
        self.relay_as(format!("{PUBLIC_PREFIX}.{name}"), msg, ctx)
    }

    /// Publishes `msg` as `name`, in order with the other relayed events.
    pub(super) fn relay_as<T: serde::Serialize>(
        &mut self,
        name: String,
        msg: Incoming<T>,
        ctx: &mut Context<Self>,
    ) {
        let mut publication = Publication::new(name, encode(&msg.body));
        publication.correlation_id = msg.meta.correlation_id;
        if let Err(publication) = self.relay.try_send(publication) {
            // Hold further deliveries until the relay has room.
            let relay = self.relay.clone();
            ctx.wait(async move { relay.send(publication).await }.into_actor(self));
        }
    }
}

impl Handler<Incoming<RunStarted>> for Router {
    type Result = ();
    fn handle(&mut self, msg: Incoming<RunStarted>, ctx: &mut Self::Context) {
        self.relay("run.started", msg, ctx);
    }
}

impl Handler<Incoming<RunOutput>> for Router {
    type Result = ();
    fn handle(&mut self, msg: Incoming<RunOutput>, ctx: &mut Self::Context) {
        self.relay("run.output", msg, ctx);
    }
}

impl Handler<Incoming<RunAccepted>> for Router {
    type Result = ();
    fn handle(&mut self, msg: Incoming<RunAccepted>, ctx: &mut Self::Context) {
        self.relay("run.accepted", msg, ctx);
    }
}

impl Handler<Incoming<ResultPart>> for Router {
    type Result = ();
    fn handle(&mut self, msg: Incoming<ResultPart>, ctx: &mut Self::Context) {
        self.relay("run.result.part", msg, ctx);
    }
}

/// A worker's answer to a run, to relay under its correlation id.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RunAnswer(pub Incoming<Result<WorkerReply<RunResult>, Malformed>>);

impl Handler<RunAnswer> for Router {
    type Result = ();
    fn handle(&mut self, RunAnswer(msg): RunAnswer, ctx: &mut Self::Context) {
        if msg.meta.correlation_id.is_none() {
            return;
        }
        let reply = match msg.body {
            Ok(reply) => reply,
            Err(why) => {
                self.metrics.malformed.inc();
                tracing::warn!(reason = %why, "malformed run reply relayed as such");
                unsigned(Reply::error(
                    ErrorType::MalformedResponse,
                    format!("malformed backend reply: {why}"),
                ))
            }
        };
        let mut publication =
            Publication::new(Kind::Run.response(PUBLIC_PREFIX), reply.to_payload());
        publication.correlation_id = msg.meta.correlation_id;
        if let Err(publication) = self.relay.try_send(publication) {
            let relay = self.relay.clone();
            ctx.wait(async move { relay.send(publication).await }.into_actor(self));
        }
    }
}

impl Handler<Incoming<PayloadPull>> for Router {
    type Result = ();
    fn handle(&mut self, msg: Incoming<PayloadPull>, ctx: &mut Self::Context) {
        // Only a worker (a service) asks; the provider trusts the relay.
        if !msg.meta.service {
            return;
        }
        self.relay("run.payload.pull", msg, ctx);
    }
}

impl Handler<Incoming<PayloadPart>> for Router {
    type Result = ();
    fn handle(&mut self, msg: Incoming<PayloadPart>, ctx: &mut Self::Context) {
        if !msg.meta.service {
            return;
        }
        let RouterBackend::Events { prefix } = &self.config.backend else {
            return;
        };
        let name = format!("{prefix}.run.payload.part");
        self.relay_as(name, msg, ctx);
    }
}

impl Handler<Incoming<RunRecorded>> for Router {
    type Result = ();
    fn handle(&mut self, msg: Incoming<RunRecorded>, ctx: &mut Self::Context) {
        let RouterBackend::Events { prefix } = &self.config.backend else {
            return;
        };
        let name = format!("{prefix}.run.recorded");
        self.relay_as(name, msg, ctx);
    }
}
