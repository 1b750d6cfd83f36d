//! The containers API provider: validation, ownership, billing and usage
//! order, ledger writes, deadlines, and how replies become HTTP answers.
//! The HTTP layer (`http::containers`) only authenticates and parses.

pub mod backend;
pub mod body;
pub mod usage;

use crate::actors::live_runs::{self, LiveRuns};
use crate::contract::RunState;
use crate::contract::{now_rfc3339, ErrorDetail, ErrorType};
use crate::contract::{reply_error, Kind, RUN_GRACE};
use crate::http::ApiError;
use crate::metrics::Metrics;
use crate::store::{RunRecord, SharedStore};
use actix::Addr;
use backend::Backend;
use body::CreateRun;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use usage::{Billing, Usage};

/// Settings of a provider.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub instance_id: String,
    /// Cap of a run's deadline.
    pub request_timeout: Duration,
    /// Deadline of non-run requests.
    pub default_timeout: Duration,
    /// Concurrent runs per account on this instance (0: no limit).
    pub max_concurrent_runs: usize,
    pub output_cap: usize,
}

/// Counters of the provider.
#[derive(Clone)]
pub struct ProviderMetrics {
    pub runs: IntCounterVec,
    pub in_flight: IntGauge,
    pub usage_failures: IntCounter,
    pub late_results: IntCounter,
}

impl ProviderMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let runs = IntCounterVec::new(
            Opts::new("bus_api_runs_total", "Runs that ended, by state."),
            &["state"],
        )
        .expect("valid");
        let _ = metrics.registry().register(Box::new(runs.clone()));
        ProviderMetrics {
            runs,
            in_flight: metrics.gauge("bus_api_runs_in_flight", "Runs accepted and not yet ended."),
            usage_failures: metrics.counter(
                "bus_api_usage_failures_total",
                "Usage records that could not be published.",
            ),
            late_results: metrics.counter(
                "bus_api_late_results_total",
                "Results that came after the run was deleted or recorded lost.",
            ),
        }
    }
}

/// What creating a run answered.
pub enum Created {
    /// The run ended: its result.
    Done(Value),
    /// `"wait": false`: accepted, still running.
    Accepted(String),
}

/// The provider; cheap to clone, shared by every HTTP worker.
#[derive(Clone)]
pub struct Provider {
    pub backend: Arc<dyn Backend>,
    pub store: SharedStore,
    pub live: Addr<LiveRuns>,
    pub usage: Usage,
    pub billing: Billing,
    pub config: ProviderConfig,
    pub metrics: ProviderMetrics,
}

/// Maps an error reply to the HTTP error the REST contract gives.
pub fn reply_to_api(e: ErrorDetail) -> ApiError {
    let kind = match e.kind {
        ErrorType::Timeout => ErrorType::Unavailable,
        ErrorType::BackendError | ErrorType::MalformedResponse => ErrorType::BadGateway,
        other => other,
    };
    ApiError::from(ErrorDetail { kind, ..e })
}

/// A run's HTTP answer from its stored result.
pub fn answer_of(result: &Value) -> Result<Value, ApiError> {
    match reply_error(result) {
        Some(e) => Err(reply_to_api(e)),
        None => Ok(result.clone()),
    }
}

