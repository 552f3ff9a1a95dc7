//! What configs a workspace has, and loading one without watching.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::{HotReloadConfig, Limits};
use crate::document::{Decode, Document, Parsed, Sources};
use crate::error::{ConfigError, ConfigErrorKind, Error, Result};
use crate::locate;
use crate::paths::{self, ConfigFile};
use crate::workspace::Workspace;

/// The files of one config, as [`Workspace::configs`] finds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigFiles {
    /// The config's name (`db/main` for `config/db/main.yaml`).
    pub name: String,
    /// Its base files. More than one (`app.toml` and `app.json`) is an error
    /// when the config is loaded.
    pub base: Vec<PathBuf>,
    /// Its overlays by environment (`production` for `app.production.toml`).
    pub overlays: BTreeMap<String, Vec<PathBuf>>,
    /// `config/<name>.schema.json`, if there is one.
    pub schema: Option<PathBuf>,
}

/// Where one value of a config came from (see [`LoadedConfig::layers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Layer {
    /// The value's JSON pointer (`/server/port`).
    pub pointer: String,
    /// The document that set it: a file, or another origin (`etcd:…`).
    pub origin: PathBuf,
    /// The line in it, where known.
    pub line: Option<usize>,
    /// Whether the value was encrypted there (SOPS).
    pub encrypted: bool,
}

/// A config loaded once, without watching: from [`Workspace::load`].
///
/// Besides the merged value it keeps the documents it came from, so that
/// errors found later (by a JSON Schema, by a check of your own) can point
/// at the file, line and column that set a key.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    name: String,
    value: Value,
    sources: Sources,
}

impl LoadedConfig {
    /// Loads a config from documents that are not (or not yet) files: a
    /// draft about to be published, a document from a remote store. They
    /// are parsed and merged in order (base first) exactly as the engine
    /// does, with the default settings (limits, redaction, and the age
    /// identities `sops` would use, to open SOPS documents); errors, now and from
    /// [`error_at`](LoadedConfig::error_at) later, name each document's
    /// origin, line and column.
    ///
    /// ```
    /// use relive::{Document, Format, LoadedConfig};
    ///
    /// let base = Document::new("etcd:/shop/server", Format::Toml, &b"port = 80\nworkers = 2\n"[..]);
    /// let overlay = Document::new("draft.yaml", Format::Yaml, &b"port: 8080\n"[..]);
    /// let loaded = LoadedConfig::from_documents("server", vec![base, overlay])?;
    /// assert_eq!(loaded.value()["port"], 8080);
    /// assert_eq!(loaded.value()["workers"], 2);
    /// # Ok::<(), relive::ConfigError>(())
    /// ```
    pub fn from_documents(name: &str, documents: Vec<Document>) -> Result<LoadedConfig, ConfigError> {
        LoadedConfig::from_documents_with(name, documents, &HotReloadConfig::default())
    }

    /// [`from_documents`](LoadedConfig::from_documents) with `settings`'
    /// [`limits`](HotReloadConfig::limits),
    /// [`age_key_files`](HotReloadConfig::age_key_files) and
    /// [`redact_patterns`](HotReloadConfig::redact_patterns).
    pub fn from_documents_with(
        name: &str,
        documents: Vec<Document>,
        settings: &HotReloadConfig,
    ) -> Result<LoadedConfig, ConfigError> {
        let decode = settings.decode().map_err(|e| ConfigError::new(ConfigErrorKind::Decrypt, e.to_string()))?;
        LoadedConfig::decoded(name, documents, &decode)
    }

    pub(crate) fn decoded(name: &str, documents: Vec<Document>, decode: &Decode) -> Result<LoadedConfig, ConfigError> {
        let mut docs = documents.into_iter().map(|d| Parsed::parse(d, decode)).collect::<Result<Vec<_>, _>>()?;
        docs.extend(decode.env.documents(name));
        let sources = Sources { docs, redactor: decode.redactor.clone() };
        Ok(LoadedConfig { name: name.to_string(), value: sources.merge(), sources })
    }

