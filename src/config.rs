//! `config.toml`: worker limits, sandbox defaults and run profiles. Every
//! key is optional; unknown keys are errors (a typo must not silently
//! weaken a sandbox). One file: the schema, its defaults and its checks
//! read together (its tests make up the last sixth of it).

use crate::runtime::{Hardening, Limits, MountSpec};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub dev: DevSection,
    #[serde(default)]
    pub worker: WorkerSection,
    #[serde(default)]
    pub defaults: SandboxSettings,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

/// `[dev]`: the single-process stack (`bus dev`). Flags and environment
/// variables override these.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevSection {
    /// Containers API address (`BUS_DEV_ADDR`, `--addr`).
    pub addr: Option<String>,
    /// Events API listener for outside workers; off when unset
    /// (`BUS_DEV_EVENTS_ADDR`, `--events-addr`).
    pub events_addr: Option<String>,
    /// `docker` or `static` (`BUS_DEV_PROVIDER`, `--provider`).
    pub provider: Option<String>,
    /// Where the run ledger lives (`BUS_DATA_DIR`, `--data-dir`).
    pub data_dir: Option<String>,
    /// Concurrent runs per account.
    pub max_concurrent_runs: Option<usize>,
}

/// `[worker]`: how a worker treats requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSection {
    /// Glob patterns of images explicit-image runs may use (`*` = any image
    /// present locally); empty refuses explicit-image runs.
    pub allowed_images: Vec<String>,
    /// Output kept per stream of a run.
    pub output_cap_bytes: usize,
    /// The largest archive of a run's `artifacts` (past it the archive
    /// stops and says `truncated`).
    pub max_artifact_bytes: usize,
    /// The most bytes of a run's `files` (decoded, in all); more is
    /// `payload_too_large`.
    pub max_files_bytes: usize,
    /// `timeout_seconds` when neither request nor profile sets one.
    pub default_timeout_seconds: u64,
    /// The most any run may ask for.
    pub max_timeout_seconds: u64,
    /// Concurrent runs per worker.
    pub capacity: usize,
    /// A warm-pool container idle this long is replaced by a fresh one.
    pub pool_max_idle_seconds: u64,
    /// The image whose `bus egress-proxy` is a sandboxed run's sidecar.
    pub egress_image: String,
    /// The network the sidecar reaches the outside through.
    pub egress_network: String,
    /// A PEM file of extra CAs the proxy trusts upstream (a private CA).
    pub egress_upstream_ca: Option<String>,
}

/// `worker.max_files_bytes` (and the API provider's `--max-files-bytes`)
/// unless set: 8 MiB.
pub const DEFAULT_MAX_FILES_BYTES: usize = 8 << 20;

/// `worker.max_artifact_bytes` unless set: 64 MiB.
pub const DEFAULT_MAX_ARTIFACT_BYTES: usize = 64 << 20;
/// The most `worker.max_artifact_bytes` may be: 128 MiB, so a result
/// carrying a whole archive (base64 in its JSON) stays within what an
/// API provider assembles from a result's parts.
pub const MAX_ARTIFACT_BYTES: usize = 128 << 20;

/// A `--max-artifact-bytes` value: a byte count up to
/// [`MAX_ARTIFACT_BYTES`].
pub fn parse_artifact_limit(text: &str) -> Result<usize, String> {
    let n: usize = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a byte count"))?;
    check_artifact_limit(n)?;
    Ok(n)
}

fn check_artifact_limit(n: usize) -> Result<(), String> {
    if n > MAX_ARTIFACT_BYTES {
        return Err(format!(
            "max_artifact_bytes is at most {MAX_ARTIFACT_BYTES} (128 MiB), not {n}"
        ));
    }
    Ok(())
}

/// The largest `memory_mb` (1 TiB): past it the byte count would overflow.
pub const MAX_MEMORY_MB: u64 = 1 << 20;
/// The largest `cpus`.
pub const MAX_CPUS: f64 = 1024.0;

/// The key of the egress proxy's image in [`Config::images`].
pub const EGRESS_PROXY: &str = "egress proxy";

/// How to get `image` where no registry can be reached.
pub fn build_hint(key: &str, image: &str) -> String {
    if key == EGRESS_PROXY {
        format!("scripts/build-egress-image target/release/bus {image}")
    } else {
        format!("scripts/build-test-image {image}")
    }
}

