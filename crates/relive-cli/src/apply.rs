//! `relive apply SRC_DIR`: installs a directory of configs into the
//! workspace's `config/` as one change set.
//!
//! Three steps, and the first writes nothing: every file of SRC_DIR is
//! checked (a config file relive loads, a regular file or a symlink that
//! stays inside SRC_DIR, within the size limit, parsing within the limits;
//! a SOPS file for its shape, left encrypted), and so is every place it
//! goes (inside `config/`, over a regular file or nothing). Any problem
//! stops the command before a byte is written, with every problem listed
//! (at most [`MAX_PROBLEMS`]), each naming its file. Then the files are
//! written under the workspace's hold, each atomically, so that an engine
//! in any process applies them as one change set. Last, if an engine
//! records this workspace's history, the command waits for its verdict.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use relive::{ConfigPath, Format, HistoryEntry, LoadedConfig, Workspace};

use crate::app;
use crate::cli::ApplyArgs;
use crate::exit::{Exit, Failure, Result};
use crate::output;

/// The most files SRC_DIR may hold: a directory of configs, not a tree to
/// copy.
const MAX_FILES: usize = 10_000;
/// The deepest directory under SRC_DIR that is walked.
const MAX_DEPTH: usize = 32;
/// The most problems listed before the rest are counted.
const MAX_PROBLEMS: usize = 20;

/// A file of SRC_DIR, checked.
struct Incoming {
    /// Relative to SRC_DIR and to `config/`.
    rel: PathBuf,
    bytes: Vec<u8>,
    /// The config it belongs to; `None` for a JSON Schema.
    config: Option<String>,
}

/// What a file's name says, by relive's rule for `config/`.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// `name[.env].ext`, a document of config `name`.
    Config { name: String, format: Format },
    /// `name.schema.json`.
    Schema,
}

/// What a relative path under `config/` is to relive: a config document, a
/// schema, or nothing it loads (`None`). The library's rule
/// ([`relive::config_path`]), so that what apply installs is what the
/// engine loads.
fn kind(rel: &Path) -> Option<Kind> {
    match relive::config_path(rel)? {
        ConfigPath::Document { name, format, .. } => Some(Kind::Config { name, format }),
        ConfigPath::Schema { .. } => Some(Kind::Schema),
        _ => None,
    }
}

/// Problems found before anything is written.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, path: &Path, message: impl std::fmt::Display) {
        self.0.push(format!("{}: {message}", path.display()));
    }

    /// A problem at a line and column of `path`, as compilers print them.
    fn add_at(&mut self, path: &Path, (at, message): Located) {
        match at {
            Some((line, column)) => self.0.push(format!("{}:{line}:{column}: {message}", path.display())),
            None => self.add(path, message),
        }
    }

    fn into_failure(self) -> Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let count = self.0.len();
        for problem in self.0.iter().take(MAX_PROBLEMS) {
            output::error(&output::escape_controls(problem));
        }
        if count > MAX_PROBLEMS {
            output::error(&format!("and {} more", count - MAX_PROBLEMS));
        }
        Err(Failure::invalid(format!("{count} problem(s) found; nothing was written")))
    }
}

