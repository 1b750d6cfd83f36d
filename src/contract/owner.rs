//! The effective-owner rule: who a request acts for.

use crate::contract::{Envelope, ErrorDetail, ErrorType};

use super::Kind;

/// A service publisher acts for the payload's `owner_account_id`
/// (required); anyone else acts only as their own identity, and a payload
/// owner that differs is refused. Runner requests need a service.
pub fn effective_owner(envelope: &Envelope, kind: Kind) -> Result<String, ErrorDetail> {
    let payload_owner = envelope
        .payload
        .get("owner_account_id")
        .and_then(|o| o.as_str())
        .filter(|o| !o.is_empty());
    if kind.is_runner() {
        if !envelope.service {
            return Err(ErrorDetail::new(
                ErrorType::Forbidden,
                "runner requests need a service publisher (container:admin)",
            ));
        }
        return Ok(payload_owner.unwrap_or_default().to_owned());
    }
    if envelope.service {
        return payload_owner.map(str::to_owned).ok_or_else(|| {
            ErrorDetail::new(ErrorType::BadRequest, "owner_account_id is required")
        });
    }
    match payload_owner {
        Some(owner) if owner != envelope.identity_id => Err(ErrorDetail::new(
            ErrorType::Forbidden,
            "a non-service publisher may only act as its own account",
        )),
        _ if envelope.identity_id.is_empty() => Err(ErrorDetail::new(
            ErrorType::Forbidden,
            "the request has no publisher identity",
        )),
        _ => Ok(envelope.identity_id.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Publication;
    use serde_json::json;

    fn env(service: bool, who: &str, payload: serde_json::Value) -> Envelope {
        Envelope::stamp(
            Publication::new("bus.containers.run.request", payload),
            who,
            service,
        )
    }

    #[test]
    fn rule() {
        let e = env(true, "api", json!({"owner_account_id": "alice"}));
        assert_eq!(effective_owner(&e, Kind::Run).unwrap(), "alice");
        let e = env(true, "api", json!({}));
        assert_eq!(
            effective_owner(&e, Kind::Run).unwrap_err().kind,
            ErrorType::BadRequest
        );
        let e = env(false, "bob", json!({"owner_account_id": "alice"}));
        assert_eq!(
            effective_owner(&e, Kind::Delete).unwrap_err().kind,
            ErrorType::Forbidden
        );
        let e = env(false, "bob", json!({}));
        assert_eq!(effective_owner(&e, Kind::Status).unwrap(), "bob");
        let e = env(false, "bob", json!({"owner_account_id": "bob"}));
        assert_eq!(effective_owner(&e, Kind::Run).unwrap(), "bob");
        let e = env(false, "bob", json!({}));
        assert_eq!(
            effective_owner(&e, Kind::RunnerDelete).unwrap_err().kind,
            ErrorType::Forbidden
        );
    }
}
