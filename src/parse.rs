//! Parsing shared by every flag and environment variable: Go-syntax
//! durations (`250ms`, `1.5h`, `1h30m`; a bare integer means seconds) and
//! loose booleans (`1/0/true/false/yes/no/on/off`).

use std::time::Duration;

/// Parses a Go duration (`time.ParseDuration` syntax) or a bare integer
/// number of seconds. Negative durations are refused: no flag takes one.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| format!("duration {text:?} is too large"));
    }
    // The Go port indexes by byte after a sign check; keep it on ASCII so a
    // stray multi-byte character is an error, never a panic. (`µs` has an
    // ASCII spelling, `us`.)
    let ascii = text.replace('µ', "u");
    if !ascii.is_ascii() {
        return Err(invalid(text));
    }
    match go_parse_duration::parse_duration(&ascii) {
        Ok(nanos) if nanos < 0 => Err(format!("duration {text:?} is negative")),
        Ok(nanos) => Ok(Duration::from_nanos(nanos as u64)),
        Err(_) => Err(invalid(text)),
    }
}

fn invalid(text: &str) -> String {
    format!("invalid duration {text:?}: use Go syntax such as 250ms, 30s, 1.5h or 1h30m, or a whole number of seconds")
}

/// Parses a loose boolean: `1/0`, `true/false`, `yes/no`, `on/off`
/// (any case).
pub fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" | "y" | "t" => Ok(true),
        "0" | "false" | "no" | "off" | "n" | "f" | "" => Ok(false),
        _ => Err(format!(
            "invalid boolean {text:?}: use 1/0, true/false or yes/no"
        )),
    }
}

/// Reads an environment variable as a loose boolean; unset means `false`.
/// A malformed value is an error naming the variable.
pub fn env_bool(name: &str) -> Result<bool, String> {
    match std::env::var(name) {
        Ok(value) => parse_bool(&value).map_err(|e| format!("{name}: {e}")),
        Err(_) => Ok(false),
    }
}

/// Reads an environment variable as a duration, with a default when unset.
pub fn env_duration(name: &str, default: Duration) -> Result<Duration, String> {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => {
            parse_duration(&value).map_err(|e| format!("{name}: {e}"))
        }
        _ => Ok(default),
    }
}

/// Formats a duration the way Go prints it (`1h30m0s`, `250ms`), for
/// messages and help text.
pub fn format_duration(d: Duration) -> String {
    let total_ms = d.as_millis();
    if total_ms < 1000 && d.as_nanos().is_multiple_of(1_000_000) && total_ms > 0 {
        return format!("{total_ms}ms");
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let frac = d.subsec_millis();
    let s = if frac > 0 {
        format!("{s}.{frac:03}").trim_end_matches('0').to_owned()
    } else {
        s.to_string()
    };
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m{s}s"),
        (h, m) => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let ms = |n| Duration::from_millis(n);
        assert_eq!(parse_duration("250ms"), Ok(ms(250)));
        assert_eq!(parse_duration("1.5h"), Ok(ms(5_400_000)));
        assert_eq!(parse_duration("1h30m"), Ok(ms(5_400_000)));
        assert_eq!(parse_duration("30"), Ok(ms(30_000)));
        assert_eq!(parse_duration("0"), Ok(ms(0)));
        assert_eq!(parse_duration("2m"), Ok(ms(120_000)));
        assert_eq!(parse_duration("300us"), Ok(Duration::from_micros(300)));
        assert_eq!(parse_duration("300µs"), Ok(Duration::from_micros(300)));
        for bad in [
            "",
            "h",
            "1x",
            "-1s",
            "1.5",
            "ä",
            "1hä",
            "+",
            ".",
            "1..5s",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bools() {
        for t in ["1", "true", "TRUE", "yes", "on"] {
            assert_eq!(parse_bool(t), Ok(true), "{t}");
        }
        for f in ["0", "false", "no", "off", ""] {
            assert_eq!(parse_bool(f), Ok(false), "{f}");
        }
        assert!(parse_bool("maybe").is_err());
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m0s");
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
    }
}
