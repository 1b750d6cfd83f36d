//! A run on the wire: what is asked (`run.request`) and what it ended as
//! (`run.response`).
//!
//! [`RunSpec`] is what a caller asks for, the same whether it comes as a
//! REST body or inside a bus request; [`RunSpec::check`] is the one copy
//! of the rules every such request must meet (the worker's planning adds
//! what only a worker knows: profiles, allowed images, limits).

use super::bytes::{one_of, OutputEncoding};
use super::{ErrorDetail, ErrorType, RunState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The longest `timeout_seconds` a request may carry (a year; servers
/// cap it further).
pub const MAX_TIMEOUT_SECONDS: i64 = 365 * 24 * 3600;

/// What a caller asks to run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// An alias of `command` when `command` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(
        default,
        deserialize_with = "whole_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Fed to the command's stdin, then closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Ours: like `stdin`, base64 of raw bytes (one of the two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin_base64: Option<String>,
    /// Ours: how `stdout`/`stderr` and the output chunks carry the bytes
    /// (`utf8`, the default, or `base64`).
    #[serde(
        default,
        deserialize_with = "output_encoding",
        skip_serializing_if = "Option::is_none"
    )]
    pub output_encoding: Option<OutputEncoding>,
    /// Keep stdin open for input requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interactive: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Ours: files written into the container before its command starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<RunFile>>,
    /// Ours: paths archived (tar) after the command ends, kept with the
    /// run's record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<Vec<String>>,
}

/// One file of a run's `files`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunFile {
    /// Absolute, under the run's workdir or `/tmp`.
    pub path: String,
    pub content_base64: String,
    /// Octal permission bits, `"0644"` by default (at most `0777`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// The longest path of a file.
pub const MAX_FILE_PATH: usize = 512;

/// At most this many `files` in one run.
pub const MAX_FILES: usize = 1000;

/// At most this many `artifacts` paths in one run.
pub const MAX_ARTIFACTS: usize = 100;

impl RunFile {
    /// Its permission bits.
    pub fn mode_bits(&self) -> Result<u32, ErrorDetail> {
        let Some(m) = &self.mode else {
            return Ok(0o644);
        };
        u32::from_str_radix(m, 8)
            .ok()
            .filter(|b| *b <= 0o777 && !m.is_empty() && m.len() <= 4)
            .ok_or_else(|| {
                bad(format!(
                    "files: mode {m:?} of {} must be octal permission bits, at most 0777",
                    self.path
                ))
            })
    }
}

/// A file path a run may be given: absolute, each part a plain name (no
/// `.`, `..` or empty part), not the root.
pub fn plain_absolute_path(path: &str) -> bool {
    path.starts_with('/')
        && path.chars().count() <= MAX_FILE_PATH
        && !path.contains('\0')
        && path[1..]
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// The field names of a [`RunSpec`] (a strict reader refuses others).
pub const RUN_SPEC_FIELDS: &[&str] = &[
    "profile",
    "image",
    "command",
    "args",
    "timeout_seconds",
    "env",
    "stdin",
    "stdin_base64",
    "output_encoding",
    "interactive",
    "workdir",
    "files",
    "artifacts",
];

/// `"utf8"` or `"base64"`, said so when it is neither.
fn output_encoding<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<OutputEncoding>, D::Error> {
    Option::<OutputEncoding>::deserialize(d)
        .map_err(|_| serde::de::Error::custom("output_encoding must be \"utf8\" or \"base64\""))
}

/// An integer, also when written as `300.0` (JSON does not distinguish).
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    if let Some(i) = n.as_i64() {
        return Ok(Some(i));
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
        _ => Err(serde::de::Error::custom(
            "timeout_seconds must be a whole number of seconds",
        )),
    }
}

/// Environment names: letters, digits and `_`, not starting with a digit.
pub fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Run ids are `[A-Za-z0-9_-]{1,128}`; anything else names no run.
pub fn valid_run_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A fresh run id: `run_` and a UUIDv7 (unique, time-sortable).
pub fn new_run_id() -> String {
    format!("run_{}", uuid::Uuid::now_v7().simple())
}

