//! A run's artifacts as one tar archive: the engine's archive of each
//! path (named from the path's base name) is copied in under the path's
//! full name (`/workspace/out/a.txt` is `workspace/out/a.txt`), entry by
//! entry, until the next entry would take the archive past its limit.
//! The archive is always whole (every entry complete, then the end
//! marker); what did not fit makes it `truncated`.

use crate::contract::run::ArtifactsSummary;

const BLOCK: u64 = 512;

/// Builds the archive of a run's artifacts, one path at a time.
pub struct Packer {
    limit: u64,
    builder: tar::Builder<Vec<u8>>,
    summary: ArtifactsSummary,
}

impl Packer {
    /// An archive of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        let mut builder = tar::Builder::new(Vec::new());
        builder.mode(tar::HeaderMode::Complete);
        Packer {
            limit: limit as u64,
            builder,
            summary: ArtifactsSummary::default(),
        }
    }

    /// How many bytes of an engine archive are worth reading for the
    /// next path (past them nothing more could fit).
    pub fn room(&self) -> usize {
        let used = self.builder.get_ref().len() as u64;
        (self.limit.saturating_sub(used) + 64 * 1024) as usize
    }

    pub fn truncated(&self) -> bool {
        self.summary.truncated
    }

    /// Adds `path` from the engine's archive of it (`None`: it does not
    /// exist; `more`: the engine's archive went on past what was read).
    pub fn add(&mut self, path: &str, download: Option<(Vec<u8>, bool)>) {
        let Some((bytes, more)) = download else {
            self.summary.missing.push(path.to_owned());
            return;
        };
        if self.summary.truncated {
            return;
        }
        let parent = std::path::Path::new(path)
            .parent()
            .map(|p| p.strip_prefix("/").unwrap_or(p).to_path_buf())
            .unwrap_or_default();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut complete = true;
        let entries = match archive.entries() {
            Ok(entries) => entries,
            Err(_) => {
                self.summary.truncated = true;
                return;
            }
        };
        let mut added_any = false;
        for entry in entries {
            let Ok(mut entry) = entry else {
                complete = false;
                break;
            };
            let Ok(name) = entry.path().map(|p| p.into_owned()) else {
                complete = false;
                break;
            };
            let name = parent.join(name);
            let mut header = entry.header().clone();
            let kind = header.entry_type();
            let size = if kind.is_file() { entry.size() } else { 0 };
            if !self.fits(&name, size) {
                complete = false;
                break;
            }
            header.set_size(size);
            let added = if kind.is_file() {
                // Read whole first: a short read is a cut archive.
                let mut data = Vec::with_capacity(size as usize);
                if std::io::Read::read_to_end(&mut entry, &mut data).is_err()
                    || data.len() as u64 != size
                {
                    complete = false;
                    break;
                }
                self.builder
                    .append_data(&mut header, &name, data.as_slice())
            } else if kind.is_dir() {
                self.builder
                    .append_data(&mut header, &name, std::io::empty())
            } else if kind.is_symlink() {
                match entry.link_name() {
                    Ok(Some(target)) => {
                        let target = target.into_owned();
                        self.builder.append_link(&mut header, &name, target)
                    }
                    _ => continue,
                }
            } else if kind.is_hard_link() {
                match entry.link_name() {
                    Ok(Some(target)) => {
                        let target = parent.join(target);
                        self.builder.append_link(&mut header, &name, target)
                    }
                    _ => continue,
                }
            } else {
                // Devices, pipes and sockets are not data.
                continue;
            };
            if added.is_err() {
                complete = false;
                break;
            }
            added_any = true;
        }
        // A path counts as archived once any of it is in the archive.
        if added_any {
            self.summary.paths.push(path.to_owned());
        }
        if !complete || more {
            self.summary.truncated = true;
        }
    }

    /// Whether an entry of `size` bytes named `name` still fits (with the
    /// end marker after it).
    fn fits(&self, name: &std::path::Path, size: u64) -> bool {
        let used = self.builder.get_ref().len() as u64;
        let name_len = name.as_os_str().len() as u64;
        let long_name = if name_len >= 100 {
            BLOCK + (name_len + 1).div_ceil(BLOCK) * BLOCK
        } else {
            0
        };
        used + long_name + BLOCK + size.div_ceil(BLOCK) * BLOCK + 2 * BLOCK <= self.limit
    }

    /// Notes that `path` is not archived (it is reported missing, with
    /// why), while the other paths are.
    pub fn refused(&mut self, path: &str, why: String) {
        tracing::warn!(path, reason = %why, "an artifact path is not archived");
        self.summary.missing.push(path.to_owned());
        self.summary.error.get_or_insert(why);
    }

    /// Notes that the engine could not archive `path`.
    pub fn failed(&mut self, path: &str, why: String) {
        tracing::warn!(path, error = %why, "an artifact could not be archived");
        self.summary.error.get_or_insert(why);
        self.summary.truncated = true;
    }

    /// The archive (empty when no path was archived) and its summary.
    pub fn finish(self) -> (Vec<u8>, ArtifactsSummary) {
        let mut summary = self.summary;
        if summary.paths.is_empty() {
            summary.bytes = 0;
            return (Vec::new(), summary);
        }
        let tar = self.builder.into_inner().unwrap_or_default();
        summary.bytes = tar.len() as u64;
        (tar, summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine_archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            if name.ends_with('/') {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, name, std::io::empty()).unwrap();
            } else {
                h.set_mode(0o640);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, name, *data).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    fn names(tar: &[u8]) -> Vec<(String, Vec<u8>, u32)> {
        let mut a = tar::Archive::new(tar);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().display().to_string();
                let mode = e.header().mode().unwrap();
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut data).unwrap();
                (name, data, mode)
            })
            .collect()
    }

    #[test]
    fn paths_keep_their_full_names_and_missing_ones_are_listed() {
        let mut p = Packer::new(1 << 20);
        p.add(
            "/workspace/out",
            Some((
                engine_archive(&[("out/", b""), ("out/a.txt", b"hello")]),
                false,
            )),
        );
        p.add("/tmp/gone", None);
        p.add(
            "/tmp/report.json",
            Some((engine_archive(&[("report.json", b"{}")]), false)),
        );
        let (tar, summary) = p.finish();
        assert_eq!(summary.paths, ["/workspace/out", "/tmp/report.json"]);
        assert_eq!(summary.missing, ["/tmp/gone"]);
        assert!(!summary.truncated);
        assert_eq!(summary.bytes, tar.len() as u64);
        let got = names(&tar);
        assert_eq!(got[0].0, "workspace/out/");
        assert_eq!(
            got[1],
            ("workspace/out/a.txt".into(), b"hello".to_vec(), 0o640)
        );
        assert_eq!(got[2], ("tmp/report.json".into(), b"{}".to_vec(), 0o640));
    }

    #[test]
    fn an_archive_past_its_limit_stops_whole_and_says_truncated() {
        let big = vec![7u8; 40_000];
        let engine = engine_archive(&[("a.bin", &big), ("b.bin", &big), ("c.bin", &big)]);
        let mut p = Packer::new(100_000);
        p.add("/workspace/a.bin", Some((engine, false)));
        let (tar, summary) = p.finish();
        assert!(summary.truncated);
        assert!(tar.len() <= 100_000);
        let got = names(&tar);
        assert_eq!(got.len(), 2, "two entries fit, the third does not");
        assert_eq!(got[1].1, big);
    }

    #[test]
    fn a_cut_engine_archive_keeps_its_complete_entries() {
        let big = vec![1u8; 10_000];
        let engine = engine_archive(&[("x/", b""), ("x/a", &big), ("x/b", &big)]);
        let cut = engine[..engine.len() - 6_000].to_vec();
        let mut p = Packer::new(1 << 20);
        p.add("/workspace/x", Some((cut, true)));
        let (tar, summary) = p.finish();
        assert!(summary.truncated);
        let got = names(&tar);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].0, "workspace/x/a");
    }

    #[test]
    fn nothing_archived_is_an_empty_archive() {
        let mut p = Packer::new(1 << 20);
        p.add("/workspace/none", None);
        let (tar, summary) = p.finish();
        assert!(tar.is_empty());
        assert_eq!(summary.bytes, 0);
        assert_eq!(summary.missing, ["/workspace/none"]);
    }
}
