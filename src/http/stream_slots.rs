//! Caps on open streams (event streams, log follows): per token identity
//! (`sub`) and in total. A stream over either cap is refused `429
//! rate_limited` before it opens, so one token holding thousands of
//! connections cannot starve other accounts or the probes. A stream's
//! [`Slot`] travels with its body and is given back when the body is
//! dropped (the stream ended or its client went).

use super::error::ApiError;
use crate::contract::ErrorType;
use futures::stream::{Stream, StreamExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The defaults of `--max-streams` and `--max-streams-per-identity`.
pub const MAX_STREAMS: usize = 4096;
pub const MAX_STREAMS_PER_IDENTITY: usize = 256;

#[derive(Clone)]
pub struct StreamSlots {
    open: Arc<Mutex<Open>>,
    total: usize,
    per_identity: usize,
}

#[derive(Default)]
struct Open {
    total: usize,
    by_identity: HashMap<String, usize>,
}

impl Default for StreamSlots {
    fn default() -> Self {
        StreamSlots::new(MAX_STREAMS, MAX_STREAMS_PER_IDENTITY)
    }
}

impl StreamSlots {
    pub fn new(total: usize, per_identity: usize) -> Self {
        StreamSlots {
            open: Arc::default(),
            total,
            per_identity,
        }
    }

    /// A slot for one more stream of `identity`, or the 429.
    pub fn take(&self, identity: &str) -> Result<Slot, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let mine = open.by_identity.get(identity).copied().unwrap_or(0);
        let refused = if mine >= self.per_identity {
            Some(format!(
                "this token already has {mine} open streams (the limit is {})",
                self.per_identity
            ))
        } else if open.total >= self.total {
            Some(format!(
                "the server has {} open streams (the limit is {})",
                open.total, self.total
            ))
        } else {
            None
        };
        if let Some(why) = refused {
            return Err(ApiError::new(ErrorType::RateLimited, why).with_retry_after(1));
        }
        open.total += 1;
        *open.by_identity.entry(identity.to_owned()).or_default() += 1;
        Ok(Slot {
            open: self.open.clone(),
            identity: identity.to_owned(),
        })
    }

    /// Streams open now (all identities).
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// One open stream's place; given back on drop.
pub struct Slot {
    open: Arc<Mutex<Open>>,
    identity: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_identity.get_mut(&self.identity) {
            *n -= 1;
            if *n == 0 {
                open.by_identity.remove(&self.identity);
            }
        }
    }
}

/// `body`, holding `slot` for as long as it lives.
pub fn holding<H: 'static, S: Stream + 'static>(slot: H, body: S) -> impl Stream<Item = S::Item> {
    body.map(move |item| {
        let _held = &slot;
        item
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_identity_and_in_total_and_gives_back_on_drop() {
        let slots = StreamSlots::new(3, 2);
        let a1 = slots.take("alice").unwrap();
        let _a2 = slots.take("alice").unwrap();
        let e = slots.take("alice").err().unwrap();
        assert_eq!(e.detail.kind, ErrorType::RateLimited);
        let _b1 = slots.take("bob").unwrap();
        assert!(slots.take("carol").is_err(), "the total cap");
        drop(a1);
        assert_eq!(slots.open(), 2);
        let _c1 = slots.take("carol").unwrap();
    }
}
