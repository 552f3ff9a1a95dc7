//! Templates: a minijinja environment built from `templates/`, rebuilt and
//! swapped whole when a template changes.
//!
//! The model is `minijinja-autoreload`, with one difference: the rebuild
//! happens when the file changes (the core engine tells us), not on the next
//! render, so a syntax error is reported as soon as the file is saved, and
//! renders never pay for a rebuild.
//!
//! A rebuild reads every template and compiles all of them into a fresh
//! [`Environment`]. Only if all compile is it swapped in ([`ArcSwap`]), so
//! a template with a syntax error leaves the last good environment serving
//! and is recorded as [`Templates::last_error`], located at its file, line
//! and column. Rebuilding everything is simpler than tracking which
//! templates include or extend which, and cheap for the sizes of template
//! directories (it is a read and a parse per file).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use minijinja::Environment;
use tokio::sync::watch;

use crate::error::{Error, Result, TemplateError};

type Setup = dyn Fn(&mut Environment<'static>) + Send + Sync;

/// The templates of a workspace, live.
///
/// Clones share one environment. Each [`render`](Templates::render) loads
/// the current environment once, so a render never sees half of a rebuild.
#[derive(Clone)]
pub struct Templates {
    inner: Arc<Inner>,
}

struct Inner {
    /// `<workspace>/templates`.
    dir: PathBuf,
    env: ArcSwap<Environment<'static>>,
    setup: Box<Setup>,
    /// Numbers each rebuild's read, so that an older read never replaces a
    /// newer one when two rebuilds race.
    reads: AtomicU64,
    /// What was last committed: the read's number and the sources' hash.
    /// Held only to compare and swap, never while reading or compiling.
    committed: Mutex<Committed>,
    status: watch::Sender<TemplateStatus>,
}

#[derive(Default)]
struct Committed {
    read: u64,
    hash: Option<u64>,
}

/// Where the templates are: how many environments have been swapped in,
/// and the error that keeps the last one serving, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateStatus {
    /// Counts environments swapped in; the first one built is 1 (0 if the
    /// templates have never compiled).
    pub generation: u64,
    /// Why the newest templates were not swapped in. `None` once they compile.
    pub error: Option<TemplateError>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates").field("dir", &self.inner.dir).field("status", &*self.inner.status.borrow()).finish()
    }
}

impl Templates {
    /// Loads every file under `<workspace>/templates/` (a missing directory
    /// has no templates) and keeps them current: a change seen by the
    /// workspace's hot reload engine rebuilds the environment.
    ///
    /// A syntax error does not fail this call: the error is in
    /// [`last_error`](Templates::last_error) (and the environment is empty
    /// until the templates compile), so that a dev server can start and
    /// show it. Reading the directory can fail.
    pub fn new(ws: &relive::Workspace) -> Result<Templates> {
        Templates::with_setup(ws, |_| {})
    }

