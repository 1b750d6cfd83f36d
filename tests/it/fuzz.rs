//! Property-based fuzzing (proptest) of what reads untrusted input:
//! envelope and publication parsing, run-body validation and planning,
//! JWT verification, `.bus` line parsing, Go durations, and the egress
//! proxy's destinations and routes (a sandboxed run names those). Each target
//! takes arbitrary bytes, the seed corpus in `tests/fuzz-corpus/<target>`,
//! and mutations of those seeds; none may panic, and what parses must
//! round-trip or be refused consistently. A failing case is saved by
//! proptest beside this file (`fuzz.proptest-regressions`) and replayed
//! first on every later run. `PROPTEST_CASES` sets the number of cases.

use bus_containers::auth::{issue_token, IssueRequest, Secrets, Verifier, AUDIENCE_API};
use bus_containers::cli::busfile::words;
use bus_containers::contract::{validate_name, Envelope, Publication};
use bus_containers::egress::policy::{parse_host_port, Allow, Credential};
use bus_containers::http::body::run_body;
use bus_containers::parse::{format_duration, parse_duration};
use bus_containers::planning::plan::{plan_run, RunRequest, WorkerSettings};
use proptest::prelude::*;
use std::time::Duration;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-corpus")
        .join(target);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed corpus {}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "empty seed corpus {target}");
    seeds
}

/// Arbitrary bytes, a seed, or a seed with a few bytes changed, inserted
/// or removed.
fn input(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = corpus(target);
    let mutated = (
        prop::sample::select(seeds.clone()),
        prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 0..6),
    )
        .prop_map(|(mut seed, edits)| {
            for (at, byte, how) in edits {
                let at = if seed.is_empty() {
                    0
                } else {
                    at % (seed.len() + 1)
                };
                match how {
                    0 if at < seed.len() => seed[at] = byte,
                    1 => seed.insert(at, byte),
                    _ if at < seed.len() => {
                        seed.remove(at);
                    }
                    _ => seed.push(byte),
                }
            }
            seed
        });
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        prop::sample::select(seeds),
        mutated,
    ]
}

fn settings() -> WorkerSettings {
    let mut config = bus_containers::config::Config::builtin();
    config.worker.allowed_images = vec!["bus-busybox:*".into()];
    WorkerSettings {
        worker_id: "fuzz".into(),
        config,
        codex_mounts: vec![],
        codex_env: vec![],
    }
}

proptest! {
    #[test]
    fn envelopes_parse_without_panic_and_round_trip(bytes in input("envelope")) {
        if let Ok(env) = serde_json::from_slice::<Envelope>(&bytes) {
            let line = env.to_ndjson();
            let again: Envelope = serde_json::from_slice(&line).expect("our own line parses");
            prop_assert_eq!(again.to_ndjson(), line);
            let _ = validate_name(&env.name);
        }
        if let Ok(p) = serde_json::from_slice::<Publication>(&bytes) {
            let stamped = Envelope::stamp(p.clone(), "fuzz", false);
            prop_assert_eq!(&stamped.name, &p.name);
            prop_assert_eq!(&stamped.payload, &p.payload);
        }
    }

    #[test]
    fn run_bodies_validate_and_plan_without_panic(bytes in input("run-body")) {
        if let Ok(body) = run_body(&bytes) {
            if body.spec.check().is_ok() {
                let request = RunRequest {
                    run_id: Some("run_fuzz".into()),
                    owner_account_id: Some("alice".into()),
                    spec: body.spec,
                    deadline_at: None,
                    accept_by: None,
                    request_parts: None,
                };
                let payload = serde_json::to_value(&request).unwrap();
                prop_assert_eq!(&payload["owner_account_id"], "alice");
                prop_assert_eq!(&payload["run_id"], "run_fuzz");
                let again: RunRequest = serde_json::from_value(payload).expect("a valid body makes a run request");
                prop_assert_eq!(&again, &request);
                let _ = plan_run(&request, "alice", &settings());
            }
        }
        if let Ok(request) = serde_json::from_slice::<RunRequest>(&bytes) {
            if let Ok(plan) = plan_run(&request, "alice", &settings()) {
                // Whatever was asked, the container is hardened.
                prop_assert!(plan.spec.hardening.drop_all_capabilities);
                prop_assert!(plan.spec.hardening.no_new_privileges);
                prop_assert!(plan.spec.mounts.is_empty() || plan.profile.is_some());
            }
        }
    }

    #[test]
    fn tokens_verify_only_when_signed(bytes in input("jwt")) {
        let verifier = Verifier::new(&Secrets::new(b"fuzz-secret".to_vec(), None), AUDIENCE_API);
        let text = String::from_utf8_lossy(&bytes);
        prop_assert!(verifier.verify(&text).is_err(), "an unsigned token was accepted: {text}");
        let _ = verifier.verify_header(Some(&format!("Bearer {text}")));
    }

    #[test]
    fn a_changed_token_is_refused(sub in "[a-z0-9-]{1,40}", pick in any::<usize>(), with in 0usize..64) {
        let secret = b"fuzz-secret".to_vec();
        let verifier = Verifier::new(&Secrets::new(secret.clone(), None), AUDIENCE_API);
        let request = IssueRequest {
            subject: sub.clone(),
            audience: AUDIENCE_API.into(),
            scopes: vec!["container:run".into()],
            ttl: Duration::from_secs(600),
        };
        let (token, _) = issue_token(&secret, &request).unwrap();
        prop_assert_eq!(verifier.verify(&token).unwrap().sub, sub);
        // Change one character that carries six full bits (not a segment's
        // last, whose low bits may be padding).
        let chars: Vec<char> = token.chars().collect();
        let inner: Vec<usize> = (0..chars.len())
            .filter(|&i| chars[i] != '.' && i + 1 < chars.len() && chars[i + 1] != '.')
            .collect();
        let at = inner[pick % inner.len()];
        const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut replacement = B64[with] as char;
        if replacement == chars[at] {
            replacement = B64[(with + 1) % 64] as char;
        }
        let mut changed = chars;
        changed[at] = replacement;
        let changed: String = changed.into_iter().collect();
        prop_assert!(verifier.verify(&changed).is_err(), "a changed token was accepted");
    }

    #[test]
    fn bus_lines_parse_without_panic(bytes in input("busfile")) {
        let _ = words(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn bus_lines_round_trip_quoted_words(line in prop::collection::vec("[A-Za-z0-9 _./:=,'\"-]{1,12}", 1..6)) {
        let joined = shell_words::join(&line);
        prop_assert_eq!(words(&joined).unwrap(), Some(line));
    }

    #[test]
    fn durations_parse_without_panic_and_round_trip(bytes in input("duration"), ms in 0u64..(1 << 40)) {
        let _ = parse_duration(&String::from_utf8_lossy(&bytes));
        let d = Duration::from_millis(ms);
        prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
    }

    #[test]
    fn egress_destinations_parse_without_panic_and_round_trip(bytes in input("egress")) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = Allow::parse(&text);
        if let Ok(c) = Credential::parse(&text) {
            prop_assert_eq!(Credential::parse(&c.to_arg()).map(|c| c.to_arg()), Ok(c.to_arg()));
        }
        if let Ok(d) = parse_host_port(&text) {
            prop_assert_eq!(parse_host_port(&d.to_string()), Ok(d));
        }
    }
}
