//! The proxy's decision log: one JSON line on stdout per decision, and
//! the summary of those lines that goes into the run record
//! (`details.egress`). Lines carry destinations and outcomes, never
//! paths, queries or header values.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;

/// One decision line (`"event":"decision"`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Decision {
    pub ts: String,
    /// `allow` or `deny`.
    pub decision: String,
    /// `CONNECT`, or the method of a plain (or intercepted) request.
    pub method: String,
    pub host: String,
    pub port: u16,
    /// The status the proxy answered or passed on (403 when denied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// A credential header was set on the request.
    #[serde(default, skip_serializing_if = "is_false")]
    pub credential: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Writes a JSON line on stdout (one write per line, so lines from
/// concurrent connections never interleave).
pub fn emit(line: &Value) {
    let mut text = line.to_string();
    text.push('\n');
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

impl Decision {
    pub fn emit(&self) {
        let mut line = serde_json::to_value(self).unwrap_or_default();
        line["event"] = json!("decision");
        emit(&line);
    }
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
    pub fn to_json(&self, allowlist: &[String]) -> Value {
        let destinations: Vec<Value> = self
            .by_destination
            .iter()
            .map(|((host, port, decision), count)| {
                json!({"host": host, "port": port, "decision": decision, "count": count})
            })
            .collect();
        let mut v = json!({
            "allowlist": allowlist,
            "allowed": self.allowed,
            "denied": self.denied,
            "destinations": destinations,
            "log": self.kept,
        });
        if self.dropped > 0 {
            v["log_truncated"] = json!(true);
        }
        if !self.errors.is_empty() {
            v["errors"] = json!(self.errors);
        }
        if self.refused_clients > 0 {
            // Connections from outside the run's network, not served.
            v["refused_clients"] = json!(self.refused_clients);
        }
        v
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
        let v = s.to_json(&["a.test:443".into()]);
        assert_eq!(v["allowed"], 3);
        assert_eq!(v["denied"], 1);
        assert_eq!(v["destinations"].as_array().unwrap().len(), 2);
        assert_eq!(v["destinations"][0]["count"], 3);
        assert_eq!(v["log"][3]["host"], "evil.test");
        assert!(v.get("log_truncated").is_none());
    }
}
