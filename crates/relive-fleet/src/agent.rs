//! Sidecar mode: an instance that writes the fleet's configs into a local
//! workspace, for programs that read files.
//!
//! The agent is an [`FleetSourceBuilder`] on a private workspace under
//! `DIR/data/fleet-agent/` (its engine parses every version, its cache lets
//! it boot while etcd is down). Each version that parses is written to
//! `DIR/config/<name>.<ext>` and only then acknowledged; a version that does
//! not parse is rejected and the file is left alone. Programs, and
//! `relive watch DIR`, read plain files.
//!
//! A config may hold a secret. A file the agent replaces keeps its mode and
//! owner (give it to the service's user, and the agent keeps it so); a new
//! file is 0600, owned by the agent's user; the directories it creates are
//! 0700, and `DIR/data/`, where its cache lives, is made 0700 if it was
//! wider.

use std::io::Write;
#[cfg(unix)]
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use relive::{Format, HistoryConfig, HotReloadConfig, Workspace};
use tokio::sync::broadcast;

use crate::Error;
#[cfg(unix)]
use crate::cache::DIR_MODE;
use crate::cache::{FILE_MODE, create_private_dir, create_temp};
use crate::source::{Boot, FleetSource, FleetSourceBuilder, Mirror, SourceEvent};

/// The extensions a config file can have; the agent removes a config's
/// files of other formats when its format changes.
const EXTENSIONS: [&str; 4] = ["toml", "yaml", "yml", "json"];

/// An agent writing the fleet's configs under `DIR/config/`;
/// [`start`](FleetAgentBuilder::start) runs it.
///
/// ```no_run
/// # async fn f() -> Result<(), relive_fleet::Error> {
/// let source = relive_fleet::FleetSourceBuilder::new("http://127.0.0.1:2379", "shop")?.instance("web-1")?;
/// let agent = relive_fleet::FleetAgentBuilder::new(source, "/srv/shop").start().await?;
/// // ... /srv/shop/config/server.toml follows etcd ...
/// agent.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct FleetAgentBuilder {
    source: FleetSourceBuilder,
    dir: PathBuf,
}

impl FleetAgentBuilder {
    /// An agent for `source`, writing into the workspace at `dir`.
    pub fn new(source: FleetSourceBuilder, dir: impl Into<PathBuf>) -> FleetAgentBuilder {
        FleetAgentBuilder { source, dir: dir.into() }
    }

    /// `DIR/data/fleet-agent`: the agent's private workspace (its engine's
    /// cache and state), kept out of `DIR/config/`.
    pub fn private_root(dir: &Path) -> PathBuf {
        dir.join("data").join("fleet-agent")
    }

    /// Starts the agent: reads every config (from etcd, or from its cache
    /// when etcd is down), writes each file, then follows etcd until
    /// [`FleetAgent::shutdown`].
    pub async fn start(self) -> Result<FleetAgent, Error> {
        let config_dir = self.dir.join("config");
        create_private_dir(&config_dir).map_err(|source| Error::Io { path: config_dir.clone(), source })?;
        let data = self.dir.join("data");
        narrow_dir(&data).map_err(|source| Error::Io { path: data.clone(), source })?;
        let private = FleetAgentBuilder::private_root(&self.dir);
        create_private_dir(&private).map_err(|source| Error::Io { path: private.clone(), source })?;
        // The private engine parses versions; its own history would only
        // repeat what etcd keeps.
        let ws = Workspace::new(&private).with_env("");
        let config =
            HotReloadConfig { history: HistoryConfig { enabled: false, ..Default::default() }, ..Default::default() };
        ws.start_hot_reload_with_config(config).await?;
        let (target, root) = (config_dir.clone(), self.dir.clone());
        let mirror = Mirror(Arc::new(move |docs: &[(String, Format, Vec<u8>)]| {
            // A change set's files are written under a hold on DIR: a relive
            // engine watching DIR (`relive watch`, a service's Workspace)
            // applies them as one change set, never one without the others.
            let _hold = (docs.len() > 1).then(|| hold(&root)).flatten();
            docs.iter().map(|(name, format, document)| write_config(&target, name, *format, document)).collect()
        }));
        let source = self.source.mirror(mirror).start(&ws).await?;
        Ok(FleetAgent { source, ws, config_dir })
    }
}

/// A running agent.
#[derive(Debug)]
pub struct FleetAgent {
    source: FleetSource,
    ws: Workspace,
    config_dir: PathBuf,
}

impl FleetAgent {
    /// Where the configs came from at start.
    pub fn boot(&self) -> Boot {
        self.source.boot()
    }

