//! Who may publish or listen on which event names (`spec/events-api.md`,
//! "ACL by event-name prefix"), and who sees every identity's events.

use super::{scopes, Identity};

/// Container traffic is service traffic: only `container:admin` reaches it.
pub const DEFAULT_PROTECTED_PREFIXES: &[&str] = &["bus.containers", "bus.docker", "bus.podman"];

/// The event-name ACL of one Events API server.
#[derive(Debug, Clone)]
pub struct Acl {
    protected: Vec<String>,
}

impl Default for Acl {
    fn default() -> Self {
        Acl::new(std::iter::empty::<String>())
    }
}

fn has_prefix(name: &str, prefix: &str) -> bool {
    name == prefix
        || (name.len() > prefix.len()
            && name.starts_with(prefix)
            && name.as_bytes()[prefix.len()] == b'.')
}

impl Acl {
    /// The default protected prefixes plus `extra` (`--protected-prefix`;
    /// `bus.foo`, `bus.foo.` and `bus.foo.*` mean the same).
    pub fn new<S: AsRef<str>>(extra: impl IntoIterator<Item = S>) -> Self {
        let mut protected: Vec<String> = DEFAULT_PROTECTED_PREFIXES
            .iter()
            .map(|s| s.to_string())
            .collect();
        for p in extra {
            let p = p
                .as_ref()
                .trim()
                .trim_end_matches(['*', '>'])
                .trim_end_matches('.');
            if !p.is_empty() && !protected.iter().any(|q| q == p) {
                protected.push(p.to_owned());
            }
        }
        Acl { protected }
    }

    pub fn is_protected(&self, name: &str) -> bool {
        self.protected.iter().any(|p| has_prefix(name, p))
    }

    /// The scope needed to publish `name`.
    pub fn publish_scope(&self, name: &str) -> &'static str {
        if self.is_protected(name) {
            scopes::CONTAINER_ADMIN
        } else if has_prefix(name, "bus.usage") {
            scopes::USAGE_WRITE
        } else if has_prefix(name, "bus.billing") {
            scopes::BILLING_CHECK
        } else {
            scopes::EVENTS_SEND
        }
    }

    /// The scope needed to stream `name`.
    pub fn listen_scope(&self, name: &str) -> &'static str {
        if self.is_protected(name) {
            scopes::CONTAINER_ADMIN
        } else if has_prefix(name, "bus.usage") {
            scopes::USAGE_READ
        } else if has_prefix(name, "bus.billing") {
            scopes::BILLING_READ
        } else {
            scopes::EVENTS_LISTEN
        }
    }

    pub fn may_publish(&self, who: &Identity, name: &str) -> Result<(), String> {
        self.check(who, name, self.publish_scope(name), "publish")
    }

    pub fn may_listen(&self, who: &Identity, name: &str) -> Result<(), String> {
        self.check(who, name, self.listen_scope(name), "listen on")
    }

    fn check(&self, who: &Identity, name: &str, scope: &str, verb: &str) -> Result<(), String> {
        if who.has_scope(scopes::EVENTS_ADMIN) || who.has_scope(scope) {
            Ok(())
        } else {
            Err(format!("scope {scope} is required to {verb} {name}"))
        }
    }

    /// A service for `name` sees every identity's events on it; anyone
    /// else only their own.
    pub fn sees_all_identities(&self, who: &Identity, name: &str) -> bool {
        who.has_scope(scopes::EVENTS_ADMIN)
            || (who.has_scope(scopes::CONTAINER_ADMIN) && self.is_protected(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let acl = Acl::new(["bus.secret.*"]);
        assert!(acl.is_protected("bus.containers.run.request"));
        assert!(acl.is_protected("bus.docker"));
        assert!(!acl.is_protected("bus.dockerx.run"));
        assert!(acl.is_protected("bus.secret.x"));
        assert_eq!(acl.publish_scope("bus.usage.record.request"), "usage:write");
        assert_eq!(acl.listen_scope("bus.billing.x"), "billing:read");
        assert_eq!(acl.publish_scope("app.hello"), "events:send");
        let user = Identity::new("u", &["events:send", "events:listen"]);
        assert!(acl.may_publish(&user, "app.hello").is_ok());
        assert!(acl
            .may_publish(&user, "bus.containers.run.request")
            .is_err());
        let admin = Identity::new("a", &["events:admin"]);
        assert!(acl.may_listen(&admin, "bus.podman.x").is_ok());
        assert!(acl.sees_all_identities(&admin, "app.x"));
        let svc = Identity::new("s", &["container:admin"]);
        assert!(acl.sees_all_identities(&svc, "bus.docker.run.response"));
        assert!(!acl.sees_all_identities(&svc, "app.x"));
    }
}
