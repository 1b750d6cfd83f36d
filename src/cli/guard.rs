//! `bus integration guard` (started by every worker, not by hand): a
//! worker's guardian. It is its own process in its own process group, so
//! it outlives its worker however that worker ends; when the worker is
//! gone (its pid exited, SIGKILL included) it removes every container and
//! network that worker process made — their runs are lost with it — and
//! exits. So no run's container outlives its run, even when its worker
//! never comes back. A worker that stops gracefully has removed them
//! already; the guardian then finds nothing and exits too.

use super::failure::Failure;
use crate::runtime::docker::DockerRuntime;
use crate::runtime::liveness::{Liveness, ProcessMark};
use crate::runtime::{ContainerRuntime, Managed};
use clap::Args;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct GuardArgs {
    /// The worker's id.
    #[arg(long)]
    pub worker_id: String,
    /// The worker process's mark (`host/boot/pid/start`).
    #[arg(long)]
    pub process: String,
    /// `docker` or `podman`.
    #[arg(long, default_value = "docker")]
    pub provider: String,
    /// The engine (as `DOCKER_HOST`).
    #[arg(long)]
    pub engine: String,
}

fn made_by(mark: &str) -> impl Fn(&Managed) -> bool + '_ {
    move |m| m.process.as_deref() == Some(mark)
}

pub fn run(args: GuardArgs) -> Result<(), Failure> {
    let mark = ProcessMark::parse(&args.process)
        .ok_or_else(|| Failure::usage("--process must be host/boot/pid/start"))?;
    let provider: &'static str = if args.provider == "podman" {
        "podman"
    } else {
        "docker"
    };
    // Until the worker is gone: no engine calls at all.
    while mark.liveness() == Liveness::Alive {
        std::thread::sleep(Duration::from_millis(500));
    }
    let runtime = DockerRuntime::new(provider, &args.engine);
    actix_rt::System::new().block_on(async move {
        let mine = made_by(&args.process);
        let containers = runtime
            .list_managed(&args.worker_id)
            .await
            .unwrap_or_default();
        let mut removed = 0;
        for c in containers.iter().filter(|c| mine(c)) {
            if runtime.remove(&c.id).await.is_ok() {
                removed += 1;
            }
        }
        for n in runtime
            .list_managed_networks(&args.worker_id)
            .await
            .unwrap_or_default()
            .iter()
            .filter(|n| mine(n))
        {
            let _ = runtime.remove_network(&n.id).await;
        }
        if removed > 0 {
            tracing::warn!(worker_id = %args.worker_id, removed, "the worker is gone: removed its containers");
        }
        Ok(())
    })
}

/// Starts the guardian of this worker process (in its own process group,
/// so a signal to the worker's group does not reach it).
pub fn spawn(worker_id: &str, provider: &str, engine: &str) {
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else {
        tracing::warn!("no guardian: the bus binary cannot be found");
        return;
    };
    let started = std::process::Command::new(exe)
        .args(["integration", "guard", "--worker-id", worker_id])
        .args(["--process", &ProcessMark::current().label()])
        .args(["--provider", provider, "--engine", engine])
        .args(["--log-format", "json"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .process_group(0)
        .spawn();
    match started {
        // Reaped by nobody: it outlives this process on purpose.
        Ok(child) => tracing::debug!(pid = child.id(), "guardian started"),
        Err(e) => tracing::warn!(error = %e, "no guardian: could not start it"),
    }
}
