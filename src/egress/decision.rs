//! The proxy's decision log: one JSON line on stdout per decision, and
//! the summary of those lines that goes into the run record
//! (`details.egress`). Lines carry destinations and outcomes, never
//! paths, queries or header values.

use crate::contract::run::{EgressDestination, EgressReport};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;

/// One decision line (`"event":"decision"`): the wire type, shared with
/// the run result that summarises them.
pub use crate::contract::run::EgressDecision as Decision;

/// Writes a JSON line on stdout (one write per line, so lines from
/// concurrent connections never interleave).
pub fn emit(line: &Value) {
    let mut text = line.to_string();
    text.push('\n');
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

/// Writes one decision line.
pub fn emit_decision(d: &Decision) {
    let mut line = serde_json::to_value(d).unwrap_or_default();
    line["event"] = json!("decision");
    emit(&line);
}

/// The most decisions a run record keeps verbatim.
pub const KEPT: usize = 100;
/// The most distinct destinations a summary lists.
pub const DESTINATIONS: usize = 100;

/// Decisions gathered while a run lasts.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    allowed: u64,
    denied: u64,
    by_destination: BTreeMap<(String, u16, String), u64>,
    kept: Vec<Decision>,
    dropped: u64,
    errors: Vec<String>,
    refused_clients: u64,
}

impl Summary {
    /// Takes one line of the proxy's stdout (other lines are ignored).
    pub fn take_line(&mut self, line: &str) {
        let Ok(value) = serde_json::from_str::<Value>(line.trim()) else {
            return;
        };
        match value.get("event").and_then(Value::as_str) {
            Some("decision") => {
                if let Ok(d) = serde_json::from_value::<Decision>(value) {
                    self.add(d);
                }
            }
            Some("client_refused") => self.refused_clients += 1,
            Some("error") if self.errors.len() < 10 => {
                if let Some(m) = value.get("message").and_then(Value::as_str) {
                    self.errors.push(m.chars().take(300).collect());
                }
            }
            _ => {}
        }
    }

    pub fn add(&mut self, d: Decision) {
        if d.decision == "allow" {
            self.allowed += 1;
        } else {
            self.denied += 1;
        }
        let key = (d.host.clone(), d.port, d.decision.clone());
        if self.by_destination.contains_key(&key) || self.by_destination.len() < DESTINATIONS {
            *self.by_destination.entry(key).or_default() += 1;
        }
        if self.kept.len() < KEPT {
            self.kept.push(d);
        } else {
            self.dropped += 1;
        }
    }

    pub fn denied(&self) -> u64 {
        self.denied
    }

    /// `details.egress`.
    pub fn report(&self, allowlist: &[String]) -> EgressReport {
        EgressReport {
            allowlist: allowlist.to_vec(),
            allowed: self.allowed,
            denied: self.denied,
            destinations: self
                .by_destination
                .iter()
                .map(|((host, port, decision), count)| EgressDestination {
                    host: host.clone(),
                    port: *port,
                    decision: decision.clone(),
                    count: *count,
                })
                .collect(),
            log: self.kept.clone(),
            log_truncated: self.dropped > 0,
            errors: self.errors.clone(),
            refused_clients: self.refused_clients,
            proxy_exited_early: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarises_lines() {
        let mut s = Summary::default();
        s.take_line(r#"{"event":"ready","listen":"0.0.0.0:3128"}"#);
        s.take_line("not json");
        for _ in 0..3 {
            s.take_line(r#"{"event":"decision","ts":"t","decision":"allow","method":"CONNECT","host":"a.test","port":443,"status":200}"#);
        }
        s.take_line(r#"{"event":"decision","ts":"t","decision":"deny","method":"GET","host":"evil.test","port":80,"status":403}"#);
        let v = serde_json::to_value(s.report(&["a.test:443".into()])).unwrap();
        assert_eq!(v["allowed"], 3);
        assert_eq!(v["denied"], 1);
        assert_eq!(v["destinations"].as_array().unwrap().len(), 2);
        assert_eq!(v["destinations"][0]["count"], 3);
        assert_eq!(v["log"][3]["host"], "evil.test");
        assert!(v.get("log_truncated").is_none());
    }
}
