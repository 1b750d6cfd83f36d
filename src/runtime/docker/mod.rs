//! `ContainerRuntime` over the Docker Engine API with bollard; also speaks
//! to Podman's Docker-compatible socket. The API version is negotiated
//! with the engine (Debian's dockerd 20.10 accepts at most 1.41), and
//! `DOCKER_HOST` is honoured (`unix://` or `tcp://`).

mod body;
mod exec;
mod files;
mod images;
mod managed;
mod networks;

use body::create_body;
use managed::label_filter;

use crate::runtime::FileSpec;
use crate::runtime::{
    labels, Attached, Chunk, ContainerRuntime, ContainerSpec, Download, EngineInfo, ExecSpec,
    ExitInfo, Managed, OutputStream, RuntimeError,
};
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, NetworkConnectRequest,
    NetworkCreateRequest, ResourcesUlimits,
};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, CreateImageOptions,
    DownloadFromContainerOptions, KillContainerOptions, ListContainersOptions, ListNetworksOptions,
    RemoveContainerOptions, UploadToContainerOptions,
};
use bollard::Docker;
use futures::future::LocalBoxFuture;
use futures::{FutureExt, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where the engine is: `DOCKER_HOST`, else the default socket.
pub fn docker_host() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned())
}

/// A bollard-backed runtime. Connects lazily, so a worker can start while
/// the engine is down and report `unavailable` until it is back.
#[derive(Clone)]
pub struct DockerRuntime {
    provider: &'static str,
    host: String,
    client: Arc<Mutex<Option<Docker>>>,
    negotiated: Arc<AtomicBool>,
}

/// An engine's multiplexed output as chunks (stdin echoes dropped).
fn chunks(
    output: impl futures::Stream<Item = Result<LogOutput, BollardError>> + 'static,
) -> futures::stream::LocalBoxStream<'static, Result<Chunk, RuntimeError>> {
    output
        .filter_map(|item| async move {
            match item {
                Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                    Some(Ok(Chunk {
                        stream: OutputStream::Stdout,
                        data: message,
                    }))
                }
                Ok(LogOutput::StdErr { message }) => Some(Ok(Chunk {
                    stream: OutputStream::Stderr,
                    data: message,
                })),
                Ok(LogOutput::StdIn { .. }) => None,
                Err(e) => Some(Err(map_err(e))),
            }
        })
        .boxed_local()
}

fn map_err(e: BollardError) -> RuntimeError {
    match e {
        BollardError::DockerResponseServerError {
            status_code: 404,
            message,
        } => RuntimeError::NotFound(message),
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => RuntimeError::Engine(format!("{message} (HTTP {status_code})")),
        BollardError::RequestTimeoutError => RuntimeError::Unavailable("request timed out".into()),
        other => {
            let text = other.to_string();
            if text.contains("connect")
                || text.contains("No such file")
                || text.contains("refused")
                || text.contains("hyper")
            {
                RuntimeError::Unavailable(text)
            } else {
                RuntimeError::Engine(text)
            }
        }
    }
}

/// An error of a call that starts a run's process (attach prepares the
/// container on Podman, start on Docker): a command that cannot run is
/// [`RuntimeError::NotRunnable`].
fn process_err(e: BollardError) -> RuntimeError {
    match map_err(e) {
        RuntimeError::Engine(m) => match crate::runtime::not_runnable(&m) {
            Some((code, reason)) => RuntimeError::NotRunnable { code, reason },
            None => RuntimeError::Engine(m),
        },
        other => other,
    }
}

