//! The source-independent part of a reload: documents in, one merged value
//! out, with errors that point into the documents.
//!
//! Files are one source of documents; any other source (etcd, an HTTP
//! endpoint, a test) feeds [`Document`]s through
//! [`HotReloadManager::publish`](crate::HotReloadManager::publish) into the
//! same parse → merge → validate → swap path.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::config::Limits;
use crate::error::{ConfigError, ConfigErrorKind};
use crate::format::{self, Format};
use crate::locate;
use crate::redact::Redactor;
use crate::sops::{self, Identities};

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

/// What turning a document's bytes into a value needs besides the bytes:
/// the limits, the keys that open SOPS documents, and what counts as a
/// secret.
#[derive(Debug, Clone, Default)]
pub(crate) struct Decode {
    pub limits: Limits,
    /// Age identities for SOPS documents (from where `sops` looks, and
    /// from the settings). Without one that matches, a SOPS document is an
    /// error naming its recipients.
    pub identities: Identities,
    /// Secret key names, for errors about them.
    pub redactor: Redactor,
    /// The environment layer's variables, read once.
    pub env: crate::envlayer::EnvOverrides,
}

/// JSON pointers (`/db/password`, `/hosts/0`) of the values that are
/// secret because of where they came from (SOPS-encrypted, a secret
/// reference), whatever their keys are called.
pub(crate) type SecretPaths = Arc<BTreeSet<String>>;

/// A parsed document.
#[derive(Debug, Clone)]
pub(crate) struct Parsed {
    pub doc: Document,
    /// Its value, decrypted if it was a SOPS document.
    pub value: Arc<Value>,
    /// The values that were encrypted.
    pub secrets: SecretPaths,
    /// A document of the environment layer (a variable), not a file: it
    /// is merged last and never recorded in the history.
    pub env: bool,
    /// The files its secret references (`${file:PATH}`) read.
    pub references: Arc<[PathBuf]>,
}

impl Parsed {
    /// Parses a document within the limits, and decrypts it if it carries
    /// SOPS metadata. The document keeps its bytes as they were (encrypted):
    /// only the value is clear.
    pub(crate) fn parse(doc: Document, decode: &Decode) -> Result<Parsed, ConfigError> {
        let value = format::parse(doc.format, &doc.bytes, &doc.origin, &decode.limits)?;
        let (mut value, mut secrets) = if sops::is_sops(&value) {
            match sops::decrypt(doc.format, &doc.bytes, &decode.identities) {
                Ok(decrypted) => decrypted.into_parts(),
                Err(error) => return Err(sops_error(&doc, &error)),
            }
        } else {
            (value, BTreeSet::new())
        };
        let mut references = Vec::new();
        let base = doc.origin.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut resolve = Resolve {
            doc: &doc,
            base: &base,
            limits: &decode.limits,
            secrets: &mut secrets,
            references: &mut references,
        };
        resolve.walk(&mut value, &mut String::new(), &mut Vec::new())?;
        let secrets = if secrets.is_empty() { SecretPaths::default() } else { Arc::new(secrets) };
        Ok(Parsed { doc, value: Arc::new(value), secrets, env: false, references: references.into() })
    }
}

/// Resolves secret references in a document's value: a string that is
/// exactly `${file:PATH}` becomes the content of PATH (relative to the
/// document's directory; one trailing newline trimmed), `${env:NAME}` the
/// variable NAME. Each resolved value is a secret; each file is recorded,
/// so that its changes reload the config.
struct Resolve<'a> {
    doc: &'a Document,
    base: &'a Path,
    limits: &'a Limits,
    secrets: &'a mut BTreeSet<String>,
    references: &'a mut Vec<PathBuf>,
}

impl Resolve<'_> {
    fn walk(
        &mut self,
        value: &mut Value,
        pointer: &mut String,
        path: &mut Vec<locate::Segment>,
    ) -> Result<(), ConfigError> {
        match value {
            Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    let len = pointer.len();
                    crate::redact::push_pointer_segment(pointer, key);
                    path.push(locate::Segment::Key(key.clone()));
                    self.walk(child, pointer, path)?;
                    path.pop();
                    pointer.truncate(len);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter_mut().enumerate() {
                    let len = pointer.len();
                    crate::redact::push_pointer_segment(pointer, &i.to_string());
                    path.push(locate::Segment::Index(i));
                    self.walk(child, pointer, path)?;
                    path.pop();
                    pointer.truncate(len);
                }
            }
            Value::String(text) => {
                let Some(inner) = text.strip_prefix("${").and_then(|t| t.strip_suffix('}')) else { return Ok(()) };
                let resolved = if let Some(file) = inner.strip_prefix("file:") {
                    let file = self.base.join(file);
                    self.references.push(file.clone());
                    read_reference(&file, self.limits)
                        .map_err(|why| self.error(path, format!("{}: {why}", file.display())))?
                } else if let Some(name) = inner.strip_prefix("env:") {
                    std::env::var(name)
                        .map_err(|_| self.error(path, format!("environment variable {name} is not set")))?
                } else {
                    return Ok(());
                };
                *text = resolved;
                self.secrets.insert(pointer.clone());
            }
            _ => {}
        }
        Ok(())
    }

    /// An unresolvable reference, located at its key.
    fn error(&self, path: &[locate::Segment], message: String) -> ConfigError {
        let key = locate::render_segments(path);
        let mut error = ConfigError::new(ConfigErrorKind::Missing, format!("secret reference: {message}"))
            .with_file(&self.doc.origin)
            .with_key(key);
        let text = String::from_utf8_lossy(&self.doc.bytes);
        if let Some((line, column)) = locate::locate(self.doc.format, &text, path) {
            error = error.with_position(line, column);
        }
        error
    }
}