/// Walks SRC_DIR: every file, checked and read. Hidden entries are skipped
/// (relive skips them in `config/`); everything else must be a config file
/// relive loads.
fn collect(src: &Path, settings: &relive::HotReloadConfig, problems: &mut Problems) -> Result<Vec<Incoming>> {
    let real_src = fs::canonicalize(src).map_err(|e| Failure::runtime(format!("{}: {e}", src.display())))?;
    if !real_src.is_dir() {
        return Err(Failure::runtime(format!("{}: not a directory", src.display())));
    }
    let mut files = Vec::new();
    let mut skipped = 0usize;
    // Depth first, by name, so that problems come in a stable order.
    let mut stack = vec![(PathBuf::new(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let here = real_src.join(&dir);
        let mut entries: Vec<_> = match fs::read_dir(&here) {
            Ok(entries) => entries.filter_map(|e| e.ok()).collect(),
            Err(e) => {
                problems.add(&src.join(&dir), e);
                continue;
            }
        };
        entries.sort_by_key(|e| e.file_name());
        for entry in entries.into_iter().rev() {
            let rel = dir.join(entry.file_name());
            let shown = src.join(&rel);
            if entry.file_name().to_string_lossy().starts_with('.') {
                skipped += 1;
                continue;
            }
            let Ok(meta) = fs::symlink_metadata(entry.path()) else {
                problems.add(&shown, "vanished while it was read");
                continue;
            };
            let kind_of = meta.file_type();
            if kind_of.is_dir() {
                if depth + 1 > MAX_DEPTH {
                    problems.add(&shown, format!("deeper than {MAX_DEPTH} directories"));
                } else {
                    stack.push((rel, depth + 1));
                }
                continue;
            }
            if files.len() + problems.0.len() >= MAX_FILES {
                return Err(Failure::invalid(format!(
                    "{}: more than {MAX_FILES} files; nothing was written",
                    src.display()
                )));
            }
            let path = if kind_of.is_symlink() {
                // A symlink is read as what it points at, which must be a
                // regular file inside SRC_DIR: a link out of it could hand
                // relive (and whoever reads config/ later) any file this
                // user can read.
                match fs::canonicalize(entry.path()) {
                    Ok(target) if !target.starts_with(&real_src) => {
                        problems.add(&shown, "a symlink that points outside the source directory");
                        continue;
                    }
                    Ok(target) => target,
                    Err(_) => {
                        problems.add(&shown, "a symlink that points nowhere");
                        continue;
                    }
                }
            } else {
                entry.path()
            };
            let is_file = fs::metadata(&path).is_ok_and(|m| m.is_file());
            if !is_file {
                problems.add(&shown, "not a regular file (a FIFO, socket, device or directory link); refused");
                continue;
            }
            let Some(kind) = kind(&rel) else {
                problems.add(
                    &shown,
                    "not a config file relive loads (name[.env].toml, .yaml, .yml or .json, or name.schema.json)",
                );
                continue;
            };
            match read_checked(&path, &rel, kind, settings) {
                Ok(file) => files.push(file),
                Err(located) => problems.add_at(&shown, located),
            }
        }
    }
    if skipped > 0 {
        output::note(&format!(
            "skipped {skipped} hidden entr{} of {}",
            if skipped == 1 { "y" } else { "ies" },
            src.display()
        ));
    }
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(files)
}

/// Reads a regular file without a blocking open (it was checked, but a
/// FIFO can take its place in between) and no further than the size limit,
/// then parses it as the engine would.
fn read_checked(path: &Path, rel: &Path, kind: Kind, settings: &relive::HotReloadConfig) -> Result<Incoming, Located> {
    let limit = settings.limits.max_file_size;
    let bytes = read_regular(path, limit).map_err(|message| (None, message))?;
    let origin = Path::new("config").join(rel);
    let config = match kind {
        Kind::Schema => {
            let doc = relive::Document::new(&origin, Format::Json, bytes.clone());
            LoadedConfig::from_documents_with("schema", vec![doc], settings).map_err(|e| located(&e))?;
            None
        }
        Kind::Config { name, format } => {
            if relive::sops::sniff(&bytes) {
                check_sops(format, &bytes, settings).map_err(|message| (None, message))?;
            } else {
                let doc = relive::Document::new(&origin, format, bytes.clone());
                LoadedConfig::from_documents_with(&name, vec![doc], settings).map_err(|e| located(&e))?;
            }
            Some(name)
        }
    };
    Ok(Incoming { rel: rel.to_path_buf(), bytes, config })
}

/// A SOPS file is installed as it is, encrypted: with a key here, its
/// values and MAC are checked; without, its shape.
fn check_sops(format: Format, bytes: &[u8], settings: &relive::HotReloadConfig) -> Result<(), String> {
    let mut ids = relive::sops::Identities::from_env().unwrap_or_default();
    for path in &settings.age_key_files {
        ids.add_key_file(path).map_err(|e| format!("cannot use age key file: {e}"))?;
    }
    match relive::sops::check(format, bytes, &ids) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == relive::sops::SopsErrorKind::NotSops => Ok(()),
        Err(e) => Err(match e.key() {
            Some(key) => format!("{} (at `{key}`)", e.message()),
            None => e.message().to_string(),
        }),
    }
}

/// Where in a file a problem is (line and column, when known), and what
/// it is.
type Located = (Option<(usize, usize)>, String);

/// An error in one file, without its path (the caller shows SRC_DIR's).
fn located(error: &relive::ConfigError) -> Located {
    let at = error.line().zip(error.column());
    let message = match error.key() {
        Some(key) => format!("{} (at `{key}`)", error.message()),
        None => error.message().to_string(),
    };
    (at, message)
}

/// The bytes of the regular file at `path`, at most `limit` of them.
fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let file = os::open_for_read(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file; refused".to_string());
    }
    if meta.len() > limit {
        return Err(format!("{} bytes, over the limit of {limit} (max_file_size)", meta.len()));
    }
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if bytes.len() as u64 > limit {
        return Err(format!("over the limit of {limit} bytes (max_file_size)"));
    }
    Ok(bytes)
}

