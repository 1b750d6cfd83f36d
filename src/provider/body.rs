//! Request bodies of the containers API, strict: unknown fields, trailing
//! data and wrong types are 400s.

use crate::http::ApiError;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// `POST /api/v1/containers/runs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    pub profile: Option<String>,
    pub image: Option<String>,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    #[serde(default, deserialize_with = "whole_number")]
    pub timeout_seconds: Option<i64>,
    pub env: Option<BTreeMap<String, String>>,
    pub stdin: Option<String>,
    pub interactive: Option<bool>,
    pub workdir: Option<String>,
    pub wait: Option<bool>,
}

/// The longest `timeout_seconds` a body may carry (a year; the server
/// caps it further).
pub const MAX_TIMEOUT_SECONDS: i64 = 365 * 24 * 3600;

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

/// Parses a JSON object body strictly: explicit nulls are refused like any
/// other wrong type, then the fields are read into `T`.
pub fn strict_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: Value = crate::http::body::parse_json(body)?;
    let Some(obj) = value.as_object() else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    if let Some((k, _)) = obj.iter().find(|(_, v)| v.is_null()) {
        return Err(ApiError::bad_request(format!("{k} must not be null")));
    }
    serde_json::from_value(value).map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))
}

impl CreateRun {
    /// Checks what the contract requires of a run body.
    pub fn validate(&self) -> Result<(), ApiError> {
        let nonempty = |s: &Option<String>| s.as_deref().is_some_and(|v| !v.trim().is_empty());
        if !nonempty(&self.profile) && !nonempty(&self.image) {
            return Err(ApiError::bad_request("profile or image is required"));
        }
        if self.profile.is_some() && self.image.is_some() {
            return Err(ApiError::bad_request("give profile or image, not both"));
        }
        if nonempty(&self.image) && self.words().is_empty() {
            return Err(ApiError::bad_request("an image run needs a command"));
        }
        if self.timeout_seconds.is_some_and(|t| t < 0) {
            return Err(ApiError::bad_request(
                "timeout_seconds must not be negative",
            ));
        }
        if self
            .timeout_seconds
            .is_some_and(|t| t > MAX_TIMEOUT_SECONDS)
        {
            return Err(ApiError::bad_request(format!(
                "timeout_seconds must be at most {MAX_TIMEOUT_SECONDS}"
            )));
        }
        if let Some(env) = &self.env {
            for name in env.keys() {
                let ok = !name.is_empty()
                    && !name.starts_with(|c: char| c.is_ascii_digit())
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !ok {
                    return Err(ApiError::bad_request(format!(
                        "env name {name:?} must be letters, digits and '_'"
                    )));
                }
            }
        }
        if self.workdir.as_deref().is_some_and(|w| !w.starts_with('/')) {
            return Err(ApiError::bad_request("workdir must be an absolute path"));
        }
        Ok(())
    }

    /// The command: `command`, else `args`.
    pub fn words(&self) -> Vec<String> {
        self.command
            .clone()
            .or_else(|| self.args.clone())
            .unwrap_or_default()
    }

    /// The `run.request` payload for `run_id` and `owner`.
    pub fn payload(&self, run_id: &str, owner: &str) -> Value {
        let mut p = Map::new();
        p.insert("run_id".into(), json!(run_id));
        p.insert("owner_account_id".into(), json!(owner));
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                p.insert(k.into(), v);
            }
        };
        put("profile", self.profile.clone().map(Value::from));
        put("image", self.image.clone().map(Value::from));
        put("command", self.command.clone().map(|c| json!(c)));
        put("args", self.args.clone().map(|c| json!(c)));
        put("timeout_seconds", self.timeout_seconds.map(Value::from));
        put("env", self.env.clone().map(|e| json!(e)));
        put("stdin", self.stdin.clone().map(Value::from));
        put("interactive", self.interactive.map(Value::from));
        put("workdir", self.workdir.clone().map(Value::from));
        Value::Object(p)
    }
}

/// `POST /api/v1/containers/runs/{run_id}/input`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub data: Option<String>,
    #[serde(default)]
    pub eof: bool,
}