impl Default for WorkerSection {
    fn default() -> Self {
        WorkerSection {
            allowed_images: Vec::new(),
            output_cap_bytes: 1 << 20,
            max_artifact_bytes: DEFAULT_MAX_ARTIFACT_BYTES,
            max_files_bytes: DEFAULT_MAX_FILES_BYTES,
            default_timeout_seconds: 300,
            max_timeout_seconds: 3600,
            capacity: 64,
            pool_max_idle_seconds: 600,
            egress_image: DEFAULT_EGRESS_IMAGE.into(),
            egress_network: "bridge".into(),
            egress_upstream_ca: None,
        }
    }
}

/// Limits and hardening: `[defaults]` and every profile's overrides.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SandboxSettings {
    pub memory_mb: Option<u64>,
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    /// `none`, `bridge`, or a network name.
    pub network: Option<String>,
    pub read_only_root: Option<bool>,
    /// Size of the tmpfs at /tmp (0: no tmpfs).
    pub tmpfs_size_mb: Option<u64>,
    /// `uid[:gid]` or a name; empty keeps the image's user.
    pub user: Option<String>,
    pub drop_capabilities: Option<bool>,
    pub no_new_privileges: Option<bool>,
}

impl SandboxSettings {
    /// `self`, with `over`'s keys where set.
    pub fn overlay(&self, over: &SandboxSettings) -> SandboxSettings {
        SandboxSettings {
            memory_mb: over.memory_mb.or(self.memory_mb),
            cpus: over.cpus.or(self.cpus),
            pids_limit: over.pids_limit.or(self.pids_limit),
            network: over.network.clone().or_else(|| self.network.clone()),
            read_only_root: over.read_only_root.or(self.read_only_root),
            tmpfs_size_mb: over.tmpfs_size_mb.or(self.tmpfs_size_mb),
            user: over.user.clone().or_else(|| self.user.clone()),
            drop_capabilities: over.drop_capabilities.or(self.drop_capabilities),
            no_new_privileges: over.no_new_privileges.or(self.no_new_privileges),
        }
    }

    /// A limit of 0 (or less) would remove it: refused. There is no "no
    /// limit" setting; a run without one could take the host down.
    fn check_limits(&self, section: &str) -> Result<(), String> {
        let zero = |key: &str| {
            format!("{section}.{key} must be greater than 0 (0 would remove the limit; there is no unlimited setting)")
        };
        if self.memory_mb == Some(0) {
            return Err(zero("memory_mb"));
        }
        if self.memory_mb.is_some_and(|m| m > MAX_MEMORY_MB) {
            return Err(format!(
                "{section}.memory_mb must be at most {MAX_MEMORY_MB} (1 TiB)"
            ));
        }
        if self.cpus.is_some_and(|c| c > MAX_CPUS) {
            return Err(format!("{section}.cpus must be at most {MAX_CPUS}"));
        }
        if self.cpus.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
            return Err(zero("cpus"));
        }
        if self.cpus.is_some_and(|c| c * 1e9 < 1.0e7) {
            return Err(format!("{section}.cpus must be at least 0.01"));
        }
        if self.pids_limit.is_some_and(|p| p <= 0) {
            return Err(zero("pids_limit"));
        }
        Ok(())
    }

    /// The container limits these settings give (built-in defaults where
    /// unset: 512 MiB, 1 CPU, 256 processes).
    pub fn limits(&self) -> Limits {
        Limits {
            memory_bytes: Some((self.memory_mb.unwrap_or(512) as i64) << 20).filter(|m| *m > 0),
            nano_cpus: Some((self.cpus.unwrap_or(1.0) * 1e9) as i64).filter(|c| *c > 0),
            pids: Some(self.pids_limit.unwrap_or(256)).filter(|p| *p > 0),
        }
    }

    /// The hardening these settings give (everything on where unset).
    pub fn hardening(&self) -> Hardening {
        let mut tmpfs = BTreeMap::new();
        let size = self.tmpfs_size_mb.unwrap_or(64);
        if size > 0 {
            tmpfs.insert("/tmp".to_owned(), format!("rw,nosuid,nodev,size={size}m"));
        }
        Hardening {
            drop_all_capabilities: self.drop_capabilities.unwrap_or(true),
            no_new_privileges: self.no_new_privileges.unwrap_or(true),
            read_only_root: self.read_only_root.unwrap_or(true),
            tmpfs,
            user: self.user.clone().filter(|u| !u.trim().is_empty()),
        }
    }

    pub fn network(&self) -> String {
        self.network
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "none".into())
    }
}

/// A bind mount of a profile.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    pub source: String,
    pub target: String,
    #[serde(default = "yes")]
    pub read_only: bool,
}

fn yes() -> bool {
    true
}

impl From<&Mount> for MountSpec {
    fn from(m: &Mount) -> Self {
        MountSpec {
            source: m.source.clone(),
            target: m.target.clone(),
            read_only: m.read_only,
        }
    }
}

