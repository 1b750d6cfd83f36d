//! The API provider with a mock backend in its seat: the ledger, usage
//! and the run table as a run's answer arrives (or does not).

use super::backend::{Ask, Backend};
use super::messages::{CreateRun, Created};
use super::usage::{Usage, UsageData};
use super::*;
use crate::actors::bus::{Incoming, Meta};
use crate::contract::replies::{DeleteRequest, Deleted, InputRequest, StatusRequest};
use crate::contract::wire::{RunnerDeleteRequest, RunnerStartRequest, RunnerStatusRequest};
use crate::contract::{
    ErrorDetail, ErrorType, Reply, RunRequest, RunResult, RunSpec, RunStarted, RunState,
    WireRequest,
};
use crate::store::sqlite::SqliteStore;
use std::sync::{Arc, Mutex};

/// How the mock answers a run.
#[derive(Clone, Copy)]
enum RunAnswer {
    Succeed,
    /// No reply before the deadline (after a moment).
    Timeout,
    /// Never (the run stays in flight).
    Hold,
}

struct MockBackend {
    run: RunAnswer,
    deletes: Arc<Mutex<Vec<DeleteRequest>>>,
}

impl Actor for MockBackend {
    type Context = Context<Self>;
}

impl Handler<Ask<RunRequest>> for MockBackend {
    type Result = ResponseFuture<Result<Reply<RunResult>, ErrorDetail>>;
    fn handle(&mut self, ask: Ask<RunRequest>, _: &mut Self::Context) -> Self::Result {
        let answer = self.run;
        Box::pin(async move {
            match answer {
                RunAnswer::Succeed => Ok(Reply::Ok(RunResult {
                    run_id: ask.body.run_id.clone().unwrap(),
                    owner_account_id: ask.owner.clone(),
                    worker_id: "w-mock".into(),
                    state: RunState::Succeeded,
                    exit_code: Some(0),
                    duration_ms: 1500,
                    stdout: "mocked".into(),
                    ..Default::default()
                })),
                RunAnswer::Timeout => {
                    actix_rt::time::sleep(Duration::from_millis(100)).await;
                    Err(ErrorDetail::new(ErrorType::Timeout, "no reply"))
                }
                RunAnswer::Hold => futures::future::pending().await,
            }
        })
    }
}

impl Handler<Ask<DeleteRequest>> for MockBackend {
    type Result = Result<Reply<Deleted>, ErrorDetail>;
    fn handle(&mut self, ask: Ask<DeleteRequest>, _: &mut Self::Context) -> Self::Result {
        self.deletes.lock().unwrap().push(ask.body.clone());
        Ok(Reply::Ok(Deleted {
            deleted: true,
            run_id: ask.body.run_id,
            owner_account_id: ask.owner,
        }))
    }
}

macro_rules! static_answers {
    ($($q:ty),*) => {$(
        impl Handler<Ask<$q>> for MockBackend {
            type Result = Result<Reply<<$q as WireRequest>::Reply>, ErrorDetail>;
            fn handle(&mut self, ask: Ask<$q>, _: &mut Self::Context) -> Self::Result {
                Ok(ask.body.static_answer(&ask.owner, "w-mock"))
            }
        }
    )*};
}

static_answers!(
    InputRequest,
    StatusRequest,
    RunnerStatusRequest,
    RunnerStartRequest,
    RunnerDeleteRequest
);

struct Rig {
    provider: Addr<ApiProvider>,
    store: SharedStore,
    usage: Arc<Mutex<Vec<usage::UsageRecord>>>,
    deletes: Arc<Mutex<Vec<DeleteRequest>>>,
}

fn rig(run: RunAnswer, max_concurrent_runs: usize) -> Rig {
    let deletes = Arc::new(Mutex::new(Vec::new()));
    let backend = MockBackend {
        run,
        deletes: deletes.clone(),
    }
    .start();
    let store: SharedStore = Arc::new(SqliteStore::memory().unwrap());
    let usage = Arc::new(Mutex::new(Vec::new()));
    let config = ProviderConfig {
        instance_id: "test".into(),
        request_timeout: Duration::from_secs(60),
        default_timeout: Duration::from_secs(5),
        max_concurrent_runs,
        output_cap: 1 << 20,
    };
    let provider = ApiProvider::new(
        Backend::of("mock", backend),
        store.clone(),
        Usage::Memory(usage.clone()),
        billing::Billing::None,
        config,
        ProviderMetrics::register(&Metrics::new()),
    )
    .start();
    Rig {
        provider,
        store,
        usage,
        deletes,
    }
}

