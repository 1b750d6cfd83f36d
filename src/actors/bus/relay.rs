//! An ordered relay: publications go out one at a time, in the order
//! they were handed in, so a run's events stay in order. The router's
//! republished run events and each session's own events go through one.

use super::requester::Requester;
use crate::contract::Publication;
use tokio::sync::mpsc;

/// The sending side; cloning it shares the one ordered queue.
#[derive(Clone)]
pub struct Relay {
    tx: mpsc::Sender<Publication>,
}

impl Relay {
    /// Starts the publishing task on the current arbiter; at most
    /// `capacity` publications wait.
    pub fn start(requester: Requester, capacity: usize) -> Relay {
        let (tx, mut rx) = mpsc::channel::<Publication>(capacity.max(1));
        actix_rt::spawn(async move {
            while let Some(publication) = rx.recv().await {
                let name = publication.name.clone();
                if let Err(e) = requester.publish(publication).await {
                    tracing::debug!(event = %name, error = %e, "not relayed");
                }
            }
        });
        Relay { tx }
    }

    /// Queues a publication; hands it back when the queue is full.
    pub fn try_send(&self, publication: Publication) -> Result<(), Publication> {
        self.tx.try_send(publication).map_err(|e| match e {
            mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p) => p,
        })
    }

    /// Queues a publication, waiting for room.
    pub async fn send(&self, publication: Publication) {
        let _ = self.tx.send(publication).await;
    }
}
