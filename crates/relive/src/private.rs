//! Files relive creates are private: directories 0700, files 0600.
//!
//! The mode is given at creation (`DirBuilderExt::mode`,
//! `OpenOptionsExt::mode`), never left to the umask: a umask of 0 or 002 is
//! common for services, and a history copy of a 0600 config that holds a
//! password must not be readable by every local user. (A umask only takes
//! bits away, so a mode of 0700 or 0600 at creation is at most that.)
//!
//! Files written back into `config/` (a rollback) are not private: they
//! keep the mode and owner of the file they replace ([`replace_file`]).
//!
//! Modes and owners are Unix's. On Windows relive sets no ACLs: what it
//! creates inherits the ACL of `data/`'s parent (a user's profile is
//! private to that user by default), and the helpers below leave modes
//! alone.

#[cfg(unix)]
use std::fs::Permissions;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// The mode of every directory relive creates under `data/`.
pub(crate) const DIR_MODE: u32 = 0o700;
/// The mode of every file relive creates under `data/`.
pub(crate) const FILE_MODE: u32 = 0o600;

/// The permission bits of a file (none on Windows).
pub(crate) fn mode_of(meta: &fs::Metadata) -> u32 {
    #[cfg(unix)]
    return meta.permissions().mode() & 0o7777;
    #[cfg(not(unix))]
    {
        let _ = meta;
        0
    }
}

/// `options` creating a file with `mode` (Unix; nothing elsewhere).
pub(crate) fn with_mode(options: &mut OpenOptions, mode: u32) -> &mut OpenOptions {
    #[cfg(unix)]
    options.mode(mode);
    #[cfg(not(unix))]
    let _ = mode;
    options
}

/// Sets a file's or directory's permission bits exactly (Unix; nothing
/// elsewhere).
pub(crate) fn set_mode(path_or_file: impl SetMode, mode: u32) -> io::Result<()> {
    path_or_file.set_mode(mode)
}

/// What [`set_mode`] takes: a path or an open file.
pub(crate) trait SetMode {
    /// Sets the permission bits.
    fn set_mode(self, mode: u32) -> io::Result<()>;
}

impl SetMode for &Path {
    fn set_mode(self, mode: u32) -> io::Result<()> {
        #[cfg(unix)]
        return fs::set_permissions(self, Permissions::from_mode(mode));
        #[cfg(not(unix))]
        {
            let _ = mode;
            Ok(())
        }
    }
}

impl SetMode for &File {
    fn set_mode(self, mode: u32) -> io::Result<()> {
        #[cfg(unix)]
        return self.set_permissions(Permissions::from_mode(mode));
        #[cfg(not(unix))]
        {
            let _ = mode;
            Ok(())
        }
    }
}

/// Creates `dir`, and its missing parents, with mode 0700. Directories that
/// exist are left as they are (see [`narrow_dir`]).
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(DIR_MODE);
    builder.create(dir)
}

/// Creates `dir` like [`create_private_dir`], and narrows it to 0700 if it
/// exists and others may enter or read it (a `data/` made by hand, or by an
/// older relive), with a warning: what is under it was readable. A
/// directory relive may not change (another user's) is left as it is, with
/// a warning: what relive writes in it is private all the same.
pub(crate) fn narrow_dir(dir: &Path) -> io::Result<()> {
    create_private_dir(dir)?;
    let mode = mode_of(&fs::metadata(dir)?);
    if mode & 0o077 != 0 {
        match set_mode(dir, DIR_MODE) {
            Ok(()) => tracing::warn!(
                dir = %dir.display(),
                mode = format_args!("{mode:o}"),
                "this directory was open to other users; made it private (0700)"
            ),
            Err(e) => tracing::warn!(
                dir = %dir.display(),
                mode = format_args!("{mode:o}"),
                error = %e,
                "this directory is open to other users and cannot be made private"
            ),
        }
    }
    Ok(())
}

/// Writes `bytes` to a new file at `path` with mode 0600 (or replaces the
/// content of an existing one, narrowing it to 0600). Not atomic; see
/// [`replace_file`] for that. The engine's backups (`data/backups/`).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = with_mode(OpenOptions::new().write(true).create(true).truncate(true), FILE_MODE).open(path)?;
    if mode_of(&file.metadata()?) & 0o077 != 0 {
        set_mode(&file, FILE_MODE)?;
    }
    file.write_all(bytes)
}

