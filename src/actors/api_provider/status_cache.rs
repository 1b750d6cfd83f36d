//! What `GET /status` answered lately, kept for [`STATUS_FRESH`]: the
//! runner's entry (the same for every caller) and each account's live
//! runs. A status request within that time costs no bus round trip. An
//! account's runs are forgotten the moment this instance sees one of
//! them change (begun, accepted, started, ended), so a caller sees its
//! own runs here at once; a change elsewhere (another instance, a worker
//! alone) shows within [`STATUS_FRESH`].

use super::messages::StatusEntry;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long an answer is served again.
pub const STATUS_FRESH: Duration = Duration::from_secs(1);

/// Accounts kept at most; past this, stale ones are dropped first.
const MAX_ACCOUNTS: usize = 4096;

#[derive(Default)]
pub(super) struct StatusCache {
    runner: Option<(Instant, StatusEntry)>,
    runs: HashMap<String, (Instant, Vec<StatusEntry>)>,
    /// Bumped when an account's runs change: an answer asked for before
    /// a change is not kept after it. `base` moves when the map is
    /// cleared (bounded), so no answer from before that is kept either.
    epochs: HashMap<String, u64>,
    base: u64,
}

impl StatusCache {
    pub fn runner(&self) -> Option<StatusEntry> {
        self.runner
            .as_ref()
            .filter(|(at, _)| at.elapsed() < STATUS_FRESH)
            .map(|(_, e)| e.clone())
    }

    pub fn keep_runner(&mut self, asked_at: Instant, entry: StatusEntry) {
        self.runner = Some((asked_at, entry));
    }

    pub fn runs(&self, owner: &str) -> Option<Vec<StatusEntry>> {
        self.runs
            .get(owner)
            .filter(|(at, _)| at.elapsed() < STATUS_FRESH)
            .map(|(_, e)| e.clone())
    }

    /// The account's epoch now, as [`Self::keep_runs`] wants it back.
    pub fn epoch(&self, owner: &str) -> (u64, u64) {
        (self.base, self.epochs.get(owner).copied().unwrap_or(0))
    }

    /// The runner changed here (started, deleted): asked again.
    pub fn forget_runner(&mut self) {
        self.runner = None;
    }

    /// Keeps an account's runs as asked at `asked_at` (in `epoch`),
    /// unless runs changed since.
    pub fn keep_runs(
        &mut self,
        owner: &str,
        epoch: (u64, u64),
        asked_at: Instant,
        entries: Vec<StatusEntry>,
    ) {
        if self.epoch(owner) != epoch {
            return;
        }
        if self.runs.len() >= MAX_ACCOUNTS && !self.runs.contains_key(owner) {
            self.runs.retain(|_, (at, _)| at.elapsed() < STATUS_FRESH);
            if self.runs.len() >= MAX_ACCOUNTS {
                return;
            }
        }
        self.runs.insert(owner.to_owned(), (asked_at, entries));
    }

    /// One of the account's runs changed here.
    pub fn forget(&mut self, owner: &str) {
        self.runs.remove(owner);
        if self.epochs.len() >= MAX_ACCOUNTS && !self.epochs.contains_key(owner) {
            self.epochs.clear();
            self.base = self.base.wrapping_add(1);
        }
        let e = self.epochs.entry(owner.to_owned()).or_default();
        *e = e.wrapping_add(1);
    }
}
