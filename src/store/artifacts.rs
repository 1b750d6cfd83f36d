//! Where the API provider keeps runs' artifact archives, beside the
//! ledger and as long as its record: files in the ledger's data dir
//! (`<data-dir>/artifacts/<run_id>.tar`, 0600 in a 0700 directory), or a
//! JetStream object store bucket when the ledger is NATS KV (so every
//! provider sharing the ledger serves every run's archive).

use super::StoreError;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use std::path::PathBuf;
use std::sync::Arc;

/// The object store bucket beside a KV ledger.
pub const BUCKET: &str = "bus_run_artifacts";

/// The artifact archives seam.
pub trait ArtifactStore: Send + Sync + 'static {
    /// Keeps a run's archive (replacing one kept before).
    fn put(&self, run_id: &str, tar: Vec<u8>) -> BoxFuture<'static, Result<(), StoreError>>;
    /// A run's archive, if one is kept.
    fn get(&self, run_id: &str) -> BoxFuture<'static, Result<Option<Vec<u8>>, StoreError>>;
    /// Removes a run's archive (none is no error).
    fn remove(&self, run_id: &str) -> BoxFuture<'static, Result<(), StoreError>>;
    /// The run ids with an archive kept.
    fn list(&self) -> BoxFuture<'static, Result<Vec<String>, StoreError>>;
}

pub type SharedArtifacts = Arc<dyn ArtifactStore>;

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// Archives as files in a directory.
/// A half-written archive older than this is left over from a crash.
const STALE_PART: std::time::Duration = std::time::Duration::from_secs(3600);

/// The directory of the archives beside a SQLite ledger file: `artifacts`
/// for the default `runs.sqlite`, `<file name>.artifacts` for any other,
/// so two ledgers in one directory never sweep each other's archives.
pub fn dir_beside(ledger: &std::path::Path) -> PathBuf {
    let parent = ledger.parent().map(|p| p.to_path_buf()).unwrap_or_default();
    match ledger.file_name().and_then(|n| n.to_str()) {
        Some("runs.sqlite") | None => parent.join("artifacts"),
        Some(name) => parent.join(format!("{name}.artifacts")),
    }
}

pub struct DirArtifacts {
    dir: PathBuf,
}

impl DirArtifacts {
    /// Opens (creating, 0700) `dir`.
    pub fn open(dir: PathBuf) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| err(format!("{}: {e}", dir.display())))?;
        }
        Ok(DirArtifacts { dir })
    }

    fn path(&self, run_id: &str) -> Option<PathBuf> {
        crate::contract::run::valid_run_id(run_id).then(|| self.dir.join(format!("{run_id}.tar")))
    }
}

impl ArtifactStore for DirArtifacts {
    fn put(&self, run_id: &str, tar: Vec<u8>) -> BoxFuture<'static, Result<(), StoreError>> {
        let (path, dir) = (self.path(run_id), self.dir.clone());
        async move {
            let path = path.ok_or_else(|| err("not a run id"))?;
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                use std::io::Write;
                // Written aside, then renamed: a reader never sees half.
                let tmp = dir.join(format!(".{}.{}", uuid::Uuid::new_v4().simple(), "part"));
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let written = (|| {
                    let mut file = options.open(&tmp)?;
                    file.write_all(&tar)?;
                    file.sync_all()?;
                    std::fs::rename(&tmp, &path)
                })();
                if written.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
                written
            })
            .await
            .map_err(err)?
            .map_err(err)
        }
        .boxed()
    }

    fn get(&self, run_id: &str) -> BoxFuture<'static, Result<Option<Vec<u8>>, StoreError>> {
        let path = self.path(run_id);
        async move {
            let Some(path) = path else { return Ok(None) };
            match tokio::fs::read(&path).await {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(err(e)),
            }
        }
        .boxed()
    }

    fn remove(&self, run_id: &str) -> BoxFuture<'static, Result<(), StoreError>> {
        let path = self.path(run_id);
        async move {
            let Some(path) = path else { return Ok(()) };
            match tokio::fs::remove_file(&path).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(err(e)),
                _ => Ok(()),
            }
        }
        .boxed()
    }

    fn list(&self) -> BoxFuture<'static, Result<Vec<String>, StoreError>> {
        let dir = self.dir.clone();
        async move {
            let mut out = Vec::new();
            let mut entries = tokio::fs::read_dir(&dir).await.map_err(err)?;
            while let Some(e) = entries.next_entry().await.map_err(err)? {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(id) = name.strip_suffix(".tar") {
                    out.push(id.to_owned());
                } else if name.starts_with('.') && name.ends_with(".part") {
                    // Left by a provider that died mid-write: gone once
                    // no write could still be going on.
                    let old = e
                        .metadata()
                        .await
                        .ok()
                        .and_then(|m| m.modified().ok())
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > STALE_PART);
                    if old {
                        let _ = tokio::fs::remove_file(e.path()).await;
                    }
                }
            }
            Ok(out)
        }
        .boxed()
    }
}

