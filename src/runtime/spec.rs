//! What a container is made of: image, command, environment, limits,
//! hardening, network and mounts.

use std::collections::BTreeMap;

/// Resource limits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub memory_bytes: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub pids: Option<i64>,
}

/// Security settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Hardening {
    pub drop_all_capabilities: bool,
    pub no_new_privileges: bool,
    pub read_only_root: bool,
    /// tmpfs mounts: path → options (`rw,nosuid,nodev,size=64m`).
    pub tmpfs: BTreeMap<String, String>,
    /// `uid[:gid]` or a user name; `None` keeps the image's user.
    pub user: Option<String>,
}

impl Default for Hardening {
    fn default() -> Self {
        Hardening {
            drop_all_capabilities: true,
            no_new_privileges: true,
            read_only_root: true,
            tmpfs: BTreeMap::from([("/tmp".to_owned(), "rw,nosuid,nodev,size=64m".to_owned())]),
            user: None,
        }
    }
}

/// A bind mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

/// Everything needed to create one run's container.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerSpec {
    pub name: Option<String>,
    pub image: String,
    /// Replaces the image's CMD when not empty.
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Keep stdin open (interactive runs and runs fed `stdin`).
    pub stdin: bool,
    pub limits: Limits,
    pub hardening: Hardening,
    /// `none`, `bridge`, or a network name.
    pub network: String,
    pub mounts: Vec<MountSpec>,
    /// Replaces the image's ENTRYPOINT when set.
    pub entrypoint: Option<Vec<String>>,
    /// DNS servers the engine's resolver forwards to (a sandbox points
    /// them where nothing answers, so names never leave the run).
    pub dns: Vec<String>,
    /// Anonymous volumes (removed with the container), for files copied
    /// in before start under a read-only root.
    pub volumes: Vec<String>,
}

/// A file copied into a created container.
#[derive(Clone, PartialEq, Eq)]
pub struct FileSpec {
    /// Absolute path in the container.
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
    /// The existing directory (a volume under a read-only root) it is
    /// extracted under, with the directories between made; its own
    /// directory when `None`.
    pub root: Option<String>,
    /// Owner (uid, gid) of the file and the directories made for it
    /// (the run's numeric user); root when `None`.
    pub owner: Option<(u64, u64)>,
}

impl std::fmt::Debug for FileSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSpec")
            .field("path", &self.path)
            .field("bytes", &self.data.len())
            .field("mode", &format_args!("{:o}", self.mode))
            .finish()
    }
}
