//! `bus FILE.bus`: run a file of `bus` commands, one per line, without the
//! `bus` prefix. Shell-like quoting (shell-words), `#` comments, `$NAME` and
//! `${NAME}` expanded from the environment (not inside single quotes),
//! nothing else. Stops at the first failing line and names it.

use super::failure::Failure;
use std::path::Path;

/// Removes a `#` comment that is not inside quotes.
fn strip_comment(line: &str) -> &str {
    let (mut single, mut double, mut escaped) = (false, false, false);
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if !single => escaped = true,
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && (i == 0 || line[..i].ends_with(char::is_whitespace)) => {
                return &line[..i]
            }
            _ => {}
        }
    }
    line
}

/// Expands `$NAME` and `${NAME}` outside single quotes; an unset variable
/// is an error (a typo must not silently become empty).
fn expand(line: &str) -> Result<String, String> {
    let mut out = String::with_capacity(line.len());
    let chars: Vec<char> = line.chars().collect();
    let (mut i, mut single, mut double) = (0, false, false);
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' if !single && i + 1 < chars.len() => {
                out.push(c);
                out.push(chars[i + 1]);
                i += 2;
                continue;
            }
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '$' if !single => {
                let (name, next) = if chars.get(i + 1) == Some(&'{') {
                    let end = chars[i + 2..]
                        .iter()
                        .position(|c| *c == '}')
                        .ok_or("unclosed ${")?;
                    (
                        chars[i + 2..i + 2 + end].iter().collect::<String>(),
                        i + 3 + end,
                    )
                } else {
                    let len = chars[i + 1..]
                        .iter()
                        .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                        .count();
                    (
                        chars[i + 1..i + 1 + len].iter().collect::<String>(),
                        i + 1 + len,
                    )
                };
                if name.is_empty() {
                    out.push('$');
                    i += 1;
                    continue;
                }
                let value = std::env::var(&name).map_err(|_| format!("${name} is not set"))?;
                // Keep the value one word where it stands.
                if double {
                    out.push_str(
                        &value
                            .replace('\\', "\\\\")
                            .replace('"', "\\\"")
                            .replace('$', "\\$"),
                    );
                } else {
                    out.push_str(&shell_words::quote(&value));
                }
                i = next;
                continue;
            }
            _ => {}
        }
        out.push(c);
        i += 1;
    }
    Ok(out)
}

/// The words of one line, or `None` for a blank or comment line.
pub fn words(line: &str) -> Result<Option<Vec<String>>, String> {
    let line = strip_comment(line).trim();
    if line.is_empty() {
        return Ok(None);
    }
    let expanded = expand(line)?;
    let words = shell_words::split(&expanded).map_err(|e| format!("cannot split the line: {e}"))?;
    Ok(Some(words))
}

/// Runs the file; each line through `exec` (the CLI, in this process).
pub fn run(path: &Path, exec: impl Fn(Vec<String>) -> Result<u8, Failure>) -> Result<u8, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::error(format!("cannot read {}: {e}", path.display())))?;
    for (n, line) in text.lines().enumerate() {
        let at = format!("{}:{}", path.display(), n + 1);
        let words = match words(line) {
            Ok(Some(w)) => w,
            Ok(None) => continue,
            Err(e) => return Err(Failure::usage(format!("{at}: {e}"))),
        };
        if words.first().is_some_and(|w| w == "bus") {
            return Err(Failure::usage(format!(
                "{at}: write commands without the leading `bus`"
            )));
        }
        match exec(words) {
            Ok(0) => {}
            Ok(code) => {
                return Err(Failure::with_code(
                    code,
                    format!("{at}: the command failed (exit {code}); stopping"),
                ))
            }
            Err(f) => {
                let message = if f.message.is_empty() {
                    format!("{at}: the command failed (exit {}); stopping", f.code)
                } else {
                    format!("{at}: {}", f.message)
                };
                return Err(Failure::with_code(f.code, message));
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        std::env::set_var("BUSFILE_TEST_NAME", "a b");
        assert_eq!(words("  # only a comment").unwrap(), None);
        assert_eq!(words("").unwrap(), None);
        assert_eq!(
            words(r#"containers run --profile codex -- sh -c 'printf "$X"' # trailing"#)
                .unwrap()
                .unwrap(),
            [
                "containers",
                "run",
                "--profile",
                "codex",
                "--",
                "sh",
                "-c",
                "printf \"$X\""
            ]
        );
        assert_eq!(
            words("echo $BUSFILE_TEST_NAME").unwrap().unwrap(),
            ["echo", "a b"]
        );
        assert_eq!(
            words("echo \"x ${BUSFILE_TEST_NAME} y\"").unwrap().unwrap(),
            ["echo", "x a b y"]
        );
        assert_eq!(
            words("echo 'no#comment' a#b").unwrap().unwrap(),
            ["echo", "no#comment", "a#b"]
        );
        assert!(words("echo $BUSFILE_TEST_UNSET_XYZ").is_err());
    }
}
