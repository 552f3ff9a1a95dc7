//! The source-independent part of a reload: documents in, one merged value
//! out, with errors that point into the documents.
//!
//! Files are one source of documents; any other source (etcd, an HTTP
//! endpoint, a test) feeds [`Document`]s through
//! [`HotReloadManager::publish`](crate::HotReloadManager::publish) into the
//! same parse → merge → validate → swap path.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::config::Limits;
use crate::error::{ConfigError, ConfigErrorKind};
use crate::format::{self, Format};
use crate::locate;

/// One document of a config: its bytes, its format and where it came from.
///
/// A config is made of one or more documents merged in order: the base
/// first, overlays after it.
#[derive(Debug, Clone)]
pub struct Document {
    origin: PathBuf,
    format: Format,
    bytes: Arc<[u8]>,
}

impl Document {
    /// A document of `format` read from `origin` (a path, or any name that
    /// identifies the source in error messages, such as `etcd:/app/server`).
    pub fn new(origin: impl Into<PathBuf>, format: Format, bytes: impl Into<Arc<[u8]>>) -> Document {
        Document { origin: origin.into(), format, bytes: bytes.into() }
    }

    /// Where the document came from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// Its format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Its bytes, exactly as read.
    pub fn bytes(&self) -> &Arc<[u8]> {
        &self.bytes
    }
}

/// A parsed document.
#[derive(Debug, Clone)]
pub(crate) struct Parsed {
    pub doc: Document,
    pub value: Arc<Value>,
}

impl Parsed {
    pub(crate) fn parse(doc: Document, limits: &Limits) -> Result<Parsed, ConfigError> {
        let value = format::parse(doc.format, &doc.bytes, &doc.origin, limits)?;
        Ok(Parsed { doc, value: Arc::new(value) })
    }
}

/// The documents a value was merged from, base first, kept to point errors
/// at the file, line and column that set a key.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sources {
    pub docs: Vec<Parsed>,
}

impl Sources {
    /// Merges the documents in order.
    pub(crate) fn merge(&self) -> Value {
        let mut iter = self.docs.iter();
        let Some(first) = iter.next() else { return Value::Object(Default::default()) };
        let mut merged = Value::clone(&first.value);
        for overlay in iter {
            format::merge(&mut merged, Value::clone(&overlay.value));
        }
        merged
    }

    /// The documents' origins, base first.
    pub(crate) fn files(&self) -> Arc<[PathBuf]> {
        self.docs.iter().map(|p| p.doc.origin.clone()).collect()
    }

    /// An error about `key` (`a.b[2]`; empty for the whole value), located in
    /// the last document that sets it, which is the one whose value won the
    /// merge. A key no document sets (a missing field) is located at its
    /// nearest ancestor that exists.
    pub(crate) fn error_at(&self, kind: ConfigErrorKind, key: &str, message: impl Into<String>) -> ConfigError {
        let mut error = ConfigError::new(kind, message);
        if !key.is_empty() {
            error = error.with_key(key);
        }
        let mut path = locate::parse_key_path(key);
        loop {
            if !path.is_empty() {
                let owner = self.docs.iter().rev().find(|p| locate::has_path(&p.value, &path));
                if let Some(owner) = owner {
                    error = error.with_file(&owner.doc.origin);
                    let text = String::from_utf8_lossy(&owner.doc.bytes);
                    if let Some((line, column)) = locate::locate(owner.doc.format, &text, &path) {
                        error = error.with_position(line, column);
                    }
                    return error;
                }
            }
            if path.pop().is_none() {
                break;
            }
        }
        // Nothing sets the key or any ancestor: blame the base document,
        // which is where the key would belong.
        match self.docs.first() {
            Some(base) => error.with_file(&base.doc.origin),
            None => error,
        }
    }
}
