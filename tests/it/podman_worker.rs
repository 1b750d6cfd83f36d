//! The same worker against a real Podman service (Docker-compatible API).

use crate::support::docker::{podman, test_config, Fixture};
use crate::support::within;
use bus_containers::broker::SubscribeSpec;
use bus_containers::containers::Kind;
use bus_containers::request::Request;
use futures::StreamExt;
use serde_json::json;
use std::time::Duration;

#[actix_rt::test]
async fn podman_runs_times_out_feeds_stdin_and_cleans_up() {
    let Some(runtime) = podman().await else {
        return;
    };
    let f = Fixture::start_on(runtime, test_config()).await;
    let ok = f
        .run(json!({"profile": "codex", "args": ["sh", "-c", "printf OK; echo e >&2; exit 2"]}))
        .await;
    assert_eq!(
        (
            ok["stdout"].as_str(),
            ok["stderr"].as_str(),
            ok["exit_code"].as_i64()
        ),
        (Some("OK"), Some("e\n"), Some(2)),
        "{ok}"
    );
    assert_eq!(ok["runtime"]["provider"], "podman");
    let timed = f
        .run(json!({"profile": "codex", "args": ["sleep", "30"], "timeout_seconds": 1}))
        .await;
    assert_eq!(timed["state"], "timed_out", "{timed}");
    let fed = f
        .run(json!({"profile": "codex", "args": ["cat"], "stdin": "via podman"}))
        .await;
    assert_eq!(fed["stdout"], "via podman", "{fed}");

    let mut started = f
        .broker
        .subscribe(SubscribeSpec::broadcast("bus.docker.run.started"))
        .await
        .unwrap();
    let api = f.api.clone();
    let run = actix_rt::spawn(async move {
        let p = json!({"run_id": "run_pod_cat", "owner_account_id": "alice", "profile": "codex", "args": ["cat"], "interactive": true});
        api.request(Request::new(
            "bus.docker.run.request",
            p,
            Duration::from_secs(60),
        ))
        .await
        .unwrap()
    });
    within(30, "run.started", started.next())
        .await
        .unwrap()
        .unwrap();
    let wid = f.worker_id.clone();
    let input = json!({"run_id": "run_pod_cat", "owner_account_id": "alice", "worker_id": wid, "data": "typed", "eof": true});
    assert_eq!(
        f.ask(Kind::Input, input, Duration::from_secs(10)).await["accepted"],
        true
    );
    let out = within(30, "eof ends cat", run).await.unwrap();
    assert_eq!(
        out.replies[0].payload["stdout"], "typed",
        "{}",
        out.replies[0].payload
    );
    f.finish().await;
}