impl DockerRuntime {
    /// A runtime for `host` (`unix:///...` or `tcp://...`); `provider` is
    /// what runs report (`docker` or `podman`).
    pub fn new(provider: &'static str, host: &str) -> Self {
        DockerRuntime {
            provider,
            host: host.to_owned(),
            client: Arc::new(Mutex::new(None)),
            negotiated: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    fn client(&self) -> Result<Docker, RuntimeError> {
        let mut slot = self.client.lock().expect("docker client lock");
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        // Long client timeout: waits and attaches last as long as a run;
        // short calls are bounded by the caller.
        const DAY: u64 = 24 * 3600;
        let client = if self.host.starts_with("unix://") {
            Docker::connect_with_unix(&self.host, DAY, bollard::API_DEFAULT_VERSION)
        } else if self.host.starts_with("tcp://") || self.host.starts_with("http://") {
            Docker::connect_with_http(&self.host, DAY, bollard::API_DEFAULT_VERSION)
        } else {
            return Err(RuntimeError::Unavailable(format!(
                "unsupported engine address {:?}: use unix:///path or tcp://host:port",
                self.host
            )));
        }
        .map_err(|e| {
            RuntimeError::Unavailable(format!("no container engine at {}: {e}", self.host))
        })?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// The client, with the API version negotiated once the engine answers.
    async fn ready_client(&self) -> Result<Docker, RuntimeError> {
        let client = self.client()?;
        if !self.negotiated.load(Ordering::Relaxed) {
            // negotiate_version updates the version shared by every clone.
            match tokio::time::timeout(Duration::from_secs(10), client.clone().negotiate_version())
                .await
            {
                Ok(Ok(_)) => self.negotiated.store(true, Ordering::Relaxed),
                Ok(Err(e)) => return Err(map_err(e)),
                Err(_) => {
                    return Err(RuntimeError::Unavailable(format!(
                        "{} did not answer",
                        self.host
                    )))
                }
            }
        }
        Ok(client)
    }
}

impl ContainerRuntime for DockerRuntime {
    fn provider(&self) -> &'static str {
        self.provider
    }

    fn ping(&self) -> LocalBoxFuture<'static, Result<EngineInfo, RuntimeError>> {
        let this = self.clone();
        async move {
            let client = this.ready_client().await?;
            let v = tokio::time::timeout(Duration::from_secs(5), client.version())
                .await
                .map_err(|_| RuntimeError::Unavailable(format!("{} did not answer", this.host)))?
                .map_err(map_err)?;
            Ok(EngineInfo {
                version: v.version.unwrap_or_default(),
                api_version: v.api_version.unwrap_or_default(),
            })
        }
        .boxed_local()
    }

    fn image_present(&self, image: &str) -> LocalBoxFuture<'static, Result<bool, RuntimeError>> {
        self.image_present_on_engine(image)
    }

