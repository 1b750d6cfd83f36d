//! From a `run.request` payload to a [`RunPlan`]: which image and command,
//! with which limits, hardening, mounts and environment. Mounts and
//! forwarded environment belong to profiles only, never to explicit-image
//! runs.

use crate::config::{Config, Profile, SandboxSettings};
use crate::contract::run::valid_run_id;
pub use crate::contract::RunRequest;
use crate::contract::{ErrorDetail, ErrorType};
use crate::planning::sandbox::{plan_sandbox, SandboxPlan, Secrets};
use crate::runtime::{labels, ContainerSpec, FileSpec, MountSpec};
use std::collections::BTreeMap;
use std::time::Duration;

/// What a worker knows that plans depend on.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub worker_id: String,
    pub config: Config,
    /// Extra mounts and environment of the `codex` profile (CLI flags).
    pub codex_mounts: Vec<MountSpec>,
    pub codex_env: Vec<(String, String)>,
}

/// Everything needed to run one request.
#[derive(Debug, Clone)]
pub struct RunPlan {
    pub run_id: String,
    pub owner: String,
    pub profile: Option<String>,
    pub image: String,
    /// The command as the result reports it (`args`).
    pub args: Vec<String>,
    pub timeout: Duration,
    /// Fed to stdin, then closed.
    pub stdin: Option<Vec<u8>>,
    pub interactive: bool,
    /// How the result and the output events carry the output.
    pub output_encoding: crate::contract::OutputEncoding,
    pub spec: ContainerSpec,
    /// The run's own network and egress proxy (a profile with `egress`).
    pub sandbox: Option<SandboxPlan>,
    /// Values the run's output must not show (credential and forwarded
    /// secrets), replaced by `[redacted]`.
    pub secrets: Secrets,
    /// Written into the container before its command starts.
    pub files: Vec<FileSpec>,
    /// Archived after its command ends (under its writable locations).
    pub artifacts: Vec<String>,
}

/// A run's workdir when it gives files or artifacts and neither it nor
/// its profile names one.
pub const DEFAULT_WORKDIR: &str = "/workspace";

/// Where a run's files and artifacts may be: under its workdir (a
/// per-run volume unless a mount is there) or `/tmp` (a per-run volume
/// instead of the tmpfs, so it outlives the command's exit).
fn place_files(
    files: &[(String, Vec<u8>, u32)],
    artifacts: &[String],
    spec: &mut ContainerSpec,
) -> Result<Vec<FileSpec>, ErrorDetail> {
    if files.is_empty() && artifacts.is_empty() {
        return Ok(Vec::new());
    }
    let dir = spec
        .workdir
        .clone()
        .unwrap_or_else(|| DEFAULT_WORKDIR.to_owned());
    if !crate::contract::run::plain_absolute_path(&dir) {
        let what = if files.is_empty() {
            "artifacts"
        } else {
            "files"
        };
        return Err(bad(format!(
            "{what} need a workdir that is a plain absolute path below /, not {dir:?}"
        )));
    }
    let under = |path: &str, root: &str| {
        root != "/"
            && path
                .strip_prefix(root.trim_end_matches('/'))
                .is_some_and(|rest| rest.starts_with('/'))
    };
    let (mut in_tmp, mut in_workdir) = (false, false);
    for (path, _, _) in files {
        if under(path, "/tmp") {
            in_tmp = true;
        } else if under(path, &dir) {
            in_workdir = true;
        } else {
            return Err(bad(format!(
                "files: {path} is outside the run's writable locations ({dir} and /tmp)"
            )));
        }
    }
    for path in artifacts {
        if under(path, "/tmp") || path == "/tmp" {
            in_tmp = true;
        } else if under(path, &dir) || *path == dir {
            in_workdir = true;
        } else {
            return Err(bad(format!(
                "artifacts: {path} is outside the run's writable locations ({dir} and /tmp)"
            )));
        }
    }
    let mounted = |target: &str| {
        spec.mounts
            .iter()
            .any(|m| m.target == target || under(target, &m.target))
    };
    if in_workdir {
        spec.workdir = Some(dir.clone());
        if !mounted(&dir) && !spec.volumes.contains(&dir) {
            spec.volumes.push(dir.clone());
        }
    }
    if in_tmp && !mounted("/tmp") {
        spec.hardening.tmpfs.remove("/tmp");
        spec.volumes.push("/tmp".to_owned());
    }
    // A numeric run user owns its files (a named one would need the
    // image's passwd file: root, readable by mode).
    let owner = spec.hardening.user.as_deref().and_then(|u| {
        let (uid, gid) = u.split_once(':').unwrap_or((u, "0"));
        Some((uid.parse().ok()?, gid.parse().ok()?))
    });
    Ok(files
        .iter()
        .map(|(path, data, mode)| FileSpec {
            owner,
            path: path.clone(),
            data: data.clone(),
            mode: *mode,
            root: Some(if under(path, "/tmp") {
                "/tmp".to_owned()
            } else {
                dir.clone()
            }),
        })
        .collect())
}

