//! `ContainerRuntime` over the Docker Engine API with bollard; also speaks
//! to Podman's Docker-compatible socket. The API version is negotiated
//! with the engine (Debian's dockerd 20.10 accepts at most 1.41), and
//! `DOCKER_HOST` is honoured (`unix://` or `tcp://`).

use super::FileSpec;
use super::{
    labels, Attached, Chunk, ContainerRuntime, ContainerSpec, EngineInfo, ExecSpec, ExitInfo,
    Managed, OutputStream, RuntimeError,
};
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, NetworkConnectRequest,
    NetworkCreateRequest, ResourcesUlimits,
};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, CreateImageOptions, KillContainerOptions,
    ListContainersOptions, ListNetworksOptions, RemoveContainerOptions, UploadToContainerOptions,
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

/// This process's hard limit of a resource, from `/proc/self/limits`
/// (`Max open files`, `Max processes`).
fn hard_limit(label: &str) -> Option<i64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with(label))?;
    line[label.len()..].split_whitespace().nth(1)?.parse().ok()
}

/// Podman asks for higher `nofile`/`nproc` limits than an unprivileged
/// service may grant, and the container then fails to start. Ask for
/// modest limits that any service can hand down (the pids limit still
/// bounds processes).
fn podman_ulimits() -> Vec<ResourcesUlimits> {
    let cap = |label: &str| hard_limit(label).unwrap_or(4096).min(4096);
    vec![
        ResourcesUlimits {
            name: Some("nofile".into()),
            soft: Some(cap("Max open files").min(1024)),
            hard: Some(cap("Max open files")),
        },
        ResourcesUlimits {
            name: Some("nproc".into()),
            soft: Some(cap("Max processes")),
            hard: Some(cap("Max processes")),
        },
    ]
}

fn create_body(spec: &ContainerSpec, provider: &str) -> ContainerCreateBody {
    let h = &spec.hardening;
    let mut security_opt = Vec::new();
    if h.no_new_privileges {
        security_opt.push("no-new-privileges:true".to_owned());
    }
    let mut mounts: Vec<Mount> = spec
        .mounts
        .iter()
        .map(|m| Mount {
            target: Some(m.target.clone()),
            source: Some(m.source.clone()),
            typ: Some(MountType::BIND),
            read_only: Some(m.read_only),
            ..Default::default()
        })
        .collect();
    mounts.extend(spec.volumes.iter().map(|target| Mount {
        target: Some(target.clone()),
        typ: Some(MountType::VOLUME),
        read_only: Some(false),
        ..Default::default()
    }));
    let host_config = HostConfig {
        memory: spec.limits.memory_bytes,
        // No swap beyond the memory limit, so the limit is real.
        memory_swap: spec.limits.memory_bytes,
        nano_cpus: spec.limits.nano_cpus,
        pids_limit: spec.limits.pids,
        cap_drop: h.drop_all_capabilities.then(|| vec!["ALL".to_owned()]),
        security_opt: (!security_opt.is_empty()).then_some(security_opt),
        readonly_rootfs: Some(h.read_only_root),
        tmpfs: (!h.tmpfs.is_empty()).then(|| h.tmpfs.clone().into_iter().collect()),
        network_mode: Some(if spec.network.is_empty() {
            "none".to_owned()
        } else {
            spec.network.clone()
        }),
        log_config: Some(HostConfigLogConfig {
            typ: Some("none".to_owned()),
            config: None,
        }),
        mounts: (!mounts.is_empty()).then_some(mounts),
        init: Some(false),
        dns: (!spec.dns.is_empty()).then(|| spec.dns.clone()),
        ulimits: (provider == "podman").then(podman_ulimits),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
        entrypoint: spec.entrypoint.clone(),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        working_dir: spec.workdir.clone(),
        user: h.user.clone(),
        labels: Some(spec.labels.clone().into_iter().collect()),
        attach_stdin: Some(spec.stdin),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(spec.stdin),
        stdin_once: Some(spec.stdin),
        tty: Some(false),
        network_disabled: Some(spec.network == "none" || spec.network.is_empty()),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// A tar archive of one file, named by its base name (it is extracted
/// into its directory, which may be a volume under a read-only root).
fn tar_of(file: &FileSpec) -> std::io::Result<(String, Vec<u8>)> {
    let path = std::path::Path::new(&file.path);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::other(format!(
            "{}: not a file path",
            file.path
        )));
    };
    let mut builder = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(file.mode);
    h.set_size(file.data.len() as u64);
    builder.append_data(&mut h, name, file.data.as_slice())?;
    Ok((dir.display().to_string(), builder.into_inner()?))
}

