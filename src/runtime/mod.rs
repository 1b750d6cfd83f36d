//! The seam between the worker and a container engine.
//!
//! [`ContainerRuntime`] is what a `ContainerSession` needs from an engine;
//! [`docker::DockerRuntime`] implements it with bollard against Docker or
//! Podman's Docker-compatible API, [`fake::FakeRuntime`] in memory for
//! actor tests.

pub mod archive;
pub mod docker;
pub mod fake;
pub mod liveness;
pub mod spec;

pub use spec::{ContainerSpec, FileSpec, Hardening, Limits, MountSpec};

use bytes::Bytes;
use futures::future::LocalBoxFuture;
use futures::stream::LocalBoxStream;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::AsyncWrite;

/// Labels on every container a worker manages.
pub mod labels {
    /// Marks a container as ours.
    pub const MANAGED: &str = "bus.managed";
    pub const RUN_ID: &str = "bus.run_id";
    pub const OWNER: &str = "bus.owner";
    pub const WORKER_ID: &str = "bus.worker_id";
    /// A warm-pool container; the value is the pool's instance id, and
    /// the orphan reaper leaves the containers of its own live pool alone.
    pub const POOLED: &str = "bus.pooled";
    /// The profile a pooled container was made for.
    pub const PROFILE: &str = "bus.profile";
    /// What a container or network is to its run (`egress` for the
    /// proxy sidecar and the run's internal network).
    pub const ROLE: &str = "bus.role";
    /// The process that made it (`host/boot/pid/start`, see
    /// [`super::liveness`]): a reaper never removes what a live process
    /// of its worker id holds.
    pub const PROCESS: &str = "bus.process";
    /// When its run must be over (Unix seconds: start, timeout and the
    /// kill grace): past it, a container is an orphan whoever made it.
    pub const DEADLINE: &str = "bus.deadline";
}

pub use crate::contract::OutputStream;

/// A chunk of a container's output.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub stream: OutputStream,
    pub data: Bytes,
}

/// A container's attached streams.
pub struct Attached {
    pub output: LocalBoxStream<'static, Result<Chunk, RuntimeError>>,
    /// The container's stdin, when it was created with stdin open.
    pub input: Option<Pin<Box<dyn AsyncWrite>>>,
}

/// The engine's view of a finished container.
#[derive(Debug, Clone, Default)]
pub struct ExitInfo {
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
}

/// About the engine.
#[derive(Debug, Clone, Default)]
pub struct EngineInfo {
    pub version: String,
    pub api_version: String,
}

/// A container carrying our labels.
#[derive(Debug, Clone)]
pub struct Managed {
    pub id: String,
    pub run_id: String,
    /// The pool instance of a warm-pool container.
    pub pool: Option<String>,
    /// The `bus.process` label: the process that made it.
    pub process: Option<String>,
    /// The `bus.deadline` label (Unix seconds).
    pub deadline: Option<i64>,
}

impl Managed {
    /// A container or network listed with these labels.
    pub fn from_labels(id: String, label: impl Fn(&str) -> Option<String>) -> Self {
        Managed {
            id,
            run_id: label(labels::RUN_ID).unwrap_or_default(),
            pool: label(labels::POOLED),
            process: label(labels::PROCESS),
            deadline: label(labels::DEADLINE).and_then(|d| d.parse().ok()),
        }
    }
}

/// A process to start in a running container (a warm-pool run). It runs
/// with the container's user, hardening, limits and network.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecSpec {
    pub command: Vec<String>,
    /// Added to the container's environment.
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    /// Attach stdin.
    pub stdin: bool,
}

/// Why an engine call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    #[error("not found: {0}")]
    NotFound(String),
    /// A container's image is not on the engine.
    #[error("image missing: {0}")]
    ImageMissing(String),
    #[error("container engine unavailable: {0}")]
    Unavailable(String),
    #[error("container engine error: {0}")]
    Engine(String),
    /// The engine could not execute the command: `code` is what `docker
    /// run` exits with (127 not found, 126 not executable).
    #[error("{reason}")]
    NotRunnable { code: i64, reason: String },
}

