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
    go_duration(text).ok_or_else(|| invalid(text))
}

/// Go's `time.ParseDuration` for non-negative durations: a sequence of
/// decimal numbers, each with an optional fraction and a unit (`ns`, `us`
/// or `µs`, `ms`, `s`, `m`, `h`), e.g. `1h30m`, `1.5h`, `250ms`; `0` alone
/// is zero. Arithmetic is checked: too large is `None`, never a panic.
fn go_duration(text: &str) -> Option<Duration> {
    if text == "0" || text == "+0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(after) = rest.strip_prefix('.') {
            let frac_len = after.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &after[..frac_len];
            rest = &after[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map(|(i, _)| i)
            .unwrap_or(rest.len());
        let unit: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        let mut whole: u128 = 0;
        for b in int_part.bytes() {
            whole = whole.checked_mul(10)?.checked_add(u128::from(b - b'0'))?;
        }
        let mut nanos = whole.checked_mul(unit)?;
        // The fraction, to nanosecond precision (digits past 1e-30 of a unit
        // cannot matter).
        let mut scale: u128 = 1;
        let mut frac: u128 = 0;
        for b in frac_part.bytes().take(30) {
            frac = frac * 10 + u128::from(b - b'0');
            scale *= 10;
        }
        nanos = nanos.checked_add(frac.checked_mul(unit)? / scale)?;
        total = total.checked_add(nanos)?;
    }
    let secs = u64::try_from(total / 1_000_000_000).ok()?;
    Some(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// Like [`parse_duration`], but a well-formed duration too large to
/// represent is `cap`, and every result is at most `cap`.
pub fn parse_duration_capped(text: &str, cap: Duration) -> Result<Duration, String> {
    match parse_duration(text) {
        Ok(d) => Ok(d.min(cap)),
        Err(e) if go_syntax(text.trim()) => {
            // Well-formed but too large to represent: as long as allowed.
            let _ = e;
            Ok(cap)
        }
        Err(e) => Err(e),
    }
}

/// `^([0-9]+|([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+)$`
fn go_syntax(t: &str) -> bool {
    let b = t.as_bytes();
    if !b.is_empty() && b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > start
    };
    if b.is_empty() {
        return false;
    }
    while i < b.len() {
        if !digits(&mut i) {
            return false;
        }
        if i < b.len() && b[i] == b'.' {
            i += 1;
            if !digits(&mut i) {
                return false;
            }
        }
        let rest = &t[i..];
        let unit = ["ns", "us", "ms", "s", "m", "h"]
            .iter()
            .find(|u| rest.starts_with(**u));
        match unit {
            Some(u) => i += u.len(),
            None => return false,
        }
    }
    true
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
    fn capped() {
        let cap = Duration::from_secs(60);
        assert_eq!(
            parse_duration_capped("10s", cap),
            Ok(Duration::from_secs(10))
        );
        assert_eq!(parse_duration_capped("99999999999999h", cap), Ok(cap));
        assert_eq!(
            parse_duration_capped("99999999999999999999999", cap),
            Ok(cap)
        );
        assert!(parse_duration_capped("soon", cap).is_err());
        assert!(parse_duration_capped("1.5.5h", cap).is_err());
        assert!(parse_duration_capped("", cap).is_err());
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