fn label_filter(worker_id: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_owned(),
        vec![
            format!("{}=true", labels::MANAGED),
            format!("{}={worker_id}", labels::WORKER_ID),
        ],
    )])
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
        let (this, image) = (self.clone(), image.to_owned());
        async move {
            match this.ready_client().await?.inspect_image(&image).await {
                Ok(_) => Ok(true),
                Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => Ok(false),
                Err(e) => Err(map_err(e)),
            }
        }
        .boxed_local()
    }

    fn pull(
        &self,
        image: &str,
        progress: Box<dyn Fn(String)>,
    ) -> LocalBoxFuture<'static, Result<(), RuntimeError>> {
        let (this, image) = (self.clone(), image.to_owned());
        async move {
            let client = this.ready_client().await?;
            let options = CreateImageOptions {
                from_image: Some(image.clone()),
                ..Default::default()
            };
            let mut stream = client.create_image(Some(options), None, None);
            while let Some(item) = stream.next().await {
                let info = item.map_err(map_err)?;
                if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                    return Err(RuntimeError::Engine(detail));
                }
                if let Some(status) = info.status {
                    progress(match info.id {
                        Some(id) => format!("{id}: {status}"),
                        None => status,
                    });
                }
            }
            Ok(())
        }
        .boxed_local()
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
                .map_err(map_err)?;
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
                .map_err(map_err)
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
        let (this, worker_id) = (self.clone(), worker_id.to_owned());
        async move {
            let options = ListContainersOptions {
                all: true,
                filters: Some(label_filter(&worker_id)),
                ..Default::default()
            };
            let list = this
                .ready_client()
                .await?
                .list_containers(Some(options))
                .await
                .map_err(map_err)?;
            Ok(list
                .into_iter()
                .filter_map(|c| {
                    let labels = c.labels.unwrap_or_default();
                    Some(Managed::from_labels(c.id?, |k| labels.get(k).cloned()))
                })
                .collect())
        }
        .boxed_local()
    }

    fn exec(
        &self,
        id: &str,
        spec: &ExecSpec,
    ) -> LocalBoxFuture<'static, Result<(String, Attached), RuntimeError>> {
        let (this, id, spec) = (self.clone(), id.to_owned(), spec.clone());
        async move {
            let client = this.ready_client().await?;
            let config = CreateExecOptions {
                attach_stdin: Some(spec.stdin),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                tty: Some(false),
                env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                cmd: Some(spec.command.clone()),
                working_dir: spec.workdir.clone(),
                ..Default::default()
            };
            let exec_id = client.create_exec(&id, config).await.map_err(map_err)?.id;
            let started = client
                .start_exec(
                    &exec_id,
                    Some(StartExecOptions {
                        detach: false,
                        tty: false,
                        output_capacity: None,
                    }),
                )
                .await
                .map_err(map_err)?;
            match started {
                StartExecResults::Attached { output, input } => {
                    let input: Option<std::pin::Pin<Box<dyn tokio::io::AsyncWrite>>> =
                        if spec.stdin { Some(input) } else { None };
                    Ok((
                        exec_id,
                        Attached {
                            output: chunks(output),
                            input,
                        },
                    ))
                }
                StartExecResults::Detached => {
                    Err(RuntimeError::Engine("the exec started detached".into()))
                }
            }
        }
        .boxed_local()
    }

    fn exec_exit(
        &self,
        exec_id: &str,
    ) -> LocalBoxFuture<'static, Result<Option<i64>, RuntimeError>> {
        let (this, exec_id) = (self.clone(), exec_id.to_owned());
        async move {
            let info = this
                .ready_client()
                .await?
                .inspect_exec(&exec_id)
                .await
                .map_err(map_err)?;
            Ok(if info.running == Some(true) {
                None
            } else {
                info.exit_code
            })
        }
        .boxed_local()
    }

    fn create_network(
        &self,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> LocalBoxFuture<'static, Result<String, RuntimeError>> {
        let this = self.clone();
        let request = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".into()),
            internal: Some(true),
            labels: Some(labels.clone().into_iter().collect()),
            // No address of the host's on the bridge: a container on it
            // cannot reach the host's own services through a gateway.
            options: Some(HashMap::from([(
                "com.docker.network.bridge.inhibit_ipv4".to_owned(),
                "true".to_owned(),
            )])),
            ..Default::default()
        };
        async move {
            let created = this
                .ready_client()
                .await?
                .create_network(request)
                .await
                .map_err(map_err)?;
            Ok(created.id)
        }
        .boxed_local()
    }

    fn connect_network(
        &self,
        network: &str,
        container: &str,
    ) -> LocalBoxFuture<'static, Result<(), RuntimeError>> {
        let (this, network) = (self.clone(), network.to_owned());
        let request = NetworkConnectRequest {
            container: container.to_owned(),
            endpoint_config: None,
        };
        async move {
            this.ready_client()
                .await?
                .connect_network(&network, request)
                .await
                .map_err(map_err)
        }
        .boxed_local()
    }

    fn remove_network(&self, name: &str) -> LocalBoxFuture<'static, Result<(), RuntimeError>> {
        let (this, name) = (self.clone(), name.to_owned());
        async move {
            match this.ready_client().await?.remove_network(&name).await {
                Ok(()) => Ok(()),
                Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => Ok(()),
                Err(e) => Err(map_err(e)),
            }
        }
        .boxed_local()
    }

    fn network_ip(
        &self,
        container: &str,
        network: &str,
    ) -> LocalBoxFuture<'static, Result<Option<String>, RuntimeError>> {
        let (this, container, network) = (self.clone(), container.to_owned(), network.to_owned());
        async move {
            let info = this
                .ready_client()
                .await?
                .inspect_container(
                    &container,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
                .map_err(map_err)?;
            Ok(info
                .network_settings
                .and_then(|n| n.networks)
                .and_then(|n| {
                    n.into_iter()
                        .find(|(name, e)| {
                            *name == network || e.network_id.as_deref() == Some(network.as_str())
                        })
                        .map(|(_, e)| e)
                })
                .and_then(|e| e.ip_address)
                .filter(|ip| !ip.is_empty()))
        }
        .boxed_local()
    }

    fn network_subnet(
        &self,
        network: &str,
    ) -> LocalBoxFuture<'static, Result<Option<String>, RuntimeError>> {
        let (this, network) = (self.clone(), network.to_owned());
        async move {
            let info = this
                .ready_client()
                .await?
                .inspect_network(
                    &network,
                    None::<bollard::query_parameters::InspectNetworkOptions>,
                )
                .await
                .map_err(map_err)?;
            Ok(info
                .ipam
                .and_then(|i| i.config)
                .and_then(|c| c.into_iter().find_map(|c| c.subnet)))
        }
        .boxed_local()
    }

    fn upload(
        &self,
        container: &str,
        files: &[FileSpec],
    ) -> LocalBoxFuture<'static, Result<(), RuntimeError>> {
        let this = self.clone();
        let container = container.to_owned();
        let archives: Result<Vec<_>, _> = files.iter().map(tar_of).collect();
        async move {
            let archives = archives.map_err(|e| RuntimeError::Engine(format!("archive: {e}")))?;
            let client = this.ready_client().await?;
            for (dir, archive) in archives {
                let options = UploadToContainerOptions {
                    path: dir,
                    ..Default::default()
                };
                client
                    .upload_to_container(
                        &container,
                        Some(options),
                        bollard::body_full(bytes::Bytes::from(archive)),
                    )
                    .await
                    .map_err(map_err)?;
            }
            Ok(())
        }
        .boxed_local()
    }

    fn list_managed_networks(
        &self,
        worker_id: &str,
    ) -> LocalBoxFuture<'static, Result<Vec<Managed>, RuntimeError>> {
        let (this, worker_id) = (self.clone(), worker_id.to_owned());
        async move {
            let options = ListNetworksOptions {
                filters: Some(label_filter(&worker_id)),
            };
            let list = this
                .ready_client()
                .await?
                .list_networks(Some(options))
                .await
                .map_err(map_err)?;
            Ok(list
                .into_iter()
                .filter_map(|n| {
                    let labels = n.labels.unwrap_or_default();
                    Some(Managed::from_labels(n.id?, |k| labels.get(k).cloned()))
                })
                .collect())
        }
        .boxed_local()
    }
}
