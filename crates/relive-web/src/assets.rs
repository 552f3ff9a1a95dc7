//! Static assets: resolving request paths inside `static/` safely, and a
//! manifest of fingerprinted names kept current by content hash.
//!
//! [`resolve`] is the one gate between a request and the filesystem. It
//! refuses anything that could leave the static root: `..` and `.`
//! segments, their percent-encoded forms (it decodes once, then checks),
//! backslashes, NUL bytes, absolute paths, empty segments, hidden files,
//! and symlinks whose target is outside the root (it canonicalizes the
//! candidate and checks that it is still under the canonical root).
//!
//! The [`Manifest`] maps logical names (`app.css`, `img/logo.png`) to
//! fingerprinted ones (`app.3f2a9c1b.css`: the first 8 hex digits of the
//! content's xxh3). A file whose bytes did not change keeps its entry and
//! produces no [`AssetChange`].
//!
//! A fingerprint that is no longer current (`app.d3d9000b.css` after
//! `app.css` changed) still answers, with the current content and
//! `no-cache`: clients that cannot map a logical name to its new
//! fingerprint, such as livereload-js and the LiveReload browser
//! extensions, re-fetch the URL the page already links, and a 404 there
//! would leave the page without its stylesheet.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use tokio::sync::broadcast;

use crate::error::{Error, Result};
use crate::templates::is_ignored;

/// The URL prefix static files are served under.
pub const STATIC_PREFIX: &str = "/static/";

/// Resolves `request_path`, a path relative to the static root as it comes
/// in a URL (percent-encoded, no leading `/`: `css/app.css`), to a file
/// under `root`.
///
/// Returns the canonical path of a regular file that is inside the
/// canonical `root`, [`Error::Forbidden`] for a path that is malformed or
/// leaves the root, and [`Error::NotFound`] for one that names no file (or a
/// directory).
pub fn resolve(root: &Path, request_path: &str) -> Result<PathBuf> {
    let relative = clean(request_path)?;
    resolve_clean(root, request_path, &relative)
}

/// Checks and decodes a request path; returns it relative, with `/`.
fn clean(request_path: &str) -> Result<String> {
    let forbid = |reason| Err(Error::Forbidden { path: request_path.to_string(), reason });
    let decoded = percent_decode(request_path)
        .ok_or_else(|| Error::Forbidden { path: request_path.to_string(), reason: "invalid percent-encoding" })?;
    if decoded.contains('\0') {
        return forbid("NUL byte");
    }
    if decoded.contains('\\') {
        return forbid("backslash");
    }
    if decoded.starts_with('/') {
        return forbid("absolute path");
    }
    if decoded.is_empty() {
        return Err(Error::NotFound { path: request_path.to_string() });
    }
    for segment in decoded.split('/') {
        match segment {
            "" => return forbid("empty path segment"),
            "." | ".." => return forbid("dot segment"),
            s if s.starts_with('.') => return forbid("hidden file"),
            _ => {}
        }
    }
    Ok(decoded)
}

fn resolve_clean(root: &Path, request_path: &str, relative: &str) -> Result<PathBuf> {
    let relative = Path::new(relative);
    // Belt and braces: after `clean`, only plain names are left.
    if !relative.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(Error::Forbidden { path: request_path.to_string(), reason: "not a plain relative path" });
    }
    let not_found = || Error::NotFound { path: request_path.to_string() };
    let root = match root.canonicalize() {
        Ok(root) => root,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
        Err(e) => return Err(Error::io(root, e)),
    };
    let candidate = root.join(relative);
    let real = match candidate.canonicalize() {
        Ok(real) => real,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
            return Err(not_found());
        }
        Err(e) => return Err(Error::io(candidate, e)),
    };
    if !real.starts_with(&root) {
        return Err(Error::Forbidden { path: request_path.to_string(), reason: "escapes the static root" });
    }
    if !real.is_file() {
        return Err(not_found());
    }
    Ok(real)
}

