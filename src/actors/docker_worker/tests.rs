//! The worker with mocks in its seats: a session that answers as told,
//! a runner with a fixed status. No engine, no containers.

use super::seats::{RunnerSeat, Seats, SessionSeat};
use super::*;
use crate::actors::bus::requester::{first_reply, Request};
use crate::actors::container_session::{Cancel, WriteInput};
use crate::actors::runner;
use crate::broker::memory::{HubConfig, MemoryBroker};
use crate::config::Config;
use crate::contract::replies::{Deleted, InputAccepted, RunnerStatus, RunnerStatusReply};
use crate::contract::{ErrorDetail, RunResult, RunState};
use crate::metrics::{BusMetrics, Metrics};
use crate::planning::RunPlan;
use crate::runtime::fake::FakeRuntime;
use serde_json::json;
use std::sync::Mutex;
use tokio::sync::watch;

/// A session that says it started, takes input, and finishes when
/// cancelled (or at once, when `instant`).
struct MockSession {
    plan: RunPlan,
    notify: Recipient<SessionNote>,
    instant: bool,
    cancelled: Arc<Mutex<Vec<String>>>,
}

impl MockSession {
    fn finish(&self, state: RunState) {
        let result = RunResult {
            run_id: self.plan.run_id.clone(),
            owner_account_id: self.plan.owner.clone(),
            stdout: format!("mock ran {}", self.plan.args.join(" ")),
            state,
            ..Default::default()
        };
        self.notify.do_send(SessionNote::Finished {
            run_id: self.plan.run_id.clone(),
            reply: Reply::Ok(result),
        });
    }
}

impl Actor for MockSession {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        self.notify.do_send(SessionNote::Started {
            run_id: self.plan.run_id.clone(),
            container_id: "mock-container".into(),
        });
        if self.instant {
            self.finish(RunState::Succeeded);
        }
    }
}

impl Handler<Cancel> for MockSession {
    type Result = ();
    fn handle(&mut self, _: Cancel, ctx: &mut Self::Context) {
        self.cancelled
            .lock()
            .unwrap()
            .push(self.plan.run_id.clone());
        self.finish(RunState::Cancelled);
        ctx.stop();
    }
}

impl Handler<WriteInput> for MockSession {
    type Result = Result<usize, ErrorDetail>;
    fn handle(&mut self, msg: WriteInput, _: &mut Self::Context) -> Self::Result {
        Ok(msg.data.len())
    }
}

/// A runner that is always `starting`.
struct MockRunner;

impl Actor for MockRunner {
    type Context = Context<Self>;
}

impl Handler<runner::Status> for MockRunner {
    type Result = MessageResult<runner::Status>;
    fn handle(&mut self, _: runner::Status, _: &mut Self::Context) -> Self::Result {
        MessageResult(RunnerStatusReply {
            status: RunnerStatus {
                state: RunnerState::Starting,
                provider: Some("mock".into()),
                ..Default::default()
            },
        })
    }
}

impl Handler<runner::Start> for MockRunner {
    type Result = Result<crate::contract::replies::RunnerStarted, ErrorDetail>;
    fn handle(&mut self, _: runner::Start, _: &mut Self::Context) -> Self::Result {
        Ok(Default::default())
    }
}

impl Handler<runner::RemoveAll> for MockRunner {
    type Result = Result<crate::contract::replies::RunnerDeleted, ErrorDetail>;
    fn handle(&mut self, _: runner::RemoveAll, _: &mut Self::Context) -> Self::Result {
        Ok(Default::default())
    }
}

impl Handler<runner::MarkStopped> for MockRunner {
    type Result = ();
    fn handle(&mut self, _: runner::MarkStopped, _: &mut Self::Context) {}
}

struct Rig {
    api: Requester,
    plans: Arc<Mutex<Vec<RunPlan>>>,
    cancelled: Arc<Mutex<Vec<String>>>,
}

