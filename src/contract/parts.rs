//! Payloads larger than one bus message travel in ordered parts, each
//! the base64 of a slice of the payload's JSON, sized so that a part and
//! its envelope fit the bus's limit: a large result (`run.result.part`,
//! worker → provider) and a large run request (`run.payload.part`,
//! provider → the worker that took the run, which asks for them with
//! `run.payload.pull`).

use base64::Engine;
use serde::{Deserialize, Serialize};

/// Room left in a bus message for the envelope around a payload.
pub const ENVELOPE_ROOM: usize = 8 << 10;

/// The base64 parts of `bytes` on a bus whose messages hold at most
/// `limit` bytes; `None` when they fit in one message (or the bus has no
/// limit).
pub fn parts_of(bytes: &[u8], limit: Option<usize>) -> Option<Vec<String>> {
    let limit = limit?;
    let room = limit.saturating_sub(ENVELOPE_ROOM).max(4096);
    if bytes.len() <= room {
        return None;
    }
    // base64 makes 4 bytes of 3.
    let chunk = (room / 4) * 3;
    let b64 = base64::engine::general_purpose::STANDARD;
    Some(bytes.chunks(chunk).map(|piece| b64.encode(piece)).collect())
}

/// `run.payload.pull` (ours): the worker that took a run whose request
/// came in parts asks its API provider for them (those not yet here).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PayloadPull {
    pub run_id: String,
    pub owner_account_id: String,
    pub worker_id: String,
    pub parts: Vec<u32>,
}

/// `run.payload.part` (ours): one part of a run request too large for
/// one bus message — the base64 of a slice of the request's JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PayloadPart {
    pub run_id: String,
    pub owner_account_id: String,
    /// The worker that asked.
    #[serde(default)]
    pub worker_id: String,
    pub part: u32,
    pub parts: u32,
    pub data_base64: String,
}

/// Puts parts (`index → decoded bytes`) back together once all of
/// `0..parts` are there.
pub fn assemble(parts: u32, got: &std::collections::BTreeMap<u32, Vec<u8>>) -> Option<Vec<u8>> {
    if (0..parts).any(|i| !got.contains_key(&i)) {
        return None;
    }
    Some((0..parts).flat_map(|i| got[&i].iter().copied()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_fit_the_bus_and_rebuild_the_payload() {
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        assert!(parts_of(&payload, None).is_none());
        assert!(parts_of(&payload[..1000], Some(1 << 20)).is_none());
        let parts = parts_of(&payload, Some(1 << 20)).unwrap();
        assert!(parts.len() >= 3);
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut got = std::collections::BTreeMap::new();
        for (i, p) in parts.iter().enumerate() {
            assert!(p.len() <= (1 << 20) - ENVELOPE_ROOM);
            got.insert(i as u32, b64.decode(p).unwrap());
        }
        let n = parts.len() as u32;
        let last = got.remove(&(n - 1)).unwrap();
        assert!(assemble(n, &got).is_none(), "one missing");
        got.insert(n - 1, last);
        assert_eq!(assemble(n, &got).unwrap(), payload);
    }
}