fn bad(message: impl Into<String>) -> ErrorDetail {
    ErrorDetail::new(ErrorType::BadRequest, message)
}

impl RunSpec {
    /// The command: `command`, else `args`.
    pub fn words(&self) -> Vec<String> {
        self.command
            .clone()
            .or_else(|| self.args.clone())
            .unwrap_or_default()
    }

    pub fn interactive(&self) -> bool {
        self.interactive.unwrap_or(false)
    }

    /// The bytes fed to stdin (`stdin` or `stdin_base64`).
    pub fn stdin_bytes(&self) -> Result<Option<Vec<u8>>, ErrorDetail> {
        one_of(
            self.stdin.as_deref(),
            self.stdin_base64.as_deref(),
            ("stdin", "stdin_base64"),
        )
    }

    /// Gives stdin at all (either field).
    pub fn has_stdin(&self) -> bool {
        self.stdin.is_some() || self.stdin_base64.is_some()
    }

    /// The files with their decoded contents and modes, checked: plain
    /// absolute paths, valid base64 and modes (a later entry with the
    /// same path wins).
    pub fn file_bytes(&self) -> Result<Vec<(String, Vec<u8>, u32)>, ErrorDetail> {
        let files = self.files.as_deref().unwrap_or_default();
        if files.len() > MAX_FILES {
            return Err(bad(format!("files: at most {MAX_FILES} files")));
        }
        let mut out = Vec::with_capacity(files.len());
        for f in files {
            if !plain_absolute_path(&f.path) {
                return Err(bad(format!(
                    "files: path {:?} must be absolute, without '.', '..' or empty parts",
                    f.path
                )));
            }
            let data = super::bytes::base64_decode(
                &format!("files: content_base64 of {}", f.path),
                &f.content_base64,
            )?;
            out.push((f.path.clone(), data, f.mode_bits()?));
        }
        Ok(out)
    }

    /// How many bytes the files decode to, in all (from their base64's
    /// length, without decoding).
    pub fn files_size(&self) -> usize {
        self.files
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|f| {
                let t = f.content_base64.trim_end();
                let pad = t.bytes().rev().take_while(|b| *b == b'=').count();
                (t.len() / 4 * 3 + (t.len() % 4) * 3 / 4).saturating_sub(pad)
            })
            .sum()
    }

    /// The artifact paths, checked: plain absolute paths, each once (in
    /// the order first given).
    pub fn artifact_paths(&self) -> Result<Vec<String>, ErrorDetail> {
        let paths = self.artifacts.as_deref().unwrap_or_default();
        if paths.len() > MAX_ARTIFACTS {
            return Err(bad(format!("artifacts: at most {MAX_ARTIFACTS} paths")));
        }
        let mut out: Vec<String> = Vec::with_capacity(paths.len());
        for p in paths {
            if !plain_absolute_path(p) {
                return Err(bad(format!(
                    "artifacts: path {p:?} must be absolute, without '.', '..' or empty parts"
                )));
            }
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        Ok(out)
    }

    pub fn output_encoding(&self) -> OutputEncoding {
        self.output_encoding.unwrap_or_default()
    }

    /// What every run request must meet, wherever it comes from.
    pub fn check(&self) -> Result<(), ErrorDetail> {
        let given = |s: &Option<String>| s.as_deref().is_some_and(|v| !v.trim().is_empty());
        if self.profile.is_some() && self.image.is_some() {
            return Err(bad("give profile or image, not both"));
        }
        if !given(&self.profile) && !given(&self.image) {
            return Err(bad("profile or image is required"));
        }
        if let Some(image) = &self.image {
            if image.chars().any(char::is_whitespace) {
                return Err(bad("image must not contain whitespace"));
            }
            if self.words().is_empty() {
                return Err(bad("an image run needs a command"));
            }
        }
        match self.timeout_seconds {
            Some(t) if t < 0 => return Err(bad("timeout_seconds must not be negative")),
            Some(t) if t > MAX_TIMEOUT_SECONDS => {
                return Err(bad(format!(
                    "timeout_seconds must be at most {MAX_TIMEOUT_SECONDS}"
                )))
            }
            _ => {}
        }
        for (name, value) in self.env.iter().flatten() {
            if !valid_env_name(name) {
                return Err(bad(format!(
                    "env name {name:?} must be letters, digits and '_' (not starting with a digit)"
                )));
            }
            if value.contains('\0') {
                return Err(bad(format!("env {name} contains a NUL byte")));
            }
        }
        if self.workdir.as_deref().is_some_and(|w| !w.starts_with('/')) {
            return Err(bad("workdir must be an absolute path"));
        }
        self.stdin_bytes()?;
        self.file_bytes()?;
        self.artifact_paths()?;
        Ok(())
    }
}