async fn rig(instant: bool) -> Rig {
    let broker: SharedBroker = Arc::new(MemoryBroker::start(
        HubConfig::default(),
        BusMetrics::register(&Metrics::new()),
    ));
    let metrics = crate::actors::bus::dispatcher::ReplyMetrics::register(&Metrics::new(), "t");
    let identity = |sub: &str| crate::actors::bus::requester::BusIdentity::service(sub);
    let settings = WorkerSettings {
        worker_id: "w-mock".into(),
        config: Config::builtin(),
        codex_mounts: vec![],
        codex_env: vec![],
    };
    let mut config = WorkerConfig::new(settings, "bus.docker");
    let plans = Arc::new(Mutex::new(Vec::new()));
    let cancelled = Arc::new(Mutex::new(Vec::new()));
    let (seen, gone) = (plans.clone(), cancelled.clone());
    config.seats = Seats {
        session: Arc::new(move |plan, _cx, notify, _pooled| {
            seen.lock().unwrap().push(plan.clone());
            let addr = MockSession {
                plan,
                notify,
                instant,
                cancelled: gone.clone(),
            }
            .start();
            SessionSeat {
                cancel: addr.clone().recipient(),
                input: addr.recipient(),
            }
        }),
        runner: Arc::new(|_, _, _| {
            let addr = MockRunner.start();
            RunnerSeat {
                status: addr.clone().recipient(),
                start: addr.clone().recipient(),
                remove_all: addr.clone().recipient(),
                stopped: addr.recipient(),
                state: watch::channel(RunnerState::Ready).1,
            }
        }),
        ..Seats::real()
    };
    let engine = Engine::Containers(Arc::new(FakeRuntime::new()));
    let publisher = Requester::new(broker.clone(), identity("worker"), metrics.clone());
    DockerWorker::start(broker.clone(), publisher, engine, config)
        .await
        .unwrap();
    Rig {
        api: Requester::new(broker, identity("api"), metrics),
        plans,
        cancelled,
    }
}

impl Rig {
    async fn ask<R: serde::de::DeserializeOwned>(
        &self,
        kind: Kind,
        payload: serde_json::Value,
    ) -> WorkerReply<R> {
        let out = self
            .api
            .request(Request::new(
                &kind.request("bus.docker"),
                payload,
                Duration::from_secs(5),
            ))
            .await
            .unwrap();
        first_reply::<R>(&out)
            .expect("a reply")
            .expect("a well-formed reply")
    }
}

#[actix_rt::test]
async fn a_run_is_planned_into_its_session_and_its_result_comes_back_signed() {
    let r = rig(true).await;
    let reply: WorkerReply<RunResult> = r
        .ask(
            Kind::Run,
            json!({"owner_account_id": "alice", "profile": "codex", "args": ["echo", "hi"]}),
        )
        .await;
    assert_eq!(reply.worker_id.as_deref(), Some("w-mock"));
    let result = reply.reply.into_result().unwrap();
    assert_eq!(result.stdout, "mock ran echo hi");
    let plans = r.plans.lock().unwrap();
    assert_eq!(plans.len(), 1);
    assert_eq!(plans[0].owner, "alice");
    assert!(
        plans[0].spec.hardening.drop_all_capabilities,
        "the session gets a hardened plan"
    );
}

#[actix_rt::test]
async fn input_and_delete_reach_the_session_holding_the_run() {
    let r = rig(false).await;
    let api = r.api.clone();
    let run = actix_rt::spawn(async move {
        let p = json!({"run_id": "run_m1", "owner_account_id": "alice", "profile": "codex", "args": ["cat"], "interactive": true});
        api.request(Request::new(
            "bus.docker.run.request",
            p,
            Duration::from_secs(5),
        ))
        .await
        .unwrap()
    });
    while r.plans.lock().unwrap().is_empty() {
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    let input: WorkerReply<InputAccepted> = r
        .ask(
            Kind::Input,
            json!({"run_id": "run_m1", "owner_account_id": "alice", "worker_id": "w-mock", "data": "hello"}),
        )
        .await;
    assert_eq!(input.reply.into_result().unwrap().bytes, 5);
    let theirs: WorkerReply<Deleted> = r
        .ask(
            Kind::Delete,
            json!({"run_id": "run_m1", "owner_account_id": "mallory", "worker_id": "w-mock"}),
        )
        .await;
    assert_eq!(
        theirs.reply.as_error().unwrap().kind,
        crate::contract::ErrorType::Forbidden
    );
    assert!(
        r.cancelled.lock().unwrap().is_empty(),
        "not cancelled for another account"
    );
    let deleted: WorkerReply<Deleted> = r
        .ask(
            Kind::Delete,
            json!({"run_id": "run_m1", "owner_account_id": "alice", "worker_id": "w-mock"}),
        )
        .await;
    assert!(deleted.reply.into_result().unwrap().deleted);
    let out = run.await.unwrap();
    let result: WorkerReply<RunResult> = first_reply(&out).unwrap().unwrap();
    assert_eq!(
        result.reply.into_result().unwrap().state,
        RunState::Cancelled
    );
    assert_eq!(*r.cancelled.lock().unwrap(), ["run_m1"]);
}

#[actix_rt::test]
async fn runner_requests_are_answered_from_the_runner_seat() {
    let r = rig(true).await;
    let status: WorkerReply<RunnerStatusReply> = r.ask(Kind::RunnerStatus, json!({})).await;
    let status = status.reply.into_result().unwrap().status;
    assert_eq!(
        (status.state, status.provider.as_deref()),
        (RunnerState::Starting, Some("mock"))
    );
}
