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
        if !body.iter().any(|b| is_escaped(*b) || *b == 0x1b) {
            self.0.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut out = Vec::with_capacity(buf.len() + 16);
        let mut i = 0;
        while i < body.len() {
            let b = body[i];
            let colour = (b == 0x1b).then(|| colour_len(&body[i..])).flatten();
            if let Some(n) = colour {
                out.extend_from_slice(&body[i..i + n]);
                i += n;
                continue;
            }
            if is_escaped(b) || b == 0x1b {
                out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
            } else {
                out.push(b);
            }
            i += 1;
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

/// The length of a colour sequence (`ESC [ digits/; m`) at the start of
/// `s`: the only escape kept. It can change a colour, never move the
/// cursor or erase a line.
fn colour_len(s: &[u8]) -> Option<usize> {
    let rest = s.strip_prefix(b"\x1b[")?;
    let digits = rest
        .iter()
        .take_while(|b| b.is_ascii_digit() || **b == b';')
        .count();
    (rest.get(digits) == Some(&b'm')).then_some(2 + digits + 1)
}

#[cfg(test)]
mod tests {
    use super::Escaped;
    use std::io::Write;

    #[test]
    fn a_line_stays_one_line() {
        let mut out = Escaped(Vec::new());
        out.write_all(b"INFO owner=alice\nERROR forged\r\t\x1b[1m\x1b[1A\x1b[2K\x1bE\n")
            .unwrap();
        assert_eq!(
            String::from_utf8(out.0).unwrap(),
            "INFO owner=alice\\x0aERROR forged\\x0d\\x09\x1b[1m\\x1b[1A\\x1b[2K\\x1bE\n"
        );
    }
}