    /// The value with every secret redacted: values under secret key names
    /// and every value that was encrypted (SOPS), whatever its key. What
    /// to show.
    pub fn redacted_value(&self) -> Value {
        self.sources.redactor.redact_secrets(&self.value, &self.sources.secrets())
    }

    /// Where each value came from: for every leaf of the merged value (a
    /// scalar or an empty collection), its JSON pointer, the document that
    /// set it (the last one that has it: an overlay wins over the base), and
    /// the line there. Secret values are marked, never shown.
    pub fn layers(&self) -> Vec<Layer> {
        let mut out = Vec::new();
        let mut path = Vec::new();
        let secrets = self.sources.secrets();
        self.walk_layers(&self.value, &mut path, &mut String::new(), &secrets, &mut out);
        out
    }

    fn walk_layers(
        &self,
        value: &Value,
        path: &mut Vec<locate::Segment>,
        pointer: &mut String,
        secrets: &BTreeSet<String>,
        out: &mut Vec<Layer>,
    ) {
        let mut descend = |segment: locate::Segment, name: &str, child: &Value, path: &mut Vec<locate::Segment>| {
            let len = pointer.len();
            crate::redact::push_pointer_segment(pointer, name);
            path.push(segment);
            self.walk_layers(child, path, pointer, secrets, out);
            path.pop();
            pointer.truncate(len);
        };
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (key, child) in map {
                    descend(locate::Segment::Key(key.clone()), key, child, path);
                }
                return;
            }
            Value::Array(items) if !items.is_empty() => {
                for (i, child) in items.iter().enumerate() {
                    descend(locate::Segment::Index(i), &i.to_string(), child, path);
                }
                return;
            }
            _ => {}
        }
        let owner = self.sources.docs.iter().rev().find(|d| locate::has_path(&d.value, path));
        let (origin, line) = match owner {
            Some(doc) => {
                let text = String::from_utf8_lossy(doc.doc.bytes());
                let line = locate::locate(doc.doc.format(), &text, path).map(|(line, _)| line);
                (doc.doc.origin().to_path_buf(), line)
            }
            None => (PathBuf::new(), None),
        };
        let secret = secrets.contains(pointer.as_str())
            || secrets.iter().any(|s| pointer.strip_prefix(s.as_str()).is_some_and(|rest| rest.starts_with('/')));
        out.push(Layer { pointer: pointer.clone(), origin, line, encrypted: secret });
    }

    /// JSON pointers (`/db/password`) of the values that came from
    /// encrypted documents (SOPS): secrets whatever their keys are called.
    pub fn secret_paths(&self) -> Vec<String> {
        self.sources.secrets().iter().cloned().collect()
    }

    /// The config's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The merged value.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The files it was merged from, base first.
    pub fn files(&self) -> Vec<PathBuf> {
        self.sources.files().to_vec()
    }

    /// The value as `T`; a mismatch is located like the engine locates it.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        serde_path_to_error::deserialize(&self.value).map_err(|e| {
            let key = locate::render_path(e.path());
            self.sources.error_at(ConfigErrorKind::Type, &key, e.into_inner().to_string())
        })
    }

    /// An error about `key` (`server.port`, `hosts[2]`; empty for the whole
    /// value), located at the file, line and column of the document whose
    /// value won the merge.
    pub fn error_at(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.sources.error_at(ConfigErrorKind::Invalid, key, message)
    }
}

impl Workspace {
    /// Every config under `config/`, by name, with its base files, overlays
    /// and schema. Hidden files and directories (editor swap files, a
    /// Kubernetes `..data`) are skipped; symlinked files are followed,
    /// symlinked directories are not. A missing `config/` has no configs.
    pub fn configs(&self) -> Result<Vec<ConfigFiles>> {
        let config_dir = self.config_dir();
        let mut found: BTreeMap<String, ConfigFiles> = BTreeMap::new();
        let mut schemas = Vec::new();
        for path in files_under(&config_dir)? {
            if let Some(cf) = paths::config_file(&config_dir, &path) {
                let entry = found
                    .entry(cf.name.clone())
                    .or_insert_with(|| ConfigFiles { name: cf.name.clone(), ..ConfigFiles::default() });
                match cf.env {
                    None => entry.base.push(path),
                    Some(env) => entry.overlays.entry(env).or_default().push(path),
                }
            } else if let Some(name) = schema_of(&config_dir, &path) {
                schemas.push((name, path));
            }
        }
        for (name, path) in schemas {
            if let Some(entry) = found.get_mut(&name) {
                entry.schema = Some(path);
            }
        }
        Ok(found.into_values().collect())
    }

