//! How a command fails: a message and the exit code it maps to.

/// Exit code for usage errors (bad flags, a token on the command line).
pub const EXIT_USAGE: u8 = 2;

/// Exit code when stdout was closed under us (`| head`): what a process
/// killed by SIGPIPE reports, so `set -o pipefail` still sees it.
pub const EXIT_PIPE: u8 = 141;

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
    /// The server's `error` object, when the failure is an API answer
    /// (printed as is on stderr with `--format json`).
    pub detail: Option<serde_json::Value>,
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Self {
        Failure::with_code(EXIT_USAGE, message)
    }

    pub fn error(message: impl Into<String>) -> Self {
        Failure::with_code(1, message)
    }

    /// Writing output failed. A closed pipe (`| head`) ends the command
    /// quietly, as a pipeline expects; anything else is an error.
    pub fn write(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Failure::with_code(EXIT_PIPE, String::new())
        } else {
            Failure::error(format!("writing output: {e}"))
        }
    }

    pub fn with_code(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            detail: None,
        }
    }

    /// The failure as `{"error":{"type","message",...}}`: the server's
    /// error object, or `usage_error` / `error` for the CLI's own.
    pub fn to_json(&self) -> serde_json::Value {
        let error = self.detail.clone().unwrap_or_else(|| {
            serde_json::json!({
                "type": if self.code == EXIT_USAGE { "usage_error" } else { "error" },
                "message": self.message,
            })
        });
        serde_json::json!({ "error": error })
    }
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::error(e.to_string())
    }
}