/// One entry of a profile's `egress` allowlist.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum EgressRoute {
    /// `"host:port"`.
    Host(String),
    /// `{ host = "api.example.com:443", header = "Authorization",
    /// value_env = "EXAMPLE_TOKEN", prefix = "Bearer " }`: the proxy sets
    /// the header from the worker's environment; the agent never sees it.
    Credential(CredentialRoute),
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CredentialRoute {
    pub host: String,
    pub header: String,
    pub value_env: String,
    #[serde(default)]
    pub prefix: String,
}

impl CredentialRoute {
    /// The proxy's route (names only; the value is resolved later), or
    /// why this one is not valid.
    pub fn credential(&self) -> Result<crate::egress::Credential, String> {
        if self.prefix.contains(['\r', '\n']) {
            return Err("prefix must be one line".into());
        }
        let mut c = crate::egress::Credential::parse(&format!(
            "{}={}={}",
            self.host, self.header, self.value_env
        ))?;
        c.prefix = self.prefix.clone();
        Ok(c)
    }
}

impl EgressRoute {
    pub fn host(&self) -> &str {
        match self {
            EgressRoute::Host(h) => h,
            EgressRoute::Credential(c) => &c.host,
        }
    }
}

/// `[profiles.NAME]`: a named kind of run.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub image: Option<String>,
    /// Command when the request gives none (else the image's CMD).
    #[serde(default)]
    pub command: Vec<String>,
    pub timeout_seconds: Option<u64>,
    pub workdir: Option<String>,
    /// Environment set in every run of the profile.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Worker environment variables copied into the container by name (the
    /// value is visible inside the run: for trusted environments only).
    #[serde(default)]
    pub forward_env: Vec<String>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Started, idle containers kept ready for this profile's runs (0: every
    /// run starts a container cold).
    #[serde(default)]
    pub pool_size: usize,
    /// A sandboxed network: the run gets an internal network of its own
    /// whose only way out is an egress proxy allowing these `host:port`
    /// entries (and credential routes). Empty: `network` decides.
    #[serde(default)]
    pub egress: Vec<EgressRoute>,
    /// Overrides of `[defaults]` (any of its keys).
    #[serde(flatten)]
    pub sandbox: SandboxSettings,
}

/// The image `bus dev` and the default codex profile use: built offline by
/// `scripts/build-test-image`.
pub const DEFAULT_IMAGE: &str = "bus-busybox:latest";

/// The egress proxy's image: built offline by `scripts/build-egress-image`.
pub const DEFAULT_EGRESS_IMAGE: &str = "bus-egress:latest";