/// Whether an engine's refusal to start a process means its command
/// cannot run, by `docker run`'s rule: 127 for a command not found, 126
/// for one that is not executable; with the engine's one-line reason
/// (from `exec: ` on, when it says so).
pub fn not_runnable(message: &str) -> Option<(i64, String)> {
    // Only the runtime's own words about executing the command: a mount
    // or security denial elsewhere stays a platform error.
    let exec = message.contains("exec: ") || message.contains("executable");
    let code = if message.contains("executable file not found")
        || message.contains("command that was not found")
        || (exec && message.contains("no such file or directory"))
    {
        127
    } else if exec && (message.contains("permission denied") || message.contains("is a directory"))
    {
        126
    } else {
        return None;
    };
    let line = message.lines().next().unwrap_or_default();
    let reason = match line.rfind("exec: ") {
        Some(i) => &line[i + "exec: ".len()..],
        None => line,
    };
    let reason = match reason.rfind(" (HTTP ") {
        Some(i) if reason.ends_with(')') => &reason[..i],
        _ => reason,
    };
    let reason = reason.trim_end_matches(": unknown").trim();
    Some((code, reason.to_owned()))
}

/// A path copied out of a container: the engine's tar of it as read
/// (`true` beside it: the archive went on past what was read), `None`
/// when the path does not exist.
pub type Download = Option<(Vec<u8>, bool)>;

/// What the worker needs from a container engine.
pub trait ContainerRuntime: Send + Sync + 'static {
    /// The provider name runs report (`docker`, `podman`, `fake`).
    fn provider(&self) -> &'static str;
    fn ping(&self) -> LocalBoxFuture<'static, Result<EngineInfo, RuntimeError>>;
    fn image_present(&self, image: &str) -> LocalBoxFuture<'static, Result<bool, RuntimeError>>;
    /// Pulls an image; progress lines go to `progress`.
    fn pull(
        &self,
        image: &str,
        progress: Box<dyn Fn(String)>,
    ) -> LocalBoxFuture<'static, Result<(), RuntimeError>>;
    /// Creates a container; returns its id.
    fn create(&self, spec: &ContainerSpec)
        -> LocalBoxFuture<'static, Result<String, RuntimeError>>;
    /// Attaches to output (and stdin when `stdin`); call before `start`.
    fn attach(
        &self,
        id: &str,
        stdin: bool,
    ) -> LocalBoxFuture<'static, Result<Attached, RuntimeError>>;
    fn start(&self, id: &str) -> LocalBoxFuture<'static, Result<(), RuntimeError>>;
    /// Resolves with the exit code when the container stops.
    fn wait(&self, id: &str) -> LocalBoxFuture<'static, Result<i64, RuntimeError>>;
    fn kill(&self, id: &str) -> LocalBoxFuture<'static, Result<(), RuntimeError>>;
    fn inspect(&self, id: &str) -> LocalBoxFuture<'static, Result<ExitInfo, RuntimeError>>;
    /// Force-removes a container (and its anonymous volumes).
    fn remove(&self, id: &str) -> LocalBoxFuture<'static, Result<(), RuntimeError>>;
    /// Every container labelled as managed by `worker_id`.
    fn list_managed(
        &self,
        worker_id: &str,
    ) -> LocalBoxFuture<'static, Result<Vec<Managed>, RuntimeError>>;

    /// Starts a process in a running container, attached; returns the
    /// exec id. Engines without it refuse (the worker then runs cold).
    fn exec(
        &self,
        _id: &str,
        _spec: &ExecSpec,
    ) -> LocalBoxFuture<'static, Result<(String, Attached), RuntimeError>> {
        let provider = self.provider();
        Box::pin(async move {
            Err(RuntimeError::Engine(format!(
                "the {provider} runtime cannot exec into a container"
            )))
        })
    }

    /// Creates an internal network (no route out, no host address on
    /// it); returns its id. Later calls name it by that id (names of
    /// networks need not be unique).
    fn create_network(
        &self,
        name: &str,
        _labels: &std::collections::BTreeMap<String, String>,
    ) -> LocalBoxFuture<'static, Result<String, RuntimeError>> {
        refuse(self.provider(), "create networks", name)
    }

    /// Attaches a created container to a network as well.
    fn connect_network(
        &self,
        network: &str,
        _container: &str,
    ) -> LocalBoxFuture<'static, Result<(), RuntimeError>> {
        refuse(self.provider(), "connect networks", network)
    }

    /// Removes a network (one already gone is fine).
    fn remove_network(&self, name: &str) -> LocalBoxFuture<'static, Result<(), RuntimeError>> {
        refuse(self.provider(), "remove networks", name)
    }

    /// A network's (first) subnet, `a.b.c.d/n`.
    fn network_subnet(
        &self,
        network: &str,
    ) -> LocalBoxFuture<'static, Result<Option<String>, RuntimeError>> {
        refuse(self.provider(), "inspect networks", network)
    }

    /// A running container's address on a network.
    fn network_ip(
        &self,
        container: &str,
        _network: &str,
    ) -> LocalBoxFuture<'static, Result<Option<String>, RuntimeError>> {
        refuse(self.provider(), "inspect networks", container)
    }

    /// Copies files into a created container (before start).
    fn upload(
        &self,
        container: &str,
        _files: &[FileSpec],
    ) -> LocalBoxFuture<'static, Result<(), RuntimeError>> {
        refuse(self.provider(), "copy files into containers", container)
    }

    /// A path of a container (running or stopped) as the engine archives
    /// it (tar, named from the path's base name), read up to `max` bytes:
    /// `None` when the path does not exist; `true` beside the bytes when
    /// the archive went on past `max`.
    fn download(
        &self,
        container: &str,
        _path: &str,
        _max: usize,
    ) -> LocalBoxFuture<'static, Result<Download, RuntimeError>> {
        refuse(self.provider(), "copy files out of containers", container)
    }

    /// Every network labelled as managed by `worker_id` (by id; `run_id`
    /// is its run's).
    fn list_managed_networks(
        &self,
        _worker_id: &str,
    ) -> LocalBoxFuture<'static, Result<Vec<Managed>, RuntimeError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// The exit code of a finished exec (`None` while it runs or when the
    /// engine does not know).
    fn exec_exit(
        &self,
        _exec_id: &str,
    ) -> LocalBoxFuture<'static, Result<Option<i64>, RuntimeError>> {
        Box::pin(async { Ok(None) })
    }
}

