//! The API provider with a mock backend in its seat: the ledger, usage
//! and the run table as a run's answer arrives, arrives twice, or does
//! not arrive; its worker accepting, vanishing, missing its deadline.

use super::backend::{Ask, Backend, NotSent, Recorded, RunReply, Submit, Withdraw, Withdrawn};
use super::messages::{CreateRun, Created};
use super::usage::{Usage, UsageData};
use super::*;
use crate::actors::bus::{Incoming, Meta};
use crate::contract::replies::{
    DeleteRequest, Deleted, InputRequest, RunFate, RunQuery, RunQueryAnswer, StatusItem,
    StatusReply, StatusRequest,
};
use crate::contract::wire::{RunnerDeleteRequest, RunnerStartRequest, RunnerStatusRequest};
use crate::contract::{
    ErrorDetail, ErrorType, Reply, RouterHeartbeat, RunAccepted, RunRecorded, RunResult, RunSpec,
    RunState, WireRequest, WorkerReply,
};
use crate::store::sqlite::SqliteStore;
use std::sync::{Arc, Mutex};

/// How the mock answers a run.
#[derive(Clone, Copy, PartialEq)]
enum Worker {
    /// Runs it and answers at once.
    Succeeds,
    /// Never hears of it.
    Absent,
    /// Takes it and keeps it running (the test says what else happens).
    Holds,
}

#[derive(Default)]
struct Seen {
    submitted: Vec<(String, Recipient<RunReply>)>,
    deletes: Vec<DeleteRequest>,
    queries: Vec<RunQuery>,
    recorded: Vec<RunRecorded>,
    statuses: usize,
}

struct MockBackend {
    worker: Worker,
    seen: Arc<Mutex<Seen>>,
}

fn meta(corr: &str) -> Meta {
    Meta {
        id: "evt_test".into(),
        name: "test".into(),
        correlation_id: Some(corr.into()),
        identity_id: "worker".into(),
        service: true,
        time: String::new(),
        ack: None,
    }
}

fn success(run_id: &str, owner: &str) -> WorkerReply<RunResult> {
    WorkerReply {
        worker_id: Some("w-mock".into()),
        reply: Reply::Ok(RunResult {
            run_id: run_id.into(),
            owner_account_id: owner.into(),
            worker_id: "w-mock".into(),
            state: RunState::Succeeded,
            exit_code: Some(0),
            duration_ms: 1500,
            stdout: "mocked".into(),
            ..Default::default()
        }),
    }
}

impl Actor for MockBackend {
    type Context = Context<Self>;
}

impl Handler<Submit> for MockBackend {
    type Result = Result<(), NotSent>;
    fn handle(&mut self, msg: Submit, _: &mut Self::Context) -> Self::Result {
        let run_id = msg.request.run_id.clone().unwrap();
        let owner = msg.request.owner_account_id.clone().unwrap();
        if self.worker == Worker::Succeeds {
            msg.reply_to.do_send(RunReply(Incoming {
                meta: meta(&msg.correlation_id),
                body: Ok(success(&run_id, &owner)),
            }));
        }
        self.seen
            .lock()
            .unwrap()
            .submitted
            .push((run_id, msg.reply_to));
        Ok(())
    }
}

impl Handler<Ask<RunQuery>> for MockBackend {
    type Result = Result<Reply<RunQueryAnswer>, ErrorDetail>;
    fn handle(&mut self, ask: Ask<RunQuery>, _: &mut Self::Context) -> Self::Result {
        let fate = match self.worker {
            Worker::Holds => RunFate::Running,
            _ => RunFate::Unknown,
        };
        self.seen.lock().unwrap().queries.push(ask.body.clone());
        Ok(Reply::Ok(RunQueryAnswer {
            run_id: ask.body.run_id,
            fate,
            result: None,
        }))
    }
}

impl Handler<Withdraw> for MockBackend {
    type Result = Result<Withdrawn, ErrorDetail>;
    fn handle(&mut self, _: Withdraw, _: &mut Self::Context) -> Self::Result {
        Ok(Withdrawn::Done)
    }
}

impl Handler<Recorded> for MockBackend {
    type Result = ();
    fn handle(&mut self, Recorded(r): Recorded, _: &mut Self::Context) {
        self.seen.lock().unwrap().recorded.push(r);
    }
}