/// `run.request`: a [`RunSpec`] for an owner, under a run id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunRequest {
    /// Assigned by the API provider; a request without one gets one from
    /// the worker (or, on a durable queue, from the router).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_account_id: Option<String>,
    #[serde(flatten)]
    pub spec: RunSpec,
    /// When its requester stops waiting (RFC 3339; stamped by a router
    /// on a durable queue): a run still queued then is not started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_at: Option<String>,
    /// Ours: a worker that gets the request after this (RFC 3339, its own
    /// clock) does not start it — its requester has stopped waiting for
    /// an acceptance. Not set on a durable queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept_by: Option<String>,
    /// Ours: the request is too large for one bus message; this is its
    /// summary (no `files`, `stdin` or `stdin_base64`), and the whole
    /// request comes in this many `run.payload.part`s, which the worker
    /// that takes it asks for (`run.payload.pull`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_parts: Option<u32>,
}

/// Which engine ran it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_version: Option<String>,
}

/// More about a run than the contract's fields (ours).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunDetails {
    /// A sandboxed run's egress decisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressReport>,
}

/// `run.response` of a run: how it ended and what it printed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub run_id: String,
    pub owner_account_id: String,
    #[serde(default, deserialize_with = "super::lenient::null_default")]
    pub worker_id: String,
    #[serde(default, deserialize_with = "super::lenient::null_default")]
    pub runner_name: String,
    #[serde(default, deserialize_with = "super::lenient::null_default")]
    pub image: String,
    #[serde(default, deserialize_with = "super::lenient::null_default")]
    pub args: Vec<String>,
    #[serde(default)]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    pub state: RunState,
    #[serde(default, deserialize_with = "super::lenient::null_default")]
    pub stdout: String,
    #[serde(default, deserialize_with = "super::lenient::null_default")]
    pub stderr: String,
    #[serde(default, deserialize_with = "super::lenient::null_default")]
    pub stdout_truncated: bool,
    #[serde(default, deserialize_with = "super::lenient::null_default")]
    pub stderr_truncated: bool,
    /// Ours: `base64` when `stdout`/`stderr` are base64 of the exact bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_encoding: Option<OutputEncoding>,
    /// Ours: bytes of `stdout` that were not UTF-8 were replaced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdout_lossy: bool,
    /// Ours: likewise for `stderr`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stderr_lossy: bool,
    #[serde(default, deserialize_with = "super::lenient::null_default")]
    pub duration_ms: u64,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub finished_at: Option<String>,
    #[serde(default, deserialize_with = "super::lenient::null_default")]
    pub runtime: RuntimeInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Why a run ended as it did when its fields cannot say (`lost`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<RunDetails>,
    /// Ours: what became of the run's `artifacts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<ArtifactsSummary>,
    /// Ours, on the bus only: the artifacts' tar archive, base64. The API
    /// provider keeps it beside the run's record and takes it out of the
    /// result it records and answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts_tar_base64: Option<String>,
    /// Ours: this result is too large for one bus message; it travels as
    /// this many `run.result.part` events (the whole result, in order),
    /// and this message carries its fields without its output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_parts: Option<u32>,
}

