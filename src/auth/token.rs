//! Minting HS256 tokens (`bus operator token issue --local`, `bus dev`).

use jsonwebtoken::{encode, EncodingKey, Header};
use serde::Serialize;
use std::time::Duration;

/// What a minted token says.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    pub subject: String,
    pub audience: String,
    pub scopes: Vec<String>,
    pub ttl: Duration,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
    scope: String,
}

/// Signs a token with `secret`; returns it and its expiry (Unix seconds).
pub fn issue_token(secret: &[u8], req: &IssueRequest) -> Result<(String, u64), String> {
    if secret.is_empty() {
        return Err("the signing secret is empty".into());
    }
    let iat = jsonwebtoken::get_current_timestamp();
    let exp = iat.saturating_add(req.ttl.as_secs().max(1));
    let claims = Claims {
        sub: &req.subject,
        aud: &req.audience,
        iat,
        exp,
        scope: req.scopes.join(" "),
    };
    let token = encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| format!("could not sign the token: {e}"))?;
    Ok((token, exp))
}