/// Opens `path` to append, creating it with mode 0600.
pub(crate) fn append_private(path: &Path) -> io::Result<File> {
    with_mode(OpenOptions::new().create(true).append(true), FILE_MODE).open(path)
}

/// How [`replace_file`] sets up the new file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keep {
    /// Its permission bits, set exactly (whatever the umask).
    pub mode: u32,
    /// Its owner and group, when they must be those of the file replaced.
    pub owner: Option<(u32, u32)>,
}

impl Keep {
    /// A private file of the current user.
    pub(crate) const PRIVATE: Keep = Keep { mode: FILE_MODE, owner: None };
}

/// Replaces `path` with `bytes` so that a crash leaves the old file or the
/// new one: a temp file in the same directory (created exclusively, so a
/// link planted under its name is never followed), fsynced, renamed over
/// `path`, then the directory fsynced.
pub(crate) fn replace_file(path: &Path, bytes: &[u8], keep: Keep) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let (tmp, mut file) = create_temp(dir, &name, keep.mode & 0o777)?;
    let written = (|| {
        #[cfg(unix)]
        if let Some((uid, gid)) = keep.owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        }
        // After the owner: chown clears set-id bits.
        set_mode(&file, keep.mode)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    drop(file);
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

/// Numbers temp files, so that threads of one process never collide.
static SEQ: AtomicU64 = AtomicU64::new(0);
/// How many names [`create_temp`] tries: one is taken only by a temp file
/// a crash left (a process of the same pid, long ago) or by a planted one.
const TEMP_TRIES: usize = 16;

/// Creates a new temp file for `name` in `dir`. Its name starts with a dot
/// and ends in `.tmp`: never a config, and removed as an orphan by the
/// history writer if a crash leaves it.
fn create_temp(dir: &Path, name: &str, mode: u32) -> io::Result<(std::path::PathBuf, File)> {
    let mut last = None;
    for _ in 0..TEMP_TRIES {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.relive.{}.{n}.tmp", std::process::id()));
        match with_mode(OpenOptions::new().write(true).create_new(true), mode).open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("tried at least once"))
}

/// Makes a directory's entries (a rename, a new file) survive a power loss.
/// On Windows a directory cannot be opened as a file to sync it; NTFS
/// journals its entries.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    return File::open(dir)?.sync_all();
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn files_and_dirs_are_private_and_a_wide_dir_is_narrowed() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a/b/c");
        create_private_dir(&deep).unwrap();
        for dir in [tmp.path().join("a"), tmp.path().join("a/b"), deep.clone()] {
            assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        }
        let wide = tmp.path().join("wide");
        fs::create_dir(&wide).unwrap();
        fs::set_permissions(&wide, Permissions::from_mode(0o755)).unwrap();
        narrow_dir(&wide).unwrap();
        assert_eq!(mode(&wide), 0o700);

        let file = deep.join("f");
        write_private(&file, b"x").unwrap();
        assert_eq!(mode(&file), 0o600);
        fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        write_private(&file, b"y").unwrap();
        assert_eq!((mode(&file), fs::read(&file).unwrap()), (0o600, b"y".to_vec()));
        replace_file(&file, b"z", Keep { mode: 0o640, owner: None }).unwrap();
        assert_eq!((mode(&file), fs::read(&file).unwrap()), (0o640, b"z".to_vec()));
        let names: Vec<_> = fs::read_dir(&deep).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["f"], "no temp file is left");
    }

    #[test]
    fn a_link_planted_where_the_temp_file_goes_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        fs::write(&target, "untouched").unwrap();
        // Every name the next temp files can have (and more, for other
        // tests of this process that write meanwhile), planted.
        let from = SEQ.load(Ordering::Relaxed);
        for n in from..from + 4 * TEMP_TRIES as u64 {
            let name = tmp.path().join(format!(".f.relive.{}.{n}.tmp", std::process::id()));
            std::os::unix::fs::symlink(&target, name).unwrap();
        }
        let err = replace_file(&tmp.path().join("f"), b"bytes", Keep::PRIVATE).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(&target).unwrap(), "untouched");
        assert!(!tmp.path().join("f").exists());
    }
}
