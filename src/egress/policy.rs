//! What a run may reach: `host:port` pairs (a leading `*.` matches any
//! subdomain, never the bare domain), and credential routes, whose host
//! is allowed too and whose requests get a header the agent never sees.

use std::fmt;

/// A destination a client asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination {
    /// Lowercase, without IPv6 brackets.
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

fn valid_host(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.parse::<std::net::IpAddr>().is_ok() {
        return !host.starts_with("*.");
    }
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// Parses `host:port` (`[v6]:port` for IPv6; `*.domain:port` for a
/// pattern). The port is required: an allowlist names exact services.
pub fn parse_host_port(text: &str) -> Result<Destination, String> {
    let bad = |why: &str| format!("{text:?}: {why} (expected host:port, e.g. api.example.com:443)");
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or_else(|| bad("no port"))?;
        (h, p)
    } else {
        let (h, p) = text.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        if h.contains(':') {
            return Err(bad("put an IPv6 address in brackets"));
        }
        (h, p)
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| bad("the port must be 1-65535"))?;
    let mut host = host.to_ascii_lowercase();
    if !valid_host(&host) {
        return Err(bad("not a host name or IP address"));
    }
    // One spelling per address: `[0::1]` is `[::1]`.
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        host = ip.to_string();
    }
    Ok(Destination { host, port })
}

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow(Destination);

impl Allow {
    pub fn parse(text: &str) -> Result<Allow, String> {
        parse_host_port(text).map(Allow)
    }

    fn matches(&self, d: &Destination) -> bool {
        if self.0.port != d.port {
            return false;
        }
        match self.0.host.strip_prefix("*.") {
            Some(domain) => d
                .host
                .strip_suffix(domain)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            None => self.0.host == d.host,
        }
    }
}

/// A header set on every request to one destination, with its value
/// taken from an environment variable (by name).
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub destination: Destination,
    pub header: String,
    pub env: String,
    /// Put before the variable's value (`Bearer `).
    pub prefix: String,
    /// The header's value, once resolved.
    pub value: Option<String>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the value.
        f.debug_struct("Credential")
            .field("destination", &self.destination)
            .field("header", &self.header)
            .field("env", &self.env)
            .field("resolved", &self.value.is_some())
            .finish()
    }
}

/// A header name as HTTP allows (a token), refusing the ones a proxy or
/// the connection itself owns.
pub fn check_header_name(name: &str) -> Result<(), String> {
    if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(format!("{name:?} is not a valid header name"));
    }
    let lower = name.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "host" | "connection" | "content-length" | "transfer-encoding" | "upgrade" | "te"
    ) || lower.starts_with("proxy-")
    {
        return Err(format!("header {name:?} cannot carry a credential"));
    }
    Ok(())
}

/// An environment variable name (letters, digits, `_`).
pub fn check_env_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not an environment variable name (letters, digits and '_')"
        ))
    }
}

impl Credential {
    /// `HOST:PORT=HEADER=ENV[=PREFIX]`.
    pub fn parse(text: &str) -> Result<Credential, String> {
        let mut parts = text.splitn(4, '=');
        let (Some(dest), Some(header), Some(env)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "{text:?}: expected HOST:PORT=HEADER=ENV_NAME[=PREFIX], e.g. api.example.com:443=Authorization=EXAMPLE_TOKEN"
            ));
        };
        let destination = parse_host_port(dest)?;
        if destination.host.starts_with("*.") {
            return Err(format!(
                "{text:?}: a credential route names one host, not a pattern"
            ));
        }
        check_header_name(header)?;
        check_env_name(env)?;
        Ok(Credential {
            destination,
            header: header.to_owned(),
            env: env.to_owned(),
            prefix: parts.next().unwrap_or("").to_owned(),
            value: None,
        })
    }

    /// The `--credential` argument for this route (names only).
    pub fn to_arg(&self) -> String {
        let mut arg = format!("{}={}={}", self.destination, self.header, self.env);
        if !self.prefix.is_empty() {
            arg.push('=');
            arg.push_str(&self.prefix);
        }
        arg
    }
}