    fn pull(
        &self,
        image: &str,
        progress: Box<dyn Fn(String)>,
    ) -> LocalBoxFuture<'static, Result<(), RuntimeError>> {
        self.pull_on_engine(image, progress)
    }

    fn create(
        &self,
        spec: &ContainerSpec,
    ) -> LocalBoxFuture<'static, Result<String, RuntimeError>> {
        let (this, body, name) = (
            self.clone(),
            create_body(spec, self.provider),
            spec.name.clone(),
        );
        async move {
            let options = name.map(|n| CreateContainerOptions {
                name: Some(n),
                ..Default::default()
            });
            let created = this
                .ready_client()
                .await?
                .create_container(options, body)
                .await
                .map_err(|e| match map_err(e) {
                    // The only thing a create does not find is its image.
                    RuntimeError::NotFound(m) => RuntimeError::ImageMissing(m),
                    other => other,
                })?;
            Ok(created.id)
        }
        .boxed_local()
    }

    fn attach(
        &self,
        id: &str,
        stdin: bool,
    ) -> LocalBoxFuture<'static, Result<Attached, RuntimeError>> {
        let (this, id) = (self.clone(), id.to_owned());
        async move {
            let options = AttachContainerOptions {
                stdin,
                stdout: true,
                stderr: true,
                stream: true,
                logs: false,
                detach_keys: None,
            };
            let attached = this
                .ready_client()
                .await?
                .attach_container(&id, Some(options))
                .await
                .map_err(process_err)?;
            let output = chunks(attached.output);
            let input: Option<std::pin::Pin<Box<dyn tokio::io::AsyncWrite>>> =
                if stdin { Some(attached.input) } else { None };
            Ok(Attached { output, input })
        }
        .boxed_local()
    }

    fn start(&self, id: &str) -> LocalBoxFuture<'static, Result<(), RuntimeError>> {
        let (this, id) = (self.clone(), id.to_owned());
        async move {
            this.ready_client()
                .await?
                .start_container(
                    &id,
                    None::<bollard::query_parameters::StartContainerOptions>,
                )
                .await
                .map_err(process_err)
        }
        .boxed_local()
    }

    fn wait(&self, id: &str) -> LocalBoxFuture<'static, Result<i64, RuntimeError>> {
        let (this, id) = (self.clone(), id.to_owned());
        async move {
            let client = this.ready_client().await?;
            let mut stream =
                client.wait_container(&id, None::<bollard::query_parameters::WaitContainerOptions>);
            match stream.next().await {
                Some(Ok(r)) => Ok(r.status_code),
                // bollard reports a non-zero exit as an error value.
                Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
                Some(Err(e)) => Err(map_err(e)),
                None => Err(RuntimeError::Engine("wait ended without a status".into())),
            }
        }
        .boxed_local()
    }

    fn kill(&self, id: &str) -> LocalBoxFuture<'static, Result<(), RuntimeError>> {
        let (this, id) = (self.clone(), id.to_owned());
        async move {
            let options = KillContainerOptions {
                signal: "SIGKILL".into(),
            };
            match this
                .ready_client()
                .await?
                .kill_container(&id, Some(options))
                .await
            {
                Ok(()) => Ok(()),
                // Already stopped: nothing to kill.
                Err(BollardError::DockerResponseServerError {
                    status_code: 409, ..
                }) => Ok(()),
                Err(e) => Err(map_err(e)),
            }
        }
        .boxed_local()
    }

    fn inspect(&self, id: &str) -> LocalBoxFuture<'static, Result<ExitInfo, RuntimeError>> {
        let (this, id) = (self.clone(), id.to_owned());
        async move {
            let info = this
                .ready_client()
                .await?
                .inspect_container(
                    &id,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
                .map_err(map_err)?;
            let state = info.state.unwrap_or_default();
            Ok(ExitInfo {
                exit_code: state.exit_code,
                oom_killed: state.oom_killed.unwrap_or(false),
            })
        }
        .boxed_local()
    }

    fn remove(&self, id: &str) -> LocalBoxFuture<'static, Result<(), RuntimeError>> {
        let (this, id) = (self.clone(), id.to_owned());
        async move {
            let options = RemoveContainerOptions {
                force: true,
                v: true,
                link: false,
            };
            match this
                .ready_client()
                .await?
                .remove_container(&id, Some(options))
                .await
            {
                Ok(()) => Ok(()),
                Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => Ok(()),
                // Removal already in progress (a racing cleanup): fine.
                Err(BollardError::DockerResponseServerError {
                    status_code: 409,
                    message,
                }) if message.contains("in progress") => Ok(()),
                Err(e) => Err(map_err(e)),
            }
        }
        .boxed_local()
    }

    fn list_managed(
        &self,
        worker_id: &str,
    ) -> LocalBoxFuture<'static, Result<Vec<Managed>, RuntimeError>> {
        self.list_managed_on_engine(worker_id)
    }

    fn exec(
        &self,
        id: &str,
        spec: &ExecSpec,
    ) -> LocalBoxFuture<'static, Result<(String, Attached), RuntimeError>> {
        self.exec_on_engine(id, spec)
    }

    fn exec_exit(
        &self,
        exec_id: &str,
    ) -> LocalBoxFuture<'static, Result<Option<i64>, RuntimeError>> {
        self.exec_exit_on_engine(exec_id)
    }

    fn create_network(
        &self,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> LocalBoxFuture<'static, Result<String, RuntimeError>> {
        self.create_network_on_engine(name, labels)
    }

    fn connect_network(
        &self,
        network: &str,
        container: &str,
    ) -> LocalBoxFuture<'static, Result<(), RuntimeError>> {
        self.connect_network_on_engine(network, container)
    }

    fn remove_network(&self, name: &str) -> LocalBoxFuture<'static, Result<(), RuntimeError>> {
        self.remove_network_on_engine(name)
    }

    fn network_ip(
        &self,
        container: &str,
        network: &str,
    ) -> LocalBoxFuture<'static, Result<Option<String>, RuntimeError>> {
        self.network_ip_on_engine(container, network)
    }

    fn network_subnet(
        &self,
        network: &str,
    ) -> LocalBoxFuture<'static, Result<Option<String>, RuntimeError>> {
        self.network_subnet_on_engine(network)
    }

    fn upload(
        &self,
        container: &str,
        files: &[FileSpec],
    ) -> LocalBoxFuture<'static, Result<(), RuntimeError>> {
        self.upload_on_engine(container, files)
    }

    fn download(
        &self,
        container: &str,
        path: &str,
        max: usize,
    ) -> LocalBoxFuture<'static, Result<Download, RuntimeError>> {
        self.download_on_engine(container, path, max)
    }

    fn list_managed_networks(
        &self,
        worker_id: &str,
    ) -> LocalBoxFuture<'static, Result<Vec<Managed>, RuntimeError>> {
        self.list_managed_networks_on_engine(worker_id)
    }
}
