//! Checking backend replies before they are trusted, and merging the
//! replies gathered from several workers into one.

use crate::contract::{reply_error, Kind};
use crate::contract::{ErrorDetail, ErrorType};
use serde_json::{json, Map, Value};

fn text<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a str, String> {
    obj.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("reply has no {key}"))
}

fn flag(obj: &Map<String, Value>, key: &str) -> Result<bool, String> {
    obj.get(key)
        .and_then(Value::as_bool)
        .ok_or_else(|| format!("reply has no boolean {key}"))
}

fn same_owner(obj: &Map<String, Value>, owner: &str) -> Result<(), String> {
    let got = text(obj, "owner_account_id")?;
    if got != owner {
        return Err(format!(
            "reply is for owner {got:?}, the request was for {owner:?}"
        ));
    }
    Ok(())
}

/// Checks a backend reply to a `kind` request made for `owner`. An error
/// reply (`{"error":{type,message}}`) is valid. `Err` says what is wrong.
pub fn validate(kind: Kind, payload: &Value, owner: &str) -> Result<(), String> {
    let obj = payload.as_object().ok_or("reply is not a JSON object")?;
    if obj.contains_key("error") {
        return reply_error(payload)
            .map(|_| ())
            .ok_or_else(|| "reply has a malformed error object".to_owned());
    }
    match kind {
        Kind::Run => {
            text(obj, "run_id")?;
            text(obj, "state")?;
            same_owner(obj, owner)
        }
        Kind::Input => {
            flag(obj, "accepted")?;
            text(obj, "run_id").map(|_| ())
        }
        Kind::Delete => {
            flag(obj, "deleted")?;
            text(obj, "run_id")?;
            same_owner(obj, owner)
        }
        Kind::Status => {
            let items = obj
                .get("items")
                .and_then(Value::as_array)
                .ok_or("reply has no items array")?;
            for item in items {
                let item = item.as_object().ok_or("a status item is not an object")?;
                text(item, "id")?;
                text(item, "state")?;
                if item.contains_key("owner_account_id") {
                    same_owner(item, owner)?;
                }
            }
            Ok(())
        }
        Kind::RunnerStatus => {
            let status = obj
                .get("status")
                .and_then(Value::as_object)
                .ok_or("reply has no status object")?;
            text(status, "state").map(|_| ())
        }
        Kind::RunnerStart => flag(obj, "accepted").map(|_| ()),
        Kind::RunnerDelete => flag(obj, "deleted").map(|_| ()),
    }
}

/// One worker's part of a gathered request.
#[derive(Debug, Clone)]
pub struct Part {
    pub worker_id: String,
    pub payload: Value,
}

fn rank(state: &str) -> u8 {
    match state {
        "ready" => 3,
        "starting" => 2,
        "stopped" => 1,
        _ => 0,
    }
}

/// Merges gathered replies. `missing` are live workers that did not answer;
/// `provider` names the backend for a runner status with no replies.
pub fn merge(kind: Kind, parts: &[Part], missing: &[String], provider: &str) -> Value {
    let errors: Vec<ErrorDetail> = parts
        .iter()
        .filter_map(|p| reply_error(&p.payload))
        .collect();
    match kind {
        Kind::Status => {
            let items: Vec<Value> = parts
                .iter()
                .filter_map(|p| p.payload.get("items").and_then(Value::as_array))
                .flatten()
                .cloned()
                .collect();
            json!({ "items": items })
        }
        Kind::RunnerStatus => {
            let mut workers = Map::new();
            let mut best = "unavailable";
            let mut providers = Vec::new();
            for p in parts {
                let status = p.payload.get("status").cloned().unwrap_or_else(|| {
                    json!({"state": "unavailable", "error": reply_error(&p.payload).map(|e| e.message)})
                });
                let state = status
                    .get("state")
                    .and_then(Value::as_str)
                    .unwrap_or("unavailable");
                if rank(state) > rank(best) {
                    best = match state {
                        "ready" => "ready",
                        "starting" => "starting",
                        "stopped" => "stopped",
                        _ => "unavailable",
                    };
                }
                if let Some(pr) = status.get("provider").and_then(Value::as_str) {
                    providers.push(pr.to_owned());
                }
                workers.insert(p.worker_id.clone(), status);
            }
            for m in missing {
                workers.insert(
                    m.clone(),
                    json!({"state": "unavailable", "error": "no reply before the deadline"}),
                );
            }
            let provider = providers
                .first()
                .cloned()
                .unwrap_or_else(|| provider.to_owned());
            json!({"status": {"state": best, "provider": provider, "details": {"workers": workers, "live_workers": parts.len() + missing.len()}}})
        }
        Kind::RunnerStart | Kind::RunnerDelete => {
            if let Some(e) = errors.first() {
                return json!({ "error": e });
            }
            if parts.is_empty() {
                let e = ErrorDetail::new(
                    ErrorType::Unavailable,
                    format!("no live {provider} worker answered"),
                );
                return json!({ "error": e });
            }
            if !missing.is_empty() {
                let e = ErrorDetail::new(
                    ErrorType::Timeout,
                    format!(
                        "workers did not answer before the deadline: {}",
                        missing.join(", ")
                    ),
                );
                return json!({ "error": e });
            }
            if kind == Kind::RunnerStart {
                json!({"accepted": true, "action": "start"})
            } else {
                json!({"deleted": true})
            }
        }
        Kind::Run | Kind::Input | Kind::Delete => parts
            .first()
            .map(|p| p.payload.clone())
            .unwrap_or(Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        let ok = json!({"run_id":"r","state":"succeeded","owner_account_id":"a"});
        assert!(validate(Kind::Run, &ok, "a").is_ok());
        assert!(validate(Kind::Run, &ok, "b").unwrap_err().contains("owner"));
        assert!(validate(Kind::Run, &json!("x"), "a").is_err());
        assert!(validate(Kind::Run, &json!({"run_id":"r"}), "a").is_err());
        assert!(validate(
            Kind::Run,
            &json!({"error":{"type":"forbidden","message":"no"}}),
            "a"
        )
        .is_ok());
        assert!(validate(Kind::Run, &json!({"error":"oops"}), "a").is_err());
        assert!(validate(
            Kind::Status,
            &json!({"items":[{"id":"r","state":"running","owner_account_id":"x"}]}),
            "a"
        )
        .is_err());
        assert!(validate(Kind::RunnerStatus, &json!({"status":{"state":"ready"}}), "").is_ok());
    }

    #[test]
    fn merging() {
        let parts = vec![
            Part {
                worker_id: "w1".into(),
                payload: json!({"status":{"state":"stopped","provider":"docker"}}),
            },
            Part {
                worker_id: "w2".into(),
                payload: json!({"status":{"state":"ready","provider":"docker"}}),
            },
        ];
        let m = merge(Kind::RunnerStatus, &parts, &["w3".into()], "docker");
        assert_eq!(m["status"]["state"], "ready");
        assert_eq!(
            m["status"]["details"]["workers"]["w3"]["state"],
            "unavailable"
        );
        let items = merge(
            Kind::Status,
            &[
                Part {
                    worker_id: "a".into(),
                    payload: json!({"items":[{"id":"1"}]}),
                },
                Part {
                    worker_id: "b".into(),
                    payload: json!({"items":[{"id":"2"}]}),
                },
            ],
            &[],
            "docker",
        );
        assert_eq!(items["items"].as_array().unwrap().len(), 2);
        assert_eq!(
            merge(Kind::RunnerDelete, &[], &[], "docker")["error"]["type"],
            "unavailable"
        );
    }
}
