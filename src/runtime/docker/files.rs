//! Files copied into a created container (as tar archives, one per
//! directory they are extracted under), and paths copied out of a
//! finished one (artifacts).

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
                own(&mut h, file.owner);
                builder.append_data(&mut h, &parent, std::io::empty())?;
            }
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(file.mode);
        h.set_size(file.data.len() as u64);
        own(&mut h, file.owner);
        builder.append_data(&mut h, &name, file.data.as_slice())?;
    }
    by_root
        .into_iter()
        .map(|(root, builder, _)| Ok((root, builder.into_inner()?)))
        .collect()
}

fn own(h: &mut tar::Header, owner: Option<(u64, u64)>) {
    let (uid, gid) = owner.unwrap_or((0, 0));
    h.set_uid(uid);
    h.set_gid(gid);
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

    pub(super) fn download_on_engine(
        &self,
        container: &str,
        path: &str,
        max: usize,
    ) -> LocalBoxFuture<'static, Result<Download, RuntimeError>> {
        let this = self.clone();
        let (container, path) = (container.to_owned(), path.to_owned());
        async move {
            let client = this.ready_client().await?;
            if let Some(why) = through_link(&client, &container, &path).await? {
                return Err(RuntimeError::NotFound(why));
            }
            let mut stream = std::pin::pin!(client
                .download_from_container(&container, Some(DownloadFromContainerOptions { path })));
            let mut out = Vec::new();
            while let Some(chunk) = stream.next().await {
                match chunk.map_err(map_err) {
                    Ok(bytes) => {
                        if out.len() + bytes.len() > max {
                            out.extend_from_slice(&bytes[..max - out.len()]);
                            return Ok(Some((out, true)));
                        }
                        out.extend_from_slice(&bytes);
                    }
                    Err(RuntimeError::NotFound(_)) => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
            Ok(Some((out, false)))
        }
        .boxed_local()
    }
}

/// Go's `os.ModeSymlink`, as the engine reports a path's mode.
const GO_MODE_SYMLINK: u32 = 1 << 27;

/// Why `path` is not archived when it or one of its directories is a
/// symbolic link: the engine resolves a path (as root, within the
/// container), so `/workspace/l/x` with `l -> /etc` would read `/etc/x`,
/// which the run's own user may not read; and an engine may follow a
/// link at the path itself. Links inside a listed directory are archived
/// as links.
async fn through_link(
    client: &bollard::Docker,
    container: &str,
    path: &str,
) -> Result<Option<String>, RuntimeError> {
    let path = std::path::Path::new(path);
    let mut dirs: Vec<&std::path::Path> =
        path.ancestors().filter(|p| p.parent().is_some()).collect();
    dirs.reverse();
    for dir in dirs {
        let options = bollard::query_parameters::ContainerArchiveInfoOptions {
            path: dir.display().to_string(),
        };
        match client
            .get_container_archive_info(container, Some(options))
            .await
            .map_err(map_err)
        {
            Ok(stat) if stat.file_mode & GO_MODE_SYMLINK != 0 => {
                return Ok(Some(format!(
                    "{}: {} is a symbolic link, which is not followed",
                    path.display(),
                    dir.display()
                )))
            }
            Ok(_) => {}
            // Not there: the path is missing, as its download says.
            Err(RuntimeError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_under_a_root_share_one_archive_with_their_directories() {
        let file = |path: &str, owner| FileSpec {
            path: path.into(),
            data: b"x".to_vec(),
            mode: 0o600,
            root: Some("/workspace".into()),
            owner,
        };
        let archives = archives_of(&[
            file("/workspace/a/b/c.txt", Some((1000, 1000))),
            file("/workspace/a/d.txt", Some((1000, 1000))),
        ])
        .unwrap();
        assert_eq!(archives.len(), 1);
        assert_eq!(archives[0].0, "/workspace");
        let mut tar = tar::Archive::new(archives[0].1.as_slice());
        let entries: Vec<(String, u64, u32)> = tar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.uid().unwrap(),
                    h.mode().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            [
                ("a".into(), 1000, 0o755),
                ("a/b".into(), 1000, 0o755),
                ("a/b/c.txt".into(), 1000, 0o600),
                ("a/d.txt".into(), 1000, 0o600),
            ]
        );
        assert!(archives_of(&[file("/elsewhere/x", None)]).is_err());
    }
}