fn create(wait: bool) -> CreateRun {
    CreateRun {
        owner: "alice".into(),
        spec: RunSpec {
            profile: Some("codex".into()),
            args: Some(vec!["true".into()]),
            ..Default::default()
        },
        wait,
    }
}

#[actix_rt::test]
async fn a_run_is_recorded_and_its_usage_follows_in_order() {
    let r = rig(RunAnswer::Succeed, 0);
    let Created::Done(result) = r.provider.send(create(true)).await.unwrap().unwrap() else {
        panic!("the run waited for its end");
    };
    assert_eq!(result.stdout, "mocked");
    let record = r.store.get(&result.run_id).await.unwrap().unwrap();
    assert_eq!(record.state, RunState::Succeeded);
    let usage = r.usage.lock().unwrap();
    let kinds: Vec<&str> = usage.iter().map(|u| u.event_type).collect();
    assert_eq!(kinds, ["container_run_requested", "container_run_finished"]);
    match &usage[1].data {
        UsageData::Finished { meters, .. } => {
            assert_eq!(
                meters.bus_container_runtime_seconds,
                Some(2),
                "1.5 s rounds up"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[actix_rt::test]
async fn no_reply_by_the_deadline_cancels_the_run_on_its_worker_and_records_it_lost() {
    let r = rig(RunAnswer::Timeout, 0);
    let answer = r.provider.send(create(false)).await.unwrap().unwrap();
    let Created::Accepted(run_id) = answer else {
        panic!("accepted at once");
    };
    // Its worker is known from run.started.
    r.provider.do_send(Incoming {
        meta: Meta {
            id: "evt_1".into(),
            name: "bus.containers.run.started".into(),
            correlation_id: None,
            identity_id: "worker".into(),
            service: true,
            time: String::new(),
            ack: None,
        },
        body: RunStarted {
            run_id: run_id.clone(),
            owner_account_id: "alice".into(),
            worker_id: "w-mock".into(),
            container_id: "c".into(),
        },
    });
    let mut state = RunState::Running;
    for _ in 0..100 {
        state = r.store.get(&run_id).await.unwrap().unwrap().state;
        if state != RunState::Running {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state, RunState::Lost);
    let deletes = r.deletes.lock().unwrap();
    assert_eq!(deletes.len(), 1, "cancelled on its worker");
    assert_eq!(deletes[0].worker_id.as_deref(), Some("w-mock"));
    let usage = r.usage.lock().unwrap();
    assert_eq!(usage.last().unwrap().event_type, "container_run_failed");
}

#[actix_rt::test]
async fn the_per_account_limit_counts_runs_in_flight() {
    let r = rig(RunAnswer::Hold, 1);
    let first = r.provider.send(create(false)).await.unwrap();
    assert!(matches!(first, Ok(Created::Accepted(_))));
    let second = r.provider.send(create(false)).await.unwrap();
    match second {
        Err(ProviderError::RateLimited { retry_after, .. }) => assert_eq!(retry_after, 1),
        other => panic!("{other:?}"),
    }
    let theirs = CreateRun {
        owner: "bob".into(),
        ..create(false)
    };
    assert!(
        r.provider.send(theirs).await.unwrap().is_ok(),
        "another account has its own limit"
    );
}

#[actix_rt::test]
async fn a_bad_run_is_refused_before_anything_is_recorded() {
    let r = rig(RunAnswer::Succeed, 0);
    let bad = CreateRun {
        spec: RunSpec {
            image: Some("busybox".into()),
            ..Default::default()
        },
        ..create(true)
    };
    match r.provider.send(bad).await.unwrap() {
        Err(ProviderError::Refused(e)) => assert_eq!(e.kind, ErrorType::BadRequest),
        other => panic!("{other:?}"),
    }
    assert!(r.usage.lock().unwrap().is_empty());
    let page = r.store.list("alice", 10, None).await.unwrap();
    assert!(page.items.is_empty());
}
