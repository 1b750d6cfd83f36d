//! The worker's actors with the in-memory fake runtime in the engine's
//! seat: fast checks of session and runner logic that need no Docker.

use crate::support::*;
use bus_containers::actors::bus::requester::{Request, Requester};
use bus_containers::actors::docker_worker::{
    DockerWorker, Engine, LiveCount, Shutdown, WorkerConfig,
};
use bus_containers::broker::SharedBroker;
use bus_containers::config::Config;
use bus_containers::contract::Kind;
use bus_containers::planning::WorkerSettings;
use bus_containers::runtime::fake::FakeRuntime;
use bus_containers::runtime::{labels, ContainerRuntime, ContainerSpec, SharedRuntime};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

struct Rig {
    fake: FakeRuntime,
    worker: actix::Addr<DockerWorker>,
    api: Requester,
    _broker: SharedBroker,
}

async fn rig(fake: FakeRuntime, tweak: impl FnOnce(&mut Config, &mut WorkerConfig)) -> Rig {
    let (broker, _) = memory_broker();
    let mut config = Config::builtin();
    config.worker.output_cap_bytes = 1 << 20;
    let settings = WorkerSettings {
        worker_id: "w1".into(),
        config: config.clone(),
        codex_mounts: vec![],
        codex_env: vec![],
    };
    let mut wc = WorkerConfig::new(settings, "bus.docker");
    wc.ping_every = Duration::from_millis(100);
    tweak(&mut config, &mut wc);
    wc.settings = Arc::new(WorkerSettings {
        config,
        ..(*wc.settings).clone()
    });
    let runtime: SharedRuntime = Arc::new(fake.clone());
    let worker = DockerWorker::start(
        broker.clone(),
        requester(&broker, "worker", true),
        Engine::Containers(runtime),
        wc,
    )
    .await
    .unwrap();
    Rig {
        fake,
        worker,
        api: requester(&broker, "api", true),
        _broker: broker,
    }
}

impl Rig {
    async fn ask(&self, kind: Kind, payload: Value) -> Value {
        let out = self
            .api
            .request(Request::new(
                &kind.request("bus.docker"),
                payload,
                Duration::from_secs(20),
            ))
            .await
            .unwrap();
        out.replies
            .first()
            .map(|r| r.payload.clone())
            .unwrap_or(json!({"error": {"type": "timeout"}}))
    }

    async fn run(&self, args: Value, extra: Value) -> Value {
        let mut p = json!({"owner_account_id": "alice", "profile": "codex", "args": args});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        self.ask(Kind::Run, p).await
    }
}

#[actix_rt::test]
async fn sessions_capture_cap_and_time_out() {
    let r = rig(FakeRuntime::new(), |_, _| {}).await;
    let ok = r.run(json!(["printf", "hi"]), json!({})).await;
    assert_eq!(
        (ok["stdout"].as_str(), ok["state"].as_str()),
        (Some("hi"), Some("succeeded")),
        "{ok}"
    );
    assert_eq!(ok["runtime"]["provider"], "fake");
    let flood = r.run(json!(["flood", "3145728"]), json!({})).await;
    assert_eq!(flood["stdout"].as_str().unwrap().len(), 1 << 20);
    assert_eq!(flood["stdout_truncated"], true);
    let failed = r.run(json!(["exit", "7"]), json!({})).await;
    assert_eq!(
        (failed["exit_code"].as_i64(), failed["state"].as_str()),
        (Some(7), Some("failed"))
    );
    let oom = r.run(json!(["oom"]), json!({})).await;
    assert_eq!(oom["state"], "oom_killed");
    let slow = r
        .run(json!(["sleep", "30"]), json!({"timeout_seconds": 1}))
        .await;
    assert_eq!(slow["state"], "timed_out", "{slow}");
    assert!(
        r.fake.live().is_empty(),
        "every container removed: {:?}",
        r.fake.live()
    );
    assert_eq!(r.worker.send(LiveCount).await.unwrap(), 0);
}