/// Decodes `%XX` escapes once. `None` for a malformed escape or a result
/// that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The fingerprinted name of `logical` for content hash `hash`: the first 8
/// hex digits of the hash before the last extension (`app.css` →
/// `app.3f2a9c1b.css`, `LICENSE` → `LICENSE.3f2a9c1b`).
pub fn fingerprint(logical: &str, hash: u64) -> String {
    with_digest(logical, &format!("{hash:016x}")[..8])
}

/// `logical` with `digest` put where [`fingerprint`] puts it.
fn with_digest(logical: &str, digest: &str) -> String {
    let (dir, file) = match logical.rfind('/') {
        Some(i) => logical.split_at(i + 1),
        None => ("", logical),
    };
    match file.rfind('.') {
        Some(dot) if dot > 0 => format!("{dir}{}.{digest}{}", &file[..dot], &file[dot..]),
        _ => format!("{dir}{file}.{digest}"),
    }
}

/// How a served file may be cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheControl {
    /// A fingerprinted name: its content never changes under it.
    Immutable,
    /// A logical name, or a fingerprint that is no longer current (served
    /// with the current content): revalidate every time.
    NoCache,
}

impl CacheControl {
    /// The `Cache-Control` header value.
    pub fn header_value(self) -> &'static str {
        match self {
            CacheControl::Immutable => "public, max-age=31536000, immutable",
            CacheControl::NoCache => "no-cache",
        }
    }
}

/// A file that answers a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asset {
    /// The file, canonical, under the static root.
    pub path: PathBuf,
    /// Its logical name (`app.css`), also when it was asked for by its
    /// fingerprinted name.
    pub logical: String,
    /// How it may be cached.
    pub cache: CacheControl,
}

/// Logical names and their fingerprinted names, one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    entries: BTreeMap<String, (u64, String)>,
    by_fingerprint: HashMap<String, String>,
}

impl Manifest {
    /// The fingerprinted name of `logical` (`app.3f2a9c1b.css`), if it is an asset.
    pub fn get(&self, logical: &str) -> Option<&str> {
        self.entries.get(logical).map(|(_, f)| f.as_str())
    }

    /// The logical name a fingerprinted name stands for, if it is current.
    pub fn logical(&self, fingerprinted: &str) -> Option<&str> {
        self.by_fingerprint.get(fingerprinted).map(String::as_str)
    }

    /// The logical name a superseded fingerprinted name stands for: `name`
    /// has the shape [`fingerprint`] gives (8 lowercase hex digits before
    /// the last extension, or at the end), is not current, and what it is a
    /// fingerprint of is an asset now (`app.d3d9000b.css` → `app.css`).
    pub fn superseded(&self, name: &str) -> Option<&str> {
        if self.by_fingerprint.contains_key(name) {
            return None;
        }
        let (dir, file) = match name.rfind('/') {
            Some(i) => name.split_at(i + 1),
            None => ("", name),
        };
        let parts: Vec<&str> = file.split('.').collect();
        let is_digest = |s: &str| s.len() == 8 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        // `stem.DIGEST.ext` (the digest second to last) or `name.DIGEST` (last).
        let candidates =
            (parts.len() >= 3).then(|| parts.len() - 2).into_iter().chain((parts.len() >= 2).then(|| parts.len() - 1));
        candidates.filter(|&i| is_digest(parts[i])).find_map(|i| {
            let mut rest = parts.clone();
            rest.remove(i);
            let logical = format!("{dir}{}", rest.join("."));
            // Only the exact inverse of `fingerprint` counts.
            let (key, _) = self.entries.get_key_value(&logical)?;
            (with_digest(key, parts[i]) == name).then_some(key.as_str())
        })
    }

