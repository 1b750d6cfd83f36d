//! The run ledger: one record per run, written as `running` before the
//! request is published and completed after. `RunStore` is the seam; the
//! embedded default is a SQLite file ([`sqlite::SqliteStore`]).

pub mod artifacts;
pub mod kv;
pub mod sqlite;

use crate::contract::RunState;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// One run as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub owner_account_id: String,
    pub state: RunState,
    /// The API provider instance that accepted the run.
    pub instance_id: String,
    /// The worker running it (from `run.started`).
    pub worker_id: Option<String>,
    pub profile: Option<String>,
    pub image: Option<String>,
    pub args: Vec<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
    /// The run result (or `{"error":{...}}`) once finished.
    pub result: Option<Value>,
    /// Which of the run's usage records the bus has taken
    /// ([`USAGE_REQUESTED`], [`USAGE_ENDED`]): the ledger is the usage
    /// outbox, so a provider killed before its usage went out sends it
    /// again at start-up. Records from before this field count as sent.
    #[serde(default = "usage_settled")]
    pub usage_sent: u8,
}

/// `container_run_requested` was published.
pub const USAGE_REQUESTED: u8 = 1;
/// The run's end record (`container_run_finished`/`_failed`) was published.
pub const USAGE_ENDED: u8 = 2;
/// Every usage record of a run was published.
pub const USAGE_SETTLED: u8 = USAGE_REQUESTED | USAGE_ENDED;

fn usage_settled() -> u8 {
    USAGE_SETTLED
}

/// Why a ledger call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("run ledger: {0}")]
pub struct StoreError(pub String);

/// A page of an account's runs, newest first.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub items: Vec<RunRecord>,
    /// The cursor for the next page (`before=`), when there is one.
    pub next: Option<String>,
}

/// Retention of finished records.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age: Duration,
    pub max_runs: usize,
}

/// The ledger seam.
pub trait RunStore: Send + Sync + 'static {
    /// Writes a new record (state `running`).
    fn insert(&self, record: RunRecord) -> BoxFuture<'static, Result<(), StoreError>>;
    /// Records the worker of a running run.
    fn set_worker(
        &self,
        run_id: &str,
        worker_id: &str,
    ) -> BoxFuture<'static, Result<(), StoreError>>;
    /// Completes a `running` record; `false` when there is none (deleted,
    /// or already completed): a late result never resurrects a run.
    fn complete(
        &self,
        run_id: &str,
        state: RunState,
        result: Value,
    ) -> BoxFuture<'static, Result<bool, StoreError>>;
    fn get(&self, run_id: &str) -> BoxFuture<'static, Result<Option<RunRecord>, StoreError>>;
    /// An account's runs, newest first, before the `before` run id.
    fn list(
        &self,
        owner: &str,
        limit: usize,
        before: Option<String>,
    ) -> BoxFuture<'static, Result<Page, StoreError>>;
    /// Removes a record; `false` when there was none.
    fn delete(&self, run_id: &str) -> BoxFuture<'static, Result<bool, StoreError>>;
    /// Marks this instance's `running` records `lost` (start-up after a
    /// crash); returns how many.
    fn mark_lost(&self, instance_id: &str) -> BoxFuture<'static, Result<usize, StoreError>>;
    /// This instance's `running` records (start-up: each is asked of its
    /// worker).
    fn running(&self, instance_id: &str) -> BoxFuture<'static, Result<Vec<RunRecord>, StoreError>>;
    /// Notes that the bus took one of the run's usage records (`bit`:
    /// [`USAGE_REQUESTED`] or [`USAGE_ENDED`]); no record is no error.
    fn usage_sent(&self, run_id: &str, bit: u8) -> BoxFuture<'static, Result<(), StoreError>>;
    /// This instance's finished records whose usage the bus has not all
    /// taken (start-up: sent again).
    fn usage_unsent(
        &self,
        instance_id: &str,
    ) -> BoxFuture<'static, Result<Vec<RunRecord>, StoreError>>;
    /// A write that proves the ledger can record (readiness).
    fn probe(&self) -> BoxFuture<'static, Result<(), StoreError>>;
    /// Removes finished records past the retention (never one whose usage
    /// the bus has not all taken); returns how many.
    fn prune(&self, retention: Retention) -> BoxFuture<'static, Result<usize, StoreError>>;
}

pub type SharedStore = Arc<dyn RunStore>;

/// JetStream at `url` for a store (the ledger's KV bucket, the artifacts'
/// object store), retrying the first connection.
pub async fn jetstream(
    url: &str,
    name: &str,
) -> Result<async_nats::jetstream::Context, StoreError> {
    let client = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connect(url)
        .await
        .map_err(|e| StoreError(format!("NATS {url}: {e}")))?;
    Ok(async_nats::jetstream::new(client))
}
