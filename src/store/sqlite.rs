//! The run ledger in a SQLite file (WAL mode). Calls run on tokio's
//! blocking pool so no actor thread waits on the disk.

use super::{Page, Retention, RunRecord, RunStore, StoreError};
use crate::contract::now_rfc3339;
use crate::contract::RunState;
use futures::future::BoxFuture;
use futures::FutureExt;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A SQLite-backed ledger.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    state TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    worker_id TEXT,
    profile TEXT,
    image TEXT,
    args TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_unix INTEGER NOT NULL,
    finished_at TEXT,
    result TEXT,
    usage_sent INTEGER NOT NULL DEFAULT 3
);
CREATE INDEX IF NOT EXISTS runs_owner ON runs (owner, run_id);
CREATE INDEX IF NOT EXISTS runs_instance ON runs (instance_id, state);
CREATE TABLE IF NOT EXISTS health (id INTEGER PRIMARY KEY CHECK (id = 1), at TEXT NOT NULL);
";

/// Brings a ledger file from before the usage outbox up to date (its
/// records count as sent), then indexes the records whose usage is not.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let has_usage: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('runs') WHERE name = 'usage_sent'")
        .and_then(|mut s| s.exists([]))
        .map_err(err)?;
    if !has_usage {
        conn.execute_batch("ALTER TABLE runs ADD COLUMN usage_sent INTEGER NOT NULL DEFAULT 3;")
            .map_err(err)?;
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS runs_usage_unsent ON runs (instance_id) WHERE usage_sent <> 3;",
    )
    .map_err(err)
}