    /// Every [`SourceEvent`] from now on: a version is `Applied` once its
    /// file is written.
    pub fn subscribe(&self) -> broadcast::Receiver<SourceEvent> {
        self.source.subscribe()
    }

    /// `DIR/config`, where the files are written.
    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }

    /// Stops the agent: revokes its lease (its status keys vanish at once)
    /// and stops its private engine. The files stay.
    pub async fn shutdown(self) -> Result<(), Error> {
        self.source.shutdown().await;
        if let Some(manager) = self.ws.manager() {
            manager.shutdown().await?;
        }
        Ok(())
    }
}

/// Creates `dir` 0700, or makes an existing one 0700 if others may enter
/// it (what is under it was readable), with a warning. A directory of
/// another user is left as it is, with a warning: the files in it are
/// private all the same.
fn narrow_dir(dir: &Path) -> std::io::Result<()> {
    create_private_dir(dir)?;
    // Modes are Unix's: on Windows the directory keeps the ACL it
    // inherited.
    #[cfg(unix)]
    narrow_mode(dir)?;
    Ok(())
}

/// Makes `dir` 0700 if others may enter it, with a warning.
#[cfg(unix)]
fn narrow_mode(dir: &Path) -> std::io::Result<()> {
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE)) {
            Ok(()) => tracing::warn!(dir = %dir.display(), mode = format_args!("{mode:o}"),
                "this directory was open to other users; made it private (0700)"),
            Err(e) => tracing::warn!(dir = %dir.display(), mode = format_args!("{mode:o}"), error = %e,
                "this directory is open to other users and cannot be made private"),
        }
    }
    Ok(())
}

/// Writes `document` to `config_dir/<name>.<ext>` atomically: a temp file
/// in the same directory, fsynced, renamed over the file, the directory
/// fsynced. The file keeps the mode and owner of the one it replaces; a new
/// one is 0600. Files of the config in another format are removed
/// afterwards. Unchanged bytes are not written again.
fn write_config(config_dir: &Path, name: &str, format: Format, document: &[u8]) -> Result<(), String> {
    let leaf = name.rsplit('/').next().unwrap_or(name);
    if leaf.contains('.') || name.split('/').any(|segment| segment.starts_with('.')) {
        return Err(format!(
            "config `{name}` cannot be a file under {}: relive reads `a.b.toml` as config `a` for environment `b`, \
             and skips names that start with `.`; rename the config",
            config_dir.display()
        ));
    }
    let path = config_dir.join(format!("{name}.{}", format.name()));
    let fail = |what: &str, e: std::io::Error| format!("cannot {what} {}: {e}", path.display());
    let dir = path.parent().expect("a config file has a directory");
    create_private_dir(dir).map_err(|e| fail("create the directory of", e))?;
    if !same_file_content(&path, document) {
        let file_name = path.file_name().expect("a config file has a name").to_string_lossy();
        // A dot file with a `.tmp` extension: no config, for relive.
        let tmp = dir.join(format!(".{file_name}.relive-agent.{}.tmp", std::process::id()));
        // What a program reading the file relies on: its mode and owner.
        // Only a regular file's: a FIFO or a device in the way (a symlink to
        // /dev/zero is 0666, root's) says nothing about who may read this.
        let keep = match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => mode_and_owner(&meta),
            _ => (FILE_MODE, None),
        };
        let written = (|| {
            let mut file = create_temp(&tmp, keep.0, keep.1)?;
            file.write_all(document)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(fail("write", e));
        }
    }
    for ext in EXTENSIONS.iter().filter(|&&ext| ext != format.name()) {
        let other = config_dir.join(format!("{name}.{ext}"));
        match std::fs::remove_file(&other) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove {} (the config's old format): {e}", other.display())),
        }
    }
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| fail("sync the directory of", e))
}

/// A hold on the workspace `dir` (its `data/hold`), waiting up to a
/// second for another holder (`relive apply`) to let go; without one the
/// files are written all the same, as a warning says.
fn hold(dir: &Path) -> Option<relive::Hold> {
    let ws = Workspace::new(dir);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match ws.hold() {
            Ok(hold) => return Some(hold),
            Err(relive::Error::Held { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "writing a change set's files without a hold");
                return None;
            }
        }
    }
}

/// A file's mode and owner, to keep them when it is replaced.
#[cfg(unix)]
fn mode_and_owner(meta: &std::fs::Metadata) -> (u32, Option<(u32, u32)>) {
    (meta.permissions().mode() & 0o7777, Some((meta.uid(), meta.gid())))
}

