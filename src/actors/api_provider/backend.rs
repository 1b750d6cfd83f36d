//! Where the API provider's requests go, as a seat: [`Backend`] holds one
//! `Recipient` per request kind. [`BusBackend`] speaks on
//! `bus.containers.*` (a router or a standalone worker answers),
//! [`StaticBackend`] answers itself; a test seats a mock.
//!
//! Runs are not asked and waited for: a run is [`Submit`]ted, and what
//! becomes of it arrives as events and a [`RunReply`] whenever it comes
//! (the provider's tracking decides what a silence means). A run that
//! was refused is [`Withdraw`]n (on a durable queue, a claim that no
//! worker may start it), and a recorded result is acknowledged to its
//! worker ([`Recorded`]).
//!
//! Every other kind is an [`Ask`]: the backend's reply (which may be an
//! error reply), or why none came (`timeout`, `unavailable`). A reply is
//! checked before it is trusted: one that does not decode, or answers
//! for another owner, is `malformed_response`.

use crate::actors::bus::requester::{first_reply, Request, Requester};
use crate::actors::bus::{Incoming, Meta};
use crate::broker::{claim_key, Claim, ClaimRecord};
use crate::contract::replies::{DeleteRequest, InputRequest, RunQuery, StatusRequest};
use crate::contract::wire::{RunnerDeleteRequest, RunnerStartRequest, RunnerStatusRequest};
use crate::contract::{
    encode, ErrorDetail, ErrorType, Kind, Malformed, Publication, Reply, RunRecorded, RunRequest,
    RunResult, WireRequest, WorkerReply, PUBLIC_PREFIX,
};
use actix::prelude::*;
use std::time::Duration;

/// Ask the backend `body`, waiting at most `deadline` for the reply.
pub struct Ask<Q: WireRequest> {
    pub body: Q,
    /// The owner the reply must be for (empty for runner requests).
    pub owner: String,
    pub deadline: Duration,
}

impl<Q: WireRequest> Message for Ask<Q> {
    type Result = Result<Reply<Q::Reply>, ErrorDetail>;
}

/// A run's reply from wherever it comes (the bus, the static backend).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RunReply(pub Incoming<Result<WorkerReply<RunResult>, Malformed>>);

/// Sends a run on its way; its reply comes to `reply_to` as a
/// [`RunReply`] under `correlation_id`.
pub struct Submit {
    pub request: RunRequest,
    pub correlation_id: String,
    pub reply_to: Recipient<RunReply>,
}

/// Why a run could not be sent.
#[derive(Debug, Clone)]
pub struct NotSent {
    pub error: ErrorDetail,
    /// The bus refused it: it was certainly not sent (otherwise it may
    /// have gone out before the failure).
    pub definite: bool,
}

impl Message for Submit {
    type Result = Result<(), NotSent>;
}

/// Makes sure a refused run never starts.
#[derive(Message, Clone)]
#[rtype(result = "Result<Withdrawn, ErrorDetail>")]
pub struct Withdraw {
    pub run_id: String,
    pub owner: String,
}

/// What withdrawing a run found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawn {
    /// It will never start.
    Done,
    /// A worker had taken it already: it runs, and will answer.
    Taken,
}

/// Tells the run's worker its result is recorded.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Recorded(pub RunRecorded);

/// An actor that answers every kind.
pub trait Answers:
    Actor<Context = Context<Self>>
    + Handler<Submit>
    + Handler<Withdraw>
    + Handler<Recorded>
    + Handler<Ask<RunQuery>>
    + Handler<Ask<InputRequest>>
    + Handler<Ask<DeleteRequest>>
    + Handler<Ask<StatusRequest>>
    + Handler<Ask<RunnerStatusRequest>>
    + Handler<Ask<RunnerStartRequest>>
    + Handler<Ask<RunnerDeleteRequest>>
{
}

impl<A> Answers for A where
    A: Actor<Context = Context<A>>
        + Handler<Submit>
        + Handler<Withdraw>
        + Handler<Recorded>
        + Handler<Ask<RunQuery>>
        + Handler<Ask<InputRequest>>
        + Handler<Ask<DeleteRequest>>
        + Handler<Ask<StatusRequest>>
        + Handler<Ask<RunnerStatusRequest>>
        + Handler<Ask<RunnerStartRequest>>
        + Handler<Ask<RunnerDeleteRequest>>
{
}

