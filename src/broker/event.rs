//! An envelope as the broker hands it out: shared between every subscriber
//! and serialised at most once.

use crate::contract::Envelope;
use bytes::Bytes;
use std::sync::{Arc, OnceLock};

/// A delivered event. Subscribers share one `Arc<Event>`; the NDJSON line
/// is computed once, on first use, for every HTTP stream that sends it.
#[derive(Debug)]
pub struct Event {
    envelope: Envelope,
    line: OnceLock<Bytes>,
}

impl Event {
    pub fn new(envelope: Envelope) -> Arc<Self> {
        Arc::new(Event {
            envelope,
            line: OnceLock::new(),
        })
    }

    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The envelope as one NDJSON line, newline included.
    pub fn line(&self) -> &Bytes {
        self.line.get_or_init(|| self.envelope.to_ndjson())
    }
}

impl std::ops::Deref for Event {
    type Target = Envelope;
    fn deref(&self) -> &Envelope {
        &self.envelope
    }
}
