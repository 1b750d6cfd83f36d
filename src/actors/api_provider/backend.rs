//! Where the API provider's requests go, as a seat: [`Backend`] holds one
//! `Recipient<Ask<Q>>` per request kind. [`BusBackend`] asks on
//! `bus.containers.*` (a router or a standalone worker answers),
//! [`StaticBackend`] answers itself; a test seats a mock.
//!
//! An answer is the backend's reply (which may be an error reply), or
//! why none came (`timeout`, `unavailable`). A reply is checked before it
//! is trusted: one that does not decode, or answers for another owner,
//! is `malformed_response`.

use crate::actors::bus::requester::{first_reply, Request, Requester};
use crate::contract::replies::{DeleteRequest, InputRequest, StatusRequest};
use crate::contract::wire::{RunnerDeleteRequest, RunnerStartRequest, RunnerStatusRequest};
use crate::contract::{ErrorDetail, ErrorType, Reply, RunRequest, WireRequest, PUBLIC_PREFIX};
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

/// An actor that answers every kind.
pub trait Answers:
    Actor<Context = Context<Self>>
    + Handler<Ask<RunRequest>>
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
        + Handler<Ask<RunRequest>>
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
    pub run: Recipient<Ask<RunRequest>>,
    pub input: Recipient<Ask<InputRequest>>,
    pub delete: Recipient<Ask<DeleteRequest>>,
    pub status: Recipient<Ask<StatusRequest>>,
    pub runner_status: Recipient<Ask<RunnerStatusRequest>>,
    pub runner_start: Recipient<Ask<RunnerStartRequest>>,
    pub runner_delete: Recipient<Ask<RunnerDeleteRequest>>,
}

impl Backend {
    /// Every kind answered by `addr`.
    pub fn of<A: Answers>(name: &'static str, addr: Addr<A>) -> Backend {
        Backend {
            name,
            run: addr.clone().recipient(),
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
}

impl Actor for BusBackend {
    type Context = Context<Self>;
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

impl<Q: WireRequest> Handler<Ask<Q>> for StaticBackend {
    type Result = Result<Reply<Q::Reply>, ErrorDetail>;

    fn handle(&mut self, ask: Ask<Q>, _: &mut Self::Context) -> Self::Result {
        let owner = ask.body.owner().unwrap_or("").to_owned();
        Ok(ask.body.static_answer(&owner, "static"))
    }
}
