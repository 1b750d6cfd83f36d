//! A sandboxed run's networks: internal bridges, connections, addresses,
//! and the managed ones a reaper lists.

use super::*;

impl DockerRuntime {
    pub(super) fn create_network_on_engine(
        &self,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> LocalBoxFuture<'static, Result<String, RuntimeError>> {
        let this = self.clone();
        let request = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".into()),
            internal: Some(true),
            labels: Some(labels.clone().into_iter().collect()),
            // No address of the host's on the bridge: a container on it
            // cannot reach the host's own services through a gateway.
            options: Some(HashMap::from([(
                "com.docker.network.bridge.inhibit_ipv4".to_owned(),
                "true".to_owned(),
            )])),
            ..Default::default()
        };
        async move {
            let created = this
                .ready_client()
                .await?
                .create_network(request)
                .await
                .map_err(map_err)?;
            Ok(created.id)
        }
        .boxed_local()
    }

    pub(super) fn connect_network_on_engine(
        &self,
        network: &str,
        container: &str,
    ) -> LocalBoxFuture<'static, Result<(), RuntimeError>> {
        let (this, network) = (self.clone(), network.to_owned());
        let request = NetworkConnectRequest {
            container: container.to_owned(),
            endpoint_config: None,
        };
        async move {
            this.ready_client()
                .await?
                .connect_network(&network, request)
                .await
                .map_err(map_err)
        }
        .boxed_local()
    }

    pub(super) fn remove_network_on_engine(
        &self,
        name: &str,
    ) -> LocalBoxFuture<'static, Result<(), RuntimeError>> {
        let (this, name) = (self.clone(), name.to_owned());
        async move {
            match this.ready_client().await?.remove_network(&name).await {
                Ok(()) => Ok(()),
                Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => Ok(()),
                Err(e) => Err(map_err(e)),
            }
        }
        .boxed_local()
    }

    pub(super) fn network_ip_on_engine(
        &self,
        container: &str,
        network: &str,
    ) -> LocalBoxFuture<'static, Result<Option<String>, RuntimeError>> {
        let (this, container, network) = (self.clone(), container.to_owned(), network.to_owned());
        async move {
            let info = this
                .ready_client()
                .await?
                .inspect_container(
                    &container,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
                .map_err(map_err)?;
            Ok(info
                .network_settings
                .and_then(|n| n.networks)
                .and_then(|n| {
                    n.into_iter()
                        .find(|(name, e)| {
                            *name == network || e.network_id.as_deref() == Some(network.as_str())
                        })
                        .map(|(_, e)| e)
                })
                .and_then(|e| e.ip_address)
                .filter(|ip| !ip.is_empty()))
        }
        .boxed_local()
    }

    pub(super) fn network_subnet_on_engine(
        &self,
        network: &str,
    ) -> LocalBoxFuture<'static, Result<Option<String>, RuntimeError>> {
        let (this, network) = (self.clone(), network.to_owned());
        async move {
            let info = this
                .ready_client()
                .await?
                .inspect_network(
                    &network,
                    None::<bollard::query_parameters::InspectNetworkOptions>,
                )
                .await
                .map_err(map_err)?;
            Ok(info
                .ipam
                .and_then(|i| i.config)
                .and_then(|c| c.into_iter().find_map(|c| c.subnet)))
        }
        .boxed_local()
    }

    pub(super) fn list_managed_networks_on_engine(
        &self,
        worker_id: &str,
    ) -> LocalBoxFuture<'static, Result<Vec<Managed>, RuntimeError>> {
        let (this, worker_id) = (self.clone(), worker_id.to_owned());
        async move {
            let options = ListNetworksOptions {
                filters: Some(label_filter(&worker_id)),
            };
            let list = this
                .ready_client()
                .await?
                .list_networks(Some(options))
                .await
                .map_err(map_err)?;
            Ok(list
                .into_iter()
                .filter_map(|n| {
                    let labels = n.labels.unwrap_or_default();
                    Some(Managed::from_labels(n.id?, |k| labels.get(k).cloned()))
                })
                .collect())
        }
        .boxed_local()
    }
}