    /// Every `(logical, fingerprinted)` pair, by logical name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(l, (_, f))| (l.as_str(), f.as_str()))
    }

    /// How many assets there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sets `logical`'s content hash; whether that changed anything.
    fn set(&mut self, logical: &str, hash: Option<u64>) -> bool {
        let old = self.entries.get(logical).map(|(h, _)| *h);
        if old == hash {
            return false;
        }
        if let Some((_, fingerprinted)) = self.entries.remove(logical) {
            self.by_fingerprint.remove(&fingerprinted);
        }
        if let Some(hash) = hash {
            let fingerprinted = fingerprint(logical, hash);
            self.by_fingerprint.insert(fingerprinted.clone(), logical.to_string());
            self.entries.insert(logical.to_string(), (hash, fingerprinted));
        }
        true
    }
}

/// An asset whose content changed (or that appeared or went away), sent
/// after the manifest that has it is live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetChange {
    /// Its logical name (`css/app.css`).
    pub logical: String,
    /// Its new fingerprinted name; `None` if it is gone.
    pub fingerprinted: Option<String>,
}

impl AssetChange {
    /// The URL of its logical name, as a page links it: `/static/css/app.css`.
    pub fn url(&self) -> String {
        format!("{STATIC_PREFIX}{}", self.logical)
    }
}

/// The static assets of a workspace, live.
///
/// Clones share one manifest.
#[derive(Clone)]
pub struct Assets {
    inner: Arc<AssetsInner>,
}

struct AssetsInner {
    root: PathBuf,
    manifest: ArcSwap<Manifest>,
    changes: broadcast::Sender<AssetChange>,
}

impl std::fmt::Debug for Assets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assets").field("root", &self.inner.root).field("assets", &self.manifest().len()).finish()
    }
}

impl Assets {
    /// Scans `<workspace>/static/` (a missing directory has no assets) and
    /// keeps the manifest current as the workspace's hot reload engine sees
    /// files change.
    pub fn new(ws: &relive::Workspace) -> Result<Assets> {
        let assets = Assets::from_dir(ws.static_dir())?;
        // A handler, as for templates: filtered by glob, ordered, bounded.
        let weak: Weak<AssetsInner> = Arc::downgrade(&assets.inner);
        ws.register_reload_handler("static/**/*", move |event| {
            let Some(inner) = weak.upgrade() else { return Ok(()) };
            let assets = Assets { inner };
            if let relive::ChangeEvent::FileChanged { path, change_type, .. } = &event {
                if let relive::ChangeType::Renamed { from } = change_type {
                    assets.update(from)?;
                }
                assets.update(path)?;
            }
            Ok(())
        })?;
        Ok(assets)
    }

    /// Assets under `root`, scanned now; nothing watches them: call
    /// [`update`](Assets::update) or [`rescan`](Assets::rescan).
    pub fn from_dir(root: impl Into<PathBuf>) -> Result<Assets> {
        let (changes, _) = broadcast::channel(256);
        let assets =
            Assets { inner: Arc::new(AssetsInner { root: root.into(), manifest: ArcSwap::default(), changes }) };
        assets.rescan()?;
        Ok(assets)
    }

    /// The static root.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The current manifest.
    pub fn manifest(&self) -> Arc<Manifest> {
        self.inner.manifest.load_full()
    }

    /// The URL to link `logical` by: `/static/app.3f2a9c1b.css`, or `None`
    /// if there is no such asset.
    pub fn url(&self, logical: &str) -> Option<String> {
        self.inner.manifest.load().get(logical).map(|f| format!("{STATIC_PREFIX}{f}"))
    }

    /// Tells of every asset change from now on, after the manifest has it.
    pub fn subscribe(&self) -> broadcast::Receiver<AssetChange> {
        self.inner.changes.subscribe()
    }

