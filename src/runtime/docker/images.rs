//! Images: whether one is on the engine, and pulling one with progress.

use super::*;

impl DockerRuntime {
    pub(super) fn image_present_on_engine(
        &self,
        image: &str,
    ) -> LocalBoxFuture<'static, Result<bool, RuntimeError>> {
        let (this, image) = (self.clone(), image.to_owned());
        async move {
            match this.ready_client().await?.inspect_image(&image).await {
                Ok(_) => Ok(true),
                Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => Ok(false),
                Err(e) => Err(map_err(e)),
            }
        }
        .boxed_local()
    }

    pub(super) fn pull_on_engine(
        &self,
        image: &str,
        progress: Box<dyn Fn(String)>,
    ) -> LocalBoxFuture<'static, Result<(), RuntimeError>> {
        let (this, image) = (self.clone(), image.to_owned());
        async move {
            let client = this.ready_client().await?;
            // A name without a tag or digest would pull every tag.
            let last = image.rsplit('/').next().unwrap_or(&image);
            let tag = (!last.contains(':') && !last.contains('@')).then(|| "latest".to_owned());
            let options = CreateImageOptions {
                from_image: Some(image.clone()),
                tag,
                ..Default::default()
            };
            let mut stream = client.create_image(Some(options), None, None);
            while let Some(item) = stream.next().await {
                let info = item.map_err(map_err)?;
                if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                    return Err(RuntimeError::Engine(detail));
                }
                if let Some(status) = info.status {
                    progress(match info.id {
                        Some(id) => format!("{id}: {status}"),
                        None => status,
                    });
                }
            }
            Ok(())
        }
        .boxed_local()
    }
}