/// The backend seat.
#[derive(Clone)]
pub struct Backend {
    pub name: &'static str,
    /// Runs wait in a durable queue (NATS with JetStream): they are not
    /// refused for want of a worker, and no accept-by time is set.
    pub durable: bool,
    pub submit: Recipient<Submit>,
    pub withdraw: Recipient<Withdraw>,
    pub recorded: Recipient<Recorded>,
    pub query: Recipient<Ask<RunQuery>>,
    pub input: Recipient<Ask<InputRequest>>,
    pub delete: Recipient<Ask<DeleteRequest>>,
    pub status: Recipient<Ask<StatusRequest>>,
    pub runner_status: Recipient<Ask<RunnerStatusRequest>>,
    pub runner_start: Recipient<Ask<RunnerStartRequest>>,
    pub runner_delete: Recipient<Ask<RunnerDeleteRequest>>,
}

impl Backend {
    /// Every kind answered by `addr`.
    pub fn of<A: Answers>(name: &'static str, durable: bool, addr: Addr<A>) -> Backend {
        Backend {
            name,
            durable,
            submit: addr.clone().recipient(),
            withdraw: addr.clone().recipient(),
            recorded: addr.clone().recipient(),
            query: addr.clone().recipient(),
            input: addr.clone().recipient(),
            delete: addr.clone().recipient(),
            status: addr.clone().recipient(),
            runner_status: addr.clone().recipient(),
            runner_start: addr.clone().recipient(),
            runner_delete: addr.recipient(),
        }
    }
}

/// Asks `seat` and flattens a mailbox failure into `unavailable`.
pub async fn ask<Q: WireRequest>(
    seat: &Recipient<Ask<Q>>,
    body: Q,
    owner: &str,
    deadline: Duration,
) -> Result<Reply<Q::Reply>, ErrorDetail> {
    seat.send(Ask {
        body,
        owner: owner.to_owned(),
        deadline,
    })
    .await
    .unwrap_or_else(|_| {
        Err(ErrorDetail::new(
            ErrorType::Unavailable,
            "the backend stopped",
        ))
    })
}

/// Requests on `bus.containers.*` through the bus.
pub struct BusBackend {
    pub requester: Requester,
    /// The parts of run requests too large for one message, by run id
    /// ([`super::payload`]).
    pub(super) held: std::collections::HashMap<String, super::payload::Held>,
}

impl BusBackend {
    pub fn new(requester: Requester) -> Self {
        BusBackend {
            requester,
            held: Default::default(),
        }
    }
}

impl Actor for BusBackend {
    type Context = Context<Self>;
}

impl Handler<Submit> for BusBackend {
    type Result = ResponseFuture<Result<(), NotSent>>;

    fn handle(&mut self, msg: Submit, _: &mut Self::Context) -> Self::Result {
        let requester = self.requester.clone();
        let payload = self.payload_of(&msg.request);
        Box::pin(async move {
            let publication = Publication::new(Kind::Run.request(PUBLIC_PREFIX), payload)
                .with_correlation(msg.correlation_id);
            requester
                .publish(publication)
                .await
                .map(|_| ())
                .map_err(|e| NotSent {
                    definite: e.is_fatal()
                        || matches!(
                            e,
                            crate::broker::BrokerError::TooLarge(_)
                                | crate::broker::BrokerError::NotConnected(_)
                        ),
                    error: ErrorDetail::new(e.error_type(), e.to_string()),
                })
        })
    }
}

impl Handler<Withdraw> for BusBackend {
    type Result = ResponseFuture<Result<Withdrawn, ErrorDetail>>;

    fn handle(&mut self, msg: Withdraw, _: &mut Self::Context) -> Self::Result {
        self.release(&msg.run_id);
        let broker = self.requester.broker().clone();
        Box::pin(async move {
            if broker.durable(&Kind::Run.request(PUBLIC_PREFIX)).is_none() {
                // Nothing queues a run here: once its accept-by time has
                // passed no worker starts it.
                return Ok(Withdrawn::Done);
            }
            let record = ClaimRecord {
                holder: WITHDRAWN.into(),
                instance: String::new(),
                run_id: msg.run_id.clone(),
                done: true,
            };
            match broker
                .claim(&claim_key(&msg.owner, &msg.run_id), record)
                .await
            {
                Ok(Claim::Won { .. }) => Ok(Withdrawn::Done),
                Ok(Claim::Held { record, .. }) if record.holder == WITHDRAWN => Ok(Withdrawn::Done),
                Ok(Claim::Held { .. }) => Ok(Withdrawn::Taken),
                Err(e) => Err(ErrorDetail::new(ErrorType::Unavailable, e.to_string())),
            }
        })
    }
}