/// The proxy's whole policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub allow: Vec<Allow>,
    pub credentials: Vec<Credential>,
}

/// What the policy says of a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<'a> {
    Deny,
    Allow,
    /// Allowed, through this credential route.
    Credential(&'a Credential),
}

impl Policy {
    pub fn decide(&self, d: &Destination) -> Verdict<'_> {
        if let Some(c) = self.credentials.iter().find(|c| &c.destination == d) {
            return Verdict::Credential(c);
        }
        if self.allow.iter().any(|a| a.matches(d)) {
            Verdict::Allow
        } else {
            Verdict::Deny
        }
    }

    /// Resolves every credential's value through `lookup` (an
    /// environment); a missing one is an error naming the variable.
    pub fn resolve(&mut self, lookup: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        for c in &mut self.credentials {
            let raw = lookup(&c.env).filter(|v| !v.is_empty()).ok_or_else(|| {
                format!(
                    "the credential for {} needs {} set (by name) in the environment",
                    c.destination, c.env
                )
            })?;
            let value = format!("{}{raw}", c.prefix);
            if hyper::header::HeaderValue::from_str(&value).is_err() {
                return Err(format!(
                    "the value of {} is not a valid header value",
                    c.env
                ));
            }
            c.value = Some(value);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Destination {
        parse_host_port(s).unwrap()
    }

    #[test]
    fn parses_hosts_and_ports() {
        assert_eq!(d("API.Example.com:443").host, "api.example.com");
        assert_eq!(d("[::1]:8080").to_string(), "[::1]:8080");
        assert_eq!(d("10.0.0.1:80").port, 80);
        assert_eq!(d("[0:0::1]:80").host, "::1", "canonical addresses");
        for bad in [
            "example.com",
            "example.com:0",
            "example.com:99999",
            ":443",
            "exa mple.com:443",
            "::1:80",
            "*.1.2.3.4:80",
            "-x.com:1",
        ] {
            assert!(parse_host_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allowlist_and_patterns() {
        let p = Policy {
            allow: ["a.test:443", "*.b.test:443"]
                .iter()
                .map(|s| Allow::parse(s).unwrap())
                .collect(),
            credentials: vec![Credential::parse("c.test:443=Authorization=TOKEN=Bearer ").unwrap()],
        };
        assert_eq!(p.decide(&d("a.test:443")), Verdict::Allow);
        assert_eq!(p.decide(&d("a.test:80")), Verdict::Deny);
        assert_eq!(p.decide(&d("x.b.test:443")), Verdict::Allow);
        assert_eq!(p.decide(&d("b.test:443")), Verdict::Deny);
        assert_eq!(p.decide(&d("xb.test:443")), Verdict::Deny);
        assert_eq!(p.decide(&d("evil.test:443")), Verdict::Deny);
        assert!(matches!(p.decide(&d("c.test:443")), Verdict::Credential(_)));
    }

    #[test]
    fn credentials_resolve_by_name_and_hide_their_value() {
        let mut p = Policy {
            allow: vec![],
            credentials: vec![Credential::parse("c.test:443=Authorization=TOKEN=Bearer ").unwrap()],
        };
        assert!(p.resolve(|_| None).unwrap_err().contains("TOKEN"));
        p.resolve(|n| (n == "TOKEN").then(|| "s3cret".to_owned()))
            .unwrap();
        assert_eq!(p.credentials[0].value.as_deref(), Some("Bearer s3cret"));
        assert!(!format!("{p:?}").contains("s3cret"));
        assert_eq!(
            p.credentials[0].to_arg(),
            "c.test:443=Authorization=TOKEN=Bearer "
        );
        for bad in [
            "c.test:443",
            "c.test:443=Proxy-Authorization=T",
            "c.test:443=Host=T",
            "c.test:443=Authorization=1T",
            "*.c.test:443=Authorization=T",
        ] {
            assert!(Credential::parse(bad).is_err(), "{bad}");
        }
    }
}
