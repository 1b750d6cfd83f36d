//! The effective-owner rule: who a request acts for.

use super::{ErrorDetail, ErrorType, Kind};

/// A service publisher acts for the payload's `owner_account_id`
/// (required); anyone else acts only as their own identity, and a payload
/// owner that differs is refused. Runner requests need a service.
pub fn effective_owner(
    service: bool,
    identity_id: &str,
    payload_owner: Option<&str>,
    kind: Kind,
) -> Result<String, ErrorDetail> {
    let payload_owner = payload_owner.filter(|o| !o.is_empty());
    if kind.is_runner() {
        if !service {
            return Err(ErrorDetail::new(
                ErrorType::Forbidden,
                "runner requests need a service publisher (container:admin)",
            ));
        }
        return Ok(payload_owner.unwrap_or_default().to_owned());
    }
    if service {
        return payload_owner.map(str::to_owned).ok_or_else(|| {
            ErrorDetail::new(ErrorType::BadRequest, "owner_account_id is required")
        });
    }
    match payload_owner {
        Some(owner) if owner != identity_id => Err(ErrorDetail::new(
            ErrorType::Forbidden,
            "a non-service publisher may only act as its own account",
        )),
        _ if identity_id.is_empty() => Err(ErrorDetail::new(
            ErrorType::Forbidden,
            "the request has no publisher identity",
        )),
        _ => Ok(identity_id.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule() {
        let owner = |service, who, payload, kind| effective_owner(service, who, payload, kind);
        assert_eq!(
            owner(true, "api", Some("alice"), Kind::Run).unwrap(),
            "alice"
        );
        assert_eq!(
            owner(true, "api", None, Kind::Run).unwrap_err().kind,
            ErrorType::BadRequest
        );
        assert_eq!(
            owner(false, "bob", Some("alice"), Kind::Delete)
                .unwrap_err()
                .kind,
            ErrorType::Forbidden
        );
        assert_eq!(owner(false, "bob", None, Kind::Status).unwrap(), "bob");
        assert_eq!(owner(false, "bob", Some("bob"), Kind::Run).unwrap(), "bob");
        assert_eq!(
            owner(false, "bob", None, Kind::RunnerDelete)
                .unwrap_err()
                .kind,
            ErrorType::Forbidden
        );
        assert_eq!(owner(true, "op", None, Kind::RunnerStatus).unwrap(), "");
    }
}
