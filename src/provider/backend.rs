//! Where the API provider's requests go: the bus (through the router or a
//! standalone worker) or the static provider.

use crate::actors::bus::requester::{Request, Requester};
use crate::contract::{static_answers, Kind, PUBLIC_PREFIX};
use crate::contract::{ErrorDetail, ErrorType};
use futures::future::LocalBoxFuture;
use futures::FutureExt;
use serde_json::Value;
use std::time::Duration;

/// Answers container requests: the reply payload (which may be an error
/// reply), or why no reply came.
pub trait Backend: Send + Sync + 'static {
    fn call(
        &self,
        kind: Kind,
        payload: Value,
        deadline: Duration,
    ) -> LocalBoxFuture<'static, Result<Value, ErrorDetail>>;
    /// `Ok` while requests can be made (for `/readyz`).
    fn ready(&self) -> Result<(), String>;
    fn name(&self) -> &'static str;
}

/// Requests on `bus.containers.*` through the bus.
pub struct BusBackend {
    pub requester: Requester,
}

impl Backend for BusBackend {
    fn call(
        &self,
        kind: Kind,
        payload: Value,
        deadline: Duration,
    ) -> LocalBoxFuture<'static, Result<Value, ErrorDetail>> {
        let requester = self.requester.clone();
        async move {
            let out = requester
                .request(Request::new(
                    &kind.request(PUBLIC_PREFIX),
                    payload,
                    deadline,
                ))
                .await?;
            match out.replies.into_iter().next() {
                Some(reply) => Ok(reply.payload.clone()),
                None => Err(ErrorDetail::new(
                    ErrorType::Timeout,
                    format!(
                        "no reply within {}",
                        crate::parse::format_duration(deadline)
                    ),
                )),
            }
        }
        .boxed_local()
    }

    fn ready(&self) -> Result<(), String> {
        self.requester.broker().ready().map_err(|e| e.to_string())
    }

    fn name(&self) -> &'static str {
        "events"
    }
}

/// The static provider's deterministic answers, no bus.
pub struct StaticBackend;

impl Backend for StaticBackend {
    fn call(
        &self,
        kind: Kind,
        payload: Value,
        _: Duration,
    ) -> LocalBoxFuture<'static, Result<Value, ErrorDetail>> {
        let owner = payload
            .get("owner_account_id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let reply = static_answers::answer(kind, &payload, &owner, "static");
        async move { Ok(reply) }.boxed_local()
    }

    fn ready(&self) -> Result<(), String> {
        Ok(())
    }

    fn name(&self) -> &'static str {
        "static"
    }
}
