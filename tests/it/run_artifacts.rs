//! A run's `artifacts` (`containers-api.md`, "Bytes, files and
//! artifacts"): archived after the command ends (timeouts included),
//! kept with the record, downloadable by its owner only, cut whole at the
//! size limit; through `bus dev`, the CLI, and the multi-process stack
//! over the Events API and NATS.

use crate::dev_stack::{containers, start_dev_with};
use crate::run_bytes::{b64, random_bytes, token};
use crate::support::api::{call, get_bytes};
use crate::support::bus;
use crate::support::docker::engine;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The regular files (and directories, as empty) of a tar archive.
pub fn entries(tar: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(tar);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            (name, data)
        })
        .collect()
}

/// GET of a run's artifacts: status, body bytes and content type.
pub(crate) async fn download(
    url: &str,
    run_id: &str,
    token: &str,
) -> (u16, Vec<u8>, Option<String>) {
    get_bytes(
        &format!("{url}/api/v1/containers/runs/{run_id}/artifacts"),
        token,
    )
    .await
}

#[actix_rt::test]
async fn artifacts_come_back_exactly_to_their_owner_only() {
    if engine().await.is_none() {
        return;
    }
    let dev = start_dev_with(
        &[
            "--max-artifact-bytes",
            "300000",
            "--max-files-bytes",
            "250000",
        ],
        &[],
        |_| {},
    );
    let owner = token(&dev);
    let runs = format!("{}/api/v1/containers/runs", dev.url);
    let data = random_bytes(200_000, 29);

    // A 200 kB file in, and back out as an artifact, byte for byte.
    let body = json!({
        "profile": "codex",
        "args": ["sh", "-c", "mkdir -p out/deep && cp in.bin out/deep/copy.bin && printf rep > /tmp/report.txt && chmod 0750 out/deep/copy.bin"],
        "files": [{"path": "/workspace/in.bin", "content_base64": b64(&data)}],
        "artifacts": ["/workspace/out", "/tmp/report.txt", "/workspace/none"],
        "timeout_seconds": 60,
    });
    let (status, _, result) = call("POST", &runs, Some(&owner), Some(&body.to_string())).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["state"], "succeeded", "{result}");
    let a = &result["artifacts"];
    assert_eq!(
        a["paths"],
        json!(["/workspace/out", "/tmp/report.txt"]),
        "{a}"
    );
    assert_eq!(a["missing"], json!(["/workspace/none"]), "{a}");
    assert_eq!(a["truncated"], false, "{a}");
    assert!(
        result.get("artifacts_tar_base64").is_none(),
        "the archive itself is never in the result"
    );
    let run_id = result["run_id"].as_str().unwrap().to_owned();
    let (status, tar, kind) = download(&dev.url, &run_id, &owner).await;
    assert_eq!(status, 200);
    assert_eq!(kind.as_deref(), Some("application/x-tar"));
    assert_eq!(a["bytes"], tar.len(), "{a}");
    let got = entries(&tar);
    assert!(
        got["workspace/out/deep/copy.bin"] == data,
        "the artifact's exact bytes"
    );
    assert_eq!(got["tmp/report.txt"], b"rep");
    let mode = tar::Archive::new(tar.as_slice())
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path().unwrap().ends_with("copy.bin"))
        .map(|e| e.header().mode().unwrap())
        .unwrap();
    assert_eq!(mode & 0o777, 0o750, "modes are kept");
    // The record says the same; the file lives in the data directory.
    let (_, _, record) = call("GET", &format!("{runs}/{run_id}"), Some(&owner), None).await;
    assert_eq!(record["result"]["artifacts"], *a, "{record}");
    let kept = dev.data.path().join(format!("artifacts/{run_id}.tar"));
    assert_eq!(std::fs::read(&kept).unwrap(), tar);

    // A timed-out run's artifacts are archived too.
    let body = json!({
        "profile": "codex",
        "args": ["sh", "-c", "echo partial > /tmp/p.txt; sleep 60"],
        "artifacts": ["/tmp/p.txt"],
        "timeout_seconds": 2,
    });
    let (_, _, timed) = call("POST", &runs, Some(&owner), Some(&body.to_string())).await;
    assert_eq!(timed["state"], "timed_out", "{timed}");
    let (status, tar, _) = download(&dev.url, timed["run_id"].as_str().unwrap(), &owner).await;
    assert_eq!(status, 200);
    assert_eq!(entries(&tar)["tmp/p.txt"], b"partial\n");

    // A path that is or passes through a symbolic link is not followed
    // (the engine would read its target as root); a link inside a listed
    // directory is kept as the link.
    let body = json!({
        "profile": "codex",
        "args": ["sh", "-c", "ln -s /etc l && ln -s /etc/passwd h && mkdir d && ln -s /etc/passwd d/p && echo ok > /tmp/ok"],
        "artifacts": ["/workspace/l/passwd", "/workspace/h", "/workspace/d", "/tmp/ok"],
        "timeout_seconds": 60,
    });
    let (_, _, linked) = call("POST", &runs, Some(&owner), Some(&body.to_string())).await;
    assert_eq!(linked["state"], "succeeded", "{linked}");
    let a = &linked["artifacts"];
    assert_eq!(
        a["missing"],
        json!(["/workspace/l/passwd", "/workspace/h"]),
        "{a}"
    );
    assert_eq!(a["paths"], json!(["/workspace/d", "/tmp/ok"]), "{a}");
    assert!(
        a["error"].as_str().unwrap_or("").contains("symbolic link"),
        "{a}"
    );
    let (_, tar, _) = download(&dev.url, linked["run_id"].as_str().unwrap(), &owner).await;
    let kinds: Vec<(String, bool, u64)> = tar::Archive::new(tar.as_slice())
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            let link = e.header().entry_type().is_symlink();
            (
                e.path().unwrap().display().to_string(),
                link,
                e.header().size().unwrap(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&("workspace/d/p".to_owned(), true, 0)),
        "the link inside d is a link: {kinds:?}"
    );
    assert!(
        kinds
            .iter()
            .all(|(name, link, size)| *link || *size == 0 || name == "tmp/ok"),
        "no file of /etc in the archive: {kinds:?}"
    );

    // Past the limit: the archive stops whole, and says truncated.
    let body = json!({
        "profile": "codex",
        "args": ["sh", "-c", "mkdir big; for i in 1 2 3 4; do head -c 100000 /dev/zero > big/$i; done"],
        "artifacts": ["/workspace/big"],
        "timeout_seconds": 60,
    });
    let (_, _, big) = call("POST", &runs, Some(&owner), Some(&body.to_string())).await;
    assert_eq!(big["state"], "succeeded", "{big}");
    assert_eq!(big["artifacts"]["truncated"], true, "{big}");
    let (_, tar, _) = download(&dev.url, big["run_id"].as_str().unwrap(), &owner).await;
    assert!(tar.len() <= 300_000, "{} bytes", tar.len());
    let files = entries(&tar);
    let whole = files.values().filter(|d| d.len() == 100_000).count();
    assert!(
        (1..4).contains(&whole),
        "some files fit, whole: {:?}",
        files.keys()
    );

    // Files over bus dev's --max-files-bytes: 413.
    let body = json!({
        "profile": "codex",
        "args": ["true"],
        "files": [{"path": "/workspace/a", "content_base64": b64(&random_bytes(150_000, 3))},
                  {"path": "/tmp/b", "content_base64": b64(&random_bytes(150_000, 4))}],
    });
    let (status, _, v) = call("POST", &runs, Some(&owner), Some(&body.to_string())).await;
    assert_eq!(status, 413, "{v}");
    assert_eq!(v["error"]["type"], "payload_too_large", "{v}");

    // Refusals: a path outside the writable locations, a bad path.
    for (paths, says) in [
        (json!(["/etc"]), "outside the run's writable locations"),
        (json!(["/workspace/../etc"]), "without '.', '..'"),
        (json!("/workspace"), "expected a sequence"),
    ] {
        let body = json!({"profile": "codex", "args": ["true"], "artifacts": paths});
        let (status, _, v) = call("POST", &runs, Some(&owner), Some(&body.to_string())).await;
        assert_eq!(status, 400, "{paths}: {v}");
        assert_eq!(v["error"]["type"], "bad_request", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(says),
            "{paths}: {v}"
        );
    }
    // A run that kept none: 404.
    let (_, _, plain) = call(
        "POST",
        &runs,
        Some(&owner),
        Some(&json!({"profile": "codex", "args": ["true"]}).to_string()),
    )
    .await;
    let (status, body, _) = download(&dev.url, plain["run_id"].as_str().unwrap(), &owner).await;
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));

    // The CLI: --file and --artifact, then `artifacts -x` and `-o`.
    let local = tempfile::tempdir().unwrap();
    std::fs::write(local.path().join("seed.bin"), &data).unwrap();
    let out = containers(&dev)
        .current_dir(local.path())
        .args(["--format", "json", "run", "--profile", "codex"])
        .args(["--file", "seed.bin", "--artifact", "/workspace/result"])
        .args(["--", "sh", "-c", "mkdir result && cp seed.bin result/"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let cli_run = v["run_id"].as_str().unwrap().to_owned();
    let dir = local.path().join("x");
    let out = containers(&dev)
        .args(["artifacts", &cli_run, "--extract"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(dir.join("workspace/result/seed.bin")).unwrap() == data);
    let file = local.path().join("a.tar");
    let out = containers(&dev)
        .args(["artifacts", &cli_run, "-o"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(entries(&std::fs::read(&file).unwrap())["workspace/result/seed.bin"] == data);
    let bad = containers(&dev)
        .args([
            "run",
            "--profile",
            "codex",
            "--artifact",
            "rel",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "a usage error: {bad:?}");

    // Another account: refused, and nothing of the archive shows.
    let minted = bus()
        .args([
            "auth",
            "token",
            "--subject",
            "someone-else",
            "--scope",
            "container:read",
        ])
        .env("BUS_CONFIG_DIR", dev.config_dir.path())
        .output()
        .unwrap();
    assert!(
        minted.status.success(),
        "{}",
        String::from_utf8_lossy(&minted.stderr)
    );
    let other = token(&dev);
    assert_ne!(other, owner);
    let (status, body, _) = download(&dev.url, &run_id, &other).await;
    assert!([403, 404].contains(&status), "{status}");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v["error"]["type"].is_string(), "{v}");
    let other_cli = containers(&dev)
        .args(["artifacts", &run_id, "-o"])
        .arg(local.path().join("other.tar"))
        .output()
        .unwrap();
    assert!(!other_cli.status.success());

    // Deleting the run removes its archive.
    let (status, _, _) = call("DELETE", &format!("{runs}/{run_id}"), Some(&owner), None).await;
    assert_eq!(status, 200);
    assert!(!kept.exists(), "the archive went with its record");
    let (status, _, _) = download(&dev.url, &run_id, &owner).await;
    assert_eq!(status, 404);
    eprintln!("run artifacts: 200 kB in and out exactly, owner only, truncated at the limit, removed with the record");
}

/// A 3 MB file in and back out, over the Events API and over NATS: the
/// request travels as its summary and parts the worker fetches, the
/// archive in the result's parts (no message over the bus's limit). The
/// worker's `--max-artifact-bytes` and `--max-files-bytes` (flags on one
/// shape, their variables on the other) and the provider's
/// `--max-files-bytes` hold.
#[actix_rt::test]
async fn artifacts_across_the_events_api_and_nats() {
    use crate::support::stack::{Part, Stack, StackOpts};
    if engine().await.is_none() {
        return;
    }
    for nats in [false, true] {
        let shape = if nats { "NATS" } else { "the Events API" };
        // The third path does not fit the archive; the worker takes at
        // most 3.5 MB of files, the provider 5 MB.
        let (artifact_limit, files_limit) = ("3100000".to_owned(), "3500000".to_owned());
        let (worker_args, worker_env) = if nats {
            (
                vec![],
                vec![
                    ("BUS_MAX_ARTIFACT_BYTES".to_owned(), artifact_limit),
                    ("BUS_MAX_FILES_BYTES".to_owned(), files_limit),
                ],
            )
        } else {
            (
                vec![
                    "--max-artifact-bytes".to_owned(),
                    artifact_limit,
                    "--max-files-bytes".to_owned(),
                    files_limit,
                ],
                vec![],
            )
        };
        let Some(mut s) = Stack::start(StackOpts {
            nats,
            worker_args,
            worker_env,
            api_args: vec!["--max-files-bytes".into(), "5000000".into()],
            ..Default::default()
        })
        .await
        else {
            eprintln!("run artifacts: skipped over {shape} (no nats-server)");
            continue;
        };
        s.warm_up().await;
        let file = random_bytes(3_000_000, 31);
        let body = json!({
            "profile": "codex",
            "args": ["sh", "-c", "cp in.bin out.bin; head -c 1000 in.bin > small.bin"],
            "files": [{"path": "/workspace/in.bin", "content_base64": b64(&file)}],
            "artifacts": ["/workspace/out.bin", "/workspace/small.bin", "/workspace/in.bin"],
            "timeout_seconds": 60,
        });
        let (status, result, took) = s.run(&body.to_string()).await;
        assert_eq!(status, 200, "{shape}: {result}");
        assert_eq!(result["state"], "succeeded", "{shape}: {result}");
        assert_eq!(result["artifacts"]["truncated"], true, "{shape}: {result}");
        let run_id = result["run_id"].as_str().unwrap();
        let (status, tar, _) = download(&s.api_url(), run_id, &s.token).await;
        assert_eq!(status, 200, "{shape}");
        let got = entries(&tar);
        let out = &got["workspace/out.bin"];
        assert_eq!(out.len(), 3_000_000, "{shape}");
        assert!(
            *out == file,
            "{shape}: the 3 MB file in and out, byte for byte"
        );
        assert!(got["workspace/small.bin"] == file[..1000], "{shape}");
        assert!(
            !got.contains_key("workspace/in.bin") && tar.len() <= 3_100_000,
            "{shape}: the worker's artifact limit holds: {:?}",
            got.keys()
        );
        let record = s.record(run_id).await;
        assert!(
            record["result"].get("artifacts_tar_base64").is_none(),
            "{shape}: the ledger never holds the archive"
        );
        eprintln!("run artifacts: a 3 MB file in and out exactly over {shape} in {took:?}");

        // Over the worker's files limit (4 MB): 413, and it never ran.
        let over = |n: usize| {
            json!({
                "profile": "codex",
                "args": ["sh", "-c", "echo ran > /tmp/ran"],
                "files": [{"path": "/workspace/in.bin", "content_base64": b64(&random_bytes(n, 5))}],
            })
            .to_string()
        };
        let (status, v, _) = s.run(&over(4_000_000)).await;
        assert_eq!(status, 413, "{shape}: {v}");
        assert_eq!(v["error"]["type"], "payload_too_large", "{shape}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("this worker takes at most 3500000"),
            "{shape}: {v}"
        );
        // Over the provider's (5.5 MB): refused before it is sent.
        let (status, v, _) = s.run(&over(5_500_000)).await;
        assert_eq!(status, 413, "{shape}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("--max-files-bytes"),
            "{shape}: {v}"
        );

        // Past retention the record goes when the provider starts (then
        // hourly), and its archive with it.
        actix_rt::time::sleep(std::time::Duration::from_millis(2500)).await;
        s.kill(Part::Api);
        s.opts.api_args = vec!["--retention-max-age".into(), "1s".into()];
        s.restart(Part::Api);
        let ready = std::time::Instant::now();
        while s.api_ready().await != 200 {
            assert!(
                ready.elapsed().as_secs() < 30,
                "{shape}: the provider came back"
            );
            actix_rt::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let (status, _, _) = download(&s.api_url(), run_id, &s.token).await;
        assert_eq!(status, 404, "{shape}: the archive went with its record");
        let beside = s.data_dir.join(format!("artifacts/{run_id}.tar"));
        assert!(!beside.exists(), "{shape}: {}", beside.display());
    }
}
