//! Bearer-token authentication: HS256 JWT verification per
//! `spec/events-api.md` (required claims, audience, no other algorithm,
//! `iat` not in the future, `base64:` secrets, rotation through a previous
//! secret), the caller's identity and scopes, the event-name ACL and token
//! minting for `bus operator token issue --local`.

mod acl;
mod secret;
mod token;

pub use acl::{Acl, DEFAULT_PROTECTED_PREFIXES};
pub use secret::{check_length, decode_secret, Secrets, MIN_SECRET_BYTES};
pub use token::{issue_token, IssueRequest};

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Audience of public API tokens.
pub const AUDIENCE_API: &str = "ai.hg.fi/api";
/// Audience of internal (operator/runner) tokens.
pub const AUDIENCE_INTERNAL: &str = "ai.hg.fi/internal";
/// The account `bus operator token issue --local` mints for by default.
pub const LOCAL_ACCOUNT: &str = "00000000-0000-4000-8000-000000000001";
/// How far in the future `iat` may be (clock skew between hosts).
pub const IAT_LEEWAY_SECS: i64 = 60;

/// Scope names used across the system.
pub mod scopes {
    pub const CONTAINER_ADMIN: &str = "container:admin";
    pub const CONTAINER_READ: &str = "container:read";
    pub const CONTAINER_RUN: &str = "container:run";
    pub const CONTAINER_DELETE: &str = "container:delete";
    pub const EVENTS_ADMIN: &str = "events:admin";
    pub const EVENTS_SEND: &str = "events:send";
    pub const EVENTS_LISTEN: &str = "events:listen";
    pub const USAGE_WRITE: &str = "usage:write";
    pub const USAGE_READ: &str = "usage:read";
    pub const BILLING_CHECK: &str = "billing:entitlement:check";
    pub const BILLING_READ: &str = "billing:read";
}

/// Who a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub sub: String,
    pub scopes: BTreeSet<String>,
}

impl Identity {
    pub fn new(sub: impl Into<String>, scopes: &[&str]) -> Self {
        Identity {
            sub: sub.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }

    /// The service role: `container:admin` or `events:admin`. The broker
    /// stamps `service: true` on everything such a token publishes.
    pub fn is_service(&self) -> bool {
        self.has_scope(scopes::CONTAINER_ADMIN) || self.has_scope(scopes::EVENTS_ADMIN)
    }
}

/// Why a token was refused. Every variant is a 401 `invalid_auth`; the
/// message says what to fix without echoing the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token: send 'Authorization: Bearer <token>'")]
    Missing,
    #[error("the Authorization header is not a bearer token")]
    NotBearer,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token algorithm is not accepted: only HS256 is")]
    Algorithm,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("token is issued in the future (iat more than {IAT_LEEWAY_SECS}s ahead)")]
    IssuedInFuture,
    #[error("token has no {0} claim")]
    MissingClaim(&'static str),
    #[error("token audience is not {0}")]
    Audience(String),
}

/// Accepts `"a b c"` or `["a","b"]` for `scope`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    iat: Option<i64>,
    exp: Option<i64>,
    scope: Option<ScopeClaim>,
}

/// Verifies HS256 bearer tokens for one audience against the current
/// secret and, during a rotation, the previous one.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<DecodingKey>,
    validation: Validation,
    audience: String,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .field("audience", &self.audience)
            .finish()
    }
}

impl Verifier {
    pub fn new(secrets: &Secrets, audience: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "aud"]);
        // exp and nbf alike, to the second.
        validation.leeway = 0;
        validation.validate_nbf = true;
        Verifier {
            keys: secrets.all().map(DecodingKey::from_secret).collect(),
            validation,
            audience: audience.to_owned(),
        }
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Verifies the value of an `Authorization` header.
    pub fn verify_header(&self, header: Option<&str>) -> Result<Identity, AuthError> {
        let header = header.map(str::trim).filter(|h| !h.is_empty());
        let header = header.ok_or(AuthError::Missing)?;
        let (scheme, token) = header.split_once(' ').ok_or(AuthError::NotBearer)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::NotBearer);
        }
        self.verify(token.trim())
    }

    /// Verifies one token and returns the identity it speaks for.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let mut last = AuthError::BadSignature;
        for key in &self.keys {
            match decode::<Claims>(token, key, &self.validation) {
                Ok(data) => return self.identity(data.claims),
                Err(e) => {
                    last = self.map_error(e);
                    if last != AuthError::BadSignature {
                        // Anything but a signature mismatch is a property of
                        // the token itself: another key will not help.
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    fn identity(&self, claims: Claims) -> Result<Identity, AuthError> {
        let sub = claims
            .sub
            .filter(|s| !s.trim().is_empty())
            .ok_or(AuthError::MissingClaim("sub"))?;
        let iat = claims.iat.ok_or(AuthError::MissingClaim("iat"))?;
        claims.exp.ok_or(AuthError::MissingClaim("exp"))?;
        let now = jsonwebtoken::get_current_timestamp() as i64;
        if iat > now + IAT_LEEWAY_SECS {
            return Err(AuthError::IssuedInFuture);
        }
        let scopes = match claims.scope {
            None => BTreeSet::new(),
            Some(ScopeClaim::Text(s)) => s.split_whitespace().map(str::to_owned).collect(),
            Some(ScopeClaim::List(l)) => l.into_iter().collect(),
        };
        Ok(Identity { sub, scopes })
    }

    fn map_error(&self, e: jsonwebtoken::errors::Error) -> AuthError {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::InvalidSignature => AuthError::BadSignature,
            K::InvalidAlgorithm | K::InvalidAlgorithmName => AuthError::Algorithm,
            K::ExpiredSignature => AuthError::Expired,
            K::ImmatureSignature => AuthError::NotYetValid,
            K::InvalidAudience => AuthError::Audience(self.audience.clone()),
            K::MissingRequiredClaim(c) if c == "exp" => AuthError::MissingClaim("exp"),
            K::MissingRequiredClaim(c) if c == "aud" => AuthError::MissingClaim("aud"),
            K::MissingRequiredClaim(c) if c == "sub" => AuthError::MissingClaim("sub"),
            K::Json(e) if e.to_string().contains("unknown variant") => AuthError::Algorithm,
            K::Json(_) | K::Utf8(_) | K::Base64(_) | K::InvalidToken => {
                AuthError::Malformed("not a JWT (header.payload.signature)".into())
            }
            other => AuthError::Malformed(format!("{other:?}")),
        }
    }
}