impl SqliteStore {
    /// Opens (creating) the ledger file; its directory is created with
    /// mode 0700 and the file gets mode 0600.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        use std::os::unix::fs::PermissionsExt;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::create_dir_all(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
            }
        }
        let conn = Connection::open(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        migrate(&conn)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// An in-memory ledger (tests).
    pub fn memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory().map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        migrate(&conn)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let conn = self.conn.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut conn = conn.lock().map_err(|_| err("connection lock poisoned"))?;
                f(&mut conn)
            })
            .await
            .map_err(err)?
        }
        .boxed()
    }
}

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    let state: String = row.get("state")?;
    let args: String = row.get("args")?;
    let result: Option<String> = row.get("result")?;
    Ok(RunRecord {
        run_id: row.get("run_id")?,
        owner_account_id: row.get("owner")?,
        state: RunState::parse(&state).unwrap_or(RunState::Error),
        instance_id: row.get("instance_id")?,
        worker_id: row.get("worker_id")?,
        profile: row.get("profile")?,
        image: row.get("image")?,
        args: serde_json::from_str(&args).unwrap_or_default(),
        created_at: row.get("created_at")?,
        finished_at: row.get("finished_at")?,
        result: result.and_then(|r| serde_json::from_str(&r).ok()),
        usage_sent: row.get::<_, i64>("usage_sent")? as u8,
    })
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl RunStore for SqliteStore {
    fn insert(&self, r: RunRecord) -> BoxFuture<'static, Result<(), StoreError>> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO runs (run_id, owner, state, instance_id, worker_id, profile, image, args, created_at, created_unix, finished_at, result, usage_sent)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![
                    r.run_id,
                    r.owner_account_id,
                    r.state.as_str(),
                    r.instance_id,
                    r.worker_id,
                    r.profile,
                    r.image,
                    serde_json::to_string(&r.args).unwrap_or_default(),
                    r.created_at,
                    unix_now(),
                    r.finished_at,
                    r.result.map(|v| v.to_string()),
                    i64::from(r.usage_sent),
                ],
            )
            .map(|_| ())
            .map_err(err)
        })
    }

    fn set_worker(
        &self,
        run_id: &str,
        worker_id: &str,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        let (run_id, worker_id) = (run_id.to_owned(), worker_id.to_owned());
        self.call(move |c| {
            c.execute(
                "UPDATE runs SET worker_id = ?2 WHERE run_id = ?1",
                params![run_id, worker_id],
            )
            .map(|_| ())
            .map_err(err)
        })
    }

    fn complete(
        &self,
        run_id: &str,
        state: RunState,
        result: Value,
    ) -> BoxFuture<'static, Result<bool, StoreError>> {
        let run_id = run_id.to_owned();
        self.call(move |c| {
            let n = c
                .execute(
                    "UPDATE runs SET state = ?2, result = ?3, finished_at = ?4,
                        worker_id = COALESCE(worker_id, ?5)
                     WHERE run_id = ?1 AND state = 'running'",
                    params![
                        run_id,
                        state.as_str(),
                        result.to_string(),
                        now_rfc3339(),
                        result.get("worker_id").and_then(Value::as_str),
                    ],
                )
                .map_err(err)?;
            Ok(n == 1)
        })
    }

    fn get(&self, run_id: &str) -> BoxFuture<'static, Result<Option<RunRecord>, StoreError>> {
        let run_id = run_id.to_owned();
        self.call(move |c| {
            c.query_row(
                "SELECT * FROM runs WHERE run_id = ?1",
                params![run_id],
                row_to_record,
            )
            .optional()
            .map_err(err)
        })
    }

    fn list(
        &self,
        owner: &str,
        limit: usize,
        before: Option<String>,
    ) -> BoxFuture<'static, Result<Page, StoreError>> {
        let owner = owner.to_owned();
        let limit = limit.clamp(1, 1000);
        self.call(move |c| {
            let mut stmt = c
                .prepare(
                    "SELECT * FROM runs WHERE owner = ?1 AND (?2 IS NULL OR run_id < ?2)
                     ORDER BY run_id DESC LIMIT ?3",
                )
                .map_err(err)?;
            let mut items: Vec<RunRecord> = stmt
                .query_map(params![owner, before, (limit + 1) as i64], row_to_record)
                .map_err(err)?
                .collect::<Result<_, _>>()
                .map_err(err)?;
            let next = if items.len() > limit {
                items.truncate(limit);
                items.last().map(|r| r.run_id.clone())
            } else {
                None
            };
            Ok(Page { items, next })
        })
    }

    fn delete(&self, run_id: &str) -> BoxFuture<'static, Result<bool, StoreError>> {
        let run_id = run_id.to_owned();
        self.call(move |c| {
            c.execute("DELETE FROM runs WHERE run_id = ?1", params![run_id])
                .map(|n| n == 1)
                .map_err(err)
        })
    }

    fn mark_lost(&self, instance_id: &str) -> BoxFuture<'static, Result<usize, StoreError>> {
        let instance_id = instance_id.to_owned();
        self.call(move |c| {
            let lost = serde_json::json!({"error": {"type": "unavailable", "message": "the API provider stopped while the run was in flight; its outcome is unknown"}});
            c.execute(
                "UPDATE runs SET state = 'lost', finished_at = ?2, result = ?3
                 WHERE instance_id = ?1 AND state = 'running'",
                params![instance_id, now_rfc3339(), lost.to_string()],
            )
            .map_err(err)
        })
    }

    fn running(&self, instance_id: &str) -> BoxFuture<'static, Result<Vec<RunRecord>, StoreError>> {
        let instance_id = instance_id.to_owned();
        self.call(move |c| {
            let mut stmt = c
                .prepare("SELECT * FROM runs WHERE instance_id = ?1 AND state = 'running'")
                .map_err(err)?;
            let rows = stmt
                .query_map(params![instance_id], row_to_record)
                .map_err(err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(err)
        })
    }

    fn usage_sent(&self, run_id: &str, bit: u8) -> BoxFuture<'static, Result<(), StoreError>> {
        let run_id = run_id.to_owned();
        self.call(move |c| {
            c.execute(
                "UPDATE runs SET usage_sent = usage_sent | ?2 WHERE run_id = ?1",
                params![run_id, i64::from(bit)],
            )
            .map(|_| ())
            .map_err(err)
        })
    }

    fn usage_unsent(
        &self,
        instance_id: &str,
    ) -> BoxFuture<'static, Result<Vec<RunRecord>, StoreError>> {
        let instance_id = instance_id.to_owned();
        self.call(move |c| {
            let mut stmt = c
                .prepare(
                    "SELECT * FROM runs WHERE instance_id = ?1 AND usage_sent <> 3
                     AND state <> 'running' ORDER BY run_id",
                )
                .map_err(err)?;
            let rows = stmt
                .query_map(params![instance_id], row_to_record)
                .map_err(err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(err)
        })
    }

    fn probe(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        self.call(|c| {
            c.execute(
                "INSERT OR REPLACE INTO health (id, at) VALUES (1, ?1)",
                params![now_rfc3339()],
            )
            .map(|_| ())
            .map_err(err)
        })
    }

    fn prune(&self, retention: Retention) -> BoxFuture<'static, Result<usize, StoreError>> {
        self.call(move |c| {
            let cutoff = unix_now() - retention.max_age.as_secs() as i64;
            let mut removed = c
                .execute(
                    "DELETE FROM runs WHERE state != 'running' AND usage_sent = 3 AND created_unix < ?1",
                    params![cutoff],
                )
                .map_err(err)?;
            removed += c
                .execute(
                    "DELETE FROM runs WHERE state != 'running' AND usage_sent = 3 AND run_id NOT IN
                       (SELECT run_id FROM runs ORDER BY run_id DESC LIMIT ?1)",
                    params![retention.max_runs as i64],
                )
                .map_err(err)?;
            Ok(removed)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{USAGE_ENDED, USAGE_REQUESTED};
    use serde_json::json;

    fn record(id: &str, owner: &str, instance: &str) -> RunRecord {
        RunRecord {
            run_id: id.into(),
            owner_account_id: owner.into(),
            state: RunState::Running,
            instance_id: instance.into(),
            worker_id: None,
            profile: Some("codex".into()),
            image: None,
            args: vec!["x".into()],
            created_at: now_rfc3339(),
            finished_at: None,
            result: None,
            usage_sent: crate::store::USAGE_SETTLED,
        }
    }

    #[actix_rt::test]
    async fn lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/runs.sqlite");
        let s = SqliteStore::open(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        for i in 0..5 {
            s.insert(record(&format!("run_{i}"), "a", "i1"))
                .await
                .unwrap();
        }
        s.insert(record("run_9", "b", "i2")).await.unwrap();
        s.set_worker("run_1", "w1").await.unwrap();
        assert!(s
            .complete("run_1", RunState::Succeeded, json!({"exit_code": 0}))
            .await
            .unwrap());
        assert!(
            !s.complete("run_1", RunState::Failed, json!({}))
                .await
                .unwrap(),
            "completes once"
        );
        let r = s.get("run_1").await.unwrap().unwrap();
        assert_eq!(
            (r.state, r.worker_id.as_deref()),
            (RunState::Succeeded, Some("w1"))
        );
        let page = s.list("a", 2, None).await.unwrap();
        assert_eq!(
            page.items
                .iter()
                .map(|r| r.run_id.as_str())
                .collect::<Vec<_>>(),
            ["run_4", "run_3"]
        );
        let page2 = s.list("a", 2, page.next).await.unwrap();
        assert_eq!(page2.items[0].run_id, "run_2");
        assert!(s.delete("run_2").await.unwrap());
        assert!(
            !s.complete("run_2", RunState::Succeeded, json!({}))
                .await
                .unwrap(),
            "no resurrection"
        );
        assert_eq!(s.mark_lost("i1").await.unwrap(), 3);
        assert_eq!(
            s.get("run_9").await.unwrap().unwrap().state,
            RunState::Running,
            "another instance's run"
        );
        drop(s);
        let again = SqliteStore::open(&path).unwrap();
        assert_eq!(
            again.get("run_0").await.unwrap().unwrap().state,
            RunState::Lost,
            "survives reopening"
        );
        let pruned = again
            .prune(Retention {
                max_age: std::time::Duration::from_secs(3600),
                max_runs: 2,
            })
            .await
            .unwrap();
        assert!(pruned >= 2, "{pruned}");
        assert!(
            again.get("run_9").await.unwrap().is_some(),
            "running records are kept"
        );
    }

    #[actix_rt::test]
    async fn the_ledger_is_the_usage_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.sqlite");
        // A ledger from before the outbox: its records count as sent.
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE runs (run_id TEXT PRIMARY KEY, owner TEXT NOT NULL, state TEXT NOT NULL,
                 instance_id TEXT NOT NULL, worker_id TEXT, profile TEXT, image TEXT, args TEXT NOT NULL,
                 created_at TEXT NOT NULL, created_unix INTEGER NOT NULL, finished_at TEXT, result TEXT);
                 INSERT INTO runs VALUES ('run_old', 'o', 'succeeded', 'i', NULL, NULL, NULL, '[]', 't', 0, 't', '{}');",
            )
            .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.get("run_old").await.unwrap().unwrap().usage_sent, 3);
        assert!(s.usage_unsent("i").await.unwrap().is_empty());

        let unsent = |id, instance| RunRecord {
            usage_sent: 0,
            ..record(id, "o", instance)
        };
        s.insert(unsent("run_a", "i")).await.unwrap();
        s.insert(unsent("run_b", "i")).await.unwrap();
        s.insert(unsent("run_c", "other")).await.unwrap();
        s.usage_sent("run_a", USAGE_REQUESTED).await.unwrap();
        // Running records are not the outbox's (adoption resends them).
        assert!(s.usage_unsent("i").await.unwrap().is_empty());
        for id in ["run_a", "run_b", "run_c"] {
            s.complete(id, RunState::Succeeded, json!({"state": "succeeded"}))
                .await
                .unwrap();
        }
        let unsent: Vec<(String, u8)> = s
            .usage_unsent("i")
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.run_id, r.usage_sent))
            .collect();
        assert_eq!(unsent, [("run_a".into(), 1), ("run_b".into(), 0)]);
        // Retention keeps the outbox: only settled records go.
        let all = Retention {
            max_age: std::time::Duration::ZERO,
            max_runs: 0,
        };
        assert_eq!(s.prune(all).await.unwrap(), 1, "run_old only");
        assert!(s.get("run_a").await.unwrap().is_some());
        s.usage_sent("run_a", USAGE_ENDED).await.unwrap();
        s.usage_sent("run_b", USAGE_REQUESTED).await.unwrap();
        s.usage_sent("run_b", USAGE_ENDED).await.unwrap();
        s.usage_sent("run_gone", USAGE_ENDED).await.unwrap();
        assert!(s.usage_unsent("i").await.unwrap().is_empty());
        assert_eq!(s.usage_unsent("other").await.unwrap().len(), 1);
    }
}
