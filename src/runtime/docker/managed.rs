//! The containers a worker manages, found by their labels.

use super::*;

pub(super) fn label_filter(worker_id: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_owned(),
        vec![
            format!("{}=true", labels::MANAGED),
            format!("{}={worker_id}", labels::WORKER_ID),
        ],
    )])
}

impl DockerRuntime {
    pub(super) fn list_managed_on_engine(
        &self,
        worker_id: &str,
    ) -> LocalBoxFuture<'static, Result<Vec<Managed>, RuntimeError>> {
        let (this, worker_id) = (self.clone(), worker_id.to_owned());
        async move {
            let options = ListContainersOptions {
                all: true,
                filters: Some(label_filter(&worker_id)),
                ..Default::default()
            };
            let list = this
                .ready_client()
                .await?
                .list_containers(Some(options))
                .await
                .map_err(map_err)?;
            Ok(list
                .into_iter()
                .filter_map(|c| {
                    let labels = c.labels.unwrap_or_default();
                    Some(Managed::from_labels(c.id?, |k| labels.get(k).cloned()))
                })
                .collect())
        }
        .boxed_local()
    }
}
