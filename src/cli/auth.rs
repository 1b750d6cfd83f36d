//! `bus auth token --scope "..."`: a token for a local stack, minted from
//! its secret and saved where `bus containers` and `bus events` read it.

use super::failure::Failure;
use crate::auth::{decode_secret, issue_token, IssueRequest, AUDIENCE_API, LOCAL_ACCOUNT};
use crate::credentials::{api_token_file, config_dir, write_secret_file};
use crate::parse::parse_duration;
use clap::{Args, Subcommand};
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Mint a token from the local secret (BUS_AUTH_HS256_SECRET, else the
    /// secret `bus dev` made) and save it as
    /// ${BUS_CONFIG_DIR:-~/.config/bus}/auth/api-token (mode 0600).
    Token(AuthTokenArgs),
}

#[derive(Debug, Args)]
pub struct AuthTokenArgs {
    /// Space-separated scopes (repeatable).
    #[arg(
        long = "scope",
        default_value = "container:read container:run container:delete events:send events:listen"
    )]
    pub scopes: Vec<String>,
    /// The account the token speaks for (JWT `sub`).
    #[arg(long, default_value = LOCAL_ACCOUNT)]
    pub subject: String,
    /// Lifetime, Go syntax (`12h`, `90m`).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub ttl: Duration,
}

/// The local secret and where it came from.
fn local_secret() -> Result<(Vec<u8>, String), Failure> {
    if let Some(v) = std::env::var("BUS_AUTH_HS256_SECRET")
        .ok()
        .filter(|v| !v.is_empty())
    {
        return Ok((
            decode_secret(&v).map_err(Failure::usage)?,
            "BUS_AUTH_HS256_SECRET".into(),
        ));
    }
    let path = config_dir().join("auth").join("dev-secret");
    let text = std::fs::read_to_string(&path).map_err(|_| {
        Failure::usage(format!(
            "no local secret: set BUS_AUTH_HS256_SECRET, or start `bus dev` once (it creates {})",
            path.display()
        ))
    })?;
    Ok((
        decode_secret(text.trim()).map_err(Failure::usage)?,
        path.display().to_string(),
    ))
}

pub fn run(cmd: AuthCommand) -> Result<(), Failure> {
    let AuthCommand::Token(args) = cmd;
    if args.subject.trim().is_empty() {
        return Err(Failure::usage("--subject must not be empty"));
    }
    let (secret, from) = local_secret()?;
    crate::auth::check_length(&from, &secret).map_err(Failure::usage)?;
    let scopes: Vec<String> = args
        .scopes
        .iter()
        .flat_map(|s| s.split_whitespace())
        .map(str::to_owned)
        .collect();
    let request = IssueRequest {
        subject: args.subject.clone(),
        audience: AUDIENCE_API.into(),
        scopes: scopes.clone(),
        ttl: args.ttl,
    };
    let (token, _) = issue_token(&secret, &request).map_err(Failure::error)?;
    let path = api_token_file();
    write_secret_file(&path, format!("{token}\n").as_bytes())
        .map_err(|e| Failure::error(format!("cannot write {}: {e}", path.display())))?;
    super::print_line(&format!(
        "wrote a token for {} (scope: {}; signed with {from}) to {}",
        args.subject,
        scopes.join(" "),
        path.display()
    ))
}