#[actix_rt::test]
async fn interactive_input_through_the_fake() {
    let r = rig(FakeRuntime::new(), |_, _| {}).await;
    let api = r.api.clone();
    let run = actix_rt::spawn(async move {
        let p = json!({"run_id": "run_cat", "owner_account_id": "alice", "profile": "codex", "args": ["cat"], "interactive": true});
        api.request(Request::new(
            "bus.docker.run.request",
            p,
            Duration::from_secs(20),
        ))
        .await
        .unwrap()
    });
    let mut accepted = json!(null);
    for _ in 0..50 {
        accepted = r.ask(Kind::Input, json!({"run_id": "run_cat", "owner_account_id": "alice", "worker_id": "w1", "data": "abc", "eof": true})).await;
        if accepted["accepted"] == true {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(accepted["bytes"], 3, "{accepted}");
    let out = within(10, "cat ends at eof", run).await.unwrap();
    assert_eq!(out.replies[0].payload["stdout"], "abc");
    // Input to a run that was not interactive is refused.
    let api = r.api.clone();
    let run = actix_rt::spawn(async move {
        let p = json!({"run_id": "run_plain", "owner_account_id": "alice", "profile": "codex", "args": ["sleep", "2"]});
        api.request(Request::new(
            "bus.docker.run.request",
            p,
            Duration::from_secs(20),
        ))
        .await
        .unwrap()
    });
    let mut refused = json!(null);
    for _ in 0..50 {
        refused = r.ask(Kind::Input, json!({"run_id": "run_plain", "owner_account_id": "alice", "worker_id": "w1", "data": "x"})).await;
        if refused["error"]["type"] == "bad_request" {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("interactive"),
        "{refused}"
    );
    within(10, "plain run ends", run).await.unwrap();
}

#[actix_rt::test]
async fn an_unreachable_engine_refuses_runs_and_reports_unavailable() {
    let fake = FakeRuntime::new();
    fake.set_down(true);
    let r = rig(fake, |_, _| {}).await;
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    let run = r.run(json!(["printf", "x"]), json!({})).await;
    assert_eq!(run["error"]["type"], "unavailable", "{run}");
    let status = r.ask(Kind::RunnerStatus, json!({})).await;
    assert_eq!(status["status"]["state"], "unavailable");
    r.fake.set_down(false);
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        r.ask(Kind::RunnerStatus, json!({})).await["status"]["state"],
        "ready"
    );
    assert_eq!(
        r.run(json!(["printf", "back"]), json!({})).await["stdout"],
        "back"
    );
    let missing = FakeRuntime::with_images(&["other:1"]);
    let r2 = rig(missing, |_, _| {}).await;
    let run = r2.run(json!(["printf", "x"]), json!({})).await;
    assert_eq!(run["error"]["type"], "bad_request", "{run}");
    assert!(run["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not present"));
}

#[actix_rt::test]
async fn the_reaper_takes_only_this_workers_orphans_and_stale_pool_containers() {
    let fake = FakeRuntime::new();
    let make = |worker: &str, run: &str, pooled: bool| {
        let mut spec = ContainerSpec {
            image: "x".into(),
            ..Default::default()
        };
        spec.labels.insert(labels::MANAGED.into(), "true".into());
        spec.labels.insert(labels::WORKER_ID.into(), worker.into());
        spec.labels.insert(labels::RUN_ID.into(), run.into());
        if pooled {
            // The pool of an earlier process of this worker.
            spec.labels
                .insert(labels::POOLED.into(), "earlier-instance".into());
        }
        spec
    };
    let orphan = fake.create(&make("w1", "run_old", false)).await.unwrap();
    let pooled = fake.create(&make("w1", "", true)).await.unwrap();
    let foreign = fake.create(&make("w2", "run_theirs", false)).await.unwrap();
    // A sandboxed run's network outlives a crash too.
    fake.create_network("bus-net-run_old", &make("w1", "run_old", false).labels)
        .await
        .unwrap();
    fake.create_network(
        "bus-net-run_theirs",
        &make("w2", "run_theirs", false).labels,
    )
    .await
    .unwrap();
    let r = rig(fake, |_, _| {}).await;
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    let live = r.fake.live();
    assert!(!live.contains(&orphan), "own orphan removed");
    assert!(
        !live.contains(&pooled),
        "an earlier process's pool container removed"
    );
    assert!(live.contains(&foreign), "another worker's container kept");
    assert_eq!(
        r.fake.networks(),
        ["bus-net-run_theirs"],
        "own orphaned network removed, another worker's kept"
    );
    let _ = r.worker.send(Shutdown).await;
}

#[actix_rt::test]
async fn the_reaper_never_takes_what_a_live_process_of_the_same_worker_id_holds() {
    use bus_containers::runtime::liveness::ProcessMark;
    let fake = FakeRuntime::new();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let me = ProcessMark::current();
    let mark = |pid: u32, start: u64, host: &str| {
        ProcessMark {
            host: host.into(),
            pid,
            start,
            ..me.clone()
        }
        .label()
    };
    let make = |run: &str, process: &str, deadline: i64| {
        let mut spec = ContainerSpec {
            image: "x".into(),
            ..Default::default()
        };
        for (k, v) in [
            (labels::MANAGED, "true".to_owned()),
            (labels::WORKER_ID, "w1".to_owned()),
            (labels::RUN_ID, run.to_owned()),
            (labels::PROCESS, process.to_owned()),
            (labels::DEADLINE, deadline.to_string()),
        ] {
            spec.labels.insert(k.into(), v);
        }
        spec
    };
    // Another live process on this host with the same worker id (our
    // parent: the test runner), its run well within its deadline, and
    // even one past it (that process's own reaper owns it).
    let parent = std::os::unix::process::parent_id();
    let parent_start = std::fs::read_to_string(format!("/proc/{parent}/stat"))
        .unwrap()
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse::<u64>()
        .unwrap();
    let live_other = mark(parent, parent_start, &me.host);
    let alive = fake
        .create(&make("run_alive", &live_other, now + 600))
        .await
        .unwrap();
    let alive_late = fake
        .create(&make("run_alive_late", &live_other, now - 600))
        .await
        .unwrap();
    // A dead process (a child that has exited and been waited for).
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let dead = fake
        .create(&make("run_dead", &mark(dead_pid, 1, &me.host), now + 600))
        .await
        .unwrap();
    // A process on another host: unknown, so its deadline decides.
    let elsewhere = mark(1, 1, "another-host");
    let far_early = fake
        .create(&make("run_far_early", &elsewhere, now + 600))
        .await
        .unwrap();
    let far_late = fake
        .create(&make("run_far_late", &elsewhere, now - 600))
        .await
        .unwrap();
    let r = rig(fake, |_, _| {}).await;
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    let live = r.fake.live();
    assert!(live.contains(&alive), "a live process's container is kept");
    assert!(
        live.contains(&alive_late),
        "a live process's container is its own reaper's to take"
    );
    assert!(
        !live.contains(&dead),
        "a dead process's container is removed"
    );
    assert!(
        live.contains(&far_early),
        "unknown liveness, within the deadline: kept"
    );
    assert!(
        !live.contains(&far_late),
        "unknown liveness, past the deadline: removed"
    );
    let _ = r.worker.send(Shutdown).await;
}

#[actix_rt::test]
async fn shutdown_cancels_runs_and_removes_their_containers() {
    let r = rig(FakeRuntime::new(), |_, _| {}).await;
    let api = r.api.clone();
    let run = actix_rt::spawn(async move {
        let p = json!({"owner_account_id": "alice", "profile": "codex", "args": ["sleep", "60"]});
        api.request(Request::new(
            "bus.docker.run.request",
            p,
            Duration::from_secs(20),
        ))
        .await
        .unwrap()
    });
    for _ in 0..100 {
        if r.worker.send(LiveCount).await.unwrap() == 1 && !r.fake.live().is_empty() {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    within(10, "shutdown", r.worker.send(Shutdown))
        .await
        .unwrap();
    let out = within(10, "the run's reply", run).await.unwrap();
    assert_eq!(
        out.replies[0].payload["state"], "cancelled",
        "{}",
        out.replies[0].payload
    );
    assert!(r.fake.live().is_empty());
}
