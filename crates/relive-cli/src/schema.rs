//! JSON Schemas for configs: `config/<name>.schema.json`, checked against
//! the merged value of config `<name>`.
//!
//! A schema error names its place in the value as a JSON pointer; it is
//! turned into the library's key path (`server.port`, `hosts[2]`), which the
//! library points at the file, line and column that set the key: through
//! [`relive::LoadedConfig::error_at`] in `check`, and as a
//! [`relive::ValidationError::at`] from a running engine's validator in
//! `watch`.

use std::path::Path;
use std::sync::Arc;

use relive::{ConfigError, ConfigErrorKind, ValidationError};
use serde_json::Value;

/// How many schema errors are reported for one config.
pub const MAX_ERRORS: usize = 50;

/// A compiled schema.
#[derive(Clone)]
pub struct Schema {
    validator: Arc<jsonschema::Validator>,
}

/// One schema error: the key path it is about and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// The library's key path (`a.b[2]`); empty for the whole value.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl Schema {
    /// Reads and compiles the schema at `path`. `$ref`s to other local
    /// files resolve relative to it.
    pub fn load(path: &Path) -> Result<Schema, ConfigError> {
        let error = |kind, message: String| ConfigError::new(kind, message).with_file(path);
        let text = std::fs::read_to_string(path)
            .map_err(|e| error(ConfigErrorKind::Io, format!("cannot read schema: {e}")))?;
        let schema: Value = serde_json::from_str(&text).map_err(|e| {
            let message = format!("schema is not valid JSON: {}", strip_position(&e.to_string()));
            error(ConfigErrorKind::Syntax, message).with_position(e.line(), e.column())
        })?;
        let validator = jsonschema::options()
            .with_base_uri(file_uri(path))
            .build(&schema)
            .map_err(|e| error(ConfigErrorKind::Invalid, format!("invalid schema: {e}")))?;
        Ok(Schema { validator: Arc::new(validator) })
    }

    /// The errors of `value`, at most [`MAX_ERRORS`].
    pub fn errors(&self, value: &Value) -> Vec<SchemaError> {
        self.validator
            .iter_errors(value)
            .take(MAX_ERRORS)
            .map(|e| SchemaError { key: pointer_to_key(value, e.instance_path().as_str()), message: e.to_string() })
            .collect()
    }

    /// A validator for [`relive::ConfigBuilder::validate`]: rejects a value
    /// with its first schema error, at its key.
    pub fn validator(&self) -> impl Fn(&Value) -> Result<(), ValidationError> + Send + Sync + 'static {
        let schema = self.clone();
        move |value: &Value| match schema.validator.iter_errors(value).next() {
            None => Ok(()),
            Some(e) => Err(ValidationError::at(pointer_to_key(value, e.instance_path().as_str()), e.to_string())),
        }
    }
}

/// `/server/hosts/2/name` in `value` as `server.hosts[2].name`: a segment
/// is an index only where the value there is an array, and keys that the
/// dotted form cannot hold are quoted (`a["b.c"]`).
pub fn pointer_to_key(value: &Value, pointer: &str) -> String {
    let mut key = String::new();
    let mut at = Some(value);
    for raw in pointer.split('/').skip(1) {
        let segment = raw.replace("~1", "/").replace("~0", "~");
        match (at, segment.parse::<usize>()) {
            (Some(Value::Array(items)), Ok(index)) => {
                key.push_str(&format!("[{index}]"));
                at = items.get(index);
            }
            (current, _) => {
                if segment.is_empty() || segment.contains(['.', '[', ']', '"']) {
                    key.push_str(&format!("[\"{segment}\"]"));
                } else {
                    if !key.is_empty() {
                        key.push('.');
                    }
                    key.push_str(&segment);
                }
                at = current.and_then(|v| v.get(&segment));
            }
        }
    }
    key
}

/// serde_json ends its messages with ` at line L column C`, which is shown
/// as the position instead.
fn strip_position(message: &str) -> &str {
    message.find(" at line ").map_or(message, |at| &message[..at])
}

/// `path` as a `file://` URI, with the bytes a URI path cannot hold
/// percent-encoded.
fn file_uri(path: &Path) -> String {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut uri = String::from("file://");
    for byte in absolute.to_string_lossy().bytes() {
        if byte.is_ascii_alphanumeric() || b"/-._~".contains(&byte) {
            uri.push(byte as char);
        } else {
            uri.push_str(&format!("%{byte:02X}"));
        }
    }
    uri
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointers_become_key_paths() {
        let v = json!({"server": {"hosts": [{"name": 1}], "2": true, "a.b": 0}});
        assert_eq!(pointer_to_key(&v, ""), "");
        assert_eq!(pointer_to_key(&v, "/server/hosts/0/name"), "server.hosts[0].name");
        assert_eq!(pointer_to_key(&v, "/server/2"), "server.2");
        assert_eq!(pointer_to_key(&v, "/server/a.b"), "server[\"a.b\"]");
        assert_eq!(pointer_to_key(&v, "/x~1y"), "x/y");
    }

    #[test]
    fn reports_every_error_at_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.schema.json");
        std::fs::write(
            &path,
            r#"{"type":"object","required":["name"],"properties":{"port":{"type":"integer","maximum":65535}}}"#,
        )
        .unwrap();
        let schema = Schema::load(&path).unwrap();
        let errors = schema.errors(&json!({"port": 70000}));
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys.len(), 2, "{errors:?}");
        assert!(keys.contains(&"port") && keys.contains(&""));
        assert!(schema.validator()(&json!({"name": "x", "port": 1})).is_ok());
    }

    #[test]
    fn a_broken_schema_is_located() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.schema.json");
        std::fs::write(&path, "{\n  \"type\": \n}").unwrap();
        let e = Schema::load(&path).err().unwrap();
        assert_eq!((e.line(), e.column()), (Some(3), Some(1)));
        std::fs::write(&path, r#"{"type": "nonsense"}"#).unwrap();
        assert!(Schema::load(&path).err().unwrap().message().starts_with("invalid schema"));
    }
}