/// A referenced file's content: a regular file (a FIFO would block), within
/// the size limit, one trailing newline trimmed.
fn read_reference(path: &Path, limits: &Limits) -> Result<String, String> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read it: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".to_string());
    }
    if meta.len() > limits.max_file_size {
        return Err(format!("larger than the limit of {} bytes (max_file_size)", limits.max_file_size));
    }
    let file = crate::engine::open_nonblocking(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mut text = String::new();
    file.take(limits.max_file_size).read_to_string(&mut text).map_err(|e| format!("cannot read it: {e}"))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

/// A SOPS failure as a config error, located at the key it names.
fn sops_error(doc: &Document, error: &sops::SopsError) -> ConfigError {
    let message = match error.kind() {
        sops::SopsErrorKind::NoIdentity => format!("cannot decrypt this sops file: {}", error.message()),
        sops::SopsErrorKind::Tampered | sops::SopsErrorKind::BadMac => {
            format!("sops file failed its integrity check: {}", error.message())
        }
        _ => format!("sops: {}", error.message()),
    };
    let mut out = ConfigError::new(ConfigErrorKind::Decrypt, message).with_file(&doc.origin);
    if let Some(key) = error.key() {
        out = out.with_key(key);
        let text = String::from_utf8_lossy(&doc.bytes);
        if let Some((line, column)) = locate::locate(doc.format, &text, &locate::parse_key_path(key)) {
            out = out.with_position(line, column);
        }
    }
    out
}

/// The documents a value was merged from, base first, kept to point errors
/// at the file, line and column that set a key.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sources {
    pub docs: Vec<Parsed>,
    /// Secret key names, so that errors about them never quote a value.
    pub redactor: Redactor,
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

    /// Every file the documents' secret references read.
    pub(crate) fn references(&self) -> Vec<PathBuf> {
        self.docs.iter().flat_map(|d| d.references.iter().cloned()).collect()
    }

    /// The pointers of every value any document says is secret.
    pub(crate) fn secrets(&self) -> SecretPaths {
        match self.docs.iter().filter(|d| !d.secrets.is_empty()).count() {
            0 => SecretPaths::default(),
            1 => self.docs.iter().find(|d| !d.secrets.is_empty()).map(|d| Arc::clone(&d.secrets)).unwrap_or_default(),
            _ => Arc::new(self.docs.iter().flat_map(|d| d.secrets.iter().cloned()).collect()),
        }
    }

    /// Whether the value at `key` (`a.b[2]`) is a secret: under a secret key
    /// name, or at or under a secret pointer.
    pub(crate) fn is_secret_key(&self, key: &str) -> bool {
        let path = locate::parse_key_path(key);
        let mut pointer = String::new();
        for segment in &path {
            let name = match segment {
                locate::Segment::Key(key) => key.clone(),
                locate::Segment::Index(i) => i.to_string(),
            };
            if matches!(segment, locate::Segment::Key(_)) && self.redactor.is_secret(&name) {
                return true;
            }
            crate::redact::push_pointer_segment(&mut pointer, &name);
            if self.docs.iter().any(|d| d.secrets.contains(&pointer)) {
                return true;
            }
        }
        false
    }

    /// The documents' origins, base first.
    pub(crate) fn files(&self) -> Arc<[PathBuf]> {
        self.docs.iter().filter(|p| !p.env).map(|p| p.doc.origin.clone()).collect()
    }

    /// An error about `key` (`a.b[2]`; empty for the whole value), located in
    /// the last document that sets it, which is the one whose value won the
    /// merge. A key no document sets (a missing field) is located at its
    /// nearest ancestor that exists.
    ///
    /// An error about a secret never quotes its value: quoted and
    /// back-ticked text in the message is replaced (serde and JSON Schema
    /// quote the offending value), so the message says which rule failed,
    /// not what the value was.
    pub(crate) fn error_at(&self, kind: ConfigErrorKind, key: &str, message: impl Into<String>) -> ConfigError {
        let message = message.into();
        let message = if self.is_secret_key(key) { crate::redact::scrub_message(&message) } else { message };
        // A URL's password is a secret whatever key holds the URL.
        let message = crate::redact::url_password_redacted(&message).unwrap_or(message);
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