/// `artifacts` of a result: which paths were archived, the archive's
/// size, the paths that did not exist, and whether the archive stopped
/// at its size limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArtifactsSummary {
    pub paths: Vec<String>,
    pub bytes: u64,
    #[serde(default)]
    pub missing: Vec<String>,
    #[serde(default)]
    pub truncated: bool,
    /// Why no archive was kept (the engine or the store failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One decision line of a sandboxed run's egress proxy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EgressDecision {
    pub ts: String,
    /// `allow` or `deny`.
    pub decision: String,
    pub method: String,
    pub host: String,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// A credential route's header was set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub credential: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// How often a run went to one destination, and whether it was let through.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EgressDestination {
    pub host: String,
    pub port: u16,
    pub decision: String,
    pub count: u64,
}

/// `details.egress`: what a sandboxed run's proxy let through and refused.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EgressReport {
    pub allowlist: Vec<String>,
    pub allowed: u64,
    pub denied: u64,
    pub destinations: Vec<EgressDestination>,
    /// The first decisions, verbatim.
    pub log: Vec<EgressDecision>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub log_truncated: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Connections from outside the run's network, not served.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refused_clients: u64,
    /// The proxy stopped before the run ended: egress stopped working
    /// part way through.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub proxy_exited_early: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl RunResult {
    /// The answer for a run whose worker went away mid-run: its outcome
    /// is unknown, and it is never run again.
    pub fn lost(request: &RunRequest, run_id: &str, owner: &str, worker_id: &str) -> Self {
        RunResult {
            run_id: run_id.to_owned(),
            owner_account_id: owner.to_owned(),
            worker_id: worker_id.to_owned(),
            image: request
                .spec
                .image
                .clone()
                .or_else(|| request.spec.profile.clone())
                .unwrap_or_default(),
            args: request.spec.words(),
            state: RunState::Lost,
            finished_at: Some(super::now_rfc3339()),
            reason: Some(format!(
                "worker {worker_id} stopped while the run was in flight; its outcome is unknown and it is not run again"
            )),
            ..RunResult::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_request_reads_leniently_and_writes_only_what_it_has() {
        let r: RunRequest = serde_json::from_value(json!({
            "run_id": "run_1", "owner_account_id": "a", "profile": "codex",
            "args": ["sh"], "timeout_seconds": 300.0, "from_another_program": true
        }))
        .unwrap();
        assert_eq!(r.spec.timeout_seconds, Some(300));
        assert_eq!(r.spec.words(), ["sh"]);
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"run_id": "run_1", "owner_account_id": "a", "profile": "codex", "args": ["sh"], "timeout_seconds": 300})
        );
        assert!(serde_json::from_value::<RunRequest>(json!({"timeout_seconds": 1.5})).is_err());
    }

    #[test]
    fn the_rules_of_every_run_request() {
        let spec = |v| serde_json::from_value::<RunSpec>(v).unwrap().check();
        assert!(spec(json!({"profile": "codex"})).is_ok());
        for bad in [
            json!({}),
            json!({"profile": " "}),
            json!({"profile": "codex", "image": "x"}),
            json!({"image": "x"}),
            json!({"image": "a b", "command": ["x"]}),
            json!({"profile": "codex", "timeout_seconds": -1}),
            json!({"profile": "codex", "timeout_seconds": MAX_TIMEOUT_SECONDS + 1}),
            json!({"profile": "codex", "env": {"1A": "x"}}),
            json!({"profile": "codex", "env": {"A": "x\u{0}"}}),
            json!({"profile": "codex", "workdir": "rel"}),
        ] {
            assert_eq!(
                spec(bad.clone()).unwrap_err().kind,
                ErrorType::BadRequest,
                "{bad}"
            );
        }
    }

    #[test]
    fn a_result_round_trips() {
        let r = RunResult {
            run_id: "r".into(),
            owner_account_id: "a".into(),
            state: RunState::Succeeded,
            exit_code: Some(0),
            runtime: RuntimeInfo {
                provider: "docker".into(),
                engine_version: None,
            },
            ..Default::default()
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["runtime"], json!({"provider": "docker"}));
        assert_eq!(v["started_at"], serde_json::Value::Null);
        assert_eq!(serde_json::from_value::<RunResult>(v).unwrap(), r);
    }
}
