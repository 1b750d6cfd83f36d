//! Input and delete for a run this worker holds. They are broadcast:
//! only the worker holding the run acts; one that was named but does not
//! hold it says `not_found`; any other stays silent.

use super::DockerWorker;
use crate::actors::bus::Incoming;
use crate::actors::container_session::{Cancel, WriteInput};
use crate::contract::replies::{DeleteRequest, Deleted, InputAccepted, InputRequest};
use crate::contract::{ErrorType, Reply, WireRequest};
use actix::prelude::*;

impl DockerWorker {
    /// The session of the run `body` names, if this worker holds it and
    /// `owner` owns it; otherwise answers (or stays silent) and `None`.
    fn held<Q: WireRequest>(
        &mut self,
        body: &Q,
        owner: &str,
        corr: Option<String>,
        ctx: &mut Context<Self>,
    ) -> Option<super::SessionSeat> {
        let run_id = body.run_id().unwrap_or("").to_owned();
        let named_me = body.worker_id() == Some(self.config.worker_id());
        let Some(live) = self.sessions.get(&run_id) else {
            if named_me {
                let reply = Reply::error(
                    ErrorType::NotFound,
                    format!("no live run {run_id} on worker {}", self.config.worker_id()),
                );
                self.reply::<Q>(corr, reply, ctx);
            }
            return None;
        };
        if live.owner != owner {
            let reply = Reply::error(
                ErrorType::Forbidden,
                format!("run {run_id} belongs to another account"),
            );
            self.reply::<Q>(corr, reply, ctx);
            return None;
        }
        Some(live.seat.clone())
    }
}

impl Handler<Incoming<Result<DeleteRequest, crate::contract::Malformed>>> for DockerWorker {
    type Result = ();

    fn handle(
        &mut self,
        msg: Incoming<Result<DeleteRequest, crate::contract::Malformed>>,
        ctx: &mut Self::Context,
    ) {
        let Some((msg, owner)) = self.admit_request(msg, ctx) else {
            return;
        };
        let corr = msg.meta.correlation_id;
        let run_id = msg.body.run_id.clone();
        let fetching = self.fetching.get(&run_id).map(|f| f.owner == owner);
        if fetching == Some(true) {
            // Deleted before it started: it never will.
            let reply = Reply::error(
                ErrorType::NotFound,
                format!("run {run_id} was deleted before it started"),
            );
            self.abandon_fetch(&run_id, reply, ctx);
            let reply = Reply::Ok(Deleted {
                deleted: true,
                run_id,
                owner_account_id: owner,
            });
            return self.reply::<DeleteRequest>(corr, reply, ctx);
        }
        let Some(seat) = self.held(&msg.body, &owner, corr.clone(), ctx) else {
            return;
        };
        seat.cancel.do_send(Cancel);
        let reply = Reply::Ok(Deleted {
            deleted: true,
            run_id: msg.body.run_id,
            owner_account_id: owner,
        });
        self.reply::<DeleteRequest>(corr, reply, ctx);
    }
}

impl Handler<Incoming<Result<InputRequest, crate::contract::Malformed>>> for DockerWorker {
    type Result = ();

    fn handle(
        &mut self,
        msg: Incoming<Result<InputRequest, crate::contract::Malformed>>,
        ctx: &mut Self::Context,
    ) {
        let Some((msg, owner)) = self.admit_request(msg, ctx) else {
            return;
        };
        let corr = msg.meta.correlation_id;
        let Some(seat) = self.held(&msg.body, &owner, corr.clone(), ctx) else {
            return;
        };
        let data = match msg.body.bytes() {
            Ok(data) => data,
            Err(e) => return self.reply::<InputRequest>(corr, Reply::Err(e), ctx),
        };
        let run_id = msg.body.run_id;
        let write = WriteInput {
            data,
            eof: msg.body.eof,
        };
        ctx.spawn(
            seat.input
                .send(write)
                .into_actor(self)
                .map(move |res, act, ctx| {
                    let reply = match res {
                        Ok(Ok(bytes)) => Reply::Ok(InputAccepted {
                            accepted: true,
                            run_id,
                            bytes,
                        }),
                        Ok(Err(e)) => Reply::Err(e),
                        Err(_) => {
                            Reply::error(ErrorType::NotFound, format!("run {run_id} has ended"))
                        }
                    };
                    act.reply::<InputRequest>(corr, reply, ctx);
                }),
        );
    }
}
