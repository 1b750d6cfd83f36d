//! A real image registry (Debian's `docker-registry`) on a free loopback
//! port, with its storage in a temporary directory; killed when dropped.
//! The engine trusts registries on 127.0.0.0/8 without TLS. Skipped
//! (said on stderr) when the binary is missing, unless
//! `BUS_TEST_DOCKER=required`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`, the prefix of its image names.
    pub host: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    pub fn start() -> Option<Registry> {
        if Command::new("docker-registry")
            .arg("--version")
            .output()
            .is_err()
        {
            if std::env::var("BUS_TEST_DOCKER").is_ok_and(|v| v == "required") {
                panic!("docker-registry is required (scripts/ensure-registry)");
            }
            eprintln!("skipped: docker-registry is not installed (scripts/ensure-registry)");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn docker-registry");
        let host = format!("127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(&host).is_ok() {
                return Some(Registry {
                    child,
                    host,
                    _dir: dir,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("docker-registry did not come up on {host}");
    }

    /// Pushes local `image` as `name` here and removes the local tag, so
    /// only a pull brings it back.
    pub fn push(&self, image: &str, name: &str) -> String {
        let remote = format!("{}/{name}", self.host);
        let docker = |args: &[&str]| {
            let out = Command::new("docker").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "docker {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        docker(&["tag", image, &remote]);
        docker(&["push", "-q", &remote]);
        docker(&["rmi", &remote]);
        remote
    }
}