/// Run ids are `[A-Za-z0-9_-]{1,128}`; anything else names no run.
pub fn valid_run_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Provider {
    fn run_deadline(&self, timeout_seconds: Option<i64>) -> Duration {
        match timeout_seconds {
            Some(t) if t > 0 => {
                (Duration::from_secs(t as u64) + RUN_GRACE).min(self.config.request_timeout)
            }
            _ => self.config.request_timeout,
        }
    }

    /// A record of `owner`'s, or 404/403.
    pub async fn owned(&self, run_id: &str, owner: &str) -> Result<RunRecord, ApiError> {
        if !valid_run_id(run_id) {
            return Err(ApiError::not_found(format!("no run {run_id}")));
        }
        let record = self
            .store
            .get(run_id)
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?
            .ok_or_else(|| ApiError::not_found(format!("no run {run_id}")))?;
        if record.owner_account_id != owner {
            return Err(ApiError::forbidden(format!(
                "run {run_id} belongs to another account"
            )));
        }
        Ok(record)
    }

    /// `POST /runs`: billing check → record `running` → `container_run_requested`
    /// → backend run → record the end → `container_run_finished|failed`.
    pub async fn create(&self, owner: &str, body: CreateRun) -> Result<Created, ApiError> {
        body.validate()?;
        self.billing.check(owner).await?;
        let run_id = format!("run_{}", uuid::Uuid::now_v7().simple());
        let limit = self.config.max_concurrent_runs;
        let begun = self
            .live
            .send(live_runs::Begin {
                run_id: run_id.clone(),
                owner: owner.to_owned(),
                limit,
            })
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        if let Err(n) = begun {
            return Err(ApiError::new(
                ErrorType::RateLimited,
                format!("this account already has {n} runs in flight (limit {limit}); retry when one ends"),
            )
            .with_retry_after(1));
        }
        let record = RunRecord {
            run_id: run_id.clone(),
            owner_account_id: owner.to_owned(),
            state: RunState::Running,
            instance_id: self.config.instance_id.clone(),
            worker_id: None,
            profile: body.profile.clone(),
            image: body.image.clone(),
            args: body.words(),
            created_at: now_rfc3339(),
            finished_at: None,
            result: None,
        };
        if let Err(e) = self.store.insert(record).await {
            self.live.do_send(live_runs::End {
                run_id,
                result: Value::Null,
            });
            return Err(ApiError::unavailable(e.to_string()));
        }
        self.metrics.in_flight.inc();
        self.usage.record(
            "container_run_requested",
            &run_id,
            owner,
            json!({"run_id": run_id, "profile": body.profile, "image": body.image}),
            &self.metrics.usage_failures,
        );
        let payload = body.payload(&run_id, owner);
        let deadline = self.run_deadline(body.timeout_seconds);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let this = self.clone();
        let (rid, who) = (run_id.clone(), owner.to_owned());
        // The run goes on whatever happens to the HTTP request.
        actix_rt::spawn(async move {
            let answer = this.drive(&rid, &who, payload, deadline).await;
            let _ = tx.send(answer);
        });
        if body.wait == Some(false) {
            return Ok(Created::Accepted(run_id));
        }
        match rx.await {
            Ok(answer) => answer.map(Created::Done),
            Err(_) => Err(ApiError::unavailable(
                "the run's task ended without an answer",
            )),
        }
    }

    async fn drive(
        &self,
        run_id: &str,
        owner: &str,
        payload: Value,
        deadline: Duration,
    ) -> Result<Value, ApiError> {
        let reply = self.backend.call(Kind::Run, payload, deadline).await;
        let (state, result) = match reply {
            Ok(v) => match reply_error(&v) {
                None => {
                    let state = v
                        .get("state")
                        .and_then(Value::as_str)
                        .and_then(RunState::parse)
                        .unwrap_or(RunState::Failed);
                    if state == RunState::Lost {
                        // A redelivered request found its worker gone.
                        let why = v
                            .get("reason")
                            .and_then(Value::as_str)
                            .unwrap_or("the run's worker stopped mid-run; outcome unknown");
                        let e = ErrorDetail::new(ErrorType::Unavailable, why);
                        tracing::warn!(run_id, reason = why, "run recorded lost");
                        (state, json!({"error": e, "worker_id": v.get("worker_id")}))
                    } else {
                        (state, v)
                    }
                }
                Some(e) if e.kind == ErrorType::Timeout => self.lost(run_id, owner).await,
                Some(e) => (RunState::Error, json!({ "error": e })),
            },
            Err(e) if e.kind == ErrorType::Timeout => self.lost(run_id, owner).await,
            Err(e) => (RunState::Error, json!({ "error": e })),
        };
        match self.store.complete(run_id, state, result.clone()).await {
            Ok(true) => {}
            Ok(false) => {
                self.metrics.late_results.inc();
                tracing::info!(run_id, state = %state, "result for a deleted run not recorded");
            }
            Err(e) => tracing::error!(run_id, error = %e, "could not record the run's result"),
        }
        self.metrics.runs.with_label_values(&[state.as_str()]).inc();
        self.metrics.in_flight.dec();
        self.usage
            .record_end(run_id, owner, state, &result, &self.metrics.usage_failures);
        self.live.do_send(live_runs::End {
            run_id: run_id.to_owned(),
            result: result.clone(),
        });
        answer_of(&result)
    }

    /// The deadline passed: cancel the run on its worker, record it lost.
    async fn lost(&self, run_id: &str, owner: &str) -> (RunState, Value) {
        let worker = self
            .live
            .send(live_runs::WorkerOf(run_id.to_owned()))
            .await
            .ok()
            .flatten()
            .flatten();
        if let Some(worker_id) = &worker {
            let cancel =
                json!({"run_id": run_id, "owner_account_id": owner, "worker_id": worker_id});
            let _ = self
                .backend
                .call(Kind::Delete, cancel, self.config.default_timeout)
                .await;
        }
        tracing::warn!(run_id, worker = ?worker, "no result before the deadline; the run is recorded lost");
        let e = ErrorDetail::new(
            ErrorType::Unavailable,
            "no result before the run's deadline; it was cancelled on its worker and recorded lost",
        );
        (RunState::Lost, json!({ "error": e }))
    }

    /// The worker of a run: as `run.started` told this instance, else as
    /// the ledger has it.
    async fn worker_of(&self, record: &RunRecord) -> Option<String> {
        match self
            .live
            .send(live_runs::WorkerOf(record.run_id.clone()))
            .await
            .ok()
            .flatten()
        {
            Some(w) => w,
            None => record.worker_id.clone(),
        }
    }

    /// `DELETE /runs/{id}`.
    pub async fn delete(&self, run_id: &str, owner: &str) -> Result<Value, ApiError> {
        let record = self.owned(run_id, owner).await?;
        if record.state == RunState::Running {
            let worker = self.worker_of(&record).await;
            let mut cancel = json!({"run_id": run_id, "owner_account_id": owner});
            if let Some(w) = &worker {
                cancel["worker_id"] = json!(w);
            }
            match self
                .backend
                .call(Kind::Delete, cancel, self.config.default_timeout)
                .await
            {
                Ok(v) => match reply_error(&v) {
                    None => {}
                    Some(e) if e.kind == ErrorType::NotFound => {}
                    Some(e) => return Err(reply_to_api(e)),
                },
                Err(e) if e.kind == ErrorType::Timeout && worker.is_none() => {}
                Err(e) => return Err(reply_to_api(e)),
            }
        }
        self.store
            .delete(run_id)
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        Ok(json!({"deleted": true, "run_id": run_id, "owner_account_id": owner}))
    }

    /// `POST /runs/{id}/input`.
    pub async fn input(
        &self,
        run_id: &str,
        owner: &str,
        body: body::Input,
    ) -> Result<Value, ApiError> {
        let record = self.owned(run_id, owner).await?;
        if record.state != RunState::Running {
            return Err(ApiError::new(
                ErrorType::Conflict,
                format!("run {run_id} has ended ({})", record.state),
            ));
        }
        let worker = self.worker_of(&record).await;
        let Some(worker) = worker else {
            return Err(
                ApiError::unavailable(format!("run {run_id} has not started yet"))
                    .with_retry_after(1),
            );
        };
        let payload = json!({"run_id": run_id, "owner_account_id": owner, "worker_id": worker, "data": body.data, "eof": body.eof});
        let reply = self
            .backend
            .call(Kind::Input, payload, self.config.default_timeout)
            .await
            .map_err(reply_to_api)?;
        let mut v = answer_of(&reply)?;
        if let Some(o) = v.as_object_mut() {
            o.remove("worker_id");
        }
        Ok(v)
    }

    /// A runner request (status, start, delete).
    pub async fn runner(&self, kind: Kind) -> Result<Value, ApiError> {
        let reply = self
            .backend
            .call(kind, json!({}), self.config.default_timeout)
            .await
            .map_err(reply_to_api)?;
        let mut v = answer_of(&reply)?;
        if let Some(o) = v.as_object_mut() {
            o.remove("worker_id");
        }
        Ok(v)
    }

    /// `GET /status`: the runner item, then the caller's live runs.
    pub async fn status(&self, owner: &str) -> Result<Value, ApiError> {
        let runner = match self.runner(Kind::RunnerStatus).await {
            Ok(v) => {
                let s = &v["status"];
                let mut details = s.get("details").cloned().unwrap_or_else(|| json!({}));
                if !details.is_object() {
                    details = json!({});
                }
                details["provider"] = s
                    .get("provider")
                    .cloned()
                    .unwrap_or(json!(self.backend.name()));
                json!({"id": "runner", "state": s.get("state").cloned().unwrap_or(json!("unavailable")), "details": details})
            }
            Err(e) => {
                json!({"id": "runner", "state": "unavailable", "details": {"provider": self.backend.name(), "error": e.detail.message}})
            }
        };
        let mut items = vec![runner];
        let reply = self
            .backend
            .call(
                Kind::Status,
                json!({"owner_account_id": owner}),
                self.config.default_timeout,
            )
            .await
            .map_err(reply_to_api)?;
        let listed = answer_of(&reply)?;
        for item in listed
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            let details = item.get("details").cloned().unwrap_or_else(|| json!({}));
            items.push(json!({
                "id": item.get("id").cloned().unwrap_or_default(),
                "state": item.get("state").cloned().unwrap_or(json!("running")),
                "owner_account_id": owner,
                "details": {"worker_id": details.get("worker_id"), "started_at": details.get("started_at")},
            }));
        }
        Ok(json!({ "items": items }))
    }

    /// Waits for a run's end, up to `timeout`; `Ok(None)` if still running.
    pub async fn wait(
        &self,
        run_id: &str,
        owner: &str,
        timeout: Duration,
    ) -> Result<Option<Value>, ApiError> {
        let record = self.owned(run_id, owner).await?;
        if record.state != RunState::Running {
            return Ok(record.result);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        if let Ok(Some(rx)) = self.live.send(live_runs::Await(run_id.to_owned())).await {
            return Ok(tokio::time::timeout_at(deadline, rx)
                .await
                .ok()
                .and_then(Result::ok));
        }
        // Running elsewhere (another instance): watch the ledger.
        while tokio::time::Instant::now() < deadline {
            actix_rt::time::sleep(Duration::from_millis(250)).await;
            match self.store.get(run_id).await {
                Ok(Some(r)) if r.state != RunState::Running => return Ok(r.result),
                Ok(None) => return Err(ApiError::not_found(format!("no run {run_id}"))),
                _ => {}
            }
        }
        Ok(None)
    }
}
