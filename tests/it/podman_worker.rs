//! The same worker against a real Podman service (Docker-compatible API).

use crate::support::docker::{podman, test_config, Fixture};
use crate::support::within;
use bus_containers::contract::Kind;
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
    // Files before the start, exact bytes back (issue 18 on Podman).
    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let b64 = |b: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(b)
    };
    let filed = f
        .run(json!({"profile": "codex",
            "args": ["sh", "-c", "cat /workspace/d/in.bin; stat -c %a /tmp/x.sh >&2"],
            "files": [{"path": "/workspace/d/in.bin", "content_base64": b64(&bytes)},
                      {"path": "/tmp/x.sh", "content_base64": b64(b"true"), "mode": "0700"}],
            "output_encoding": "base64"}))
        .await;
    assert_eq!(filed["state"], "succeeded", "{filed}");
    assert_eq!(filed["stdout"], b64(&bytes), "exact bytes on Podman");
    assert_eq!(filed["stderr"], b64(b"700\n"), "{filed}");
    // Artifacts after the exit, from the run's volumes, on Podman too.
    let kept = f
        .run(json!({"profile": "codex",
            "args": ["sh", "-c", "cp /workspace/d/in.bin /tmp/out.bin"],
            "files": [{"path": "/workspace/d/in.bin", "content_base64": b64(&bytes)}],
            "artifacts": ["/tmp/out.bin", "/workspace/d"]}))
        .await;
    assert_eq!(kept["artifacts"]["truncated"], false, "{kept}");
    let tar = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(kept["artifacts_tar_base64"].as_str().unwrap())
            .unwrap()
    };
    let names = crate::run_artifacts::entries(&tar);
    assert!(names["tmp/out.bin"] == bytes, "{:?}", names.keys());
    assert!(names["workspace/d/in.bin"] == bytes, "{:?}", names.keys());
    // As `docker run`: not in the image 127, not executable 126.
    for (command, code) in [("no-such-command", 127), ("/etc", 126)] {
        let r = f.run(json!({"profile": "codex", "args": [command]})).await;
        assert_eq!(
            (r["state"].as_str(), r["exit_code"].as_i64()),
            (Some("failed"), Some(code)),
            "{r}"
        );
    }

    let (run, _) = f.start_run(json!({"run_id": "run_pod_cat", "owner_account_id": "alice", "profile": "codex", "args": ["cat"], "interactive": true})).await;
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
