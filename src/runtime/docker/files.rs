//! Files copied into a created container (as tar archives, one per
//! directory they are extracted under).

use super::*;

/// The tar archives of `files`, each with the directory it is extracted
/// into (which may be a volume under a read-only root): a file without a
/// root is named by its base name in its own directory; files under a
/// root go in one archive with the directories between them made (0755).
pub(super) fn archives_of(files: &[FileSpec]) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut by_root: Vec<(
        String,
        tar::Builder<Vec<u8>>,
        std::collections::BTreeSet<String>,
    )> = Vec::new();
    for file in files {
        let path = std::path::Path::new(&file.path);
        let (root, name) = match &file.root {
            Some(root) => {
                let rel = path.strip_prefix(root).map_err(|_| {
                    std::io::Error::other(format!("{}: not under {root}", file.path))
                })?;
                (root.clone(), rel.to_path_buf())
            }
            None => match (path.parent(), path.file_name()) {
                (Some(dir), Some(name)) => (dir.display().to_string(), name.into()),
                _ => {
                    return Err(std::io::Error::other(format!(
                        "{}: not a file path",
                        file.path
                    )))
                }
            },
        };
        if name.as_os_str().is_empty() {
            return Err(std::io::Error::other(format!(
                "{}: not a file path",
                file.path
            )));
        }
        let at = match by_root.iter().position(|(r, _, _)| *r == root) {
            Some(i) => i,
            None => {
                by_root.push((root, tar::Builder::new(Vec::new()), Default::default()));
                by_root.len() - 1
            }
        };
        let (_, builder, dirs) = &mut by_root[at];
        let mut parent = std::path::PathBuf::new();
        for part in name.parent().into_iter().flat_map(|p| p.components()) {
            parent.push(part);
            if dirs.insert(parent.display().to_string()) {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                builder.append_data(&mut h, &parent, std::io::empty())?;
            }
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(file.mode);
        h.set_size(file.data.len() as u64);
        builder.append_data(&mut h, &name, file.data.as_slice())?;
    }
    by_root
        .into_iter()
        .map(|(root, builder, _)| Ok((root, builder.into_inner()?)))
        .collect()
}

impl DockerRuntime {
    pub(super) fn upload_on_engine(
        &self,
        container: &str,
        files: &[FileSpec],
    ) -> LocalBoxFuture<'static, Result<(), RuntimeError>> {
        let this = self.clone();
        let container = container.to_owned();
        let archives = archives_of(files);
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
