//! Reading request bodies and queries strictly, with the contract's error
//! types (a size limit answered as 413 `payload_too_large`).

use super::ApiError;
use actix_web::{web, HttpRequest};
use futures::StreamExt;
use std::collections::HashMap;

/// Reads the whole body, refusing more than `limit` bytes.
pub async fn read_limited(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, ApiError> {
    if let Some(len) = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit {
            return Err(ApiError::too_large(limit));
        }
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// A body's `Content-Type`, when it has one, must be JSON
/// (`application/json` or `application/*+json`, with any parameters):
/// the containers API's bodies (the Events API takes what BusDK clients
/// send, as its contract says).
pub fn require_json(req: &HttpRequest) -> Result<(), ApiError> {
    let Some(value) = req.headers().get(actix_web::http::header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or_default();
    let essence = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if json {
        return Ok(());
    }
    Err(ApiError::new(
        crate::contract::ErrorType::UnsupportedMediaType,
        format!(
            "Content-Type {:?} is not JSON: send Content-Type: application/json",
            text.chars().take(100).collect::<String>()
        ),
    ))
}

/// Refuses an object with the same key twice, at any depth: which of the
/// two a reader takes differs between parsers.
struct NoDuplicateKeys;

impl<'de> serde::Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = NoDuplicateKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut seen = std::collections::HashSet::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) {
                        return Err(serde::de::Error::custom(format_args!(
                            "duplicate key `{key}`"
                        )));
                    }
                    map.next_value::<NoDuplicateKeys>()?;
                }
                Ok(NoDuplicateKeys)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
                Ok(NoDuplicateKeys)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(NoDuplicateKeys)
            }
        }
        d.deserialize_any(Visit)
    }
}

/// Parses a JSON body (trailing data is refused by the parser).
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "request body is empty: send a JSON object",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// The query string as a map; a repeated key keeps its last value.
pub fn query_map(req: &HttpRequest) -> Result<HashMap<String, String>, ApiError> {
    web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map(|q| q.into_inner().into_iter().collect())
        .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))
}

/// A loose boolean query parameter with a default.
pub fn query_bool(
    query: &HashMap<String, String>,
    key: &str,
    default: bool,
) -> Result<bool, ApiError> {
    match query.get(key) {
        None => Ok(default),
        // Given, it says which: an empty value is not a boolean.
        Some(v) if v.trim().is_empty() => Err(ApiError::bad_request(format!(
            "{key}: an empty value is not a boolean: use true or false"
        ))),
        Some(v) => {
            crate::parse::parse_bool(v).map_err(|e| ApiError::bad_request(format!("{key}: {e}")))
        }
    }
}

/// Parses a JSON object body strictly: explicit nulls are refused like any
/// other wrong type, then the fields are read into `T`.
pub fn strict_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = parse_json(body)?;
    serde_json::from_slice::<NoDuplicateKeys>(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let Some(obj) = value.as_object() else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    if let Some(k) = null_in(obj) {
        return Err(ApiError::bad_request(format!("{k} must not be null")));
    }
    serde_json::from_value(value).map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))
}

/// The first explicit null in an object, at any depth (`files[0].mode`).
fn null_in(obj: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    fn walk(v: &serde_json::Value, at: String) -> Option<String> {
        match v {
            serde_json::Value::Null => Some(at),
            serde_json::Value::Object(o) => {
                o.iter().find_map(|(k, v)| walk(v, format!("{at}.{k}")))
            }
            serde_json::Value::Array(a) => a
                .iter()
                .enumerate()
                .find_map(|(i, v)| walk(v, format!("{at}[{i}]"))),
            _ => None,
        }
    }
    obj.iter().find_map(|(k, v)| walk(v, k.clone()))
}

/// `POST /api/v1/containers/runs`: a run spec and `wait`, nothing else.
#[derive(Debug, Clone)]
pub struct RunBody {
    pub spec: crate::contract::RunSpec,
    pub wait: bool,
}

/// Reads a run body strictly: an unknown field, a null, a wrong type or
/// trailing data is a 400.
pub fn run_body(body: &[u8]) -> Result<RunBody, ApiError> {
    #[derive(serde::Deserialize)]
    struct Wait {
        wait: Option<bool>,
    }
    let mut map: serde_json::Map<String, serde_json::Value> = strict_object(body)?;
    if let Some(unknown) = map
        .keys()
        .find(|k| *k != "wait" && !crate::contract::run::RUN_SPEC_FIELDS.contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "invalid body: unknown field `{unknown}`, expected one of `wait`, {}",
            crate::contract::run::RUN_SPEC_FIELDS
                .iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let wait: Wait = serde_json::from_value(serde_json::json!({"wait": map.remove("wait")}))
        .map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))?;
    let spec = serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))?;
    Ok(RunBody {
        spec,
        wait: wait.wait.unwrap_or(true),
    })
}

/// `POST /api/v1/containers/runs/{run_id}/input`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputBody {
    pub data: Option<String>,
    /// Base64 of raw bytes, instead of `data`.
    pub data_base64: Option<String>,
    #[serde(default)]
    pub eof: bool,
}

impl InputBody {
    /// The bytes to write, or why not (`400`).
    pub fn bytes(&self) -> Result<Option<Vec<u8>>, crate::contract::ErrorDetail> {
        crate::contract::bytes::one_of(
            self.data.as_deref(),
            self.data_base64.as_deref(),
            ("data", "data_base64"),
        )
    }
}
