//! A run's data is bytes (`containers-api.md`, "Bytes, files and
//! artifacts"): stdin, stdout, stderr, input and log chunks arrive
//! exactly, through `bus dev` and the `bus` CLI, and through the REST API
//! with `stdin_base64` and `"output_encoding": "base64"`.

use crate::dev_stack::{containers, start_dev_with, Dev};
use crate::support::api::call;
use crate::support::docker::engine;
use base64::Engine;
use serde_json::{json, Value};
use std::io::Write;
use std::process::Stdio;

/// `n` bytes of every value, NUL and invalid UTF-8 included (xorshift).
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap_or_else(|| panic!("not base64 text: {v}")))
        .unwrap()
}

pub fn token(dev: &Dev) -> String {
    std::fs::read_to_string(dev.config_dir.path().join("auth/api-token"))
        .unwrap()
        .trim()
        .to_owned()
}

/// `bus containers ARGS` with `input` on its stdin: exit code, stdout, stderr.
fn cli_with_stdin(dev: &Dev, args: &[&str], input: &[u8]) -> (Option<i32>, Vec<u8>, Vec<u8>) {
    let mut child = containers(dev)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (out.status.code(), out.stdout, out.stderr)
}

#[actix_rt::test]
async fn random_bytes_round_trip_exactly_through_the_cli() {
    if engine().await.is_none() {
        return;
    }
    let dev = start_dev_with(&[], &[], |_| {});
    let input = random_bytes(100_000, 7);
    // The issue's own words: 100 kB through `-i --format text -- cat`.
    let (code, stdout, stderr) = cli_with_stdin(
        &dev,
        &[
            "run",
            "-i",
            "--format",
            "text",
            "--profile",
            "codex",
            "--",
            "cat",
        ],
        &input,
    );
    assert_eq!(code, Some(0), "{}", String::from_utf8_lossy(&stderr));
    assert_eq!(stdout.len(), input.len(), "as many bytes back");
    assert!(stdout == input, "the same bytes back on stdout");
    // And on stderr, from an explicit image.
    let (code, stdout, stderr) = cli_with_stdin(
        &dev,
        &[
            "run",
            "-i",
            "--format",
            "text",
            "--image",
            "bus-busybox:latest",
            "--",
            "sh",
            "-c",
            "cat >&2",
        ],
        &input,
    );
    assert_eq!(code, Some(0), "{}", String::from_utf8_lossy(&stderr));
    assert!(stdout.is_empty());
    assert!(
        stderr == input,
        "the same bytes back on stderr ({} bytes)",
        stderr.len()
    );
    // `input` from a pipe sends its bytes.
    let out = containers(&dev)
        .args([
            "run",
            "-d",
            "-i",
            "--format",
            "json",
            "--profile",
            "codex",
            "--",
            "cat",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let accepted: Value = serde_json::from_slice(&out.stdout).unwrap();
    let run_id = accepted["run_id"].as_str().unwrap().to_owned();
    let small = random_bytes(5_000, 11);
    let (code, said, err) = cli_with_stdin(&dev, &["input", "--eof", &run_id], &small);
    assert_eq!(code, Some(0), "{}", String::from_utf8_lossy(&err));
    let said: Value = serde_json::from_slice(&said).unwrap();
    assert_eq!(said["bytes"], 5000, "{said}");
    // JSON output keeps UTF-8 strings: the result says the bytes were
    // replaced.
    let waited = containers(&dev)
        .args(["--format", "json", "wait", &run_id])
        .output()
        .unwrap();
    let result: Value = serde_json::from_slice(&waited.stdout).unwrap();
    assert_eq!(result["state"], "succeeded", "{result}");
    assert_eq!(result["stdout_lossy"], true, "{result}");
    assert!(result.get("output_encoding").is_none(), "{result}");
}

#[actix_rt::test]
async fn stdin_base64_and_base64_output_round_trip_over_rest() {
    if engine().await.is_none() {
        return;
    }
    let dev = start_dev_with(&[], &[], |_| {});
    let token = token(&dev);
    let runs = format!("{}/api/v1/containers/runs", dev.url);
    let input = random_bytes(200_000, 3);
    let body = json!({
        "profile": "codex",
        "args": ["sh", "-c", "cat; head -c 3000 /dev/zero >&2"],
        "stdin_base64": b64(&input),
        "output_encoding": "base64",
        "timeout_seconds": 60,
    });
    let (status, _, result) = call("POST", &runs, Some(&token), Some(&body.to_string())).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["state"], "succeeded", "{result}");
    assert_eq!(result["output_encoding"], "base64", "{result}");
    assert!(unb64(&result["stdout"]) == input, "stdout: the exact bytes");
    assert_eq!(
        unb64(&result["stderr"]),
        vec![0u8; 3000],
        "stderr: the exact bytes"
    );
    assert!(
        result.get("stdout_lossy").is_none(),
        "{}",
        result["stdout_lossy"]
    );
    let run_id = result["run_id"].as_str().unwrap().to_owned();
    // The record reads back the same.
    let (_, _, record) = call("GET", &format!("{runs}/{run_id}"), Some(&token), None).await;
    assert_eq!(record["result"]["stdout"], result["stdout"]);
    // The logs carry data_base64 whose bytes, in order, are the output.
    let (status, _, _) = call("GET", &format!("{runs}/{run_id}/logs"), Some(&token), None).await;
    assert_eq!(status, 200);
    let text = awc::Client::default()
        .get(format!("{runs}/{run_id}/logs"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .body()
        .limit(1 << 24)
        .await
        .unwrap();
    let mut out = Vec::new();
    for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let chunk: Value = serde_json::from_slice(line).unwrap();
        assert!(chunk.get("data").is_none(), "{chunk}");
        if chunk["stream"] == "stdout" {
            out.extend(unb64(&chunk["data_base64"]));
        }
    }
    assert!(
        out == input,
        "the log's stdout bytes ({} of {})",
        out.len(),
        input.len()
    );
    // `bus containers wait --format text` prints the exact bytes.
    let waited = containers(&dev)
        .args(["--format", "text", "wait", &run_id])
        .output()
        .unwrap();
    assert!(waited.stdout == input, "wait prints the exact bytes");
    assert_eq!(waited.stderr, vec![0u8; 3000]);

    // Interactive input as data_base64, live output as data_base64.
    let body = json!({"profile": "codex", "args": ["cat"], "interactive": true,
        "output_encoding": "base64", "wait": false});
    let (status, _, accepted) = call("POST", &runs, Some(&token), Some(&body.to_string())).await;
    assert_eq!(status, 202, "{accepted}");
    let run_id = accepted["run_id"].as_str().unwrap().to_owned();
    let piece = random_bytes(70_000, 5);
    let input_url = format!("{runs}/{run_id}/input");
    let sent = json!({"data_base64": b64(&piece), "eof": true}).to_string();
    let (status, _, v) = call("POST", &input_url, Some(&token), Some(&sent)).await;
    assert_eq!((status, &v["bytes"]), (200, &json!(70_000)), "{v}");
    let (_, _, result) = call("GET", &format!("{runs}/{run_id}/wait"), Some(&token), None).await;
    assert!(unb64(&result["stdout"]) == piece, "{}", result["state"]);

    // Bad bytes are 400, naming the field.
    for (body, says) in [
        (
            json!({"profile": "codex", "args": ["cat"], "stdin": "a", "stdin_base64": "YQ=="}),
            "not both",
        ),
        (
            json!({"profile": "codex", "args": ["cat"], "stdin_base64": "%%%"}),
            "stdin_base64",
        ),
        (
            json!({"profile": "codex", "args": ["cat"], "output_encoding": "hex"}),
            "output_encoding",
        ),
    ] {
        let (status, _, v) = call("POST", &runs, Some(&token), Some(&body.to_string())).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["type"], "bad_request", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(says),
            "{v}"
        );
    }
    let both = json!({"data": "a", "data_base64": "YQ=="}).to_string();
    let (status, _, v) = call("POST", &input_url, Some(&token), Some(&both)).await;
    assert_eq!(status, 400, "{v}");
    let bad = json!({"data_base64": "***"}).to_string();
    let (status, _, v) = call("POST", &input_url, Some(&token), Some(&bad)).await;
    assert_eq!(status, 400, "{v}");
}

/// The multi-process shapes: the bus between the processes is the Events
/// API over HTTP, then NATS; a result and its chunks larger than one bus
/// message arrive whole and exact.
#[actix_rt::test]
async fn exact_bytes_across_the_events_api_and_nats() {
    use crate::support::stack::{Stack, StackOpts};
    if engine().await.is_none() {
        return;
    }
    for nats in [false, true] {
        let shape = if nats { "NATS" } else { "the Events API" };
        let Some(s) = Stack::start(StackOpts {
            nats,
            ..Default::default()
        })
        .await
        else {
            eprintln!("run bytes: skipped over {shape} (no nats-server)");
            continue;
        };
        s.warm_up().await;
        let input = random_bytes(400_000, 13);
        let file = random_bytes(200_000, 23);
        let body = json!({
            "profile": "codex",
            "args": ["sh", "-c", "cat; cat /workspace/f.bin >&2; printf '\\377\\000' >&2"],
            "stdin_base64": b64(&input),
            "files": [{"path": "/workspace/f.bin", "content_base64": b64(&file)}],
            "output_encoding": "base64",
            "timeout_seconds": 60,
        });
        let (status, result, took) = s.run(&body.to_string()).await;
        assert_eq!(status, 200, "{shape}: {result}");
        assert_eq!(result["state"], "succeeded", "{shape}: {result}");
        assert!(unb64(&result["stdout"]) == input, "{shape}: stdout exact");
        let mut want = file.clone();
        want.extend_from_slice(b"\xff\x00");
        assert!(
            unb64(&result["stderr"]) == want,
            "{shape}: the file, then stderr, exact"
        );
        let run_id = result["run_id"].as_str().unwrap();
        let record = s.record(run_id).await;
        assert_eq!(record["result"]["stdout"], result["stdout"], "{shape}");
        eprintln!(
            "run bytes: 400 kB of stdin and a 200 kB file in, out exactly over {shape} in {took:?}"
        );
    }
}

/// `files` are written before the command starts, at their modes, under
/// the run's workdir or `/tmp` only; in a pooled profile (the run goes
/// cold) and an explicit-image run; `bus containers run --file` sends a
/// file or a directory.
#[actix_rt::test]
async fn files_are_written_before_the_command_starts() {
    if engine().await.is_none() {
        return;
    }
    let dev = start_dev_with(&["--pool-size", "1"], &[], |_| {});
    let token = token(&dev);
    let runs = format!("{}/api/v1/containers/runs", dev.url);
    let data = random_bytes(200_000, 17);
    let script = "cat /workspace/in/data.bin; stat -c '%a %n' /workspace/in/data.bin /tmp/tool.sh >&2; /tmp/tool.sh >&2; pwd >&2";
    for target in [
        json!({"profile": "codex"}),
        json!({"image": "bus-busybox:latest"}),
    ] {
        let mut body = json!({
            "args": ["sh", "-c", script],
            "files": [
                {"path": "/workspace/in/data.bin", "content_base64": b64(&data)},
                {"path": "/tmp/tool.sh", "content_base64": b64(b"#!/bin/sh\necho tool ran\n"), "mode": "0755"},
            ],
            "output_encoding": "base64",
            "timeout_seconds": 60,
        });
        for (k, v) in target.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, _, result) = call("POST", &runs, Some(&token), Some(&body.to_string())).await;
        assert_eq!(status, 200, "{target}: {result}");
        assert_eq!(result["state"], "succeeded", "{target}: {result}");
        assert!(
            unb64(&result["stdout"]) == data,
            "{target}: the file's exact bytes"
        );
        let said = String::from_utf8(unb64(&result["stderr"])).unwrap();
        assert_eq!(
            said, "644 /workspace/in/data.bin\n755 /tmp/tool.sh\ntool ran\n/workspace\n",
            "{target}"
        );
    }
    // Outside the writable locations, or not a plain path: 400, nothing run.
    for (path, says) in [
        ("/etc/passwd", "outside the run's writable locations"),
        ("/workspace/../etc/x", "without '.', '..'"),
        ("relative.txt", "must be absolute"),
        ("/tmp", "outside"),
    ] {
        let body = json!({"profile": "codex", "args": ["true"],
            "files": [{"path": path, "content_base64": "YQ=="}]});
        let (status, _, v) = call("POST", &runs, Some(&token), Some(&body.to_string())).await;
        assert_eq!(status, 400, "{path}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(says),
            "{path}: {v}"
        );
    }
    for (file, says) in [
        (
            json!({"path": "/tmp/a", "content_base64": "%%"}),
            "content_base64",
        ),
        (
            json!({"path": "/tmp/a", "content_base64": "", "mode": "4755"}),
            "mode",
        ),
        (
            json!({"path": "/tmp/a", "content_base64": "", "owner": "root"}),
            "unknown field",
        ),
    ] {
        let body = json!({"profile": "codex", "args": ["true"], "files": [file]});
        let (status, _, v) = call("POST", &runs, Some(&token), Some(&body.to_string())).await;
        assert_eq!(status, 400, "{file}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(says),
            "{file}: {v}"
        );
    }

    // The CLI: a file to its default place, a directory to a named one.
    let local = tempfile::tempdir().unwrap();
    std::fs::write(local.path().join("notes.txt"), b"hello notes\n").unwrap();
    let tree = local.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a.txt"), b"A").unwrap();
    std::fs::write(tree.join("sub/b.bin"), random_bytes(3000, 19)).unwrap();
    let out = containers(&dev)
        .current_dir(local.path())
        .args(["run", "--format", "text", "--profile", "codex"])
        .args(["--file", "notes.txt", "--file", "tree:/tmp/t"])
        .args([
            "--",
            "sh",
            "-c",
            "cat notes.txt; find /tmp/t | sort; wc -c < /tmp/t/sub/b.bin",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello notes\n/tmp/t\n/tmp/t/a.txt\n/tmp/t/sub\n/tmp/t/sub/b.bin\n3000\n"
    );
    let missing = containers(&dev)
        .args([
            "run",
            "--profile",
            "codex",
            "--file",
            "/no/such/file",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2), "a usage error: {missing:?}");
}

/// A run under a numeric user owns the files and directories it is given.
#[actix_rt::test]
async fn files_belong_to_a_numeric_run_user() {
    if engine().await.is_none() {
        return;
    }
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("config.toml");
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml")).unwrap();
    let user = "\nuser = \"\"";
    assert!(text.contains(user));
    std::fs::write(&config, text.replacen(user, "\nuser = \"1000:1000\"", 1)).unwrap();
    let dev = start_dev_with(&["--config", config.to_str().unwrap()], &[], |_| {});
    let local = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(local.path().join("src")).unwrap();
    std::fs::write(local.path().join("src/own.txt"), b"mine\n").unwrap();
    let out = containers(&dev)
        .current_dir(local.path())
        .args(["run", "--format", "text", "--profile", "codex"])
        .args(["--file", "src", "--"])
        .args([
            "sh",
            "-c",
            "id -u; stat -c '%u:%g %n' src src/own.txt; echo more > src/new.txt && cat src/own.txt src/new.txt",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1000\n1000:1000 src\n1000:1000 src/own.txt\nmine\nmore\n"
    );
}
