//! NDJSON streaming bodies with heartbeats (an empty line at least every
//! interval, so proxies keep the stream open; clients skip empty lines).

use bytes::Bytes;
use futures::stream::{LocalBoxStream, Stream, StreamExt};
use std::time::Duration;

/// `lines`, interleaved with a heartbeat every `every` while it is quiet;
/// ends when `lines` ends.
pub fn with_heartbeats(
    lines: LocalBoxStream<'static, Bytes>,
    every: Duration,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    let start = actix_rt::time::Instant::now() + every;
    let ticks = actix_rt::time::interval_at(start, every);
    futures::stream::unfold((lines, ticks), |(mut lines, mut ticks)| async move {
        tokio::select! {
            line = lines.next() => line.map(|l| (Ok(l), (lines, ticks))),
            _ = ticks.tick() => Some((Ok(Bytes::from_static(b"\n")), (lines, ticks))),
        }
    })
}

/// A JSON value as one NDJSON line.
pub fn line(value: &serde_json::Value) -> Bytes {
    let mut v = serde_json::to_vec(value).unwrap_or_default();
    v.push(b'\n');
    v.into()
}