    /// Like [`new`](Templates::new), with `setup` run on every environment
    /// before the templates are added: add filters, functions and globals
    /// there. `setup` must not call back into these templates.
    pub fn with_setup<F>(ws: &relive::Workspace, setup: F) -> Result<Templates>
    where
        F: Fn(&mut Environment<'static>) + Send + Sync + 'static,
    {
        let templates = Templates::unwatched(ws.templates_dir(), setup);
        match templates.reload() {
            Ok(()) | Err(Error::Template(_)) => {}
            Err(e) => return Err(e),
        }
        // A handler rather than a task consuming `HotReloadManager::subscribe`:
        // the engine filters by glob, it works before hot reload is started,
        // a failing rebuild becomes a `HandlerFailed` event with the located
        // error (the issue asks for the error as an event), and the handler's
        // queue is bounded and never lags (a broadcast receiver can).
        let weak: Weak<Inner> = Arc::downgrade(&templates.inner);
        ws.register_reload_handler("templates/**/*", move |event| {
            let Some(inner) = weak.upgrade() else { return Ok(()) };
            if !matches!(event, relive::ChangeEvent::FileChanged { .. }) {
                return Ok(());
            }
            Templates { inner }.reload().map_err(Into::into)
        })?;
        Ok(templates)
    }

    /// Templates from `dir` that nothing watches: call
    /// [`reload`](Templates::reload) to pick up changes.
    pub fn from_dir<F>(dir: impl Into<PathBuf>, setup: F) -> Result<Templates>
    where
        F: Fn(&mut Environment<'static>) + Send + Sync + 'static,
    {
        let templates = Templates::unwatched(dir.into(), setup);
        match templates.reload() {
            Ok(()) | Err(Error::Template(_)) => Ok(templates),
            Err(e) => Err(e),
        }
    }

    fn unwatched<F>(dir: PathBuf, setup: F) -> Templates
    where
        F: Fn(&mut Environment<'static>) + Send + Sync + 'static,
    {
        let mut env = Environment::new();
        setup(&mut env);
        Templates {
            inner: Arc::new(Inner {
                dir,
                env: ArcSwap::from_pointee(env),
                setup: Box::new(setup),
                reads: AtomicU64::new(0),
                committed: Mutex::new(Committed::default()),
                status: watch::Sender::new(TemplateStatus::default()),
            }),
        }
    }

    /// The templates directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Reads and compiles every template, and swaps the new environment in
    /// if all compile. Otherwise the last good environment keeps serving,
    /// the error is recorded (see [`last_error`](Templates::last_error)) and
    /// returned. Templates that are unchanged since the last rebuild change
    /// nothing. The engine calls this on every change under `templates/`.
    pub fn reload(&self) -> Result<()> {
        let inner = &self.inner;
        let read = inner.reads.fetch_add(1, Ordering::SeqCst) + 1;
        let sources = read_dir_sources(&inner.dir)?;
        let hash = sources_hash(&sources);
        {
            let committed = inner.committed.lock().expect("templates lock");
            if committed.read > read || (committed.hash == Some(hash) && inner.status.borrow().error.is_none()) {
                return Ok(());
            }
        }
        let built = build(&inner.dir, &inner.setup, sources);
        let mut committed = inner.committed.lock().expect("templates lock");
        if committed.read > read {
            // A newer read already committed: it saw these files or newer ones.
            return Ok(());
        }
        committed.read = read;
        match built {
            Ok(env) => {
                committed.hash = Some(hash);
                inner.env.store(Arc::new(env));
                inner.status.send_modify(|s| {
                    s.generation += 1;
                    s.error = None;
                });
                tracing::debug!(dir = %inner.dir.display(), "templates reloaded");
                Ok(())
            }
            Err(error) => {
                tracing::warn!(%error, "template error; the last good templates stay live");
                inner.status.send_if_modified(|s| {
                    let changed = s.error.as_ref() != Some(&error);
                    s.error = Some(error.clone());
                    changed
                });
                Err(Error::Template(error))
            }
        }
    }

    /// Renders template `name` (its path under `templates/`, with `/`) with
    /// `ctx`, in the current environment. Errors are located in the
    /// template where they happened.
    pub fn render(&self, name: &str, ctx: serde_json::Value) -> Result<String> {
        let env = self.inner.env.load();
        let rendered = env.get_template(name).and_then(|t| t.render(ctx));
        rendered.map_err(|e| {
            // An error in an included or parent template comes wrapped
            // ("could not render include"): locate the innermost one.
            let mut inner = &e;
            while let Some(next) = std::error::Error::source(inner).and_then(|s| s.downcast_ref::<minijinja::Error>()) {
                if next.line().is_none() {
                    break;
                }
                inner = next;
            }
            let source = inner.name().and_then(|n| env.get_template(n).ok()).map(|t| t.source().to_string());
            Error::Template(locate(&self.inner.dir, name, source.as_deref(), inner))
        })
    }

    /// The current environment, for use beyond [`render`](Templates::render).
    /// Load it once per unit of work (a request): it is a snapshot.
    pub fn environment(&self) -> Arc<Environment<'static>> {
        self.inner.env.load_full()
    }

    /// The error that keeps the newest templates from serving, if any.
    /// Cleared when a rebuild compiles.
    pub fn last_error(&self) -> Option<TemplateError> {
        self.inner.status.borrow().error.clone()
    }

    /// The current [`TemplateStatus`].
    pub fn status(&self) -> TemplateStatus {
        self.inner.status.borrow().clone()
    }

    /// A receiver that is told of every new environment (the generation
    /// goes up) and every new or cleared error.
    pub fn subscribe(&self) -> watch::Receiver<TemplateStatus> {
        self.inner.status.subscribe()
    }
}

/// Every template file under `dir`, as `(name, source)`, sorted by name.
/// Hidden files and editors' temporary files are not templates; neither
/// are files that are not UTF-8 (skipped with a warning).
fn read_dir_sources(dir: &Path) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(dir, e)),
        Ok(_) => {}
    }
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, prefix)) = stack.pop() {
        let entries = match std::fs::read_dir(&path) {
            Ok(entries) => entries,
            // Removed while we walked: the engine will tell us again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(&path, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&path, e))?;
            let Some(file_name) = entry.file_name().to_str().map(str::to_string) else { continue };
            if is_ignored(&file_name) {
                continue;
            }
            let name = format!("{prefix}{file_name}");
            let full = entry.path();
            // Follows symlinks: a symlinked template is a template.
            let meta = match std::fs::metadata(&full) {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&full, e)),
            };
            if meta.is_dir() {
                stack.push((full, format!("{name}/")));
            } else if meta.is_file() {
                match std::fs::read(&full) {
                    Ok(bytes) => match String::from_utf8(bytes) {
                        Ok(source) => out.push((name, source)),
                        Err(_) => tracing::warn!(file = %full.display(), "not UTF-8; not a template"),
                    },
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(&full, e)),
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Names the core engine ignores too: its default exclude rule.
pub(crate) fn is_ignored(file_name: &str) -> bool {
    relive::HotReloadConfig::is_excluded_by_default(file_name)
}

fn sources_hash(sources: &[(String, String)]) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for (name, source) in sources {
        hasher.update(&(name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update(&(source.len() as u64).to_le_bytes());
        hasher.update(source.as_bytes());
    }
    hasher.digest()
}

fn build(
    dir: &Path,
    setup: &Setup,
    sources: Vec<(String, String)>,
) -> std::result::Result<Environment<'static>, TemplateError> {
    let mut env = Environment::new();
    setup(&mut env);
    for (name, source) in sources {
        if let Err(e) = env.add_template_owned(name.clone(), source.clone()) {
            return Err(locate(dir, &name, Some(&source), &e));
        }
    }
    Ok(env)
}

/// Locates a minijinja error: in the template it names (else `fallback`),
/// at its line, and at the column of the start of its span in `source`.
fn locate(dir: &Path, fallback: &str, source: Option<&str>, e: &minijinja::Error) -> TemplateError {
    let name = e.name().unwrap_or(fallback).to_string();
    let line = e.line().unwrap_or(1);
    let column = match (e.range(), source) {
        (Some(range), Some(source)) => column_at(source, range.start),
        _ => 1,
    };
    let message = match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    };
    TemplateError { file: dir.join(&name), name, line, column, message }
}