/// The holder of a claim that withdraws a run.
pub const WITHDRAWN: &str = "withdrawn";

impl Handler<Recorded> for BusBackend {
    type Result = ();

    fn handle(&mut self, Recorded(r): Recorded, _: &mut Self::Context) {
        self.release(&r.run_id);
        let requester = self.requester.clone();
        actix_rt::spawn(async move {
            let publication = Publication::new(format!("{PUBLIC_PREFIX}.run.recorded"), encode(&r));
            if let Err(e) = requester.publish(publication).await {
                tracing::debug!(error = %e, "run.recorded not published (the worker sends the result again)");
            }
        });
    }
}

impl<Q: WireRequest> Handler<Ask<Q>> for BusBackend {
    type Result = ResponseFuture<Result<Reply<Q::Reply>, ErrorDetail>>;

    fn handle(&mut self, ask: Ask<Q>, _: &mut Self::Context) -> Self::Result {
        let requester = self.requester.clone();
        Box::pin(async move {
            let request = Request::of(PUBLIC_PREFIX, &ask.body, ask.deadline);
            let out = requester.request(request).await?;
            let malformed = |why: crate::contract::Malformed| {
                Reply::error(
                    ErrorType::MalformedResponse,
                    format!("malformed reply: {why}"),
                )
            };
            match first_reply::<Q::Reply>(&out) {
                None => Err(ErrorDetail::new(
                    ErrorType::Timeout,
                    format!(
                        "no reply within {}",
                        crate::parse::format_duration(ask.deadline)
                    ),
                )),
                Some(Err(why)) => Ok(malformed(why)),
                Some(Ok(r)) => match &r.reply {
                    Reply::Ok(body) if !Q::KIND.is_runner() => {
                        match Q::check_reply(body, &ask.owner) {
                            Ok(()) => Ok(r.reply),
                            Err(why) => Ok(malformed(why)),
                        }
                    }
                    _ => Ok(r.reply),
                },
            }
        })
    }
}

/// The static provider's deterministic answers, no bus.
pub struct StaticBackend;

impl Actor for StaticBackend {
    type Context = Context<Self>;
}

impl Handler<Submit> for StaticBackend {
    type Result = Result<(), NotSent>;

    fn handle(&mut self, msg: Submit, _: &mut Self::Context) -> Self::Result {
        let owner = msg.request.owner().unwrap_or("").to_owned();
        let reply = WorkerReply {
            worker_id: Some("static".into()),
            reply: msg.request.static_answer(&owner, "static"),
        };
        msg.reply_to.do_send(RunReply(Incoming {
            meta: Meta {
                id: crate::contract::new_event_id(),
                name: Kind::Run.response(PUBLIC_PREFIX),
                correlation_id: Some(msg.correlation_id),
                identity_id: "static".into(),
                service: true,
                time: crate::contract::now_rfc3339(),
                ack: None,
            },
            body: Ok(reply),
        }));
        Ok(())
    }
}

impl Handler<Withdraw> for StaticBackend {
    type Result = Result<Withdrawn, ErrorDetail>;
    fn handle(&mut self, _: Withdraw, _: &mut Self::Context) -> Self::Result {
        Ok(Withdrawn::Done)
    }
}

impl Handler<Recorded> for StaticBackend {
    type Result = ();
    fn handle(&mut self, _: Recorded, _: &mut Self::Context) {}
}

impl<Q: WireRequest> Handler<Ask<Q>> for StaticBackend {
    type Result = Result<Reply<Q::Reply>, ErrorDetail>;

    fn handle(&mut self, ask: Ask<Q>, _: &mut Self::Context) -> Self::Result {
        let owner = ask.body.owner().unwrap_or("").to_owned();
        Ok(ask.body.static_answer(&owner, "static"))
    }
}
