//! Run states: `running`, then exactly one terminal state.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    #[default]
    Running,
    /// Exit code 0.
    Succeeded,
    /// A non-zero exit.
    Failed,
    TimedOut,
    Cancelled,
    /// From the engine's `OOMKilled` flag, never from exit 137 alone.
    OomKilled,
    /// Never started.
    Error,
    /// The worker or provider died; the outcome is unknown; never re-run.
    Lost,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::TimedOut => "timed_out",
            RunState::Cancelled => "cancelled",
            RunState::OomKilled => "oom_killed",
            RunState::Error => "error",
            RunState::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<RunState> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }

    /// The run ran (a container started and ended).
    pub fn ran(self) -> bool {
        matches!(
            self,
            RunState::Succeeded
                | RunState::Failed
                | RunState::TimedOut
                | RunState::Cancelled
                | RunState::OomKilled
        )
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
