//! The local cache: the last applied value of each config, so that an
//! instance that boots while etcd is down serves what it served before.
//!
//! One file per config, `<dir>/<name>.cached` (`db/main` is
//! `<dir>/db/main.cached`): a line with the version, then the value exactly
//! as etcd held it (format header included). Each file is replaced
//! atomically: written to a temp file, synced, renamed over, and the
//! directory synced.
//!
//! A value may hold a secret: cache files are 0600 and the directories the
//! cache creates 0700, whatever the umask. Modes and owners are Unix's; on
//! Windows the files inherit the ACL of the directory they are in, as
//! relive's own `data/` does.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use crate::layout::check_config_name;

const EXT: &str = "cached";

/// The mode of the files the fleet crate writes for itself.
pub(crate) const FILE_MODE: u32 = 0o600;
/// The mode of the directories it creates.
#[cfg_attr(not(unix), allow(dead_code))]
pub(crate) const DIR_MODE: u32 = 0o700;

/// Creates `dir` and its missing parents with mode 0700 (given at creation:
/// a umask only takes bits away). Directories that exist are left alone.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(DIR_MODE);
    builder.create(dir)
}

/// Creates a new file at `tmp` with exactly `mode` and, if given, owner
/// `(uid, gid)`, whatever the umask; a file left there by a crash (or a
/// link planted there) is removed first, never followed.
pub(crate) fn create_temp(tmp: &Path, mode: u32, owner: Option<(u32, u32)>) -> std::io::Result<File> {
    match std::fs::remove_file(tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(mode & 0o777);
    let file = options.open(tmp)?;
    #[cfg(unix)]
    let set = (|| {
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        }
        // After the owner: chown clears set-id bits.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
    })();
    // No modes or owners to set on Windows (see the module's docs).
    #[cfg(not(unix))]
    let set: std::io::Result<()> = {
        let _ = (mode, owner);
        Ok(())
    };
    if let Err(e) = set {
        let _ = std::fs::remove_file(tmp);
        return Err(e);
    }
    Ok(file)
}

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
        create_private_dir(dir)?;
        let file_name = path.file_name().expect("a cache file has a name").to_string_lossy();
        let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
        let mut file = create_temp(&tmp, FILE_MODE, None)?;
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

/// How often, at most, the cache is written while versions keep coming:
/// each write creates a file and fsyncs twice, and a cache some
/// milliseconds behind costs nothing (an instance that boots from it
/// catches up from etcd).
const WRITE_INTERVAL: Duration = Duration::from_millis(100);

/// Writes a [`Cache`] on a thread of its own, so that no version waits for
/// the previous one's fsyncs. Stores of one config queued while a write is
/// under way, or within [`WRITE_INTERVAL`] of the last write, collapse into
/// the newest: the cache holds the last applied value, not a history. A
/// stop writes what is queued at once.
#[derive(Debug)]
pub(crate) struct CacheWriter {
    tx: Option<std::sync::mpsc::Sender<Cached>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CacheWriter {
    pub(crate) fn start(cache: Cache) -> std::io::Result<CacheWriter> {
        let (tx, rx) = std::sync::mpsc::channel::<Cached>();
        let thread = std::thread::Builder::new().name("relive-fleet-cache".into()).spawn(move || {
            let mut last_write: Option<Instant> = None;
            while let Ok(first) = rx.recv() {
                let mut newest = std::collections::BTreeMap::new();
                newest.insert(first.name.clone(), first);
                // A write soon after the last one waits out the interval,
                // taking in what else arrives (unless the source stopped).
                if let Some(until) = last_write.map(|t| t + WRITE_INTERVAL) {
                    while let Some(left) = until.checked_duration_since(Instant::now()) {
                        match rx.recv_timeout(left) {
                            Ok(c) => drop(newest.insert(c.name.clone(), c)),
                            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                        }
                    }
                }
                newest.extend(rx.try_iter().map(|c| (c.name.clone(), c)));
                for c in newest.values() {
                    if let Err(e) = cache.store(&c.name, c.version, &c.value) {
                        tracing::warn!(config = %c.name, error = %e, "could not write the fleet cache");
                    }
                }
                last_write = Some(Instant::now());
            }
        })?;
        Ok(CacheWriter { tx: Some(tx), thread: Some(thread) })
    }

    /// Queues `value` as config `name`'s cached value; returns at once.
    pub(crate) fn store(&self, name: &str, version: u64, value: &[u8]) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Cached { name: name.to_string(), version, value: value.to_vec() });
        }
    }

    /// Writes everything queued, then stops the thread.
    pub(crate) async fn finish(mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
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

    // Modes are Unix's.
    #[cfg(unix)]
    #[test]
    fn cache_files_are_private_whatever_they_replace() {
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("fleet/app/configs"));
        cache.store("db/main", 1, b"password = 1").unwrap();
        for sub in ["fleet", "fleet/app", "fleet/app/configs", "fleet/app/configs/db"] {
            assert_eq!(mode(&dir.path().join(sub)), 0o700, "{sub}");
        }
        let file = dir.path().join("fleet/app/configs/db/main.cached");
        assert_eq!(mode(&file), 0o600);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        cache.store("db/main", 2, b"password = 2").unwrap();
        assert_eq!(mode(&file), 0o600, "a replaced file is private again");
    }

    #[tokio::test]
    async fn the_writer_stores_the_newest_value_of_each_config_before_it_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().to_path_buf());
        let writer = CacheWriter::start(cache.clone()).unwrap();
        for v in 1..=50 {
            writer.store("server", v, format!("port = {v}").as_bytes());
        }
        writer.store("db", 3, b"x");
        writer.finish().await;
        let got = cache.load();
        let names: Vec<_> = got.iter().map(|c| (c.name.as_str(), c.version)).collect();
        assert_eq!(names, [("db", 3), ("server", 50)]);
        assert_eq!(got[1].value, b"port = 50");
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