/// The 1-based column, in characters, of byte `offset` in `source`.
fn column_at(source: &str, offset: usize) -> usize {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let line_start = source[..offset].rfind('\n').map_or(0, |i| i + 1);
    source[line_start..offset].chars().count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(dir: &Path, name: &str, text: &str) {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn column_counts_characters_from_the_line_start() {
        assert_eq!(column_at("abc", 0), 1);
        assert_eq!(column_at("ab\ncd", 4), 2);
        assert_eq!(column_at("é\nxé{", 6), 3);
        // Inside a character: that character's column.
        assert_eq!(column_at("é\nxé{", 5), 2);
        assert_eq!(column_at("ab", 99), 3);
    }

    #[test]
    fn loads_nested_templates_by_relative_name_and_skips_hidden_and_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "base.html", "<b>{% block body %}{% endblock %}</b>");
        write(dir.path(), "pages/index.html", "{% extends 'base.html' %}{% block body %}hi {{ name }}{% endblock %}");
        write(dir.path(), ".index.html.swp", "{% broken");
        write(dir.path(), "pages/x.tmp", "{% broken");
        let t = Templates::from_dir(dir.path(), |_| {}).unwrap();
        assert_eq!(t.last_error(), None);
        assert_eq!(t.render("pages/index.html", json!({"name": "<ann>"})).unwrap(), "<b>hi &lt;ann&gt;</b>");
        assert_eq!(t.status().generation, 1);
        assert!(t.environment().get_template(".index.html.swp").is_err());
    }

    #[test]
    fn a_missing_directory_has_no_templates() {
        let dir = tempfile::tempdir().unwrap();
        let t = Templates::from_dir(dir.path().join("templates"), |_| {}).unwrap();
        assert!(matches!(t.render("x.html", json!({})), Err(Error::Template(_))));
    }

    #[test]
    fn a_syntax_error_keeps_the_last_good_environment_and_is_located() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.html", "A {{ x }}");
        write(dir.path(), "b.html", "B");
        let t = Templates::from_dir(dir.path(), |_| {}).unwrap();
        let mut status = t.subscribe();
        status.mark_unchanged();

        write(dir.path(), "a.html", "A {{ x }} changed");
        write(dir.path(), "b.html", "line one\n  é {% if %}\n");
        let Err(Error::Template(e)) = t.reload() else { panic!("a syntax error must fail the reload") };
        assert_eq!(e.name, "b.html");
        assert_eq!(e.file, dir.path().join("b.html"));
        assert_eq!(e.line, 2);
        // `{% if %}`: the error is at `%}`, the 11th character of the line.
        assert_eq!(e.column, 11, "{e}");
        assert!(e.message.starts_with("syntax error"), "{e}");
        assert_eq!(e.to_string(), format!("{}:2:11: {}", dir.path().join("b.html").display(), e.message));
        // Nothing of the new set is live: not even the good change to a.html.
        assert_eq!(t.render("a.html", json!({"x": 1})).unwrap(), "A 1");
        assert_eq!(t.last_error(), Some(e.clone()));
        assert!(status.has_changed().unwrap());
        assert_eq!(*status.borrow_and_update(), TemplateStatus { generation: 1, error: Some(e) });

        write(dir.path(), "b.html", "B fixed");
        t.reload().unwrap();
        assert_eq!(t.last_error(), None);
        assert_eq!(t.render("a.html", json!({"x": 1})).unwrap(), "A 1 changed");
        assert_eq!(*status.borrow_and_update(), TemplateStatus { generation: 2, error: None });
    }

    #[test]
    fn an_unchanged_rebuild_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.html", "A");
        let t = Templates::from_dir(dir.path(), |_| {}).unwrap();
        let mut status = t.subscribe();
        status.mark_unchanged();
        write(dir.path(), "a.html", "A");
        t.reload().unwrap();
        assert!(!status.has_changed().unwrap());
        assert_eq!(t.status().generation, 1);
    }

    #[test]
    fn a_render_error_is_located_in_the_template_where_it_happened() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "page.html", "top\n{% include 'part.html' %}");
        write(dir.path(), "part.html", "x\n  {{ 1 + none_such.attr.deeper }}");
        let t = Templates::from_dir(dir.path(), |env| env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict))
            .unwrap();
        let Err(Error::Template(e)) = t.render("page.html", json!({})) else { panic!("must fail") };
        assert_eq!((e.name.as_str(), e.line), ("part.html", 2), "{e}");
        assert!(e.column > 1, "{e}");
    }

    #[test]
    fn setup_runs_on_every_environment() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.html", "{{ shout('hi') }}");
        let t = Templates::from_dir(dir.path(), |env| env.add_function("shout", |s: String| s.to_uppercase())).unwrap();
        assert_eq!(t.render("a.html", json!({})).unwrap(), "HI");
        write(dir.path(), "a.html", "{{ shout('again') }}");
        t.reload().unwrap();
        assert_eq!(t.render("a.html", json!({})).unwrap(), "AGAIN");
    }
}
