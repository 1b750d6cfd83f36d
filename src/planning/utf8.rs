//! Output chunks as UTF-8 text without splitting a character across two
//! events: an incomplete sequence at a chunk's end waits for the next one.

/// Carries an incomplete UTF-8 tail from one chunk to the next.
#[derive(Debug, Default)]
pub struct Utf8Carry {
    tail: Vec<u8>,
}

impl Utf8Carry {
    /// The text of `chunk` (with what was carried), invalid bytes replaced.
    pub fn push(&mut self, chunk: &[u8]) -> String {
        let mut bytes = std::mem::take(&mut self.tail);
        bytes.extend_from_slice(chunk);
        let keep = match std::str::from_utf8(&bytes) {
            Ok(_) => 0,
            // error_len() None: the input ended inside a character.
            Err(e) if e.error_len().is_none() => bytes.len() - e.valid_up_to(),
            Err(_) => {
                // Find an incomplete sequence at the very end, if any.
                let start = bytes.len().saturating_sub(3);
                (start..bytes.len())
                    .find(|&i| {
                        let b = bytes[i];
                        b >= 0xC0
                            && std::str::from_utf8(&bytes[i..])
                                .is_err_and(|e| e.error_len().is_none())
                    })
                    .map(|i| bytes.len() - i)
                    .unwrap_or(0)
            }
        };
        self.tail = bytes.split_off(bytes.len() - keep);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// What is left at the end of the stream.
    pub fn finish(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.tail)).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_characters_survive() {
        let text = "héllo — ✓";
        let bytes = text.as_bytes();
        for cut in 0..bytes.len() {
            let mut c = Utf8Carry::default();
            let mut out = c.push(&bytes[..cut]);
            out += &c.push(&bytes[cut..]);
            out += &c.finish();
            assert_eq!(out, text, "cut at {cut}");
        }
        let mut c = Utf8Carry::default();
        assert_eq!(c.push(b"a\xffb"), "a\u{fffd}b");
    }
}
