//! The billing entitlement check before a run
//! (`bus.billing.entitlement.check.request`).

use super::error::ProviderError;
use crate::actors::bus::requester::{Request, Requester};
use crate::contract::{decode, encode, ErrorDetail, ErrorType};
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub const BILLING_EVENT: &str = "bus.billing.entitlement.check.request";

/// The check's payload.
#[derive(Debug, Clone, Serialize)]
pub struct EntitlementCheck<'a> {
    pub account_id: &'a str,
    pub scope: &'a str,
}

/// The billing service's answer.
#[derive(Debug, Clone, Deserialize)]
pub struct Entitlement {
    pub allowed: Option<bool>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub command: Option<String>,
}

/// The entitlement check before a run.
#[derive(Clone)]
pub enum Billing {
    None,
    Events(Requester),
}

impl Billing {
    /// `Ok` when the account may run containers; 402 with guidance when
    /// not; 503 when the check cannot be made.
    pub async fn check(&self, account: &str) -> Result<(), ProviderError> {
        let Billing::Events(requester) = self else {
            return Ok(());
        };
        let payload = encode(&EntitlementCheck {
            account_id: account,
            scope: "container:run",
        });
        let out = requester
            .request(Request::new(
                BILLING_EVENT,
                payload,
                Duration::from_secs(10),
            ))
            .await
            .map_err(|e| ProviderError::unavailable(format!("billing check failed: {e}")))?;
        let Some(reply) = out.replies.first() else {
            return Err(ProviderError::unavailable(
                "the billing service did not answer the entitlement check",
            ));
        };
        let answer = decode::<Entitlement>(&reply.payload).ok();
        match answer.as_ref().and_then(|a| a.allowed) {
            Some(true) => return Ok(()),
            Some(false) => {}
            None => {
                return Err(
                    ErrorDetail::new(ErrorType::BadGateway, "malformed billing reply").into(),
                )
            }
        }
        let answer = answer.expect("decoded");
        let reason = answer.reason.as_deref().unwrap_or("billing_required");
        let command = answer.command.as_deref().unwrap_or("bus billing setup");
        let message = match reason {
            "quota_exceeded" => "this account has used its container quota",
            _ => "container runs need an active billing setup for this account",
        };
        Err(
            ErrorDetail::new(ErrorType::BillingRequired, format!("{message} ({reason})"))
                .with_guidance("set up billing for this account, then retry", command)
                .into(),
        )
    }
}