impl Handler<Ask<DeleteRequest>> for MockBackend {
    type Result = Result<Reply<Deleted>, ErrorDetail>;
    fn handle(&mut self, ask: Ask<DeleteRequest>, _: &mut Self::Context) -> Self::Result {
        self.seen.lock().unwrap().deletes.push(ask.body.clone());
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

/// Lists the runs submitted so far as running.
impl Handler<Ask<StatusRequest>> for MockBackend {
    type Result = Result<Reply<StatusReply>, ErrorDetail>;
    fn handle(&mut self, ask: Ask<StatusRequest>, _: &mut Self::Context) -> Self::Result {
        let mut seen = self.seen.lock().unwrap();
        seen.statuses += 1;
        let items = seen
            .submitted
            .iter()
            .map(|(run_id, _)| StatusItem {
                id: run_id.clone(),
                state: RunState::Running,
                owner_account_id: Some(ask.owner.clone()),
                details: None,
            })
            .collect();
        Ok(Reply::Ok(StatusReply { items }))
    }
}

static_answers!(
    InputRequest,
    RunnerStatusRequest,
    RunnerStartRequest,
    RunnerDeleteRequest
);

struct Rig {
    provider: Addr<ApiProvider>,
    store: SharedStore,
    usage: Arc<Mutex<Vec<usage::UsageRecord>>>,
    seen: Arc<Mutex<Seen>>,
}

fn rig(worker: Worker, tweak: impl FnOnce(&mut ProviderConfig)) -> Rig {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let backend = MockBackend {
        worker,
        seen: seen.clone(),
    }
    .start();
    let store: SharedStore = Arc::new(SqliteStore::memory().unwrap());
    let usage = Arc::new(Mutex::new(Vec::new()));
    let mut config = ProviderConfig {
        instance_id: "test".into(),
        request_timeout: Duration::from_secs(60),
        default_timeout: Duration::from_secs(5),
        max_concurrent_runs: 0,
        output_cap: 1 << 20,
        max_files_bytes: crate::config::DEFAULT_MAX_FILES_BYTES,
        accept_within: Duration::from_millis(200),
        run_grace: crate::contract::RUN_GRACE,
    };
    tweak(&mut config);
    let provider = ApiProvider::new(
        Backend::of("mock", false, backend),
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
        seen,
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

impl Rig {
    async fn accepted(&self) -> String {
        let Created::Accepted(run_id) = self.provider.send(create(false)).await.unwrap().unwrap()
        else {
            panic!("accepted at once");
        };
        self.provider.do_send(Incoming {
            meta: meta(""),
            body: RunAccepted {
                run_id: run_id.clone(),
                owner_account_id: "alice".into(),
                worker_id: "w-mock".into(),
                timeout_seconds: None,
            },
        });
        run_id
    }

    async fn state_within(&self, run_id: &str, secs: u64) -> RunState {
        let mut state = RunState::Running;
        for _ in 0..secs * 20 {
            state = self.store.get(run_id).await.unwrap().unwrap().state;
            if state != RunState::Running {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
        state
    }
}

#[actix_rt::test]
async fn a_run_is_recorded_its_usage_follows_and_its_worker_hears_it_is_recorded() {
    let r = rig(Worker::Succeeds, |_| {});
    let Created::Done(result) = r.provider.send(create(true)).await.unwrap().unwrap() else {
        panic!("the run waited for its end");
    };
    assert_eq!(result.stdout, "mocked");
    let record = r.store.get(&result.run_id).await.unwrap().unwrap();
    assert_eq!(record.state, RunState::Succeeded);
    {
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
    // The worker sends the result again (it missed the acknowledgement):
    // recorded once, acknowledged again.
    let reply_to = r.seen.lock().unwrap().submitted[0].1.clone();
    reply_to.do_send(RunReply(Incoming {
        meta: meta("another"),
        body: Ok(success(&result.run_id, "alice")),
    }));
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    let seen = r.seen.lock().unwrap();
    assert_eq!(seen.recorded.len(), 2, "acknowledged each time");
    assert_eq!(seen.recorded[0].worker_id.as_deref(), Some("w-mock"));
    assert_eq!(r.usage.lock().unwrap().len(), 2, "billed once");
}

#[actix_rt::test]
async fn a_run_no_worker_accepts_is_refused_and_nobody_is_told_to_run_it() {
    let r = rig(Worker::Absent, |_| {});
    let answer = r.provider.send(create(true)).await.unwrap();
    match answer {
        Err(ProviderError::Refused(e)) => assert_eq!(e.kind, ErrorType::Unavailable),
        other => panic!("{other:?}"),
    }
    let run_id = r.seen.lock().unwrap().submitted[0].0.clone();
    assert_eq!(r.state_within(&run_id, 1).await, RunState::Error);
    let seen = r.seen.lock().unwrap();
    assert_eq!(
        seen.queries.len(),
        1,
        "everyone was asked before the refusal"
    );
    assert_eq!(seen.queries[0].worker_id, None);
}

#[actix_rt::test]
async fn a_run_whose_worker_is_gone_is_lost_once_its_worker_says_it_has_no_such_run() {
    let r = rig(Worker::Absent, |_| {});
    let run_id = r.accepted().await;
    // A router is heard from, and it does not list the run's worker.
    r.provider.do_send(Incoming {
        meta: meta(""),
        body: RouterHeartbeat {
            router_id: "r1".into(),
            workers: vec![],
        },
    });
    assert_eq!(r.state_within(&run_id, 8).await, RunState::Lost);
    let seen = r.seen.lock().unwrap();
    assert_eq!(
        seen.queries.last().unwrap().worker_id.as_deref(),
        Some("w-mock")
    );
}

#[actix_rt::test]
async fn a_silent_path_is_not_a_dead_worker() {
    let r = rig(Worker::Absent, |_| {});
    let run_id = r.accepted().await;
    // No router and no worker heard from: nothing is concluded.
    actix_rt::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        r.store.get(&run_id).await.unwrap().unwrap().state,
        RunState::Running
    );
    assert!(r.seen.lock().unwrap().queries.is_empty());
}

#[actix_rt::test]
async fn past_its_deadline_a_running_run_is_cancelled_on_its_worker_and_lost() {
    let r = rig(Worker::Holds, |c| {
        c.request_timeout = Duration::from_millis(500)
    });
    let run_id = r.accepted().await;
    assert_eq!(r.state_within(&run_id, 5).await, RunState::Lost);
    let seen = r.seen.lock().unwrap();
    assert_eq!(seen.deletes.len(), 1, "cancelled on its worker");
    assert_eq!(seen.deletes[0].worker_id.as_deref(), Some("w-mock"));
    let usage = r.usage.lock().unwrap();
    assert_eq!(usage.last().unwrap().event_type, "container_run_failed");
}

/// A run without `timeout_seconds` is given up at its worker's timeout
/// (`run.accepted` says it: the profile's) plus the grace, not at the
/// --request-timeout cap.
#[actix_rt::test]
async fn the_workers_timeout_sets_the_deadline() {
    let r = rig(Worker::Holds, |c| c.run_grace = Duration::from_millis(500));
    let Created::Accepted(run_id) = r.provider.send(create(false)).await.unwrap().unwrap() else {
        panic!("accepted at once");
    };
    r.provider.do_send(Incoming {
        meta: meta(""),
        body: RunAccepted {
            run_id: run_id.clone(),
            owner_account_id: "alice".into(),
            worker_id: "w-mock".into(),
            timeout_seconds: Some(1),
        },
    });
    // request_timeout is 60 s: only the worker's timeout ends it this soon.
    assert_eq!(r.state_within(&run_id, 8).await, RunState::Lost);
    assert_eq!(
        r.seen.lock().unwrap().deletes.len(),
        1,
        "cancelled on its worker"
    );
}

#[actix_rt::test]
async fn the_per_account_limit_counts_runs_in_flight() {
    let r = rig(Worker::Holds, |c| c.max_concurrent_runs = 1);
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
    let r = rig(Worker::Succeeds, |_| {});
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

#[actix_rt::test]
async fn status_is_served_again_for_a_second_but_a_run_of_the_caller_shows_at_once() {
    let r = rig(Worker::Holds, |_| {});
    let status = |owner: &str| {
        r.provider.send(messages::Status {
            owner: owner.into(),
        })
    };
    let ids = |v: &messages::StatusView| v.items.iter().map(|i| i.id.clone()).collect::<Vec<_>>();
    let first = status("alice").await.unwrap().unwrap();
    assert_eq!(ids(&first), ["runner"]);
    let again = status("alice").await.unwrap().unwrap();
    assert_eq!(ids(&again), ["runner"]);
    assert_eq!(
        r.seen.lock().unwrap().statuses,
        1,
        "the second one from the first's answer"
    );
    status("bob").await.unwrap().unwrap();
    assert_eq!(
        r.seen.lock().unwrap().statuses,
        2,
        "each account its own runs"
    );

    // The caller starts a run here: its status asks again and lists it.
    let run_id = r.accepted().await;
    let after = status("alice").await.unwrap().unwrap();
    assert_eq!(ids(&after), ["runner".to_string(), run_id]);
    assert_eq!(r.seen.lock().unwrap().statuses, 3);

    // Past the freshness bound, asked again.
    actix_rt::time::sleep(status_cache::STATUS_FRESH + Duration::from_millis(100)).await;
    status("bob").await.unwrap().unwrap();
    assert_eq!(r.seen.lock().unwrap().statuses, 4);
}
