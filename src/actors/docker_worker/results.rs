//! A run's result is never dropped on the way: the worker keeps each
//! final result until the API provider says it is recorded
//! (`run.recorded`), sending it again after 2 s, 4 s, … (at most every
//! 30 s) — so a bus outage, a router restart or a reply lost in a
//! departed stream only delays it — and answers `run.query` from it.
//!
//! No message exceeds the bus's limit: a result too large for one
//! (`Broker::max_payload`, less room for the envelope) goes as ordered
//! `run.result.part` events carrying the base64 of its JSON, then a
//! `run.response` with the result's fields but its output, and
//! `result_parts`.

use super::durable::{mark_done, Task};
use super::DockerWorker;
use crate::actors::bus::Incoming;
use crate::contract::parts::parts_of;
use crate::contract::replies::{RunFate, RunQuery, RunQueryAnswer};
use crate::contract::{
    encode, Kind, Malformed, Publication, Reply, ResultPart, RunRecorded, RunResult, WorkerReply,
};
use actix::prelude::*;
use std::time::{Duration, Instant};

/// The first resend comes this long after the first send.
const FIRST_RESEND: Duration = Duration::from_secs(2);
/// Resends are never further apart than this.
const MAX_RESEND: Duration = Duration::from_secs(30);

/// A final result kept until it is recorded.
pub(super) struct Retained {
    pub owner: String,
    pub reply: Reply<RunResult>,
    /// Everyone who asked for this run (a retry, a redelivery).
    pub correlation_ids: Vec<String>,
    next: Instant,
    backoff: Duration,
    until: Instant,
    /// Its parts and response are being published now: a send asked for
    /// meanwhile (a new caller) comes after, and a resend falls due
    /// only once it is done, so sends of a large result never overlap.
    sending: bool,
    /// A send was asked for while one was going.
    again: bool,
}

/// The payloads that carry `payload` on a bus whose messages hold at
/// most `limit` bytes: parts (when it does not fit) and the response.
pub fn split(
    payload: serde_json::Value,
    result: &RunResult,
    limit: Option<usize>,
) -> (Vec<ResultPart>, serde_json::Value) {
    let bytes = serde_json::to_vec(&payload).expect("a payload serialises");
    let Some(pieces) = parts_of(&bytes, limit) else {
        return (Vec::new(), payload);
    };
    let parts = pieces.len() as u32;
    let parts: Vec<ResultPart> = pieces
        .into_iter()
        .enumerate()
        .map(|(i, data_base64)| ResultPart {
            run_id: result.run_id.clone(),
            owner_account_id: result.owner_account_id.clone(),
            worker_id: result.worker_id.clone(),
            part: i as u32,
            parts,
            data_base64,
        })
        .collect();
    let summary = RunResult {
        stdout: String::new(),
        stderr: String::new(),
        details: None,
        artifacts_tar_base64: None,
        result_parts: Some(parts.len() as u32),
        ..result.clone()
    };
    let mut summary = encode(&summary);
    if let (Some(w), Some(obj)) = (payload.get("worker_id"), summary.as_object_mut()) {
        obj.insert("worker_id".into(), w.clone());
    }
    (parts, summary)
}

impl DockerWorker {
    /// A run's final reply: settles a durable claim first (if another
    /// worker recorded the run lost meanwhile, nothing is sent), then
    /// keeps the result and sends it.
    pub(super) fn finish_run(
        &mut self,
        run_id: String,
        owner: String,
        correlation_ids: Vec<String>,
        reply: Reply<RunResult>,
        task: Option<Task>,
        ctx: &mut Context<Self>,
    ) {
        self.settles += 1;
        self.settling.insert(run_id.clone());
        let broker = self.publisher.broker().clone();
        let claim = task.as_ref().and_then(|t| {
            t.claim
                .as_ref()
                .map(|h| (h.key.clone(), h.record.clone(), h.revision))
        });
        ctx.spawn(
            async move {
                match claim {
                    Some((key, record, revision)) => {
                        mark_done(&broker, &key, &record, revision).await
                    }
                    None => true,
                }
            }
            .into_actor(self)
            .map(move |send, act, ctx| {
                act.settles -= 1;
                act.settling.remove(&run_id);
                if send {
                    let now = Instant::now();
                    act.retained.insert(
                        run_id.clone(),
                        Retained {
                            owner,
                            reply,
                            correlation_ids,
                            next: now + FIRST_RESEND,
                            backoff: FIRST_RESEND,
                            until: now + act.config.result_retention,
                            sending: false,
                            again: false,
                        },
                    );
                    act.send_result(&run_id, ctx);
                }
                if let Some(task) = task {
                    super::durable::settle("acknowledge a durable request", task.ack.done());
                }
            }),
        );
    }