impl Config {
    /// Parses TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
        config.check().map_err(|e| format!("{origin}: {e}"))?;
        Ok(config)
    }

    /// `--pool-size N`: every profile keeps `n` warm containers.
    pub fn set_pool_size(&mut self, n: usize) {
        // A sandboxed run needs a network of its own: never pooled.
        for profile in self.profiles.values_mut().filter(|p| p.egress.is_empty()) {
            profile.pool_size = n;
        }
    }

    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Config::parse(&text, &path.display().to_string())
    }

    /// With no file: a `codex` profile on the default image.
    pub fn builtin() -> Config {
        let mut profiles = BTreeMap::new();
        profiles.insert(
            "codex".to_owned(),
            Profile {
                image: Some(DEFAULT_IMAGE.into()),
                ..Profile::default()
            },
        );
        Config {
            profiles,
            ..Config::default()
        }
    }

    /// The images runs need, by profile name; sandboxed profiles need
    /// the proxy's image too (under `egress proxy`: no profile name has
    /// a space).
    pub fn images(&self) -> BTreeMap<String, String> {
        let mut images: BTreeMap<String, String> = self
            .profiles
            .iter()
            .filter_map(|(name, p)| p.image.clone().map(|i| (name.clone(), i)))
            .collect();
        if self.profiles.values().any(|p| !p.egress.is_empty()) {
            images.insert(EGRESS_PROXY.into(), self.worker.egress_image.clone());
        }
        images
    }

    fn check(&self) -> Result<(), String> {
        if self.worker.max_timeout_seconds == 0 {
            return Err("worker.max_timeout_seconds must be greater than 0".into());
        }
        if self.worker.capacity == 0 {
            return Err("worker.capacity must be greater than 0".into());
        }
        check_artifact_limit(self.worker.max_artifact_bytes).map_err(|e| format!("worker.{e}"))?;
        if self.worker.pool_max_idle_seconds == 0 {
            return Err("worker.pool_max_idle_seconds must be greater than 0".into());
        }
        if self.worker.egress_image.trim().is_empty()
            || self.worker.egress_network.trim().is_empty()
        {
            return Err("worker.egress_image and worker.egress_network must not be empty".into());
        }
        for pattern in &self.worker.allowed_images {
            glob::Pattern::new(pattern)
                .map_err(|e| format!("worker.allowed_images: {pattern:?}: {e}"))?;
        }
        self.defaults.check_limits("defaults")?;
        for (name, p) in &self.profiles {
            p.sandbox.check_limits(&format!("profiles.{name}"))?;
            crate::contract::validate_name(name).map_err(|_| {
                format!("profile name {name:?}: use lowercase letters, digits, '_' and '-'")
            })?;
            if !p.egress.is_empty() {
                if p.pool_size > 0 {
                    return Err(format!(
                        "profiles.{name}: pool_size cannot be used with egress (a sandboxed run gets a network of its own)"
                    ));
                }
                if p.sandbox.network.as_deref().is_some_and(|n| n != "none") {
                    return Err(format!("profiles.{name}: give network or egress, not both"));
                }
                for route in &p.egress {
                    crate::egress::policy::parse_host_port(route.host())
                        .map_err(|e| format!("profiles.{name}.egress: {e}"))?;
                    if let EgressRoute::Credential(c) = route {
                        c.credential()
                            .map_err(|e| format!("profiles.{name}.egress: {e}"))?;
                    }
                }
            }
            for m in &p.mounts {
                if !m.source.starts_with('/') || !m.target.starts_with('/') {
                    return Err(format!(
                        "profiles.{name}.mounts: source and target must be absolute paths"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_overlays() {
        let c = Config::parse(
            r#"
            [worker]
            allowed_images = ["bus-*"]
            [defaults]
            memory_mb = 256
            [profiles.codex]
            image = "x:1"
            memory_mb = 128
            network = "bridge"
            mounts = [{ source = "/a", target = "/b" }]
            "#,
            "test",
        )
        .unwrap();
        let p = &c.profiles["codex"];
        let s = c.defaults.overlay(&p.sandbox);
        assert_eq!(s.limits().memory_bytes, Some(128 << 20));
        assert_eq!(s.network(), "bridge");
        assert!(p.mounts[0].read_only);
        assert!(s.hardening().drop_all_capabilities);
        assert_eq!(c.defaults.limits().memory_bytes, Some(256 << 20));
    }

    #[test]
    fn the_shipped_config_parses() {
        let c = Config::parse(include_str!("../config.toml"), "config.toml").unwrap();
        assert_eq!(c.profiles["codex"].image.as_deref(), Some(DEFAULT_IMAGE));
        assert_eq!(c.worker.capacity, 64);
    }

    #[test]
    fn typos_are_errors() {
        assert!(Config::parse("[profiles.codex]\nmemroy_mb = 1", "t").is_err());
        assert!(Config::parse("[worker]\ncapacity = 0", "t").is_err());
        assert!(Config::parse(
            "[profiles.codex]\nmounts = [{source=\"rel\", target=\"/x\"}]",
            "t"
        )
        .is_err());
        for bad in [
            "egress = [\"example.com\"]",
            "egress = [\"a.test:443\"]\nnetwork = \"bridge\"",
            "egress = [\"a.test:443\"]\npool_size = 1",
            "egress = [{ host = \"a.test:443\", header = \"Host\", value_env = \"T\" }]",
            "egress = [{ host = \"a.test:443\", header = \"X\", value_env = \"T\", valeu = 1 }]",
        ] {
            let text = format!("[profiles.agent]\nimage = \"x\"\n{bad}");
            assert!(Config::parse(&text, "t").is_err(), "{bad}");
        }
    }

    #[test]
    fn egress_profiles() {
        let mut c = Config::parse(
            r#"
            [profiles.agent]
            image = "x"
            egress = ["a.test:443", { host = "api.test:443", header = "Authorization", value_env = "TOKEN", prefix = "Bearer " }]
            "#,
            "t",
        )
        .unwrap();
        let p = &c.profiles["agent"];
        assert_eq!(p.egress[0], EgressRoute::Host("a.test:443".into()));
        assert!(
            matches!(&p.egress[1], EgressRoute::Credential(r) if r.value_env == "TOKEN" && r.prefix == "Bearer ")
        );
        c.set_pool_size(2);
        assert_eq!(
            c.profiles["agent"].pool_size, 0,
            "sandboxed profiles are never pooled"
        );
        assert_eq!(c.worker.egress_image, DEFAULT_EGRESS_IMAGE);
    }
}
