//! An in-memory `ContainerRuntime` for actor tests. It "runs" a few
//! programs by name instead of containers:
//!
//! | command | behaviour |
//! |---|---|
//! | `printf TEXT` | TEXT on stdout |
//! | `stderr TEXT` | TEXT on stderr |
//! | `exit N` | exits with N |
//! | `sleep SECS` | exits 0 after SECS |
//! | `cat` | copies stdin to stdout until EOF |
//! | `oom` | dies as an out-of-memory kill (137, `OOMKilled`) |
//! | `flood BYTES` | BYTES of `x` on stdout, in 64 KiB chunks |
//!
//! Anything else exits 127. A kill ends a program with 137.

use super::{
    labels, Attached, Chunk, ContainerRuntime, ContainerSpec, EngineInfo, ExitInfo, Managed,
    OutputStream, RuntimeError,
};
use bytes::Bytes;
use futures::future::LocalBoxFuture;
use futures::{FutureExt, StreamExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

struct Container {
    spec: ContainerSpec,
    out_tx: Option<mpsc::Sender<Chunk>>,
    out_rx: Option<mpsc::Receiver<Chunk>>,
    stdin: Option<tokio::io::DuplexStream>,
    exit: watch::Sender<Option<i64>>,
    kill: watch::Sender<bool>,
    oom: bool,
    removed: bool,
}

/// The in-memory engine.
#[derive(Clone, Default)]
pub struct FakeRuntime {
    containers: Arc<Mutex<HashMap<String, Container>>>,
    /// Images that exist (every image when empty).
    images: Arc<Mutex<Vec<String>>>,
    down: Arc<Mutex<bool>>,
    /// Networks by name, with their labels.
    networks: Arc<Mutex<HashMap<String, std::collections::BTreeMap<String, String>>>>,
}

impl FakeRuntime {
    pub fn new() -> Self {
        FakeRuntime::default()
    }

    /// Only these images exist.
    pub fn with_images(images: &[&str]) -> Self {
        let f = FakeRuntime::default();
        *f.images.lock().unwrap() = images.iter().map(|s| s.to_string()).collect();
        f
    }

    /// Makes every call fail as if the engine were unreachable.
    pub fn set_down(&self, down: bool) {
        *self.down.lock().unwrap() = down;
    }

    /// Ids of containers not yet removed.
    pub fn live(&self) -> Vec<String> {
        let c = self.containers.lock().unwrap();
        c.iter()
            .filter(|(_, c)| !c.removed)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Specs of every container created so far.
    pub fn specs(&self) -> Vec<ContainerSpec> {
        self.containers
            .lock()
            .unwrap()
            .values()
            .map(|c| c.spec.clone())
            .collect()
    }

    /// Names of the networks that exist.
    pub fn networks(&self) -> Vec<String> {
        self.networks.lock().unwrap().keys().cloned().collect()
    }

    fn check(&self) -> Result<(), RuntimeError> {
        if *self.down.lock().unwrap() {
            Err(RuntimeError::Unavailable("fake engine is down".into()))
        } else {
            Ok(())
        }
    }

    fn has_image(&self, image: &str) -> bool {
        let images = self.images.lock().unwrap();
        images.is_empty() || images.iter().any(|i| i == image)
    }
}

async fn program(
    command: Vec<String>,
    out: mpsc::Sender<Chunk>,
    mut stdin: Option<tokio::io::DuplexStream>,
    mut kill: watch::Receiver<bool>,
) -> (i64, bool) {
    let send = |stream, data: Vec<u8>| {
        let out = out.clone();
        async move {
            let _ = out
                .send(Chunk {
                    stream,
                    data: Bytes::from(data),
                })
                .await;
        }
    };
    let arg = |i: usize| command.get(i).cloned().unwrap_or_default();
    let killed = async move {
        let _ = kill.wait_for(|k| *k).await;
    };
    let work = async {
        match command.first().map(String::as_str) {
            Some("printf") => {
                send(OutputStream::Stdout, arg(1).into_bytes()).await;
                (0, false)
            }
            Some("stderr") => {
                send(OutputStream::Stderr, arg(1).into_bytes()).await;
                (0, false)
            }
            Some("exit") => (arg(1).parse().unwrap_or(1), false),
            Some("sleep") => {
                let secs: f64 = arg(1).parse().unwrap_or(1.0);
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                (0, false)
            }
            Some("cat") => {
                if let Some(stdin) = stdin.as_mut() {
                    let mut buf = vec![0u8; 4096];
                    while let Ok(n) = stdin.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        send(OutputStream::Stdout, buf[..n].to_vec()).await;
                    }
                }
                (0, false)
            }
            Some("oom") => (137, true),
            Some("flood") => {
                let mut left: usize = arg(1).parse().unwrap_or(0);
                while left > 0 {
                    let n = left.min(64 * 1024);
                    send(OutputStream::Stdout, vec![b'x'; n]).await;
                    left -= n;
                }
                (0, false)
            }
            _ => {
                send(OutputStream::Stderr, b"fake: unknown program".to_vec()).await;
                (127, false)
            }
        }
    };
    tokio::select! {
        r = work => r,
        _ = killed => (137, false),
    }
}

impl ContainerRuntime for FakeRuntime {
    fn provider(&self) -> &'static str {
        "fake"
    }

    fn ping(&self) -> LocalBoxFuture<'static, Result<EngineInfo, RuntimeError>> {
        let r = self.check().map(|_| EngineInfo {
            version: "fake".into(),
            api_version: "1.41".into(),
        });
        async move { r }.boxed_local()
    }

    fn image_present(&self, image: &str) -> LocalBoxFuture<'static, Result<bool, RuntimeError>> {
        let r = self.check().map(|_| self.has_image(image));
        async move { r }.boxed_local()
    }

    fn pull(
        &self,
        image: &str,
        _progress: Box<dyn Fn(String)>,
    ) -> LocalBoxFuture<'static, Result<(), RuntimeError>> {
        let r = self.check().and_then(|_| {
            Err(RuntimeError::Engine(format!(
                "no registry reachable to pull {image}"
            )))
        });
        async move { r }.boxed_local()
    }

    fn create(
        &self,
        spec: &ContainerSpec,
    ) -> LocalBoxFuture<'static, Result<String, RuntimeError>> {
        let result = self.check().and_then(|_| {
            if !self.has_image(&spec.image) {
                return Err(RuntimeError::ImageMissing(format!(
                    "No such image: {}",
                    spec.image
                )));
            }
            let id = format!("fake{}", uuid::Uuid::new_v4().simple());
            let (out_tx, out_rx) = mpsc::channel(16);
            self.containers.lock().unwrap().insert(
                id.clone(),
                Container {
                    spec: spec.clone(),
                    out_tx: Some(out_tx),
                    out_rx: Some(out_rx),
                    stdin: None,
                    exit: watch::channel(None).0,
                    kill: watch::channel(false).0,
                    oom: false,
                    removed: false,
                },
            );
            Ok(id)
        });
        async move { result }.boxed_local()
    }

    fn attach(
        &self,
        id: &str,
        stdin: bool,
    ) -> LocalBoxFuture<'static, Result<Attached, RuntimeError>> {
        let result = self.check().and_then(|_| {
            let mut all = self.containers.lock().unwrap();
            let c = all
                .get_mut(id)
                .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
            let rx = c
                .out_rx
                .take()
                .ok_or_else(|| RuntimeError::Engine("already attached".into()))?;
            let input: Option<std::pin::Pin<Box<dyn tokio::io::AsyncWrite>>> = if stdin {
                let (ours, theirs) = tokio::io::duplex(64 * 1024);
                c.stdin = Some(theirs);
                Some(Box::pin(ours))
            } else {
                None
            };
            let output = tokio_stream::wrappers::ReceiverStream::new(rx)
                .map(Ok)
                .boxed_local();
            Ok(Attached { output, input })
        });
        async move { result }.boxed_local()
    }

    fn start(&self, id: &str) -> LocalBoxFuture<'static, Result<(), RuntimeError>> {
        let result = self.check().and_then(|_| {
            let mut all = self.containers.lock().unwrap();
            let c = all
                .get_mut(id)
                .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
            let out = c
                .out_tx
                .take()
                .ok_or_else(|| RuntimeError::Engine("already started".into()))?;
            let command = c.spec.command.clone();
            let stdin = c.stdin.take();
            let kill = c.kill.subscribe();
            let exit = c.exit.clone();
            let containers = self.containers.clone();
            let id = id.to_owned();
            actix_rt::spawn(async move {
                let (code, oom) = program(command, out, stdin, kill).await;
                if let Some(c) = containers.lock().unwrap().get_mut(&id) {
                    c.oom = oom;
                }
                exit.send_replace(Some(code));
            });
            Ok(())
        });
        async move { result }.boxed_local()
    }

    fn wait(&self, id: &str) -> LocalBoxFuture<'static, Result<i64, RuntimeError>> {
        let rx = self
            .containers
            .lock()
            .unwrap()
            .get(id)
            .map(|c| c.exit.subscribe());
        let id = id.to_owned();
        async move {
            let mut rx = rx.ok_or(RuntimeError::NotFound(id))?;
            let code = rx
                .wait_for(Option::is_some)
                .await
                .map_err(|_| RuntimeError::Engine("container vanished".into()))?;
            Ok(code.unwrap_or(0))
        }
        .boxed_local()
    }

    fn kill(&self, id: &str) -> LocalBoxFuture<'static, Result<(), RuntimeError>> {
        let result = self.check().map(|_| {
            if let Some(c) = self.containers.lock().unwrap().get(id) {
                c.kill.send_replace(true);
            }
        });
        async move { result }.boxed_local()
    }

    fn inspect(&self, id: &str) -> LocalBoxFuture<'static, Result<ExitInfo, RuntimeError>> {
        let all = self.containers.lock().unwrap();
        let result = match all.get(id) {
            Some(c) => Ok(ExitInfo {
                exit_code: *c.exit.borrow(),
                oom_killed: c.oom,
            }),
            None => Err(RuntimeError::NotFound(id.to_owned())),
        };
        async move { result }.boxed_local()
    }

    fn remove(&self, id: &str) -> LocalBoxFuture<'static, Result<(), RuntimeError>> {
        let result = self.check().map(|_| {
            if let Some(c) = self.containers.lock().unwrap().get_mut(id) {
                c.kill.send_replace(true);
                c.removed = true;
            }
        });
        async move { result }.boxed_local()
    }

    fn list_managed(
        &self,
        worker_id: &str,
    ) -> LocalBoxFuture<'static, Result<Vec<Managed>, RuntimeError>> {
        let result = self.check().map(|_| {
            let all = self.containers.lock().unwrap();
            all.iter()
                .filter(|(_, c)| !c.removed)
                .filter(|(_, c)| {
                    c.spec
                        .labels
                        .get(labels::WORKER_ID)
                        .is_some_and(|w| w == worker_id)
                })
                .map(|(id, c)| Managed::from_labels(id.clone(), |k| c.spec.labels.get(k).cloned()))
                .collect()
        });
        async move { result }.boxed_local()
    }

    fn create_network(
        &self,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> LocalBoxFuture<'static, Result<String, RuntimeError>> {
        let result = self.check().map(|_| {
            self.networks
                .lock()
                .unwrap()
                .insert(name.to_owned(), labels.clone());
            name.to_owned()
        });
        async move { result }.boxed_local()
    }

    fn remove_network(&self, name: &str) -> LocalBoxFuture<'static, Result<(), RuntimeError>> {
        let result = self.check().map(|_| {
            self.networks.lock().unwrap().remove(name);
        });
        async move { result }.boxed_local()
    }

    fn list_managed_networks(
        &self,
        worker_id: &str,
    ) -> LocalBoxFuture<'static, Result<Vec<Managed>, RuntimeError>> {
        let result = self.check().map(|_| {
            self.networks
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, l)| l.get(labels::WORKER_ID).is_some_and(|w| w == worker_id))
                .map(|(name, l)| Managed::from_labels(name.clone(), |k| l.get(k).cloned()))
                .collect()
        });
        async move { result }.boxed_local()
    }
}
