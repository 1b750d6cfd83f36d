//! Readiness of a process's bus listeners: with
//! `BUS_EVENTS_LISTENER_REQUIRED=1`, `/readyz` is 503 while any listener
//! that the process depends on is disconnected.

use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Shared by every listener of one process and by its `/readyz`.
#[derive(Debug, Default)]
pub struct ListenerHealth {
    next: AtomicU64,
    listeners: DashMap<u64, (String, bool)>,
}

impl ListenerHealth {
    pub fn new() -> Arc<Self> {
        Arc::new(ListenerHealth::default())
    }

    /// Registers a listener (initially disconnected); the guard keeps its
    /// state and removes it when dropped.
    pub fn register(self: &Arc<Self>, name: &str) -> ListenerGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.listeners.insert(id, (name.to_owned(), false));
        ListenerGuard {
            health: self.clone(),
            id,
        }
    }

    /// The names of the listeners that are down, if any.
    pub fn down(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .listeners
            .iter()
            .filter(|e| !e.value().1)
            .map(|e| e.value().0.clone())
            .collect();
        names.sort();
        names
    }
}

/// One registered listener.
#[derive(Debug)]
pub struct ListenerGuard {
    health: Arc<ListenerHealth>,
    id: u64,
}

impl ListenerGuard {
    pub fn set_connected(&self, connected: bool) {
        if let Some(mut e) = self.health.listeners.get_mut(&self.id) {
            e.value_mut().1 = connected;
        }
    }
}

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        self.health.listeners.remove(&self.id);
    }
}
