//! Signing secrets: where they come from and how they are spelled.

use base64::Engine;

/// A value starting with `base64:` is base64-decoded; anything else is used
/// as raw bytes.
pub fn decode_secret(value: &str) -> Result<Vec<u8>, String> {
    match value.strip_prefix("base64:") {
        Some(encoded) => {
            let encoded = encoded.trim();
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded))
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(encoded))
                .map_err(|_| "secret starts with 'base64:' but is not valid base64".to_owned())
        }
        None => Ok(value.as_bytes().to_vec()),
    }
}

/// The shortest signing secret accepted: HS256 is only as strong as its
/// key, and a short one can be guessed offline from any token.
pub const MIN_SECRET_BYTES: usize = 32;

/// Refuses a secret shorter than [`MIN_SECRET_BYTES`], saying how to make one.
pub fn check_length(name: &str, secret: &[u8]) -> Result<(), String> {
    if secret.is_empty() {
        return Err(format!("{name} is empty"));
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "{name} is {} bytes; a signing secret must be at least {MIN_SECRET_BYTES} (make one: printf 'base64:%s' \"$(head -c 32 /dev/urandom | base64)\")",
            secret.len()
        ));
    }
    Ok(())
}

/// The verification secrets of one server: the current one and, during a
/// rotation, the previous one.
#[derive(Clone, Default)]
pub struct Secrets {
    current: Vec<u8>,
    previous: Option<Vec<u8>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(<redacted>)")
    }
}

impl Secrets {
    pub fn new(current: Vec<u8>, previous: Option<Vec<u8>>) -> Self {
        Secrets { current, previous }
    }

    /// Reads the first set variable of `names` as the current secret and
    /// `previous` (when set) as the previous one.
    pub fn from_env(names: &[&str], previous: &str) -> Result<Self, String> {
        let (name, value) = names
            .iter()
            .find_map(|n| {
                std::env::var(n)
                    .ok()
                    .filter(|v| !v.is_empty())
                    .map(|v| (*n, v))
            })
            .ok_or_else(|| {
                format!(
                    "no JWT secret: tried {}, none is set; set one (a value starting with 'base64:' is decoded)",
                    names.join(", ")
                )
            })?;
        let current = decode_secret(&value).map_err(|e| format!("{name}: {e}"))?;
        check_length(name, &current)?;
        let previous = match std::env::var(previous) {
            Ok(v) if !v.is_empty() => {
                let old = decode_secret(&v).map_err(|e| format!("{previous}: {e}"))?;
                if let Err(why) = check_length(previous, &old) {
                    // Rotating away from a short secret must keep its
                    // tokens working until they expire.
                    tracing::warn!("{why}; accepted as the previous secret only while tokens signed with it expire");
                    if old.is_empty() {
                        return Err(why);
                    }
                }
                Some(old)
            }
            _ => None,
        };
        Ok(Secrets { current, previous })
    }

    pub fn current(&self) -> &[u8] {
        &self.current
    }

    /// Every secret a token may be signed with, current first.
    pub fn all(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(self.current.as_slice()).chain(self.previous.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_prefix() {
        assert_eq!(decode_secret("base64:aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_secret("hello").unwrap(), b"hello");
        assert!(decode_secret("base64:!!").is_err());
    }
}
