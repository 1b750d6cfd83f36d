//! Merging the replies a router gathered from every live worker into one
//! (`status` and `runner.*`); see `spec/container-events.md`.

use crate::contract::replies::{
    DeleteRequest, InputRequest, RunnerDetails, RunnerStatus, RunnerStatusReply, StatusReply,
    StatusRequest,
};
use crate::contract::wire::{RunnerDeleteRequest, RunnerStartRequest, RunnerStatusRequest};
use crate::contract::{ErrorType, Reply, RunRequest, RunnerState, WireRequest};
use std::collections::BTreeMap;

/// One worker's part of a gathered request.
#[derive(Debug, Clone)]
pub struct Part<R> {
    pub worker_id: String,
    pub reply: Reply<R>,
}

/// A kind whose gathered replies merge into one.
pub trait Gathered: WireRequest {
    /// Merges gathered replies. `missing` are live workers that did not
    /// answer; `provider` names the backend (for a runner status with no
    /// replies).
    fn merge(
        parts: Vec<Part<Self::Reply>>,
        missing: &[String],
        provider: &str,
    ) -> Reply<Self::Reply>;
}

/// Kinds answered by one worker: the first reply stands.
fn first<R>(parts: Vec<Part<R>>) -> Reply<R> {
    parts
        .into_iter()
        .next()
        .map(|p| p.reply)
        .unwrap_or_else(|| Reply::error(ErrorType::Timeout, "no worker answered"))
}

impl Gathered for RunRequest {
    fn merge(parts: Vec<Part<Self::Reply>>, _: &[String], _: &str) -> Reply<Self::Reply> {
        first(parts)
    }
}

impl Gathered for crate::contract::replies::RunQuery {
    fn merge(parts: Vec<Part<Self::Reply>>, _: &[String], _: &str) -> Reply<Self::Reply> {
        first(parts)
    }
}

impl Gathered for InputRequest {
    fn merge(parts: Vec<Part<Self::Reply>>, _: &[String], _: &str) -> Reply<Self::Reply> {
        first(parts)
    }
}

impl Gathered for DeleteRequest {
    fn merge(parts: Vec<Part<Self::Reply>>, _: &[String], _: &str) -> Reply<Self::Reply> {
        first(parts)
    }
}

impl Gathered for StatusRequest {
    /// The live runs of every worker, one list.
    fn merge(parts: Vec<Part<StatusReply>>, _: &[String], _: &str) -> Reply<StatusReply> {
        let items = parts
            .into_iter()
            .filter_map(|p| p.reply.into_result().ok())
            .flat_map(|r| r.items)
            .collect();
        Reply::Ok(StatusReply { items })
    }
}

impl Gathered for RunnerStatusRequest {
    /// `ready` if any worker is ready, with each worker under
    /// `details.workers`.
    fn merge(
        parts: Vec<Part<RunnerStatusReply>>,
        missing: &[String],
        provider: &str,
    ) -> Reply<RunnerStatusReply> {
        let live = parts.len() + missing.len();
        let mut best = RunnerState::Unavailable;
        let mut providers = Vec::new();
        let mut workers = BTreeMap::new();
        for p in parts {
            let status = match p.reply {
                Reply::Ok(r) => r.status,
                Reply::Err(e) => RunnerStatus {
                    state: RunnerState::Unavailable,
                    error: Some(e.message),
                    ..Default::default()
                },
            };
            best = best.max(status.state);
            providers.extend(status.provider.clone());
            workers.insert(p.worker_id, status);
        }
        for m in missing {
            workers.insert(
                m.clone(),
                RunnerStatus {
                    state: RunnerState::Unavailable,
                    error: Some("no reply before the deadline".into()),
                    ..Default::default()
                },
            );
        }
        Reply::Ok(RunnerStatusReply {
            status: RunnerStatus {
                state: best,
                provider: Some(
                    providers
                        .into_iter()
                        .next()
                        .unwrap_or_else(|| provider.to_owned()),
                ),
                details: Some(RunnerDetails {
                    workers,
                    live_workers: Some(live),
                    ..Default::default()
                }),
                error: None,
            },
        })
    }
}

/// Runner start and delete: every live worker must have done it.
fn all_done<R>(parts: Vec<Part<R>>, missing: &[String], provider: &str, done: R) -> Reply<R> {
    let answered = parts.len();
    if let Some(e) = parts.into_iter().find_map(|p| p.reply.into_result().err()) {
        return Reply::Err(e);
    }
    if answered == 0 {
        return Reply::error(
            ErrorType::Unavailable,
            format!("no live {provider} worker answered"),
        );
    }
    if !missing.is_empty() {
        return Reply::error(
            ErrorType::Timeout,
            format!(
                "workers did not answer before the deadline: {}",
                missing.join(", ")
            ),
        );
    }
    Reply::Ok(done)
}

impl Gathered for RunnerStartRequest {
    fn merge(
        parts: Vec<Part<Self::Reply>>,
        missing: &[String],
        provider: &str,
    ) -> Reply<Self::Reply> {
        all_done(parts, missing, provider, Default::default())
    }
}

impl Gathered for RunnerDeleteRequest {
    fn merge(
        parts: Vec<Part<Self::Reply>>,
        missing: &[String],
        provider: &str,
    ) -> Reply<Self::Reply> {
        let done = crate::contract::replies::RunnerDeleted {
            deleted: true,
            removed: None,
        };
        all_done(parts, missing, provider, done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::encode;
    use crate::contract::replies::StatusItem;
    use crate::contract::RunState;

    fn status(state: RunnerState) -> Reply<RunnerStatusReply> {
        Reply::Ok(RunnerStatusReply {
            status: RunnerStatus {
                state,
                provider: Some("docker".into()),
                ..Default::default()
            },
        })
    }

    #[test]
    fn runner_status_is_the_best_of_the_workers() {
        let parts = vec![
            Part {
                worker_id: "w1".into(),
                reply: status(RunnerState::Stopped),
            },
            Part {
                worker_id: "w2".into(),
                reply: status(RunnerState::Ready),
            },
        ];
        let m = encode(&RunnerStatusRequest::merge(parts, &["w3".into()], "docker"));
        assert_eq!(m["status"]["state"], "ready");
        assert_eq!(
            m["status"]["details"]["workers"]["w3"]["state"],
            "unavailable"
        );
        assert_eq!(m["status"]["details"]["live_workers"], 3);
    }

    #[test]
    fn status_items_are_concatenated_and_runner_requests_need_everyone() {
        let item = |id: &str| StatusItem {
            id: id.into(),
            state: RunState::Running,
            owner_account_id: None,
            details: None,
        };
        let parts = ["1", "2"]
            .iter()
            .map(|id| Part {
                worker_id: format!("w{id}"),
                reply: Reply::Ok(StatusReply {
                    items: vec![item(id)],
                }),
            })
            .collect();
        let merged = StatusRequest::merge(parts, &[], "docker")
            .into_result()
            .unwrap();
        assert_eq!(merged.items.len(), 2);
        let none = RunnerDeleteRequest::merge(vec![], &[], "docker");
        assert_eq!(none.as_error().unwrap().kind, ErrorType::Unavailable);
        let late = RunnerStartRequest::merge(
            vec![Part {
                worker_id: "w1".into(),
                reply: Reply::Ok(Default::default()),
            }],
            &["w2".into()],
            "docker",
        );
        assert_eq!(late.as_error().unwrap().kind, ErrorType::Timeout);
    }
}
