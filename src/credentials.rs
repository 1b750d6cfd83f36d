//! Where clients find their bearer token. Tokens never come from argv and
//! are never printed: [`Token`]'s `Debug` is redacted.

use std::path::{Path, PathBuf};

/// A bearer token. Shown as `Token(<redacted>)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(value: impl Into<String>) -> Self {
        Token(value.into().trim().to_owned())
    }

    /// The raw token, for an `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// `${BUS_CONFIG_DIR:-~/.config/bus}`.
pub fn config_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BUS_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".config").join("bus")
}

/// `${BUS_CONFIG_DIR:-~/.config/bus}/auth/api-token`.
pub fn api_token_file() -> PathBuf {
    config_dir().join("auth").join("api-token")
}

/// Where a token is read from.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// From an environment variable (named, for messages).
    Env { var: String, token: Token },
    /// From a file, read again on every `load` (so it can be refreshed).
    File(PathBuf),
}

impl TokenSource {
    /// The first of `vars` that is set, else the api-token file when it
    /// exists. `extra_file` (a `--token-file`) comes before everything.
    pub fn lookup(extra_file: Option<&Path>, vars: &[&str]) -> Result<Self, String> {
        if let Some(file) = extra_file {
            return Ok(TokenSource::File(file.to_owned()));
        }
        for var in vars {
            if let Ok(value) = std::env::var(var) {
                if !value.trim().is_empty() {
                    return Ok(TokenSource::Env {
                        var: (*var).to_owned(),
                        token: Token::new(value),
                    });
                }
            }
        }
        let file = api_token_file();
        if file.is_file() {
            return Ok(TokenSource::File(file));
        }
        Err(format!(
            "no token: set {} or write one to {} (for example with `bus operator token issue --local`)",
            vars.join(" or "),
            file.display()
        ))
    }

    /// The lookup order of bus clients: `BUS_API_TOKEN`, then the
    /// api-token file.
    pub fn for_events_client() -> Result<Self, String> {
        TokenSource::lookup(None, &["BUS_API_TOKEN"])
    }

    pub fn load(&self) -> Result<Token, String> {
        match self {
            TokenSource::Env { token, .. } => Ok(token.clone()),
            TokenSource::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
                let token = Token::new(text);
                if token.expose().is_empty() {
                    return Err(format!("token file {} is empty", path.display()));
                }
                Ok(token)
            }
        }
    }

    /// Where the token came from, for messages (never the token itself).
    pub fn describe(&self) -> String {
        match self {
            TokenSource::Env { var, .. } => var.clone(),
            TokenSource::File(p) => p.display().to_string(),
        }
    }
}

/// Writes a secret file atomically with mode 0600 (via a temporary file in
/// the same directory, then a rename).
pub fn write_secret_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("secret"),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The `sub` claim of a token, read without verifying it: a process uses
/// it only to know its own name on the bus, never to trust anything.
pub fn token_subject(token: &Token) -> Option<String> {
    use base64::Engine;
    let payload = token.expose().split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("sub")?.as_str().map(str::to_owned)
}