    /// Publishes a kept result to everyone who asked for it, in order:
    /// its parts, then its response.
    pub(super) fn send_result(&mut self, run_id: &str, ctx: &mut Context<Self>) {
        let Some(kept) = self.retained.get_mut(run_id) else {
            return;
        };
        if kept.sending {
            kept.again = true;
            return;
        }
        kept.sending = true;
        let payload = WorkerReply {
            worker_id: Some(self.config.worker_id().to_owned()),
            reply: kept.reply.clone(),
        }
        .to_payload();
        let (parts, response) = match &kept.reply {
            Reply::Ok(result) => split(payload, result, self.publisher.broker().max_payload()),
            Reply::Err(_) => (Vec::new(), payload),
        };
        let prefix = self.config.prefix.clone();
        let mut publications = Vec::new();
        for corr in &kept.correlation_ids {
            for part in &parts {
                publications.push(
                    Publication::new(format!("{prefix}.run.result.part"), encode(part))
                        .with_correlation(corr.clone()),
                );
            }
            publications.push(
                Publication::new(Kind::Run.response(&prefix), response.clone())
                    .with_correlation(corr.clone()),
            );
        }
        let publisher = self.publisher.clone();
        let run_id = run_id.to_owned();
        ctx.spawn(
            async move {
                for p in publications {
                    if let Err(e) = publisher.publish(p).await {
                        tracing::warn!(run_id = %run_id, error = %e, "a result was not sent; it is sent again later");
                        break;
                    }
                }
                run_id
            }
            .into_actor(self)
            .map(|run_id, act, ctx| {
                let Some(kept) = act.retained.get_mut(&run_id) else {
                    return;
                };
                kept.sending = false;
                // A resend is due a backoff after this send ended.
                kept.next = kept.next.max(Instant::now() + kept.backoff);
                if std::mem::take(&mut kept.again) {
                    act.send_result(&run_id, ctx);
                }
            }),
        );
    }

    /// Sends again what is due; forgets what is past its keeping.
    pub(super) fn resend_due(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        self.retained.retain(|run_id, kept| {
            let keep = kept.until > now;
            if !keep {
                tracing::warn!(run_id = %run_id, "a result was never recorded by the API provider; forgetting it");
            }
            keep
        });
        let due: Vec<String> = self
            .retained
            .iter_mut()
            .filter(|(_, kept)| kept.next <= now && !kept.sending)
            .map(|(run_id, kept)| {
                kept.backoff = (kept.backoff * 2).min(MAX_RESEND);
                kept.next = now + kept.backoff;
                run_id.clone()
            })
            .collect();
        for run_id in due {
            tracing::debug!(run_id = %run_id, "sending a result again (not recorded yet)");
            self.send_result(&run_id, ctx);
        }
    }

    /// A request for a run this worker holds or has finished: the caller
    /// waits with the others (or gets the kept result at once). `true`
    /// when it was such a copy.
    pub(super) fn join_copy(
        &mut self,
        run_id: &str,
        owner: &str,
        correlation_id: &str,
        ctx: &mut Context<Self>,
    ) -> Option<Result<(), ()>> {
        if let Some(live) = self.sessions.get_mut(run_id) {
            if live.owner != owner {
                return Some(Err(()));
            }
            live.correlation_ids.push(correlation_id.to_owned());
            return Some(Ok(()));
        }

        let kept = self.retained.get_mut(run_id)?;
        if kept.owner != owner {
            return Some(Err(()));
        }
        kept.correlation_ids.push(correlation_id.to_owned());
        self.send_result(run_id, ctx);
        Some(Ok(()))
    }
}

impl Handler<Incoming<RunRecorded>> for DockerWorker {
    type Result = ();

