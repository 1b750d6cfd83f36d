//! Which process owns a container, and whether it still lives.
//!
//! Every container and network a worker makes carries its process's mark
//! (`bus.process` = `host/boot/pid/start`): the host name, the kernel's
//! boot id, the pid and the pid's start time (clock ticks since boot, from
//! `/proc`). A reaper that finds a container of its own worker id made by
//! another process asks [`ProcessMark::liveness`]: on the same host and
//! boot, a pid that is gone, a zombie, or a pid now started at another
//! time (reused) is [`Liveness::Dead`] and its containers are orphans;
//! anything it cannot tell (another host, another boot, no `/proc`) is
//! [`Liveness::Unknown`], and such a container is left to its deadline
//! label. So two stacks that share an engine, or even a worker id, never
//! remove each other's live containers.

use std::sync::OnceLock;

/// One process, as written in the `bus.process` label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessMark {
    pub host: String,
    pub boot: String,
    pub pid: u32,
    pub start: u64,
}

/// What a mark's process is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// This very process.
    This,
    /// Another process that is running.
    Alive,
    /// Gone (or a zombie, or its pid reused).
    Dead,
    /// Cannot be told from here (another host or boot).
    Unknown,
}

/// `(state, start time)` of a pid, from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces or ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // `state` is field 3 of stat; the start time is field 22.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// The host name: the default worker and instance id.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|b| b.trim().replace('-', ""))
        .unwrap_or_default()
}

impl ProcessMark {
    /// This process.
    pub fn current() -> &'static ProcessMark {
        static MARK: OnceLock<ProcessMark> = OnceLock::new();
        MARK.get_or_init(|| {
            let pid = std::process::id();
            ProcessMark {
                host: hostname().replace('/', "_"),
                boot: boot_id(),
                pid,
                start: stat(pid).map(|(_, s)| s).unwrap_or(0),
            }
        })
    }

    /// The label value.
    pub fn label(&self) -> String {
        format!("{}/{}/{}/{}", self.host, self.boot, self.pid, self.start)
    }

    /// Reads a label value; `None` for anything else.
    pub fn parse(label: &str) -> Option<ProcessMark> {
        let mut parts = label.rsplitn(4, '/');
        let start = parts.next()?.parse().ok()?;
        let pid = parts.next()?.parse().ok()?;
        let boot = parts.next()?.to_owned();
        let host = parts.next()?.to_owned();
        Some(ProcessMark {
            host,
            boot,
            pid,
            start,
        })
    }

    /// Whether this mark's process lives, as far as this process can tell.
    pub fn liveness(&self) -> Liveness {
        let me = ProcessMark::current();
        if self == me {
            return Liveness::This;
        }
        if self.host != me.host || self.boot.is_empty() || self.boot != me.boot || me.start == 0 {
            return Liveness::Unknown;
        }
        match stat(self.pid) {
            None => Liveness::Dead,
            Some(('Z' | 'X' | 'x', _)) => Liveness::Dead,
            Some((_, start)) if start != self.start => Liveness::Dead,
            Some(_) => Liveness::Alive,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_tell_this_process_from_a_dead_one() {
        let me = ProcessMark::current();
        assert_eq!(ProcessMark::parse(&me.label()).as_ref(), Some(me));
        assert_eq!(me.liveness(), Liveness::This);
        assert!(me.start > 0, "a start time on Linux");
        // Our parent process lives.
        let parent = std::os::unix::process::parent_id();
        let (_, start) = stat(parent).unwrap();
        let alive = ProcessMark {
            pid: parent,
            start,
            ..me.clone()
        };
        assert_eq!(alive.liveness(), Liveness::Alive);
        // The same pid started at another time is a reused pid.
        let reused = ProcessMark {
            pid: parent,
            start: start + 1,
            ..me.clone()
        };
        assert_eq!(reused.liveness(), Liveness::Dead);
        // A process that has exited and been waited for.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let gone = ProcessMark { pid, ..me.clone() };
        assert_eq!(gone.liveness(), Liveness::Dead);
        let elsewhere = ProcessMark {
            host: "another-host".into(),
            ..gone
        };
        assert_eq!(elsewhere.liveness(), Liveness::Unknown);
        assert_eq!(ProcessMark::parse("nonsense"), None);
        assert_eq!(
            ProcessMark::parse("h/with/slash/b/1/2").map(|m| m.host),
            Some("h/with/slash".to_owned())
        );
    }
}
