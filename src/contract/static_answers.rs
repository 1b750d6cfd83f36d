//! The static provider: deterministic answers for every kind, with no
//! engine (self-tests; `--provider static`, `--backend static`).

use super::Kind;
use crate::contract::{now_rfc3339, ErrorDetail, ErrorType};
use serde_json::{json, Value};

/// The words of a run request's command (`command`, else `args`).
pub fn command_words(payload: &Value) -> Vec<String> {
    let words = payload
        .get("command")
        .filter(|c| c.is_array())
        .or_else(|| payload.get("args"))
        .and_then(Value::as_array);
    words
        .map(|w| {
            w.iter()
                .map(|s| {
                    s.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| s.to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The static answer to a `kind` request made for `owner`.
pub fn answer(kind: Kind, payload: &Value, owner: &str, worker_id: &str) -> Value {
    let run_id = payload
        .get("run_id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("run_{}", uuid::Uuid::now_v7().simple()));
    match kind {
        Kind::Run => {
            let words = command_words(payload);
            let now = now_rfc3339();
            json!({
                "run_id": run_id,
                "owner_account_id": owner,
                "worker_id": worker_id,
                "runner_name": "static",
                "image": payload.get("image").and_then(Value::as_str).or_else(|| payload.get("profile").and_then(Value::as_str)).unwrap_or("static"),
                "args": words,
                "exit_code": 0,
                "state": "succeeded",
                "stdout": format!("static: {}", words.join(" ")),
                "stderr": "",
                "stdout_truncated": false,
                "stderr_truncated": false,
                "duration_ms": 0,
                "started_at": now,
                "finished_at": now,
                "runtime": {"provider": "static"},
            })
        }
        Kind::Input => {
            let bytes = payload
                .get("data")
                .and_then(Value::as_str)
                .map(str::len)
                .unwrap_or(0);
            json!({"accepted": true, "run_id": run_id, "bytes": bytes, "worker_id": worker_id})
        }
        Kind::Delete => {
            json!({"error": ErrorDetail::new(ErrorType::NotFound, format!("no run {run_id}"))})
        }
        Kind::Status => json!({"items": [], "worker_id": worker_id}),
        Kind::RunnerStatus => {
            json!({"status": {"state": "ready", "provider": "static", "details": {}}, "worker_id": worker_id})
        }
        Kind::RunnerStart => json!({"accepted": true, "action": "start", "worker_id": worker_id}),
        Kind::RunnerDelete => json!({"deleted": true, "worker_id": worker_id}),
    }
}
