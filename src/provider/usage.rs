//! Usage records (`bus.usage.record.request`) and the billing entitlement
//! check (`bus.billing.entitlement.check.request`).
//!
//! Usage is published in order by one background task (so a run's
//! `container_run_requested` always precedes its end), never on the run's
//! own path: a failed record never loses a run's result. Retry policy: a
//! failed publish is tried three more times after 1 s, 2 s and 4 s, then
//! logged and counted (`bus_api_usage_failures_total`). `event_id` is
//! stable per run and type, so a retried record is not counted twice.

use crate::actors::bus::requester::{Request, Requester};
use crate::contract::RunState;
use crate::contract::{now_rfc3339, ErrorDetail, ErrorType, Publication};
use crate::http::ApiError;
use prometheus::IntCounter;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

pub const USAGE_EVENT: &str = "bus.usage.record.request";
pub const BILLING_EVENT: &str = "bus.billing.entitlement.check.request";

/// Where usage records go.
#[derive(Clone)]
pub enum Usage {
    None,
    /// Published on the bus by an ordered background task.
    Events(mpsc::Sender<Value>),
    /// Kept in memory (development, tests), at most 10,000.
    Memory(Arc<Mutex<Vec<Value>>>),
}

impl Usage {
    /// Starts the publishing task on the current arbiter.
    pub fn events(requester: Requester, failures: IntCounter) -> Self {
        let (tx, mut rx) = mpsc::channel::<Value>(10_000);
        actix_rt::spawn(async move {
            while let Some(record) = rx.recv().await {
                let mut delay = Duration::from_secs(1);
                let mut attempt = 0;
                loop {
                    match requester
                        .publish(Publication::new(USAGE_EVENT, record.clone()))
                        .await
                    {
                        Ok(_) => break,
                        Err(e) if attempt < 3 => {
                            tracing::warn!(error = %e, retry_in = ?delay, "usage record not published; retrying");
                            actix_rt::time::sleep(delay).await;
                            delay *= 2;
                            attempt += 1;
                        }
                        Err(e) => {
                            failures.inc();
                            tracing::error!(error = %e, event_id = %record["event_id"], "usage record lost after retries");
                            break;
                        }
                    }
                }
            }
        });
        Usage::Events(tx)
    }

    /// Records one usage event.
    pub fn record(
        &self,
        event_type: &str,
        run_id: &str,
        account: &str,
        data: Value,
        failures: &IntCounter,
    ) {
        let record = json!({
            "event_type": event_type,
            "event_id": format!("{run_id}:{event_type}"),
            "account_id": account,
            "occurred_at": now_rfc3339(),
            "data": data,
        });
        match self {
            Usage::None => {}
            Usage::Events(tx) => {
                if tx.try_send(record).is_err() {
                    failures.inc();
                    tracing::error!(run_id, event_type, "usage queue full; record dropped");
                }
            }
            Usage::Memory(all) => {
                let mut all = all.lock().expect("usage lock");
                if all.len() < 10_000 {
                    all.push(record);
                }
            }
        }
    }

    /// The end-of-run record for a run that ended in `state`.
    pub fn record_end(
        &self,
        run_id: &str,
        account: &str,
        state: RunState,
        result: &Value,
        failures: &IntCounter,
    ) {
        if state.ran() {
            let data = json!({
                "run_id": run_id,
                "state": state.as_str(),
                "duration_ms": result.get("duration_ms"),
                "exit_code": result.get("exit_code"),
                "profile": result.get("profile"),
                "image": result.get("image"),
                "runner_name": result.get("runner_name"),
                "meters": {"bus_container_runtime_seconds": result.get("duration_ms").and_then(Value::as_u64).map(|ms| ms.div_ceil(1000))},
            });
            self.record("container_run_finished", run_id, account, data, failures);
        } else {
            let error = result.get("error").cloned().unwrap_or(Value::Null);
            self.record(
                "container_run_failed",
                run_id,
                account,
                json!({"run_id": run_id, "state": state.as_str(), "error": error}),
                failures,
            );
        }
    }
}

/// The entitlement check before a run.
#[derive(Clone)]
pub enum Billing {
    None,
    Events(Requester),
}

impl Billing {
    /// `Ok` when the account may run containers; 402 with guidance when
    /// not; 503 when the check cannot be made.
    pub async fn check(&self, account: &str) -> Result<(), ApiError> {
        let Billing::Events(requester) = self else {
            return Ok(());
        };
        let payload = json!({"account_id": account, "scope": "container:run"});
        let out = requester
            .request(Request::new(
                BILLING_EVENT,
                payload,
                Duration::from_secs(10),
            ))
            .await
            .map_err(|e| ApiError::unavailable(format!("billing check failed: {e}")))?;
        let Some(reply) = out.replies.first() else {
            return Err(ApiError::unavailable(
                "the billing service did not answer the entitlement check",
            ));
        };
        let p = &reply.payload;
        if p.get("allowed").and_then(Value::as_bool) == Some(true) {
            return Ok(());
        }
        if p.get("allowed").is_none() {
            return Err(ApiError::new(
                ErrorType::BadGateway,
                "malformed billing reply",
            ));
        }
        let reason = p
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("billing_required");
        let command = p
            .get("command")
            .and_then(Value::as_str)
            .unwrap_or("bus billing setup");
        let message = match reason {
            "quota_exceeded" => "this account has used its container quota",
            _ => "container runs need an active billing setup for this account",
        };
        Err(ApiError::from(
            ErrorDetail::new(ErrorType::BillingRequired, format!("{message} ({reason})"))
                .with_guidance("set up billing for this account, then retry", command),
        ))
    }
}