    /// Loads config `name` once, for this workspace's environment, without
    /// starting hot reload: its base file and overlay, parsed and merged.
    pub fn load(&self, name: &str) -> Result<LoadedConfig> {
        let config_dir = self.config_dir();
        let wrap = |error: ConfigError| Error::Config { name: name.to_string(), error: Box::new(error) };
        // Only the config's own directory can hold its files, and only
        // names that start with its last segment and a dot: a tool that
        // loads every config (`relive check`) must not walk the tree once
        // per config.
        let (dir, stem) = match name.rsplit_once('/') {
            Some((parent, stem)) => (config_dir.join(parent), stem),
            None => (config_dir.clone(), name),
        };
        let prefix = format!("{stem}.");
        let mut files: Vec<(PathBuf, ConfigFile)> = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => Some(entries),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&dir, e)),
        };
        for entry in entries.into_iter().flatten() {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            if !entry.file_name().to_string_lossy().starts_with(&prefix) {
                continue;
            }
            let path = entry.path();
            let Some(cf) = paths::config_file(&config_dir, &path).filter(|cf| cf.name == name) else { continue };
            if fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                files.push((path, cf));
            }
        }
        let chosen = paths::select(name, self.env(), &config_dir, files.iter().map(|(p, cf)| (p.as_path(), cf)))
            .map_err(wrap)?;
        let decode = self.settings()?.decode()?;
        let mut docs = Vec::with_capacity(chosen.len());
        for path in chosen {
            let format = paths::config_file(&config_dir, &path).expect("selected files are config files").format;
            let bytes = read_bounded(&path, &decode.limits).map_err(wrap)?;
            docs.push(Document::new(path, format, bytes));
        }
        LoadedConfig::decoded(name, docs, &decode).map_err(wrap)
    }
}

/// `config/<name>.schema.json` → `name`.
/// Reads a config file for a one-shot load: regular files only (a FIFO
/// would block), and none larger than the limit (checked before reading).
fn read_bounded(path: &Path, limits: &Limits) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    let io =
        |e: std::io::Error| ConfigError::new(ConfigErrorKind::Io, format!("cannot read file: {e}")).with_file(path);
    let meta = fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(io(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file")));
    }
    if meta.len() > limits.max_file_size {
        return Err(crate::format::too_large(path, limits));
    }
    let file = crate::engine::open_nonblocking(path).map_err(io)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // A file that grows past the limit while it is read is cut off here and
    // refused by the parser's own size check.
    file.take(limits.max_file_size + 1).read_to_end(&mut bytes).map_err(io)?;
    Ok(bytes)
}

fn schema_of(config_dir: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(config_dir).ok()?.to_str()?;
    let name = rel.strip_suffix(".schema.json")?;
    (!name.is_empty() && !name.split('/').any(|part| part.starts_with('.'))).then(|| name.to_string())
}

/// Every regular file (symlinks followed) under `dir`, skipping hidden
/// entries and not entering symlinked directories.
/// Whether `path` is named like a config file (`.toml`, `.yaml`, `.yml`,
/// `.json`).
fn is_config_name(path: &Path) -> bool {
    crate::format::Format::from_path(path).is_some()
}

fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(&dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            let Ok(file_type) = entry.file_type() else { continue };
            if file_type.is_dir() {
                stack.push(path);
            } else {
                match fs::metadata(&path) {
                    Ok(m) if m.is_file() => files.push(path),
                    // A FIFO, socket or device where a config could be (or a
                    // symlink to one): never opened, and said so.
                    Ok(_) if is_config_name(&path) => {
                        tracing::warn!(path = %path.display(), "not a regular file; skipped");
                    }
                    _ => {}
                }
            }
        }
    }
    files.sort();
    Ok(files)
}
