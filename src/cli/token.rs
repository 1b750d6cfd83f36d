//! `bus operator token [--format token|json] issue --local ...`

use super::failure::Failure;
use crate::auth::{decode_secret, issue_token, IssueRequest, AUDIENCE_API, LOCAL_ACCOUNT};
use crate::parse::parse_duration;
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, Default, ValueEnum, PartialEq, Eq)]
pub enum TokenFormat {
    #[default]
    Token,
    Json,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Output: the bare token, or JSON with its claims and expiry.
    #[arg(long, global = true, value_enum, default_value_t)]
    pub format: TokenFormat,
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a token signed with the local HS256 secret.
    Issue(IssueArgs),
}

#[derive(Debug, Args)]
pub struct IssueArgs {
    /// Sign locally with the HS256 secret (BUS_AUTH_HS256_SECRET or
    /// --hs256-secret-file). Required: there is no remote issuer.
    #[arg(long)]
    pub local: bool,
    /// The account the token speaks for (JWT `sub`).
    #[arg(long, default_value = LOCAL_ACCOUNT)]
    pub subject: String,
    /// JWT `aud`: ai.hg.fi/api for the public APIs, ai.hg.fi/internal for
    /// the runner endpoints.
    #[arg(long, default_value = AUDIENCE_API)]
    pub audience: String,
    /// Space-separated scopes (repeatable).
    #[arg(
        long = "scope",
        default_value = "container:read container:run container:delete events:send events:listen"
    )]
    pub scopes: Vec<String>,
    /// Lifetime, Go syntax (`12h`, `90m`, `1h30m`).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Read the secret from this file instead of BUS_AUTH_HS256_SECRET.
    #[arg(long)]
    pub hs256_secret_file: Option<PathBuf>,
}

fn secret(args: &IssueArgs) -> Result<Vec<u8>, Failure> {
    let text = match &args.hs256_secret_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| Failure::error(format!("cannot read {}: {e}", path.display())))?
            .trim_end_matches(['\n', '\r'])
            .to_owned(),
        None => std::env::var("BUS_AUTH_HS256_SECRET").map_err(|_| {
            Failure::usage(
                "no signing secret: set BUS_AUTH_HS256_SECRET or pass --hs256-secret-file FILE",
            )
        })?,
    };
    let secret = decode_secret(&text).map_err(Failure::usage)?;
    let name = match &args.hs256_secret_file {
        Some(path) => path.display().to_string(),
        None => "BUS_AUTH_HS256_SECRET".to_owned(),
    };
    crate::auth::check_length(&name, &secret).map_err(Failure::usage)?;
    Ok(secret)
}

pub fn run(args: TokenArgs) -> Result<(), Failure> {
    let TokenCommand::Issue(issue) = args.command;
    if !issue.local {
        return Err(Failure::usage(
            "only local issuance is available: pass --local (the token is signed with BUS_AUTH_HS256_SECRET or --hs256-secret-file)",
        ));
    }
    if issue.subject.trim().is_empty() {
        return Err(Failure::usage("--subject must not be empty"));
    }
    let scopes: Vec<String> = issue
        .scopes
        .iter()
        .flat_map(|s| s.split_whitespace())
        .map(str::to_owned)
        .collect();
    let request = IssueRequest {
        subject: issue.subject.clone(),
        audience: issue.audience.clone(),
        scopes: scopes.clone(),
        ttl: issue.ttl,
    };
    let (token, exp) = issue_token(&secret(&issue)?, &request).map_err(Failure::error)?;
    match args.format {
        TokenFormat::Token => super::print_line(&token),
        TokenFormat::Json => super::print_line(
            &serde_json::json!({
                "token": token,
                "token_type": "Bearer",
                "subject": request.subject,
                "audience": request.audience,
                "scope": scopes.join(" "),
                "expires_at": exp,
            })
            .to_string(),
        ),
    }
}
