//! A minimal worker for benchmarks: answers `<prefix>.run.request` at once
//! with the static provider's reply and announces itself by heartbeat, so
//! a measurement sees only the bus and the router.

use crate::actors::bus::edge::requests;
use crate::actors::bus::requester::BusIdentity;
use crate::actors::bus::subscription::Subscription;
use crate::actors::bus::Incoming;
use crate::broker::{BrokerError, SharedBroker, SubscribeSpec};
use crate::contract::{
    encode, Kind, Publication, RunRequest, RunnerState, WireRequest, WorkerHeartbeat, WorkerReply,
    WORKER_GROUP,
};
use actix::prelude::*;
use std::time::Duration;

pub struct Responder {
    broker: SharedBroker,
    prefix: String,
    me: BusIdentity,
}

impl Responder {
    pub async fn start(broker: SharedBroker, prefix: &str) -> Result<Addr<Responder>, BrokerError> {
        let addr = Responder {
            broker: broker.clone(),
            prefix: prefix.to_owned(),
            me: BusIdentity::service("bench-worker"),
        }
        .start();
        let spec = SubscribeSpec::unicast(Kind::Run.request(prefix), WORKER_GROUP);
        Subscription::start_decoded(
            broker,
            spec,
            requests::<RunRequest>(),
            addr.clone().recipient(),
        )
        .await?;
        Ok(addr)
    }

    fn heartbeat(&self) {
        let payload = encode(&WorkerHeartbeat {
            worker_id: "bench".into(),
            provider: "static".into(),
            state: RunnerState::Ready,
            runs: 0,
            capacity: 1000,
        });
        let env = self.me.envelope(Publication::new(
            format!("{}.worker.heartbeat", self.prefix),
            payload,
        ));
        let broker = self.broker.clone();
        actix_rt::spawn(async move {
            let _ = broker.publish(env).await;
        });
    }
}

impl Actor for Responder {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
        self.heartbeat();
        ctx.run_interval(Duration::from_secs(1), |act, _| act.heartbeat());
    }
}

impl Handler<Incoming<Result<RunRequest, crate::contract::Malformed>>> for Responder {
    type Result = ();

    fn handle(
        &mut self,
        msg: Incoming<Result<RunRequest, crate::contract::Malformed>>,
        ctx: &mut Self::Context,
    ) {
        let Ok(request) = &msg.body else { return };
        let owner = request.owner().unwrap_or("");
        let reply = WorkerReply {
            worker_id: Some("bench".into()),
            reply: request.static_answer(owner, "bench"),
        };
        let mut publication =
            Publication::new(Kind::Run.response(&self.prefix), reply.to_payload());
        publication.correlation_id = msg.meta.correlation_id.clone();
        let env = self.me.envelope(publication);
        let broker = self.broker.clone();
        let ack = msg.meta.ack.as_ref().map(|a| a.done());
        ctx.spawn(
            async move {
                let _ = broker.publish(env).await;
                if let Some(ack) = ack {
                    let _ = ack.await;
                }
            }
            .into_actor(self),
        );
    }
}