    /// Finds the file for `request_path` (relative to the static root, as
    /// for [`resolve`]): a current fingerprinted name maps to its logical
    /// file and may be cached for good; a file of that very name is served
    /// as it is, to be revalidated; a superseded fingerprint
    /// ([`Manifest::superseded`]) maps to its logical file's current
    /// content, to be revalidated; anything else is served as it is. Every
    /// check of [`resolve`] applies to the request and to the file it maps to.
    pub fn lookup(&self, request_path: &str) -> Result<Asset> {
        let relative = clean(request_path)?;
        let manifest = self.inner.manifest.load();
        let (logical, cache) = if let Some(logical) = manifest.logical(&relative) {
            (logical.to_string(), CacheControl::Immutable)
        } else if manifest.get(&relative).is_some() {
            (relative, CacheControl::NoCache)
        } else if let Some(logical) = manifest.superseded(&relative) {
            (logical.to_string(), CacheControl::NoCache)
        } else {
            (relative, CacheControl::NoCache)
        };
        let path = resolve_clean(&self.inner.root, request_path, &logical)?;
        Ok(Asset { path, logical, cache })
    }

    /// Re-reads one file (absolute, or relative to the static root) and
    /// updates its entry: a new hash gives a new fingerprint, a file that
    /// is gone (or that [`resolve`] would refuse) loses its entry, and the
    /// same bytes change nothing. Returns the change it made, if any.
    pub fn update(&self, file: &Path) -> Result<Option<AssetChange>> {
        let root = &self.inner.root;
        let relative = if file.is_absolute() { file.strip_prefix(root).ok() } else { Some(file) };
        let Some(logical) = relative.and_then(logical_name) else { return Ok(None) };
        let hash = match resolve_clean(root, &logical, &logical) {
            Ok(path) => match std::fs::read(&path) {
                Ok(bytes) => Some(xxhash_rust::xxh3::xxh3_64(&bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(Error::io(path, e)),
            },
            Err(Error::NotFound { .. } | Error::Forbidden { .. }) => None,
            Err(e) => return Err(e),
        };
        let mut changed = false;
        self.inner.manifest.rcu(|current| {
            let mut next = Manifest::clone(current);
            changed = next.set(&logical, hash);
            next
        });
        if !changed {
            return Ok(None);
        }
        let change =
            AssetChange { fingerprinted: self.inner.manifest.load().get(&logical).map(str::to_string), logical };
        let _ = self.inner.changes.send(change.clone());
        Ok(Some(change))
    }

    /// Scans the whole static root again and swaps in the manifest it
    /// makes; returns what changed.
    pub fn rescan(&self) -> Result<Vec<AssetChange>> {
        let mut next = Manifest::default();
        for logical in walk(&self.inner.root)? {
            let path = match resolve_clean(&self.inner.root, &logical, &logical) {
                Ok(path) => path,
                Err(Error::NotFound { .. } | Error::Forbidden { .. }) => continue,
                Err(e) => return Err(e),
            };
            match std::fs::read(&path) {
                Ok(bytes) => {
                    next.set(&logical, Some(xxhash_rust::xxh3::xxh3_64(&bytes)));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(path, e)),
            }
        }
        let old = self.inner.manifest.swap(Arc::new(next.clone()));
        let mut changes = Vec::new();
        for (logical, (hash, fingerprinted)) in &next.entries {
            if old.entries.get(logical).map(|(h, _)| h) != Some(hash) {
                changes.push(AssetChange { logical: logical.clone(), fingerprinted: Some(fingerprinted.clone()) });
            }
        }
        for logical in old.entries.keys().filter(|l| !next.entries.contains_key(*l)) {
            changes.push(AssetChange { logical: logical.clone(), fingerprinted: None });
        }
        for change in &changes {
            let _ = self.inner.changes.send(change.clone());
        }
        Ok(changes)
    }
}

/// `relative` as a logical name (`css/app.css`), if it is one: plain UTF-8
/// components, none hidden or temporary.
fn logical_name(relative: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for component in relative.components() {
        let Component::Normal(part) = component else { return None };
        let part = part.to_str()?;
        if is_ignored(part) {
            return None;
        }
        parts.push(part);
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Every file's logical name under `root`. Symlinks are followed into
/// directories that are inside the root, each directory once (so a symlink
/// loop ends); `resolve` later drops files that lead out.
fn walk(root: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let root_real = match root.canonicalize() {
        Ok(real) => real,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(root, e)),
    };
    let mut seen = std::collections::HashSet::from([root_real.clone()]);
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        let dir = root.join(&relative);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let relative = relative.join(entry.file_name());
            let Some(logical) = logical_name(&relative) else { continue };
            match std::fs::metadata(entry.path()) {
                Ok(meta) if meta.is_dir() => {
                    let inside = entry.path().canonicalize().ok().filter(|real| real.starts_with(&root_real));
                    if inside.is_some_and(|real| seen.insert(real)) {
                        stack.push(relative);
                    }
                }
                Ok(meta) if meta.is_file() => out.push(logical),
                _ => {}
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_go_before_the_last_extension() {
        let h = 0x3f2a_9c1b_0000_0001;
        assert_eq!(fingerprint("app.css", h), "app.3f2a9c1b.css");
        assert_eq!(fingerprint("img/logo.png", h), "img/logo.3f2a9c1b.png");
        assert_eq!(fingerprint("js/app.min.js", h), "js/app.min.3f2a9c1b.js");
        assert_eq!(fingerprint("LICENSE", h), "LICENSE.3f2a9c1b");
        assert_eq!(fingerprint("v1.2/readme", h), "v1.2/readme.3f2a9c1b");
        assert_eq!(fingerprint("x", 0xab), "x.00000000");
    }

    #[test]
    fn superseded_fingerprints_are_the_exact_inverse_of_fingerprint() {
        let mut m = Manifest::default();
        for logical in ["app.css", "js/app.min.js", "LICENSE", "v1.2/readme", "x.3f2a9c1b"] {
            m.set(logical, Some(0x1111_1111_0000_0000));
        }
        assert_eq!(m.superseded("app.d3d9000b.css"), Some("app.css"));
        assert_eq!(m.superseded("js/app.min.d3d9000b.js"), Some("js/app.min.js"));
        assert_eq!(m.superseded("LICENSE.d3d9000b"), Some("LICENSE"));
        assert_eq!(m.superseded("v1.2/readme.d3d9000b"), Some("v1.2/readme"));
        // `x.3f2a9c1b` is fingerprinted as `x.DIGEST.3f2a9c1b`.
        assert_eq!(m.superseded("x.d3d9000b.3f2a9c1b"), Some("x.3f2a9c1b"));
        for name in [
            "app.css",
            "app.D3D9000B.css",
            "app.d3d9000.css",
            "app.d3d9000bb.css",
            "app.css.d3d9000b",
            "css/app.d3d9000b.css",
            "other.d3d9000b.css",
            "d3d9000b.css",
            "app.d3d9000b.js",
            "app.g3d9000b.css",
        ] {
            assert_eq!(m.superseded(name), None, "{name}");
        }
    }

    #[test]
    fn percent_decoding_is_done_once_and_strictly() {
        assert_eq!(percent_decode("a%2e%2E%2fb").as_deref(), Some("a../b"));
        assert_eq!(percent_decode("%252e").as_deref(), Some("%2e"));
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("a%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn manifest_set_reports_only_real_changes() {
        let mut m = Manifest::default();
        assert!(m.set("app.css", Some(1 << 60)));
        assert!(!m.set("app.css", Some(1 << 60)));
        let old = m.get("app.css").unwrap().to_string();
        assert!(m.set("app.css", Some(2 << 60)));
        assert_eq!(m.logical(&old), None, "a stale fingerprint no longer maps");
        assert_eq!(m.logical(m.get("app.css").unwrap()), Some("app.css"));
        assert_eq!(m.superseded(&old), Some("app.css"));
        assert_eq!(m.superseded(m.get("app.css").unwrap()), None, "a current fingerprint is not superseded");
        assert!(m.set("app.css", None));
        assert!(m.is_empty());
        assert_eq!(m.superseded(&old), None, "no asset, nothing to stand for");
        assert!(!m.set("app.css", None));
    }
}
