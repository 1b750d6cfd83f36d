//! The request and reply payloads of the per-run and gathered kinds
//! (`input`, `delete`, `status`, `runner.*`), and [`Reply`]: a reply is
//! either its payload or `{"error":{...}}`.
//!
//! Every reply a worker sends also names it (`worker_id` beside the
//! payload's own fields, [`WorkerReply`]): the router's gather needs it;
//! others ignore it.

use super::{ErrorBody, ErrorDetail, ErrorType, RunState};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Why a payload could not be read as its contract type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

/// A reply payload: `T`, or the contract's error body.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply<T> {
    Ok(T),
    Err(ErrorDetail),
}

impl<T: Serialize> Serialize for Reply<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Reply::Ok(t) => t.serialize(s),
            Reply::Err(e) => e.body().serialize(s),
        }
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Reply<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        Reply::decode(&value).map_err(serde::de::Error::custom)
    }
}

impl<T> Reply<T> {
    pub fn error(kind: ErrorType, message: impl Into<String>) -> Self {
        Reply::Err(ErrorDetail::new(kind, message))
    }

    pub fn into_result(self) -> Result<T, ErrorDetail> {
        match self {
            Reply::Ok(t) => Ok(t),
            Reply::Err(e) => Err(e),
        }
    }

    pub fn as_error(&self) -> Option<&ErrorDetail> {
        match self {
            Reply::Ok(_) => None,
            Reply::Err(e) => Some(e),
        }
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Reply<U> {
        match self {
            Reply::Ok(t) => Reply::Ok(f(t)),
            Reply::Err(e) => Reply::Err(e),
        }
    }
}

impl<T> From<Result<T, ErrorDetail>> for Reply<T> {
    fn from(r: Result<T, ErrorDetail>) -> Self {
        match r {
            Ok(t) => Reply::Ok(t),
            Err(e) => Reply::Err(e),
        }
    }
}

impl<T: DeserializeOwned> Reply<T> {
    /// Reads a reply payload; `Err` says what is malformed (an object
    /// with an `error` key must carry a valid error).
    pub fn decode(payload: &Value) -> Result<Self, Malformed> {
        let Some(obj) = payload.as_object() else {
            return Err(Malformed("reply is not a JSON object".into()));
        };
        if obj.contains_key("error") {
            return ErrorBody::deserialize(payload)
                .map(|b| Reply::Err(b.error))
                .map_err(|_| Malformed("reply has a malformed error object".into()));
        }
        T::deserialize(payload)
            .map(Reply::Ok)
            .map_err(|e| Malformed(format!("malformed reply: {e}")))
    }
}

/// A reply as a worker sends it: the reply, and the worker beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerReply<T> {
    pub worker_id: Option<String>,
    pub reply: Reply<T>,
}

impl<T: Serialize> WorkerReply<T> {
    pub fn to_payload(&self) -> Value {
        let mut payload = encode(&self.reply);
        if let (Some(w), Some(obj)) = (&self.worker_id, payload.as_object_mut()) {
            let named = obj
                .get("worker_id")
                .and_then(Value::as_str)
                .is_some_and(|v| !v.is_empty());
            if !named {
                obj.insert("worker_id".into(), Value::String(w.clone()));
            }
        }
        payload
    }
}

impl<T: DeserializeOwned> WorkerReply<T> {
    pub fn decode(payload: &Value) -> Result<Self, Malformed> {
        Ok(WorkerReply {
            worker_id: payload
                .get("worker_id")
                .and_then(Value::as_str)
                .filter(|w| !w.is_empty())
                .map(str::to_owned),
            reply: Reply::decode(payload)?,
        })
    }
}

/// Reads a payload as `T` (unknown fields are ignored: the bus contract
/// is lenient).
pub fn decode<T: DeserializeOwned>(payload: &Value) -> Result<T, Malformed> {
    let read = |v: &Value| T::deserialize(v).map_err(|e| Malformed(e.to_string()));
    if payload.is_null() {
        // A missing payload reads as an empty object.
        return read(&Value::Object(Default::default()));
    }
    read(payload)
}

/// Writes a payload.
pub fn encode<T: Serialize>(payload: &T) -> Value {
    serde_json::to_value(payload).expect("contract types always serialise")
}

/// `input.request`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InputRequest {
    pub run_id: String,
    #[serde(default, deserialize_with = "super::lenient::null_default")]
    pub owner_account_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    #[serde(default)]
    pub data: Option<String>,
    /// Ours: base64 of raw bytes, instead of `data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    #[serde(default, deserialize_with = "super::lenient::null_default")]
    pub eof: bool,
}

impl InputRequest {
    /// The bytes to write (`data` or `data_base64`).
    pub fn bytes(&self) -> Result<Vec<u8>, ErrorDetail> {
        super::bytes::one_of(
            self.data.as_deref(),
            self.data_base64.as_deref(),
            ("data", "data_base64"),
        )
        .map(Option::unwrap_or_default)
    }

