//! Usage records (`bus.usage.record.request`).
//!
//! Usage is published in order by one background task (so a run's
//! `container_run_requested` always precedes its end), never on the run's
//! own path: a failed record never loses a run's result. Retry policy: a
//! failed publish is tried again after 1 s, 2 s, 4 s, … (at most every
//! 30 s) until the bus takes it, each failure logged and counted
//! (`bus_api_usage_failures_total`), so an outage delays usage but loses
//! none; the queue holds 10,000 records (a record that finds it full is
//! dropped and counted). `event_id` is stable per run and type, so a
//! retried record is not counted twice.
//!
//! The ledger is the outbox: each record a run gets is marked in its
//! ledger record once the bus has taken it, and at start-up a provider
//! sends again whatever the last process of its instance had not got out
//! ([`Usage::resend`]) — a SIGKILL between a run's end and its usage
//! loses no usage.

use crate::actors::bus::requester::Requester;
use crate::contract::{encode, now_rfc3339, ErrorDetail, Publication, Reply, RunResult, RunState};
use crate::store::{RunRecord, SharedStore, USAGE_ENDED, USAGE_REQUESTED, USAGE_SETTLED};
use prometheus::IntCounter;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

pub const USAGE_EVENT: &str = "bus.usage.record.request";

/// The meters of a finished run.
#[derive(Debug, Clone, Serialize)]
pub struct Meters {
    pub bus_container_runtime_seconds: Option<u64>,
}

/// What a usage record says about its run.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum UsageData {
    Requested {
        run_id: String,
        profile: Option<String>,
        image: Option<String>,
    },
    Finished {
        run_id: String,
        state: RunState,
        duration_ms: u64,
        exit_code: Option<i64>,
        profile: Option<String>,
        image: String,
        runner_name: String,
        meters: Meters,
    },
    Failed {
        run_id: String,
        state: RunState,
        error: Option<ErrorDetail>,
    },
}

/// One usage record.
#[derive(Debug, Clone, Serialize)]
pub struct UsageRecord {
    pub event_type: &'static str,
    pub event_id: String,
    pub account_id: String,
    pub occurred_at: String,
    pub data: UsageData,
    /// Its mark in the ledger once published.
    #[serde(skip)]
    pub outbox_bit: u8,
}

impl UsageData {
    fn run_id(&self) -> &str {
        match self {
            UsageData::Requested { run_id, .. }
            | UsageData::Finished { run_id, .. }
            | UsageData::Failed { run_id, .. } => run_id,
        }
    }
}

/// Where usage records go.
#[derive(Clone)]
pub enum Usage {
    None,
    /// Published on the bus by an ordered background task.
    Events(mpsc::Sender<UsageRecord>),
    /// Kept in memory (development, tests), at most 10,000.
    Memory(Arc<Mutex<Vec<UsageRecord>>>),
}

