//! A document about to be published, and the local check that comes
//! before: parsed by relive exactly as an instance will parse it.

use std::path::{Path, PathBuf};

use relive::{ConfigError, Document, Format, LoadedConfig};
use serde_json::Value;

use crate::Error;
use crate::layout::encode_config;

/// A config document to publish: its format, its bytes, and the name its
/// errors are reported under.
///
/// ```
/// let draft = relive_fleet::Draft::new(relive::Format::Toml, "port = 80\n").origin("server.toml");
/// assert_eq!(draft.check().unwrap().value()["port"], 80);
/// let broken = relive_fleet::Draft::new(relive::Format::Toml, "port = \n").origin("server.toml");
/// assert!(broken.check().unwrap_err().to_string().starts_with("server.toml:1:"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    format: Format,
    document: Vec<u8>,
    origin: PathBuf,
}

impl Draft {
    /// A document of `format`. Its errors name `<document>` until
    /// [`origin`](Draft::origin) says otherwise.
    pub fn new(format: Format, document: impl Into<Vec<u8>>) -> Draft {
        Draft { format, document: document.into(), origin: PathBuf::from("<document>") }
    }

    /// Reads the file at `path`; its extension (`.toml`, `.yaml`, `.yml`,
    /// `.json`) gives the format, and errors name the path.
    pub fn read(path: impl AsRef<Path>) -> Result<Draft, Error> {
        let path = path.as_ref();
        let format = Format::from_path(path).ok_or_else(|| Error::UnknownFormat { path: path.to_path_buf() })?;
        let document = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        Ok(Draft { format, document, origin: path.to_path_buf() })
    }

    /// The name errors are reported under (a file name, `etcd:...@7`).
    pub fn origin(mut self, origin: impl Into<PathBuf>) -> Draft {
        self.origin = origin.into();
        self
    }

    /// The format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The document's bytes.
    pub fn document(&self) -> &[u8] {
        &self.document
    }

    /// The value a config key holds for it: the format header, then the
    /// document.
    pub fn encoded(&self) -> Vec<u8> {
        encode_config(self.format, &self.document)
    }

    /// Parses the document as every instance will: relive's own parser,
    /// within relive's default [`Limits`](relive::Limits). Errors are
    /// located at the origin's line and column.
    ///
    /// A SOPS-encrypted document is checked with the age identities `sops`
    /// would use here: with one that opens it, it is decrypted (its MAC
    /// checked) and parsed like any other; without, its metadata and that
    /// every value that should be encrypted is are checked, and it is
    /// [`sealed`](Checked::sealed): each instance decrypts it with its own
    /// key.
    pub fn check(&self) -> Result<Checked, ConfigError> {
        if relive::sops::sniff(&self.document) {
            let ids = relive::sops::Identities::from_env().unwrap_or_default();
            match relive::sops::check(self.format, &self.document, &ids) {
                Ok(relive::sops::Checked::NoIdentity { recipients }) => {
                    return Ok(Checked { loaded: None, sealed: recipients });
                }
                Ok(_) => {}
                Err(e) if e.kind() == relive::sops::SopsErrorKind::NotSops => {}
                Err(e) => {
                    let mut error = ConfigError::new(relive::ConfigErrorKind::Decrypt, e.message().to_string())
                        .with_file(&self.origin);
                    if let Some(key) = e.key() {
                        error = error.with_key(key);
                    }
                    return Err(error);
                }
            }
        }
        let doc = Document::new(&self.origin, self.format, self.document.clone());
        let loaded = LoadedConfig::from_documents("draft", vec![doc])?;
        Ok(Checked { loaded: Some(loaded), sealed: Vec::new() })
    }
}

/// A document that parsed: its value, and a way to locate errors found
/// later (by a JSON Schema, say) in it.
#[derive(Debug)]
pub struct Checked {
    loaded: Option<LoadedConfig>,
    sealed: Vec<String>,
}

/// The value of a sealed document, which is not known here.
const UNKNOWN: Value = Value::Null;

impl Checked {
    /// The parsed value (decrypted, for a SOPS document opened here); `null`
    /// for a [`sealed`](Checked::sealed) one.
    pub fn value(&self) -> &Value {
        self.loaded.as_ref().map_or(&UNKNOWN, LoadedConfig::value)
    }

    /// For a SOPS document no identity here opens: the age recipients it is
    /// encrypted to. Its shape was checked, not its values nor its MAC.
    pub fn sealed(&self) -> Option<&[String]> {
        (!self.sealed.is_empty()).then_some(self.sealed.as_slice())
    }

    /// An error about `key` (`server.port`, `hosts[2]`; empty for the whole
    /// value), located at the line and column of the document that set it.
    pub fn error_at(&self, key: &str, message: impl Into<String>) -> ConfigError {
        match &self.loaded {
            Some(loaded) => loaded.error_at(key, message),
            None => ConfigError::new(relive::ConfigErrorKind::Invalid, message).with_key(key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_point_at_the_origin_line_and_column() {
        let draft = Draft::new(Format::Yaml, "a: 1\nb: [\n").origin("/tmp/x/server.yaml");
        let e = draft.check().unwrap_err();
        assert_eq!(e.file(), Some(Path::new("/tmp/x/server.yaml")));
        assert!(e.line().is_some(), "{e}");
        let draft = Draft::new(Format::Json, "{\"port\": 1,\n \"hosts\": [\"a\"]}").origin("s.json");
        let checked = draft.check().unwrap();
        assert_eq!(checked.value()["hosts"][0], "a");
        let e = checked.error_at("hosts[0]", "unknown host");
        assert_eq!((e.file(), e.line()), (Some(Path::new("s.json")), Some(2)));
        assert!(e.to_string().starts_with("s.json:2:"), "{e}");
    }

    #[test]
    fn a_document_is_checked_alone_whatever_relive_env_says() {
        let checked = Draft::new(Format::Toml, "").check().unwrap();
        assert_eq!(checked.value(), &serde_json::json!({}));
        assert!(Draft::new(Format::Json, "").check().is_err(), "an empty JSON document is not a document");
        let e = Draft::new(Format::Toml, b"a = \"\xff\"".to_vec()).check().unwrap_err();
        assert_eq!(e.file(), Some(Path::new("<document>")));
    }

    #[test]
    fn reading_a_file_takes_the_format_from_its_extension() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.yml");
        std::fs::write(&path, "port: 1\n").unwrap();
        let draft = Draft::read(&path).unwrap();
        assert_eq!(draft.format(), Format::Yaml);
        assert_eq!(draft.encoded(), b"# relive-format: yaml\nport: 1\n");
        let e = Draft::read(dir.path().join("server.ini")).unwrap_err();
        assert!(e.to_string().contains("name it .toml, .yaml, .yml or .json"), "{e}");
        let e = Draft::read(dir.path().join("missing.toml")).unwrap_err();
        assert!(e.to_string().starts_with(&format!("cannot read {}", dir.path().join("missing.toml").display())));
    }
}
