//! A run's output: captured up to the cap per stream (past it the stream
//! is drained and dropped, so the container never blocks on a full pipe)
//! and published live as `run.output`, in order, secrets redacted (on the
//! bytes), as UTF-8 text split only at character boundaries or, for a
//! run that asked for `"output_encoding": "base64"`, as base64 of the
//! exact bytes.

use super::{ContainerSession, Phase};
use crate::contract::bytes::base64_encode;
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

    /// Keeps what fits under the cap; returns the kept part.
    fn take<'a>(&mut self, data: &'a [u8]) -> &'a [u8] {
        let room = self.cap.saturating_sub(self.kept.len());
        if data.len() > room {
            self.truncated = true;
        }
        let kept = &data[..data.len().min(room)];
        self.kept.extend_from_slice(kept);
        kept
    }

    /// Everything kept, as text (invalid bytes replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.kept).into_owned()
    }

    /// Everything kept, as bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.kept
    }
}

impl ContainerSession {
    fn capture(&mut self, stream: OutputStream) -> &mut Capture {
        match stream {
            OutputStream::Stdout => &mut self.stdout,
            OutputStream::Stderr => &mut self.stderr,
        }
    }

    /// Publishes redacted output bytes (nothing when redaction held them
    /// all back): base64 pieces of at most [`MAX_EVENT_DATA`] bytes, or
    /// text through the stream's UTF-8 carry.
    fn output_bytes(&mut self, stream: OutputStream, bytes: &[u8], end: bool) {
        if self.plan.output_encoding.is_base64() {
            for piece in bytes.chunks(MAX_EVENT_DATA) {
                self.output_event(stream, base64_encode(piece), true);
            }
            return;
        }
        let carry = &mut self.capture(stream).carry;
        let mut text = carry.push(bytes);
        if end {
            text.push_str(&carry.finish());
        }
        self.output_text(stream, text);
    }

    /// Publishes text in pieces that fit any bus: at most
    /// [`MAX_EVENT_DATA`] bytes each, cut at character boundaries.
    fn output_text(&mut self, stream: OutputStream, data: String) {
        let mut rest = data.as_str();
        while !rest.is_empty() {
            let mut cut = rest.len().min(MAX_EVENT_DATA);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (piece, tail) = rest.split_at(cut);
            rest = tail;
            self.output_event(stream, piece.to_owned(), false);
        }
    }

    fn output_event(&mut self, stream: OutputStream, data: String, base64: bool) {
        let event = RunOutput {
            run_id: self.plan.run_id.clone(),
            owner_account_id: self.plan.owner.clone(),
            seq: self.seq,
            stream,
            data,
            encoding: base64.then(|| "base64".to_owned()),
        };
        self.seq += 1;
        self.event("run.output", &event);
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
        let kept = self.capture(chunk.stream).take(&chunk.data);
        if !kept.is_empty() {
            let out = self
                .live
                .push(&self.plan.secrets, chunk.stream.index(), kept);
            self.output_bytes(chunk.stream, &out, false);
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        for stream in [OutputStream::Stdout, OutputStream::Stderr] {
            let cut = self.capture(stream).truncated;
            let rest = self.live.finish(&self.plan.secrets, stream.index(), cut);
            self.output_bytes(stream, &rest, true);
        }
        self.output_open = false;
        match self.exec_id.clone() {
            Some(exec_id) if self.phase == Phase::Running => self.read_exec_exit(exec_id, ctx),
            _ => self.maybe_finish(ctx),
        }
    }
}
