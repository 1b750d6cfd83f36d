//! Logging: `tracing` to stderr, as text or JSON lines (`--log-format`),
//! filtered by `RUST_LOG` (default `info`).

use tracing_subscriber::EnvFilter;

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the process's subscriber; a second call is a no-op.
pub fn init(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Text => builder
            .with_writer(|| Escaped(std::io::stderr()))
            .try_init(),
        // JSON escapes control characters itself.
        LogFormat::Json => builder
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .try_init(),
    };
}

/// A text log line as one write, with every control character in it but
/// its final newline (and the escape of the formatter's own colours)
/// written as `\xNN`: a value from a request (a token's claims, an owner,
/// an event name) cannot start a line of its own that looks like a log.
struct Escaped<W>(W);

impl<W: std::io::Write> std::io::Write for Escaped<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (body, end) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, &b"\n"[..]),
            None => (buf, &b""[..]),
        };
        if !body.iter().any(|b| is_escaped(*b)) {
            self.0.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut out = Vec::with_capacity(buf.len() + 16);
        for &b in body {
            if is_escaped(b) {
                out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
            } else {
                out.push(b);
            }
        }
        out.extend_from_slice(end);
        self.0.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

fn is_escaped(b: u8) -> bool {
    (b < 0x20 && b != 0x1b) || b == 0x7f
}

#[cfg(test)]
mod tests {
    use super::Escaped;
    use std::io::Write;

    #[test]
    fn a_line_stays_one_line() {
        let mut out = Escaped(Vec::new());
        out.write_all(b"INFO owner=alice\nERROR forged\r\t\x1b[1m\n")
            .unwrap();
        assert_eq!(
            String::from_utf8(out.0).unwrap(),
            "INFO owner=alice\\x0aERROR forged\\x0d\\x09\x1b[1m\n"
        );
    }
}
