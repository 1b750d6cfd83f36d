//! The run ledger in a JetStream key-value bucket, so several API
//! providers (behind one nginx) share one ledger. One key per run,
//! `run.<run_id>`, holding the record as JSON; state changes are
//! compare-and-set on the key's revision, so a late result never
//! overwrites a deletion or another completion.
//!
//! Listing scans the bucket's keys (bounded by retention); NATS's default
//! 1 MB message limit bounds a record, so raise `max_payload` on the
//! server when runs keep large outputs.

use super::{Page, Retention, RunRecord, RunStore, StoreError, USAGE_SETTLED};
use crate::contract::now_rfc3339;
use crate::contract::RunState;
use async_nats::jetstream::kv;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde_json::Value;
use std::time::Duration;

/// The default bucket.
pub const BUCKET: &str = "bus_runs";

/// A KV-backed ledger.
#[derive(Clone)]
pub struct KvStore {
    kv: kv::Store,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

fn key(run_id: &str) -> String {
    format!("run.{run_id}")
}

impl KvStore {
    /// Connects to `url` and opens (creating) `bucket`.
    pub async fn open(url: &str, bucket: &str) -> Result<Self, StoreError> {
        let js = super::jetstream(url, "bus-ledger").await?;
        let kv = crate::broker::work_queue::key_value(&js, bucket, Duration::ZERO)
            .await
            .map_err(err)?;
        Ok(KvStore { kv })
    }

    async fn load(&self, run_id: &str) -> Result<Option<(RunRecord, u64)>, StoreError> {
        let Some(entry) = self.kv.entry(key(run_id)).await.map_err(err)? else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let record: RunRecord = serde_json::from_slice(&entry.value).map_err(err)?;
        Ok(Some((record, entry.revision)))
    }

    /// Applies `change` to a record with compare-and-set, retrying on a
    /// concurrent write; `Ok(false)` when there is no record or `change`
    /// declines.
    async fn modify(
        &self,
        run_id: &str,
        change: impl Fn(&mut RunRecord) -> bool,
    ) -> Result<bool, StoreError> {
        for _ in 0..16 {
            let Some((mut record, revision)) = self.load(run_id).await? else {
                return Ok(false);
            };
            if !change(&mut record) {
                return Ok(false);
            }
            let value = serde_json::to_vec(&record).map_err(err)?;
            match self.kv.update(key(run_id), value.into(), revision).await {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(err(e)),
            }
        }
        Err(err(format!("run {run_id}: too many concurrent updates")))
    }

    /// Every record in the bucket.
    async fn all(&self) -> Result<Vec<RunRecord>, StoreError> {
        let mut keys = self.kv.keys().await.map_err(err)?;
        let mut out = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(err)?;
            if let Some(run_id) = k.strip_prefix("run.") {
                if let Some((r, _)) = self.load(run_id).await? {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }
}

impl RunStore for KvStore {
    fn insert(&self, record: RunRecord) -> BoxFuture<'static, Result<(), StoreError>> {
        let this = self.clone();
        async move {
            let value = serde_json::to_vec(&record).map_err(err)?;
            this.kv
                .create(key(&record.run_id), value.into())
                .await
                .map_err(err)?;
            Ok(())
        }
        .boxed()
    }

    fn set_worker(
        &self,
        run_id: &str,
        worker_id: &str,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        let (this, run_id, worker) = (self.clone(), run_id.to_owned(), worker_id.to_owned());
        async move {
            this.modify(&run_id, |r| {
                r.worker_id = Some(worker.clone());
                true
            })
            .await
            .map(|_| ())
        }
        .boxed()
    }

    fn complete(
        &self,
        run_id: &str,
        state: RunState,
        result: Value,
    ) -> BoxFuture<'static, Result<bool, StoreError>> {
        let (this, run_id) = (self.clone(), run_id.to_owned());
        async move {
            let now = now_rfc3339();
            this.modify(&run_id, |r| {
                if r.state != RunState::Running {
                    return false;
                }
                r.state = state;
                r.finished_at = Some(now.clone());
                if r.worker_id.is_none() {
                    r.worker_id = result
                        .get("worker_id")
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                }
                r.result = Some(result.clone());
                true
            })
            .await
        }
        .boxed()
    }

    fn get(&self, run_id: &str) -> BoxFuture<'static, Result<Option<RunRecord>, StoreError>> {
        let (this, run_id) = (self.clone(), run_id.to_owned());
        async move { Ok(this.load(&run_id).await?.map(|(r, _)| r)) }.boxed()
    }