fn bad(message: impl Into<String>) -> ErrorDetail {
    ErrorDetail::new(ErrorType::BadRequest, message)
}

fn check_env_name(name: &str) -> Result<(), ErrorDetail> {
    crate::egress::policy::check_env_name(name).map_err(|_| {
        bad(format!(
            "env name {name:?} must be letters, digits and '_' (not starting with a digit)"
        ))
    })
}

/// Plans a run for `owner` (the effective owner), or says why not.
pub fn plan_run(req: &RunRequest, owner: &str, w: &WorkerSettings) -> Result<RunPlan, ErrorDetail> {
    let config = &w.config;
    req.spec.check()?;
    let run_id = match &req.run_id {
        Some(id) if !id.is_empty() => {
            if !valid_run_id(id) {
                return Err(bad(
                    "run_id may only use letters, digits, '_' and '-' (at most 128)",
                ));
            }
            id.clone()
        }
        _ => crate::contract::run::new_run_id(),
    };
    let command = req.spec.words();
    let (profile_name, profile, image, sandbox): (
        Option<String>,
        Option<&Profile>,
        String,
        SandboxSettings,
    ) = match (&req.spec.profile, &req.spec.image) {
        (Some(_), Some(_)) => return Err(bad("give profile or image, not both")),
        (None, None) => return Err(bad("profile or image is required")),
        (Some(name), None) => {
            let p = config.profiles.get(name).ok_or_else(|| {
                let known: Vec<&str> = config.profiles.keys().map(String::as_str).collect();
                bad(format!(
                    "unknown profile {name:?} (this worker has: {})",
                    known.join(", ")
                ))
            })?;
            let image = p.image.clone().ok_or_else(|| {
                ErrorDetail::new(
                    ErrorType::BackendError,
                    format!("profile {name} has no image configured"),
                )
            })?;
            (
                Some(name.clone()),
                Some(p),
                image,
                config.defaults.overlay(&p.sandbox),
            )
        }
        (None, Some(image)) => {
            if image.trim().is_empty() {
                return Err(bad("image must not be empty"));
            }
            if command.is_empty() {
                return Err(bad("an image run needs a command"));
            }
            let allowed = config
                .worker
                .allowed_images
                .iter()
                .filter_map(|p| glob::Pattern::new(p).ok())
                .any(|p| p.matches(image));
            if !allowed {
                return Err(ErrorDetail::new(
                    ErrorType::Forbidden,
                    format!("image {image:?} is not in this worker's allowed images"),
                ));
            }
            (None, None, image.clone(), config.defaults.clone())
        }
    };
    let command = if command.is_empty() {
        profile.map(|p| p.command.clone()).unwrap_or_default()
    } else {
        command
    };
    let max = config.worker.max_timeout_seconds;
    let timeout = match req.spec.timeout_seconds {
        Some(t) if t < 0 => return Err(bad("timeout_seconds must not be negative")),
        Some(t) if t > 0 => (t as u64).min(max),
        _ => profile
            .and_then(|p| p.timeout_seconds)
            .unwrap_or(config.worker.default_timeout_seconds)
            .min(max),
    };
    let mut env: Vec<(String, String)> = Vec::new();
    let mut mounts = Vec::new();
    let mut workdir = req.spec.workdir.clone();
    let mut secrets = Secrets::default();
    if let Some(p) = profile {
        env.extend(p.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        for name in &p.forward_env {
            if let Ok(value) = std::env::var(name) {
                secrets.add(value.clone());
                env.push((name.clone(), value));
            }
        }
        mounts.extend(p.mounts.iter().map(MountSpec::from));
        workdir = workdir.or_else(|| p.workdir.clone());
        if profile_name.as_deref() == Some("codex") {
            mounts.extend(w.codex_mounts.iter().cloned());
            env.extend(w.codex_env.iter().cloned());
        }
    }
    for (k, v) in req.spec.env.iter().flatten() {
        check_env_name(k)?;
        env.retain(|(name, _)| name != k);
        env.push((k.clone(), v.clone()));
    }
    if let Some(dir) = &workdir {
        if !dir.starts_with('/') {
            return Err(bad("workdir must be an absolute path"));
        }
    }
    let mut container_labels = BTreeMap::new();
    container_labels.insert(labels::MANAGED.to_owned(), "true".to_owned());
    container_labels.insert(labels::RUN_ID.to_owned(), run_id.clone());
    container_labels.insert(labels::OWNER.to_owned(), owner.to_owned());
    container_labels.insert(labels::WORKER_ID.to_owned(), w.worker_id.clone());
    container_labels.insert(
        labels::PROCESS.to_owned(),
        crate::runtime::liveness::ProcessMark::current().label(),
    );
    let deadline = time::OffsetDateTime::now_utc().unix_timestamp()
        + (timeout + crate::contract::RUN_GRACE.as_secs()) as i64;
    container_labels.insert(labels::DEADLINE.to_owned(), deadline.to_string());
    let egress = match (profile, &profile_name) {
        (Some(p), Some(name)) if !p.egress.is_empty() => {
            let (plan, values) = plan_sandbox(name, &p.egress, config, &container_labels, &run_id)?;
            for v in values.values() {
                secrets.add(v);
            }
            Some(plan)
        }
        _ => None,
    };
    let mut spec = ContainerSpec {
        name: Some(format!("bus-{run_id}")),
        image: image.clone(),
        command: command.clone(),
        env,
        workdir,
        labels: container_labels,
        stdin: req.spec.interactive() || req.spec.has_stdin(),
        limits: sandbox.limits(),
        hardening: sandbox.hardening(),
        network: sandbox.network(),
        mounts,
        entrypoint: None,
        dns: vec![],
        volumes: vec![],
    };
    let artifacts = req.spec.artifact_paths()?;
    let file_bytes = req.spec.file_bytes()?;
    let total: usize = file_bytes.iter().map(|(_, data, _)| data.len()).sum();
    let most = config.worker.max_files_bytes;
    if total > most {
        return Err(ErrorDetail::new(
            ErrorType::PayloadTooLarge,
            format!("files: {total} bytes in all; this worker takes at most {most}"),
        ));
    }
    let files = place_files(&file_bytes, &artifacts, &mut spec)?;
    Ok(RunPlan {
        run_id,
        owner: owner.to_owned(),
        profile: profile_name,
        image,
        args: command,
        timeout: Duration::from_secs(timeout),
        stdin: req.spec.stdin_bytes()?,
        output_encoding: req.spec.output_encoding(),
        interactive: req.spec.interactive(),
        spec,
        sandbox: egress,
        secrets,
        files,
        artifacts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(allowed: &[&str]) -> WorkerSettings {
        let mut config = Config::builtin();
        config.worker.allowed_images = allowed.iter().map(|s| s.to_string()).collect();
        WorkerSettings {
            worker_id: "w".into(),
            config,
            codex_mounts: vec![],
            codex_env: vec![],
        }
    }

    fn req(v: serde_json::Value) -> RunRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn profiles_images_and_refusals() {
        let w = settings(&["bus-*"]);
        let p = plan_run(&req(serde_json::json!({"profile":"codex","args":["sh","-c","x"],"timeout_seconds":99999})), "a", &w).unwrap();
        assert_eq!(p.image, crate::config::DEFAULT_IMAGE);
        assert_eq!(p.args, ["sh", "-c", "x"]);
        assert_eq!(p.timeout, Duration::from_secs(3600), "capped");
        assert_eq!(p.spec.labels[labels::OWNER], "a");
        assert!(p.spec.hardening.read_only_root && p.spec.hardening.drop_all_capabilities);
        assert_eq!(p.spec.network, "none");
        let e = |v| plan_run(&req(v), "a", &w).unwrap_err().kind;
        assert_eq!(
            e(serde_json::json!({"image":"alpine","command":["x"]})),
            ErrorType::Forbidden
        );
        assert_eq!(
            e(serde_json::json!({"image":"bus-x"})),
            ErrorType::BadRequest
        );
        assert_eq!(e(serde_json::json!({})), ErrorType::BadRequest);
        assert_eq!(
            e(serde_json::json!({"profile":"nope"})),
            ErrorType::BadRequest
        );
        assert_eq!(
            e(serde_json::json!({"profile":"codex","image":"bus-x"})),
            ErrorType::BadRequest
        );
        assert_eq!(
            e(serde_json::json!({"profile":"codex","timeout_seconds":-1})),
            ErrorType::BadRequest
        );
        assert_eq!(
            e(serde_json::json!({"profile":"codex","env":{"A=B":"x"}})),
            ErrorType::BadRequest
        );
        assert_eq!(
            e(serde_json::json!({"profile":"codex","run_id":"../x"})),
            ErrorType::BadRequest
        );
        assert!(plan_run(
            &req(serde_json::json!({"image":"bus-x","command":["x"]})),
            "a",
            &w
        )
        .unwrap()
        .spec
        .mounts
        .is_empty());
    }
}