fn refuse<T: 'static>(
    provider: &'static str,
    what: &str,
    name: &str,
) -> LocalBoxFuture<'static, Result<T, RuntimeError>> {
    let message = format!("the {provider} runtime cannot {what} ({name})");
    Box::pin(async move { Err(RuntimeError::Engine(message)) })
}

/// A runtime shared by the actors of a worker.
pub type SharedRuntime = Arc<dyn ContainerRuntime>;

#[cfg(test)]
mod not_runnable_tests {
    use super::not_runnable;

    #[test]
    fn docker_and_podman_refusals_exit_as_docker_run_does() {
        let docker = r#"failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: "no-such-command": executable file not found in $PATH: unknown (HTTP 400)"#;
        assert_eq!(
            not_runnable(docker),
            Some((
                127,
                r#""no-such-command": executable file not found in $PATH"#.into()
            ))
        );
        let dir = r#"OCI runtime create failed: runc create failed: unable to start container process: exec: "/etc": permission denied: unknown"#;
        assert_eq!(
            not_runnable(dir),
            Some((126, r#""/etc": permission denied"#.into()))
        );
        let podman = "crun: executable file `nosuch` not found in $PATH: No such file or directory: OCI runtime attempted to invoke a command that was not found";
        assert_eq!(not_runnable(podman).map(|r| r.0), Some(127));
        let attach = r#"preparing container 1f for attach: runc: runc create failed: unable to start container process: exec: "x": executable file not found in $PATH: OCI runtime attempted to invoke a command that was not found (HTTP 409)"#;
        assert_eq!(
            not_runnable(attach).unwrap().1,
            r#""x": executable file not found in $PATH: OCI runtime attempted to invoke a command that was not found"#
        );
        assert_eq!(not_runnable("cannot allocate memory"), None);
        // A mount or a security denial is the platform's, not the command's.
        let mount = "error while creating mount source path '/srv/codex': mkdir /srv/codex: permission denied";
        assert_eq!(not_runnable(mount), None);
        let cgroup =
            "OCI runtime create failed: open /sys/fs/cgroup/x: no such file or directory: unknown";
        assert_eq!(not_runnable(cgroup), None);
    }
}