impl Usage {
    /// Starts the publishing task on the current arbiter; each record the
    /// bus takes (or refuses for good) is marked in `ledger`.
    pub fn events(requester: Requester, failures: IntCounter, ledger: SharedStore) -> Self {
        let (tx, mut rx) = mpsc::channel::<UsageRecord>(10_000);
        actix_rt::spawn(async move {
            while let Some(record) = rx.recv().await {
                let mut delay = Duration::from_secs(1);
                loop {
                    match requester
                        .publish(Publication::new(USAGE_EVENT, encode(&record)))
                        .await
                    {
                        Ok(_) => break,
                        Err(e) if e.is_fatal() => {
                            failures.inc();
                            tracing::error!(error = %e, event_id = %record.event_id, "usage record refused by the bus; dropped");
                            break;
                        }
                        Err(e) => {
                            failures.inc();
                            tracing::warn!(error = %e, event_id = %record.event_id, retry_in = ?delay, "usage record not published; retrying");
                            actix_rt::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(30));
                        }
                    }
                }
                let run_id = record.data.run_id();
                if let Err(e) = ledger.usage_sent(run_id, record.outbox_bit).await {
                    // Unmarked, it is sent again at the next start-up
                    // (and counted once, by its event_id).
                    tracing::warn!(error = %e, run_id, "usage record not marked sent in the ledger");
                }
            }
        });
        Usage::Events(tx)
    }

    fn record(
        &self,
        event_type: &'static str,
        account: &str,
        data: UsageData,
        failures: &IntCounter,
    ) {
        let run_id = data.run_id().to_owned();
        // The queue is ordered: once a run's end is out, its `requested`
        // went before it (or was dropped for good): the run is settled.
        let outbox_bit = if matches!(data, UsageData::Requested { .. }) {
            USAGE_REQUESTED
        } else {
            USAGE_SETTLED
        };
        let record = UsageRecord {
            event_type,
            event_id: format!("{run_id}:{event_type}"),
            account_id: account.to_owned(),
            occurred_at: now_rfc3339(),
            data,
            outbox_bit,
        };
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

    /// A run was accepted.
    pub fn requested(
        &self,
        run_id: &str,
        account: &str,
        profile: Option<String>,
        image: Option<String>,
        failures: &IntCounter,
    ) {
        let data = UsageData::Requested {
            run_id: run_id.to_owned(),
            profile,
            image,
        };
        self.record("container_run_requested", account, data, failures);
    }

    /// The end-of-run record for a run that ended in `state`.
    pub fn ended(
        &self,
        run_id: &str,
        account: &str,
        state: RunState,
        result: &Reply<RunResult>,
        failures: &IntCounter,
    ) {
        match result {
            Reply::Ok(r) if state.ran() => {
                let data = UsageData::Finished {
                    run_id: run_id.to_owned(),
                    state,
                    duration_ms: r.duration_ms,
                    exit_code: r.exit_code,
                    profile: r.profile.clone(),
                    image: r.image.clone(),
                    runner_name: r.runner_name.clone(),
                    meters: Meters {
                        bus_container_runtime_seconds: Some(r.duration_ms.div_ceil(1000)),
                    },
                };
                self.record("container_run_finished", account, data, failures);
            }
            other => {
                let data = UsageData::Failed {
                    run_id: run_id.to_owned(),
                    state,
                    error: other.as_error().cloned(),
                };
                self.record("container_run_failed", account, data, failures);
            }
        }
    }

    /// Waits until the queue has room for `n` more records (a start-up
    /// backlog is fed at the pace the bus takes it, never dropped).
    pub async fn room(&self, n: usize) {
        if let Usage::Events(tx) = self {
            while tx.capacity() < n && !tx.is_closed() {
                actix_rt::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Whether the ledger is this usage's outbox (records start unsent).
    pub fn is_outbox(&self) -> bool {
        matches!(self, Usage::Events(_))
    }

    /// Sends again what the ledger says the bus never took of a record's
    /// usage (start-up): `requested` first, then the end of a finished run
    /// (a `requested` lost behind an end that went out is not sent after
    /// it).
    pub fn resend(&self, r: &RunRecord, failures: &IntCounter) {
        if r.usage_sent & (USAGE_REQUESTED | USAGE_ENDED) == 0 {
            self.requested(
                &r.run_id,
                &r.owner_account_id,
                r.profile.clone(),
                r.image.clone(),
                failures,
            );
        }
        if r.state == RunState::Running || r.usage_sent & USAGE_ENDED != 0 {
            return;
        }
        let reply = r
            .result
            .as_ref()
            .and_then(|v| Reply::<RunResult>::decode(v).ok())
            .unwrap_or_else(|| {
                Reply::error(
                    crate::contract::ErrorType::Unavailable,
                    "the run's result was not kept",
                )
            });
        self.ended(&r.run_id, &r.owner_account_id, r.state, &reply, failures);
    }
}