/// Archives in a JetStream object store bucket.
pub struct ObjectArtifacts {
    store: async_nats::jetstream::object_store::ObjectStore,
}

impl ObjectArtifacts {
    /// Connects to `url` and opens (creating) the bucket.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let js = super::jetstream(url, "bus-artifacts").await?;
        let store = match js.get_object_store(BUCKET).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(async_nats::jetstream::object_store::Config {
                    bucket: BUCKET.to_owned(),
                    description: Some("bus-containers: runs' artifact archives".into()),
                    storage: async_nats::jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| err(format!("creating the object store {BUCKET}: {e}")))?,
        };
        Ok(ObjectArtifacts { store })
    }
}

impl ArtifactStore for ObjectArtifacts {
    fn put(&self, run_id: &str, tar: Vec<u8>) -> BoxFuture<'static, Result<(), StoreError>> {
        let (store, name) = (self.store.clone(), run_id.to_owned());
        async move {
            store
                .put(name.as_str(), &mut tar.as_slice())
                .await
                .map(|_| ())
                .map_err(err)
        }
        .boxed()
    }

    fn get(&self, run_id: &str) -> BoxFuture<'static, Result<Option<Vec<u8>>, StoreError>> {
        let (store, name) = (self.store.clone(), run_id.to_owned());
        async move {
            use async_nats::jetstream::object_store::GetErrorKind;
            use tokio::io::AsyncReadExt;
            let mut object = match store.get(&name).await {
                Ok(o) => o,
                Err(e) if e.kind() == GetErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(err(e)),
            };
            let mut bytes = Vec::new();
            object.read_to_end(&mut bytes).await.map_err(err)?;
            Ok(Some(bytes))
        }
        .boxed()
    }

    fn remove(&self, run_id: &str) -> BoxFuture<'static, Result<(), StoreError>> {
        let (store, name) = (self.store.clone(), run_id.to_owned());
        async move {
            use async_nats::jetstream::object_store::DeleteErrorKind;
            match store.delete(&name).await {
                Err(e) if e.kind() != DeleteErrorKind::NotFound => Err(err(e)),
                _ => Ok(()),
            }
        }
        .boxed()
    }

    fn list(&self) -> BoxFuture<'static, Result<Vec<String>, StoreError>> {
        let store = self.store.clone();
        async move {
            let mut list = store.list().await.map_err(err)?;
            let mut out = Vec::new();
            while let Some(info) = list.next().await {
                let info = info.map_err(err)?;
                if !info.deleted {
                    out.push(info.name);
                }
            }
            Ok(out)
        }
        .boxed()
    }
}

/// Removes the archives whose run has no record any more (retention,
/// deletion that could not reach the store); returns how many.
pub async fn sweep(
    artifacts: &SharedArtifacts,
    store: &super::SharedStore,
) -> Result<usize, StoreError> {
    let mut removed = 0;
    for run_id in artifacts.list().await? {
        if store.get(&run_id).await?.is_none() {
            artifacts.remove(&run_id).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_ledgers_in_one_directory_keep_their_archives_apart() {
        let d = std::path::Path::new("/data");
        assert_eq!(dir_beside(&d.join("runs.sqlite")), d.join("artifacts"));
        assert_eq!(dir_beside(&d.join("a.db")), d.join("a.db.artifacts"));
    }

    #[tokio::test]
    async fn a_dir_keeps_archives_private_and_forgets_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirArtifacts::open(dir.path().join("artifacts")).unwrap();
        store.put("run_a", b"tar".to_vec()).await.unwrap();
        assert_eq!(store.get("run_a").await.unwrap().unwrap(), b"tar");
        assert_eq!(store.list().await.unwrap(), ["run_a"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(dir.path().join("artifacts")), 0o700);
            assert_eq!(mode(dir.path().join("artifacts/run_a.tar")), 0o600);
        }
        assert!(store.get("../x").await.unwrap().is_none());
        store.remove("run_a").await.unwrap();
        store.remove("run_a").await.unwrap();
        assert!(store.get("run_a").await.unwrap().is_none());
    }
}
