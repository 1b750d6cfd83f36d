//! A run's output: captured up to the cap per stream (past it the stream
//! is drained and dropped, so the container never blocks on a full pipe)
//! and published live as `run.output`, in order, secrets redacted, UTF-8
//! split only at character boundaries.

use super::{ContainerSession, Phase};
use crate::contract::{OutputStream, RunOutput};
use crate::planning::utf8::Utf8Carry;
use crate::runtime::{Chunk, RuntimeError};
use actix::prelude::*;

/// The most output bytes in one `run.output` event: escaped six-fold
/// (NUL bytes as `\u0000`) it is still far below any bus's limit.
pub(super) const MAX_EVENT_DATA: usize = 64 << 10;

/// What is kept of one output stream.
pub(super) struct Capture {
    kept: Vec<u8>,
    cap: usize,
    pub truncated: bool,
    pub carry: Utf8Carry,
}

impl Capture {
    pub fn new(cap: usize) -> Self {
        Capture {
            kept: Vec::new(),
            cap,
            truncated: false,
            carry: Utf8Carry::default(),
        }
    }

    /// Keeps what fits under the cap; returns the kept part's text.
    fn take(&mut self, data: &[u8]) -> Option<String> {
        let room = self.cap.saturating_sub(self.kept.len());
        if data.len() > room {
            self.truncated = true;
        }
        let kept = &data[..data.len().min(room)];
        if kept.is_empty() {
            return None;
        }
        self.kept.extend_from_slice(kept);
        Some(self.carry.push(kept)).filter(|t| !t.is_empty())
    }

    /// Everything kept, as text (invalid bytes replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.kept).into_owned()
    }
}

impl ContainerSession {
    fn capture(&mut self, stream: OutputStream) -> &mut Capture {
        match stream {
            OutputStream::Stdout => &mut self.stdout,
            OutputStream::Stderr => &mut self.stderr,
        }
    }

    /// Publishes output (nothing when redaction held it all back), in
    /// pieces that fit any bus: at most [`MAX_EVENT_DATA`] bytes each,
    /// cut at character boundaries.
    fn output_event(&mut self, stream: OutputStream, data: String) {
        let mut rest = data.as_str();
        while !rest.is_empty() {
            let mut cut = rest.len().min(MAX_EVENT_DATA);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (piece, tail) = rest.split_at(cut);
            rest = tail;
            let event = RunOutput {
                run_id: self.plan.run_id.clone(),
                owner_account_id: self.plan.owner.clone(),
                seq: self.seq,
                stream,
                data: piece.to_owned(),
                encoding: None,
            };
            self.seq += 1;
            self.event("run.output", &event);
        }
    }
}

impl StreamHandler<Result<Chunk, RuntimeError>> for ContainerSession {
    fn handle(&mut self, item: Result<Chunk, RuntimeError>, _: &mut Self::Context) {
        let chunk = match item {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(run_id = %self.plan.run_id, error = %e, "output stream error");
                return;
            }
        };
        if let Some(text) = self.capture(chunk.stream).take(&chunk.data) {
            let text = self
                .live
                .push(&self.plan.secrets, chunk.stream.index(), &text);
            self.output_event(chunk.stream, text);
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        for stream in [OutputStream::Stdout, OutputStream::Stderr] {
            let tail = self.capture(stream).carry.finish();
            let i = stream.index();
            let mut rest = self.live.push(&self.plan.secrets, i, &tail);
            rest.push_str(&self.live.finish(&self.plan.secrets, i));
            self.output_event(stream, rest);
        }
        self.output_open = false;
        match self.exec_id.clone() {
            Some(exec_id) if self.phase == Phase::Running => self.read_exec_exit(exec_id, ctx),
            _ => self.maybe_finish(ctx),
        }
    }
}