    fn list(
        &self,
        owner: &str,
        limit: usize,
        before: Option<String>,
    ) -> BoxFuture<'static, Result<Page, StoreError>> {
        let (this, owner) = (self.clone(), owner.to_owned());
        let limit = limit.clamp(1, 1000);
        async move {
            let mut mine: Vec<RunRecord> = this
                .all()
                .await?
                .into_iter()
                .filter(|r| {
                    r.owner_account_id == owner
                        && before.as_deref().is_none_or(|b| r.run_id.as_str() < b)
                })
                .collect();
            mine.sort_by(|a, b| b.run_id.cmp(&a.run_id));
            let next = (mine.len() > limit).then(|| mine[limit - 1].run_id.clone());
            mine.truncate(limit);
            Ok(Page { items: mine, next })
        }
        .boxed()
    }

    fn delete(&self, run_id: &str) -> BoxFuture<'static, Result<bool, StoreError>> {
        let (this, run_id) = (self.clone(), run_id.to_owned());
        async move {
            if this.load(&run_id).await?.is_none() {
                return Ok(false);
            }
            this.kv.purge(key(&run_id)).await.map_err(err)?;
            Ok(true)
        }
        .boxed()
    }

    fn mark_lost(&self, instance_id: &str) -> BoxFuture<'static, Result<usize, StoreError>> {
        let (this, instance) = (self.clone(), instance_id.to_owned());
        async move {
            let lost = serde_json::json!({"error": {"type": "unavailable", "message": "the API provider stopped while the run was in flight; its outcome is unknown"}});
            let mut n = 0;
            for r in this.all().await? {
                if r.instance_id == instance && r.state == RunState::Running {
                    let now = now_rfc3339();
                    let changed = this
                        .modify(&r.run_id, |rec| {
                            if rec.state != RunState::Running {
                                return false;
                            }
                            rec.state = RunState::Lost;
                            rec.finished_at = Some(now.clone());
                            rec.result = Some(lost.clone());
                            true
                        })
                        .await?;
                    n += usize::from(changed);
                }
            }
            Ok(n)
        }
        .boxed()
    }

    fn running(&self, instance_id: &str) -> BoxFuture<'static, Result<Vec<RunRecord>, StoreError>> {
        let (this, instance) = (self.clone(), instance_id.to_owned());
        async move {
            Ok(this
                .all()
                .await?
                .into_iter()
                .filter(|r| r.instance_id == instance && r.state == RunState::Running)
                .collect())
        }
        .boxed()
    }

    fn usage_sent(&self, run_id: &str, bit: u8) -> BoxFuture<'static, Result<(), StoreError>> {
        let (this, run_id) = (self.clone(), run_id.to_owned());
        async move {
            this.modify(&run_id, |r| {
                let before = r.usage_sent;
                r.usage_sent |= bit;
                r.usage_sent != before
            })
            .await
            .map(|_| ())
        }
        .boxed()
    }

    fn usage_unsent(
        &self,
        instance_id: &str,
    ) -> BoxFuture<'static, Result<Vec<RunRecord>, StoreError>> {
        let (this, instance) = (self.clone(), instance_id.to_owned());
        async move {
            Ok(this
                .all()
                .await?
                .into_iter()
                .filter(|r| {
                    r.instance_id == instance
                        && r.state != RunState::Running
                        && r.usage_sent != USAGE_SETTLED
                })
                .collect())
        }
        .boxed()
    }

    fn probe(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        let this = self.clone();
        async move {
            this.kv
                .put("health", now_rfc3339().into_bytes().into())
                .await
                .map(|_| ())
                .map_err(err)
        }
        .boxed()
    }

    fn prune(&self, retention: Retention) -> BoxFuture<'static, Result<usize, StoreError>> {
        let this = self.clone();
        async move {
            let mut all = this.all().await?;
            all.sort_by(|a, b| b.run_id.cmp(&a.run_id));
            let cutoff =
                time::OffsetDateTime::now_utc() - Duration::from_secs(retention.max_age.as_secs());
            let mut removed = 0;
            for (i, r) in all.iter().enumerate() {
                // A record whose usage the bus has not all taken is the
                // usage outbox: kept until it has.
                if r.state == RunState::Running || r.usage_sent != USAGE_SETTLED {
                    continue;
                }
                let old = time::OffsetDateTime::parse(
                    &r.created_at,
                    &time::format_description::well_known::Rfc3339,
                )
                .map(|t| t < cutoff)
                .unwrap_or(false);
                if old || i >= retention.max_runs {
                    this.kv.purge(key(&r.run_id)).await.map_err(err)?;
                    removed += 1;
                }
            }
            Ok(removed)
        }
        .boxed()
    }
}