/// Windows has no modes or owners to keep: the new file inherits the
/// directory's ACL.
#[cfg(not(unix))]
fn mode_and_owner(_meta: &std::fs::Metadata) -> (u32, Option<(u32, u32)>) {
    (FILE_MODE, None)
}

/// Whether `path` is a regular file holding exactly `document`. Anything
/// else there (a FIFO, which would block a read, or a symlink to
/// `/dev/zero`, which would never end) is simply replaced: it is looked at
/// through `symlink_metadata` and never opened.
fn same_file_content(path: &Path, document: &[u8]) -> bool {
    use std::io::Read;
    let regular = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.len() == document.len() as u64);
    if !regular {
        return false;
    }
    let mut current = Vec::with_capacity(document.len());
    std::fs::File::open(path)
        .and_then(|file| file.take(document.len() as u64 + 1).read_to_end(&mut current))
        .is_ok_and(|_| current == document)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_files_and_a_new_format_removes_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), "server", Format::Toml, b"port = 1\n").unwrap();
        write_config(dir.path(), "db/main", Format::Json, b"{}").unwrap();
        assert_eq!(std::fs::read(dir.path().join("server.toml")).unwrap(), b"port = 1\n");
        assert_eq!(std::fs::read(dir.path().join("db/main.json")).unwrap(), b"{}");
        let before = std::fs::metadata(dir.path().join("server.toml")).unwrap().modified().unwrap();
        write_config(dir.path(), "server", Format::Toml, b"port = 1\n").unwrap();
        let after = std::fs::metadata(dir.path().join("server.toml")).unwrap().modified().unwrap();
        assert_eq!(before, after, "the same bytes are not written again");
        std::fs::write(dir.path().join("server.yml"), "port: 0\n").unwrap();
        write_config(dir.path(), "server", Format::Yaml, b"port: 2\n").unwrap();
        assert!(!dir.path().join("server.toml").exists());
        assert!(!dir.path().join("server.yml").exists(), "one file per config");
        assert_eq!(std::fs::read(dir.path().join("server.yaml")).unwrap(), b"port: 2\n");
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    // Modes are Unix's.
    #[cfg(unix)]
    #[test]
    fn a_new_file_is_private_and_a_replaced_one_keeps_its_mode() {
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), "db/main", Format::Toml, b"password = 1\n").unwrap();
        assert_eq!(mode(&dir.path().join("db/main.toml")), 0o600);
        assert_eq!(mode(&dir.path().join("db")), 0o700);
        std::fs::set_permissions(dir.path().join("db/main.toml"), std::fs::Permissions::from_mode(0o640)).unwrap();
        write_config(dir.path(), "db/main", Format::Toml, b"password = 2\n").unwrap();
        assert_eq!(mode(&dir.path().join("db/main.toml")), 0o640);
    }

    // FIFOs and /dev/zero are Unix's.
    #[cfg(unix)]
    #[test]
    fn a_fifo_or_an_endless_file_in_the_way_is_replaced_not_read() {
        // On main the agent read what was there to compare it: a FIFO
        // blocked it for good, a symlink to /dev/zero filled its memory.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("server.toml");
        mkfifo(&fifo);
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("db.toml")).unwrap();
        let path = dir.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let server = write_config(&path, "server", Format::Toml, b"port = 1\n");
            let db = write_config(&path, "db", Format::Toml, b"port = 2\n");
            let _ = tx.send((server, db));
        });
        let (server, db) = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("write_config blocked");
        server.unwrap();
        db.unwrap();
        assert_eq!(std::fs::read(&fifo).unwrap(), b"port = 1\n");
        assert!(std::fs::symlink_metadata(dir.path().join("db.toml")).unwrap().is_file());
        assert_eq!(std::fs::read(dir.path().join("db.toml")).unwrap(), b"port = 2\n");
        let mode = |name: &str| std::fs::metadata(dir.path().join(name)).unwrap().permissions().mode() & 0o7777;
        assert_eq!((mode("server.toml"), mode("db.toml")), (0o600, 0o600), "not the FIFO's or /dev/zero's mode");
    }

    #[cfg(unix)]
    fn mkfifo(path: &Path) {
        let status = std::process::Command::new("mkfifo").arg(path).status().unwrap();
        assert!(status.success());
    }

    #[test]
    fn names_that_are_not_config_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = write_config(dir.path(), "app.v2", Format::Toml, b"").unwrap_err();
        assert!(e.contains("environment"), "{e}");
        assert!(write_config(dir.path(), ".hidden/x", Format::Toml, b"").is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
