//! The local cache: the last applied value of each config, so that an
//! instance that boots while etcd is down serves what it served before.
//!
//! One file per config, `<dir>/<name>.cached` (`db/main` is
//! `<dir>/db/main.cached`): a line with the version, then the value exactly
//! as etcd held it (format header included). Each file is replaced
//! atomically: written to a temp file, synced, renamed over, and the
//! directory synced.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::layout::check_config_name;

const EXT: &str = "cached";

/// A config value read from the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cached {
    pub name: String,
    pub version: u64,
    pub value: Vec<u8>,
}

/// The cache directory of one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub(crate) fn new(dir: PathBuf) -> Cache {
        Cache { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.{EXT}"))
    }

    /// Replaces the cached value of `name`, atomically and durably.
    pub(crate) fn store(&self, name: &str, version: u64, value: &[u8]) -> std::io::Result<()> {
        let path = self.path(name);
        let dir = path.parent().expect("a cache file has a directory");
        std::fs::create_dir_all(dir)?;
        let file_name = path.file_name().expect("a cache file has a name").to_string_lossy();
        let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(format!("{version}\n").as_bytes())?;
        file.write_all(value)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    }

    /// Every cached config. Unreadable or malformed files are skipped with
    /// a warning: the cache is a fallback, never a reason to fail.
    pub(crate) fn load(&self) -> Vec<Cached> {
        let mut out = Vec::new();
        let mut dirs = vec![self.dir.clone()];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == EXT) {
                    match self.read(&path) {
                        Some(cached) => out.push(cached),
                        None => tracing::warn!(path = %path.display(), "skipping an unreadable fleet cache file"),
                    }
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn read(&self, path: &Path) -> Option<Cached> {
        let rel = path.strip_prefix(&self.dir).ok()?.with_extension("");
        let name = rel.to_str()?.to_string();
        check_config_name(&name).ok()?;
        let bytes = std::fs::read(path).ok()?;
        let end = bytes.iter().position(|&b| b == b'\n')?;
        let version = std::str::from_utf8(&bytes[..end]).ok()?.parse().ok()?;
        Some(Cached { name, version, value: bytes[end + 1..].to_vec() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_replace_and_load_back_nested_names() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("c"));
        assert!(cache.load().is_empty(), "a missing dir is an empty cache");
        cache.store("server", 3, b"# relive-format: toml\nport = 1\n").unwrap();
        cache.store("db/main", 4, b"x").unwrap();
        cache.store("db", 5, b"y").unwrap();
        cache.store("server", 7, b"# relive-format: toml\nport = 2\n").unwrap();
        let got = cache.load();
        let names: Vec<_> = got.iter().map(|c| (c.name.as_str(), c.version)).collect();
        assert_eq!(names, [("db", 5), ("db/main", 4), ("server", 7)]);
        assert_eq!(got[2].value, b"# relive-format: toml\nport = 2\n");
        let leftovers = std::fs::read_dir(dir.path().join("c"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"));
        assert_eq!(leftovers.count(), 0, "temp files are renamed away");
    }

    #[test]
    fn malformed_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().to_path_buf());
        cache.store("good", 1, b"v").unwrap();
        std::fs::write(dir.path().join("noversion.cached"), b"no newline").unwrap();
        std::fs::write(dir.path().join("badversion.cached"), b"x\nv").unwrap();
        std::fs::write(dir.path().join("other.txt"), b"1\nv").unwrap();
        let got = cache.load();
        assert_eq!(got, [Cached { name: "good".into(), version: 1, value: b"v".to_vec() }]);
    }
}