    fn handle(&mut self, msg: Incoming<RunRecorded>, _: &mut Self::Context) {
        if !msg.meta.service {
            return;
        }
        let r = msg.body;
        if r.worker_id
            .as_deref()
            .is_some_and(|w| w != self.config.worker_id())
        {
            return;
        }
        if let Some(kept) = self.retained.get(&r.run_id) {
            if kept.owner == r.owner_account_id {
                self.retained.remove(&r.run_id);
            }
        }
    }
}

impl Handler<Incoming<Result<RunQuery, Malformed>>> for DockerWorker {
    type Result = ();

    fn handle(&mut self, msg: Incoming<Result<RunQuery, Malformed>>, ctx: &mut Self::Context) {
        let Some((msg, owner)) = self.admit_request(msg, ctx) else {
            return;
        };
        let q = msg.body;
        let named_me = q.worker_id.as_deref() == Some(self.config.worker_id());
        let answer = |fate, result| {
            Reply::Ok(RunQueryAnswer {
                run_id: q.run_id.clone(),
                fate,
                result,
            })
        };
        let fetching = self.fetching.get(&q.run_id).map(|f| f.owner.as_str());
        let reply = match (self.sessions.get(&q.run_id), self.retained.get(&q.run_id)) {
            (Some(live), _) if live.owner == owner => answer(RunFate::Running, None),
            _ if fetching == Some(owner.as_str()) => answer(RunFate::Running, None),
            (_, Some(kept)) if kept.owner == owner => {
                // A result too large for one message: the answer is its
                // summary, and its parts follow (as when it is sent again).
                let limit = self.publisher.broker().max_payload();
                let summary = match &kept.reply {
                    Reply::Ok(result) => {
                        let (parts, summary) = split(encode(result), result, limit);
                        (!parts.is_empty())
                            .then(|| serde_json::from_value::<RunResult>(summary).ok())
                            .flatten()
                    }
                    Reply::Err(_) => None,
                };
                match summary {
                    Some(summary) => {
                        let run_id = q.run_id.clone();
                        ctx.run_later(Duration::ZERO, move |act, ctx| {
                            act.send_result(&run_id, ctx)
                        });
                        answer(RunFate::Finished, Some(Box::new(Reply::Ok(summary))))
                    }
                    None => answer(RunFate::Finished, Some(Box::new(kept.reply.clone()))),
                }
            }
            _ if named_me => answer(RunFate::Unknown, None),
            // Not ours to say: the holder answers.
            _ => return,
        };
        self.reply::<RunQuery>(msg.meta.correlation_id, reply, ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::RunState;

    #[test]
    fn a_result_larger_than_a_message_travels_in_parts_that_rebuild_it() {
        let result = RunResult {
            run_id: "r".into(),
            owner_account_id: "a".into(),
            worker_id: "w".into(),
            state: RunState::Succeeded,
            stdout: "\u{0}".repeat(300_000),
            stderr: "e".repeat(200_000),
            ..Default::default()
        };
        let payload = encode(&result);
        let whole = serde_json::to_vec(&payload).unwrap();
        let (parts, summary) = split(payload.clone(), &result, Some(1 << 20));
        assert!(
            parts.len() >= 2,
            "{} bytes in {} parts",
            whole.len(),
            parts.len()
        );
        for p in &parts {
            assert!(
                serde_json::to_vec(&encode(p)).unwrap().len()
                    < (1 << 20) - crate::contract::parts::ENVELOPE_ROOM / 2
            );
        }
        assert!(serde_json::to_vec(&summary).unwrap().len() < 4096);
        assert_eq!(summary["result_parts"], parts.len());
        assert_eq!(summary["stdout"], "");
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let rebuilt: Vec<u8> = parts
            .iter()
            .flat_map(|p| b64.decode(&p.data_base64).unwrap())
            .collect();
        assert_eq!(rebuilt, whole);
        // What fits goes whole.
        let small = RunResult {
            stdout: "hi".into(),
            ..result.clone()
        };
        let (none, same) = split(encode(&small), &small, Some(1 << 20));
        assert!(none.is_empty());
        assert_eq!(same["stdout"], "hi");
        assert!(
            split(encode(&result), &result, None).0.is_empty(),
            "no limit, no parts"
        );
    }
}
