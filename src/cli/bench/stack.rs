//! `bus dev` (this binary) as a child process on a free port, in a
//! scratch config and data directory: the stack the end-to-end benchmark
//! and the soak drive.

use crate::cli::failure::Failure;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `bus dev` on a free port in a scratch directory, stopped on drop.
pub struct Stack {
    child: Child,
    pub url: String,
    pub token: String,
    pub dir: PathBuf,
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SIGTERM: it cancels runs, empties the pool and removes containers.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Stack {
    /// Starts it: profile `codex` on `image` with `pool_size` warm
    /// containers, room for `concurrent` runs at once.
    pub fn start(image: &str, pool_size: usize, concurrent: usize) -> Result<Stack, Failure> {
        let dir =
            std::env::temp_dir().join(format!("bus-bench-e2e-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let capacity = (concurrent + 16).max(64);
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[dev]\nmax_concurrent_runs = 0\n[worker]\ncapacity = {capacity}\nmax_files_bytes = 33554432\nallowed_images = [\"{}\"]\n[profiles.codex]\nimage = \"{}\"\n",
                image, image
            ),
        )?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut child = Command::new(std::env::current_exe()?)
            .args(["dev", "--addr", &format!("127.0.0.1:{port}")])
            .arg("--config")
            .arg(&config)
            .args(["--pool-size", &pool_size.to_string()])
            .env("BUS_CONFIG_DIR", &dir)
            .env("BUS_DATA_DIR", &dir)
            .env_remove("BUS_API_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(url) = line.split("provider): ").nth(1) {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(60)).map_err(|_| {
            Failure::error("bus dev did not come up (is Docker running and the image built?)")
        })?;
        let token = std::fs::read_to_string(dir.join("auth").join("api-token"))?
            .trim()
            .to_owned();
        Ok(Stack {
            child,
            url,
            token,
            dir,
        })
    }

    /// Peak resident memory of the stack so far, in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.status_mib("VmHWM:")
    }

    /// Resident memory of the stack now, in MiB.
    pub fn rss_mib(&self) -> f64 {
        self.status_mib("VmRSS:")
    }

    fn status_mib(&self, field: &str) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|n| n.parse::<f64>().ok())
            })
            .map(|kib| kib / 1024.0)
            .unwrap_or(0.0)
    }
}
