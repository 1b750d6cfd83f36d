//! Bytes on the wire: a run's stdin, input and output are bytes; JSON
//! carries them as UTF-8 text (`stdin`, `data`; output with replacement)
//! or as base64 of the exact bytes (`stdin_base64`, `data_base64`,
//! `"output_encoding": "base64"`).

use super::{ErrorDetail, ErrorType};
use base64::Engine;
use serde::{Deserialize, Serialize};

/// How a run's `stdout`/`stderr` and its log chunks carry its output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputEncoding {
    /// Text; bytes that are not UTF-8 are replaced (and the result says
    /// `stdout_lossy` / `stderr_lossy`).
    #[default]
    Utf8,
    /// Base64 of the exact bytes.
    Base64,
}

impl OutputEncoding {
    pub fn is_base64(self) -> bool {
        self == OutputEncoding::Base64
    }

    /// `bytes` as this encoding carries them.
    pub fn encode(self, bytes: &[u8]) -> String {
        match self {
            OutputEncoding::Utf8 => String::from_utf8_lossy(bytes).into_owned(),
            OutputEncoding::Base64 => base64_encode(bytes),
        }
    }
}

/// Standard base64 with padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Standard-alphabet base64 as it is read: padding optional, stray
/// trailing bits ignored (what the OpenAPI pattern allows decodes).
const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Decodes the base64 of the field `field`, or says why not (`400`).
pub fn base64_decode(field: &str, text: &str) -> Result<Vec<u8>, ErrorDetail> {
    LENIENT
        .decode(text.trim_end_matches(['\n', '\r']))
        .map_err(|e| {
            ErrorDetail::new(
                ErrorType::BadRequest,
                format!("{field} is not valid base64: {e}"),
            )
        })
}

/// Text or base64 of the same bytes (exactly one given): the bytes.
pub fn one_of(
    text: Option<&str>,
    b64: Option<&str>,
    names: (&str, &str),
) -> Result<Option<Vec<u8>>, ErrorDetail> {
    match (text, b64) {
        (Some(_), Some(_)) => Err(ErrorDetail::new(
            ErrorType::BadRequest,
            format!("give {} or {}, not both", names.0, names.1),
        )),
        (Some(t), None) => Ok(Some(t.as_bytes().to_vec())),
        (None, Some(b)) => base64_decode(names.1, b).map(Some),
        (None, None) => Ok(None),
    }
}

/// How many bytes padded base64 text decodes to.
pub fn decoded_exact_len(text: &str) -> usize {
    let pad = text.bytes().rev().take_while(|b| *b == b'=').count();
    (text.len() / 4 * 3).saturating_sub(pad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_bad_input_is_400() {
        let all: Vec<u8> = (0..=255).collect();
        let b = base64_encode(&all);
        assert_eq!(base64_decode("x", &b).unwrap(), all);
        assert_eq!(
            base64_decode("x", "YR").unwrap(),
            b"a",
            "lenient padding and bits"
        );
        let e = base64_decode("stdin_base64", "not base64!").unwrap_err();
        assert_eq!(e.kind, ErrorType::BadRequest);
        assert!(e.message.contains("stdin_base64"), "{}", e.message);
        assert!(one_of(Some("a"), Some("YQ=="), ("stdin", "stdin_base64")).is_err());
        assert_eq!(
            one_of(None, Some("YQ=="), ("stdin", "stdin_base64")).unwrap(),
            Some(b"a".to_vec())
        );
        assert_eq!(OutputEncoding::Utf8.encode(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(OutputEncoding::Base64.encode(b"a\xffb"), "Yf9i");
        for n in 0..7 {
            assert_eq!(decoded_exact_len(&base64_encode(&all[..n])), n);
        }
    }
}