/// What happens to one file of `config/`.
enum Change {
    Create,
    Modify,
    Delete,
}

/// One write or removal, checked.
struct Step {
    /// Where, symlinks resolved (a link inside `config/`, as Kubernetes
    /// makes, is followed and its target replaced).
    path: PathBuf,
    /// As shown: `config/<rel>`.
    shown: PathBuf,
    change: Change,
    bytes: Vec<u8>,
    /// The mode and owner to give the file: those of the file it replaces,
    /// or 0600 and ours.
    mode: u32,
    owner: Option<(u32, u32)>,
    config: Option<String>,
}

/// Where `rel` goes in `config/`, or why it cannot go there. The rule of
/// rollback's write-back: the existing part of the path resolves inside
/// `config/`, and an existing file is a regular file.
fn target(config: &Path, real_config: &Path, rel: &Path) -> Result<(PathBuf, Option<fs::Metadata>), String> {
    let lexical = config.join(rel);
    let mut existing = lexical.as_path();
    let mut rest = Vec::new();
    while fs::symlink_metadata(existing).is_err() {
        rest.push(existing.file_name().ok_or("no name")?.to_os_string());
        existing = existing.parent().ok_or("no parent")?;
        if existing == config {
            break;
        }
    }
    let real = fs::canonicalize(existing).map_err(|_| "a symlink that points nowhere is in the way".to_string())?;
    if !real.starts_with(real_config) {
        return Err("it resolves outside config/".to_string());
    }
    if !rest.is_empty() {
        if !fs::metadata(&real).is_ok_and(|m| m.is_dir()) {
            return Err("a part of its path is not a directory".to_string());
        }
        return Ok((rest.iter().rev().fold(real, |p, n| p.join(n)), None));
    }
    let meta = fs::metadata(&real).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("what is there is not a regular file; refused".to_string());
    }
    Ok((real, Some(meta)))
}

/// The steps that install `files`, and with `delete` remove the config
/// files that SRC_DIR does not have. Files whose bytes are already there
/// are left out.
fn plan(ws: &Workspace, files: Vec<Incoming>, delete: bool, limit: u64, problems: &mut Problems) -> Result<Vec<Step>> {
    let config = ws.config_dir();
    if !config.exists() {
        fs::create_dir_all(&config).map_err(|e| Failure::runtime(format!("{}: {e}", config.display())))?;
    }
    let real_config = fs::canonicalize(&config).map_err(|e| Failure::runtime(format!("{}: {e}", config.display())))?;
    let mut steps = Vec::new();
    let incoming: BTreeSet<PathBuf> = files.iter().map(|f| f.rel.clone()).collect();
    for file in files {
        let shown = Path::new("config").join(&file.rel);
        let (path, meta) = match target(&config, &real_config, &file.rel) {
            Ok(found) => found,
            Err(message) => {
                problems.add(&shown, message);
                continue;
            }
        };
        let (change, mode, owner) = match &meta {
            Some(meta) => {
                // Bigger than the limit, or unreadable: not the same bytes.
                if read_regular(&path, limit).is_ok_and(|current| current == file.bytes) {
                    continue;
                }
                // Keeping another user's file theirs needs root; refused
                // now rather than found half-way through the writes.
                match os::keep(meta) {
                    Ok((mode, owner)) => (Change::Modify, mode, owner),
                    Err(message) => {
                        problems.add(&shown, message);
                        continue;
                    }
                }
            }
            None => (Change::Create, 0o600, None),
        };
        steps.push(Step { path, shown, change, bytes: file.bytes, mode, owner, config: file.config });
    }
    if delete {
        for rel in config_files(&config) {
            if incoming.contains(&rel) {
                continue;
            }
            let config_name = match kind(&rel) {
                Some(Kind::Config { name, .. }) => Some(name),
                _ => None,
            };
            let shown = Path::new("config").join(&rel);
            steps.push(Step {
                path: config.join(&rel),
                shown,
                change: Change::Delete,
                bytes: Vec::new(),
                mode: 0,
                owner: None,
                config: config_name,
            });
        }
    }
    Ok(steps)
}

