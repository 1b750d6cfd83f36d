//! One name's state in the hub: its broadcast subscribers, its unicast
//! groups (round robin among each group's consumers) and its replay window.

use super::*;

pub(super) struct Consumer {
    pub(super) id: u64,
    pub(super) label: String,
    pub(super) identity: Option<String>,
    pub(super) tx: mpsc::Sender<Arc<Event>>,
}

impl Consumer {
    pub(super) fn wants(&self, event: &Event) -> bool {
        self.identity
            .as_deref()
            .is_none_or(|who| who == event.identity_id)
    }
}

#[derive(Default)]
pub(super) struct Group {
    pub(super) consumers: Vec<Consumer>,
    pub(super) next: usize,
}

#[derive(Default)]
pub(super) struct Topic {
    pub(super) broadcast: Vec<Consumer>,
    pub(super) groups: HashMap<String, Group>,
    pub(super) replay: VecDeque<Arc<Event>>,
    pub(super) replay_bytes: usize,
    pub(super) last_publish: u64,
}

impl Topic {
    pub(super) fn is_idle(&self) -> bool {
        self.broadcast.is_empty() && self.groups.is_empty() && self.replay.is_empty()
    }
}