    /// Carries `bytes` as text when they are UTF-8 (what every worker
    /// reads), else as base64.
    pub fn with_bytes(mut self, bytes: Option<Vec<u8>>) -> Self {
        match bytes.map(String::from_utf8) {
            Some(Ok(text)) => self.data = Some(text),
            Some(Err(e)) => self.data_base64 = Some(super::bytes::base64_encode(e.as_bytes())),
            None => {}
        }
        self
    }
}

/// `input.response`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InputAccepted {
    pub accepted: bool,
    pub run_id: String,
    #[serde(default, deserialize_with = "super::lenient::null_default")]
    pub bytes: usize,
}

/// `run.query.request` (ours): what became of a run. Broadcast; the
/// worker holding the run (running, or its result kept) answers, and a
/// worker named in `worker_id` answers `unknown` when it has no such run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunQuery {
    pub run_id: String,
    #[serde(default)]
    pub owner_account_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
}

/// Where a queried run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunFate {
    Running,
    Finished,
    Unknown,
}

/// `run.query.response`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunQueryAnswer {
    pub run_id: String,
    pub fate: RunFate,
    /// With `finished`: the run's reply, as `run.response` carried it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<Reply<crate::contract::RunResult>>>,
}

/// `delete.request`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeleteRequest {
    pub run_id: String,
    #[serde(default, deserialize_with = "super::lenient::null_default")]
    pub owner_account_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
}

/// `delete.response`: the run is cancelled; its result still follows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Deleted {
    pub deleted: bool,
    pub run_id: String,
    pub owner_account_id: String,
}

/// `status.request`: an account's live runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusRequest {
    #[serde(default, deserialize_with = "super::lenient::null_default")]
    pub owner_account_id: String,
}

/// Where and since when a live run runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusDetails {
    #[serde(default)]
    pub worker_id: Option<String>,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
}

/// One live run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusItem {
    pub id: String,
    pub state: RunState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_account_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
}

/// `status.response`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub items: Vec<StatusItem>,
}

/// A runner request (`runner.status|start|delete.request`): no fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunnerRequest {}

/// A runner's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerState {
    #[default]
    Unavailable,
    Stopped,
    Starting,
    Ready,
}

impl RunnerState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunnerState::Ready => "ready",
            RunnerState::Starting => "starting",
            RunnerState::Stopped => "stopped",
            RunnerState::Unavailable => "unavailable",
        }
    }
}

/// Whether a profile's image is on the worker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfileImage {
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A runner's details: one worker's (provider, engine, images) or, merged
/// by a router, each live worker's status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunnerDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_version: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub profiles: BTreeMap<String, ProfileImage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub workers: BTreeMap<String, RunnerStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_workers: Option<usize>,
}

/// A runner's status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunnerStatus {
    pub state: RunnerState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<RunnerDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `runner.status.response`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunnerStatusReply {
    pub status: RunnerStatus,
}

/// `runner.start.response`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunnerStarted {
    pub accepted: bool,
    #[serde(default = "start")]
    pub action: String,
}

fn start() -> String {
    "start".into()
}

impl Default for RunnerStarted {
    fn default() -> Self {
        RunnerStarted {
            accepted: true,
            action: start(),
        }
    }
}

/// `runner.delete.response`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunnerDeleted {
    pub deleted: bool,
    /// Containers removed (ours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_reply_is_its_payload_or_an_error() {
        let ok: Reply<InputAccepted> =
            Reply::decode(&json!({"accepted": true, "run_id": "r", "bytes": 3})).unwrap();
        assert!(matches!(ok, Reply::Ok(InputAccepted { bytes: 3, .. })));
        let err: Reply<InputAccepted> =
            Reply::decode(&json!({"error": {"type": "not_found", "message": "no"}})).unwrap();
        assert_eq!(err.as_error().unwrap().kind, ErrorType::NotFound);
        assert!(Reply::<InputAccepted>::decode(&json!({"error": "oops"})).is_err());
        assert!(Reply::<InputAccepted>::decode(&json!("x")).is_err());
        assert!(Reply::<InputAccepted>::decode(&json!({"run_id": "r"})).is_err());
        assert_eq!(
            encode(&Reply::<Deleted>::error(ErrorType::Forbidden, "no")),
            json!({"error": {"type": "forbidden", "message": "no"}})
        );
    }

    #[test]
    fn runner_status_shapes() {
        let merged = json!({"status": {"state": "ready", "provider": "docker", "details": {
            "workers": {"w1": {"state": "ready", "provider": "docker", "details": {"worker_id": "w1"}},
                        "w2": {"state": "unavailable", "error": "no reply"}},
            "live_workers": 2}}});
        let r: RunnerStatusReply = decode(&merged).unwrap();
        assert_eq!(r.status.state, RunnerState::Ready);
        assert_eq!(encode(&r), merged);
        assert!(RunnerState::Ready > RunnerState::Starting);
        assert!(RunnerState::Starting > RunnerState::Stopped);
        assert!(RunnerState::Stopped > RunnerState::Unavailable);
    }
}
