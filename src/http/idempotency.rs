//! Publishing the same envelope twice publishes it once.
//!
//! A client whose `POST /api/v1/events` timed out cannot tell whether the
//! event went out, so it sends it again with the same `Idempotency-Key`
//! (the HTTP broker sends its envelope id). The Events API remembers each
//! key of each publisher for [`WINDOW`] and answers a repeat with the
//! first publish's id without publishing again — even when both copies
//! arrive at once (an API that was stopped and resumed).

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use std::time::{Duration, Instant};

/// How long a key is remembered.
pub const WINDOW: Duration = Duration::from_secs(10 * 60);
/// The most keys remembered (older ones are forgotten first).
pub const MAX_KEYS: usize = 100_000;

/// The keys seen lately, per publisher.
#[derive(Default)]
pub struct RecentPublishes {
    keys: DashMap<(String, String), (String, Instant)>,
}

impl RecentPublishes {
    /// `None` if this is the first publish of `key` by `publisher` (it is
    /// remembered with `id`); the first publish's id otherwise.
    pub fn first(&self, publisher: &str, key: &str, id: &str) -> Option<String> {
        if self.keys.len() >= MAX_KEYS {
            self.keys.retain(|_, (_, at)| at.elapsed() < WINDOW);
            if self.keys.len() >= MAX_KEYS {
                self.keys.clear();
            }
        }
        match self.keys.entry((publisher.to_owned(), key.to_owned())) {
            Entry::Occupied(e) if e.get().1.elapsed() < WINDOW => Some(e.get().0.clone()),
            Entry::Occupied(mut e) => {
                e.insert((id.to_owned(), Instant::now()));
                None
            }
            Entry::Vacant(e) => {
                e.insert((id.to_owned(), Instant::now()));
                None
            }
        }
    }

    /// The publish of `key` failed: a retry may publish.
    pub fn forget(&self, publisher: &str, key: &str) {
        self.keys.remove(&(publisher.to_owned(), key.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_publishes_once_per_publisher() {
        let r = RecentPublishes::default();
        assert_eq!(r.first("a", "k1", "evt_1"), None);
        assert_eq!(r.first("a", "k1", "evt_2").as_deref(), Some("evt_1"));
        assert_eq!(r.first("b", "k1", "evt_3"), None, "another publisher's key");
        r.forget("a", "k1");
        assert_eq!(
            r.first("a", "k1", "evt_4"),
            None,
            "a failed publish may be retried"
        );
    }
}
