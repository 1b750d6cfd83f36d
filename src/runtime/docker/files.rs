//! Files copied into a created container (as a tar archive).

use super::*;

/// A tar archive of one file, named by its base name (it is extracted
/// into its directory, which may be a volume under a read-only root).
pub(super) fn tar_of(file: &FileSpec) -> std::io::Result<(String, Vec<u8>)> {
    let path = std::path::Path::new(&file.path);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::other(format!(
            "{}: not a file path",
            file.path
        )));
    };
    let mut builder = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(file.mode);
    h.set_size(file.data.len() as u64);
    builder.append_data(&mut h, name, file.data.as_slice())?;
    Ok((dir.display().to_string(), builder.into_inner()?))
}

impl DockerRuntime {
    pub(super) fn upload_on_engine(
        &self,
        container: &str,
        files: &[FileSpec],
    ) -> LocalBoxFuture<'static, Result<(), RuntimeError>> {
        let this = self.clone();
        let container = container.to_owned();
        let archives: Result<Vec<_>, _> = files.iter().map(tar_of).collect();
        async move {
            let archives = archives.map_err(|e| RuntimeError::Engine(format!("archive: {e}")))?;
            let client = this.ready_client().await?;
            for (dir, archive) in archives {
                let options = UploadToContainerOptions {
                    path: dir,
                    ..Default::default()
                };
                client
                    .upload_to_container(
                        &container,
                        Some(options),
                        bollard::body_full(bytes::Bytes::from(archive)),
                    )
                    .await
                    .map_err(map_err)?;
            }
            Ok(())
        }
        .boxed_local()
    }
}