/// The config files (documents and schemas) under `config/`, relative,
/// not following directory links.
fn config_files(config: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![(PathBuf::new(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = fs::read_dir(config.join(&dir)) else { continue };
        for entry in entries.flatten() {
            let rel = dir.join(entry.file_name());
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            match entry.file_type() {
                Ok(t) if t.is_dir() && depth < MAX_DEPTH => stack.push((rel, depth + 1)),
                Ok(t) if (t.is_file() || t.is_symlink()) && kind(&rel).is_some() => out.push(rel),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// Writes `step.bytes` beside `step.path`, ready to be renamed over it: a
/// temp file in the same directory (created exclusively, private from the
/// start), the mode and owner given, fsynced. Returns its path. Every file
/// is staged before the hold, so that the hold covers renames only, and an
/// error here leaves `config/` as it was.
fn stage(step: &Step) -> std::io::Result<PathBuf> {
    let dir = step.path.parent().expect("a file under config/");
    if !dir.exists() {
        os::create_private_dir(dir)?;
    }
    let name = step.path.file_name().expect("a file name").to_string_lossy();
    // Hidden: the engine ignores it.
    let tmp = dir.join(format!(".{name}.{}.relive-apply.tmp", std::process::id()));
    let result = (|| {
        let mut file = os::create_private(&tmp)?;
        file.write_all(&step.bytes)?;
        os::give(&file, step.mode, step.owner)?;
        file.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| tmp)
}

/// Installs the staged files and makes the removals, under the hold: each
/// a rename or an unlink, so a reader sees each file old or new. Then the
/// directories are fsynced. On an error, the temp files not yet renamed
/// are removed, and the error says what was already installed.
fn install(ws: &Workspace, steps: &[Step], staged: Vec<Option<PathBuf>>) -> Result<()> {
    // While the hold stands, an engine (here or in another process) reads
    // nothing: every file below is one change set to it.
    let hold = ws.hold();
    let mut done = Vec::new();
    let mut failed = None;
    if let Err(e) = &hold {
        failed = Some(Failure::runtime(e));
    }
    for (step, tmp) in steps.iter().zip(&staged) {
        if failed.is_some() {
            break;
        }
        let result = match tmp {
            Some(tmp) => fs::rename(tmp, &step.path),
            None => fs::remove_file(&step.path),
        };
        match result {
            Ok(()) => done.push(step.shown.display().to_string()),
            Err(e) => {
                let before = if done.is_empty() { "nothing".to_string() } else { done.join(", ") };
                failed =
                    Some(Failure::runtime(format!("{}: {e}; installed before it: {before}", step.shown.display())));
            }
        }
    }
    if let Ok(hold) = hold {
        hold.release()?;
    }
    for tmp in staged.iter().flatten() {
        // Gone once renamed; what is left was not installed.
        let _ = fs::remove_file(tmp);
    }
    if let Some(failure) = failed {
        return Err(failure);
    }
    let dirs: BTreeSet<&Path> = steps.iter().filter_map(|s| s.path.parent()).collect();
    for dir in dirs {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Failure::runtime(format!("{}: {e}", dir.display())))?;
    }
    Ok(())
}

/// `relive apply SRC_DIR [--dry-run] [--delete]`.
pub async fn run(args: ApplyArgs) -> Result<Exit> {
    let ws = app::workspace(args.ws.workspace.as_deref(), None)?;
    let settings = ws.settings()?;
    let mut problems = Problems::default();
    let files = collect(&args.src, &settings, &mut problems)?;
    let steps = plan(&ws, files, args.delete, settings.limits.max_file_size, &mut problems)?;
    problems.into_failure()?;
    if steps.is_empty() {
        output::note(&format!("config/ already has every file of {}; nothing written", args.src.display()));
        return Ok(Exit::Ok);
    }
    let verb = |step: &Step| match step.change {
        Change::Create => "create",
        Change::Modify => "modify",
        Change::Delete => "delete",
    };
    if args.dry_run {
        let mut out = anstream::stdout().lock();
        for step in &steps {
            let _ = writeln!(out, "{} {}", verb(step), output::escape_controls(&step.shown.display().to_string()));
        }
        return Ok(Exit::Ok);
    }
    let configs: BTreeSet<String> = steps.iter().filter_map(|s| s.config.clone()).collect();
    let mut staged = Vec::new();
    for step in &steps {
        let tmp = match step.change {
            Change::Delete => Ok(None),
            _ => stage(step).map(Some),
        };
        match tmp {
            Ok(tmp) => staged.push(tmp),
            Err(e) => {
                for tmp in staged.iter().flatten() {
                    let _ = fs::remove_file(tmp);
                }
                return Err(Failure::runtime(format!("{}: {e}; nothing was written", step.shown.display())));
            }
        }
    }
    let since = SystemTime::now();
    install(&ws, &steps, staged)?;
    let mut out = anstream::stdout().lock();
    for step in &steps {
        let _ = writeln!(out, "{} {}", verb(step), output::escape_controls(&step.shown.display().to_string()));
    }
    drop(out);
    verdict(&ws, &configs, since, Duration::from_millis(args.timeout_ms)).await
}

/// Waits (at most `timeout`) for the engine that records this workspace's
/// history to record the change made to `configs` after `since`, and turns
/// its verdict into an exit code: 0 if it applied it, 1 (naming the config
/// and the error) if it rejected it. Without such an engine there is no
/// verdict to wait for: the next one started applies the files.
///
/// Under a hold the engine applies nothing, so the first versions of these
/// configs stamped after `since` (taken before the hold) are the change
/// set that the release made. A config whose value the change leaves as
/// it is gets no version (the history records values, not files): once
/// the set's first version is there, the others of the set, appended
/// right after it, are given a moment, then the verdict is what is there.
pub(crate) async fn verdict(
    ws: &Workspace,
    configs: &BTreeSet<String>,
    since: SystemTime,
    timeout: Duration,
) -> Result<Exit> {
    if configs.is_empty() {
        return Ok(Exit::Ok);
    }
    if !ws.is_recording() {
        output::note("no running watcher records this workspace's history; the next one started applies the change");
        return Ok(Exit::Ok);
    }
    let deadline = Instant::now() + timeout;
    let mut first_seen: Option<Instant> = None;
    loop {
        let mut new: Vec<(String, HistoryEntry)> = Vec::new();
        for name in configs {
            let history = ws.open_history(name)?;
            if let Some(entry) = history.entries().iter().find(|e| e.time >= since) {
                new.push((name.clone(), entry.clone()));
            }
        }
        // The first set applied after the release: the smallest id.
        let set = new.iter().filter_map(|(_, e)| e.change_set).min();
        new.retain(|(_, e)| e.change_set == set);
        let grace_over = first_seen.is_some_and(|t| t.elapsed() > SET_GRACE);
        if !new.is_empty() && (new.len() == configs.len() || grace_over) {
            let id = set.map(|id| id.to_string()).unwrap_or_default();
            let rejected: Vec<_> = new.iter().filter(|(_, e)| !e.is_applied()).collect();
            if rejected.is_empty() {
                let names: Vec<&str> = new.iter().map(|(n, _)| n.as_str()).collect();
                output::note(&format!("applied as change set {id}: {}", names.join(", ")));
                return Ok(Exit::Ok);
            }
            for (name, entry) in &rejected {
                if let Some(error) = &entry.error {
                    output::error(&output::config_error(Some(name), error));
                }
            }
            let names: Vec<String> = rejected.iter().map(|(n, _)| format!("`{n}`")).collect();
            return Err(Failure::invalid(format!(
                "the running watcher rejected change set {id} (config {}); the last good values stay live, \
                 and the files stay written: fix them or roll back",
                names.join(", ")
            )));
        }
        if !new.is_empty() && first_seen.is_none() {
            first_seen = Some(Instant::now());
        }
        if Instant::now() >= deadline {
            output::note("no new version was recorded: the values did not change, or the watcher is behind");
            return Ok(Exit::Ok);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long the other versions of a change set are waited for once its
/// first is in the history: they are appended one after the other by the
/// same writer.
const SET_GRACE: Duration = Duration::from_millis(500);

/// What differs by system: how a file is opened without blocking on a
/// FIFO, and what of a replaced file (mode, owner) is kept.
mod os {
    use std::fs::{self, File, Metadata};
    use std::io;
    use std::path::Path;

    /// Opens `path` for reading. On Unix with `O_NONBLOCK`, so that a FIFO
    /// put in place of a file after it was listed cannot hang the command;
    /// the caller then refuses anything that is not a regular file.
    #[cfg(unix)]
    pub(super) fn open_for_read(path: &Path) -> io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new().read(true).custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32).open(path)
    }

    /// Opens `path` for reading. Windows has no FIFOs in the file tree
    /// (named pipes live under `\\.\pipe\`), so a plain open cannot block.
    #[cfg(not(unix))]
    pub(super) fn open_for_read(path: &Path) -> io::Result<File> {
        File::open(path)
    }

    /// The mode and owner to keep of the file `meta` describes, or why they
    /// cannot be kept (another user's file, and not root).
    #[cfg(unix)]
    pub(super) fn keep(meta: &Metadata) -> Result<(u32, Option<(u32, u32)>), String> {
        use std::os::unix::fs::MetadataExt;
        let euid = rustix::process::geteuid();
        if !euid.is_root() && meta.uid() != euid.as_raw() {
            return Err(format!("owned by uid {}; cannot keep its owner", meta.uid()));
        }
        Ok((meta.mode() & 0o777, Some((meta.uid(), meta.gid()))))
    }

    /// Windows: a file renamed over another takes its directory's
    /// inherited ACL; there is no mode or owner to carry over.
    #[cfg(not(unix))]
    pub(super) fn keep(_meta: &Metadata) -> Result<(u32, Option<(u32, u32)>), String> {
        Ok((0, None))
    }

    /// Creates `dir` and its parents, private (0700) on Unix whatever the
    /// umask.
    pub(super) fn create_private_dir(dir: &Path) -> io::Result<()> {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)
    }

    /// Creates `path` exclusively, private (0600) on Unix from the start.
    pub(super) fn create_private(path: &Path) -> io::Result<File> {
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(path)
    }

    /// Gives `file` the owner, then the mode, kept from the file it
    /// replaces. After the owner: a chown clears set-id bits, and the umask
    /// must not narrow the mode kept.
    #[cfg(unix)]
    pub(super) fn give(file: &File, mode: u32, owner: Option<(u32, u32)>) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(file, Some(uid), Some(gid))?;
        }
        file.set_permissions(fs::Permissions::from_mode(mode))
    }

    /// Windows: nothing to give (see [`keep`]).
    #[cfg(not(unix))]
    pub(super) fn give(_file: &File, _mode: u32, _owner: Option<(u32, u32)>) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_relive_s_rule_for_config() {
        let config = |name: &str, format| Some(Kind::Config { name: name.into(), format });
        assert_eq!(kind(Path::new("app.toml")), config("app", Format::Toml));
        assert_eq!(kind(Path::new("db/main.production.yaml")), config("db/main", Format::Yaml));
        assert_eq!(kind(Path::new("app.schema.json")), Some(Kind::Schema));
        for refused in ["app.txt", "app.toml.bak", ".app.toml", ".git/app.toml", "a/.b/c.json", "app..toml", ".toml"] {
            assert_eq!(kind(Path::new(refused)), None, "{refused}");
        }
    }
}
