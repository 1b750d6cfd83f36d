//! How a container's end becomes a run state.

use crate::contract::RunState;

/// What is known when a container has ended.
#[derive(Debug, Clone, Default)]
pub struct Ending {
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    pub timed_out: bool,
    pub cancelled: bool,
}

impl Ending {
    /// Cancel and timeout win (we killed it), then the engine's OOM flag,
    /// then the exit code.
    pub fn state(&self) -> RunState {
        if self.cancelled {
            RunState::Cancelled
        } else if self.timed_out {
            RunState::TimedOut
        } else if self.oom_killed {
            RunState::OomKilled
        } else if self.exit_code == Some(0) {
            RunState::Succeeded
        } else {
            RunState::Failed
        }
    }

    /// The signal that ended the process, from a 128+N exit code.
    pub fn signal(&self) -> Option<&'static str> {
        let code = self.exit_code?;
        if !(129..=159).contains(&code) {
            return None;
        }
        Some(match code - 128 {
            1 => "SIGHUP",
            2 => "SIGINT",
            3 => "SIGQUIT",
            4 => "SIGILL",
            6 => "SIGABRT",
            8 => "SIGFPE",
            9 => "SIGKILL",
            11 => "SIGSEGV",
            13 => "SIGPIPE",
            14 => "SIGALRM",
            15 => "SIGTERM",
            _ => "SIGNAL",
        })
    }
}
