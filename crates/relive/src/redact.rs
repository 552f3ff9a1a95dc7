//! Redaction of secret values in events, logs and diffs.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde_json::Value;

use crate::error::Error;

/// The text that replaces a redacted value.
pub const REDACTED: &str = "[redacted]";

/// Replaces values under secret-looking keys with `"[redacted]"`.
///
/// Keys are matched case-insensitively against glob patterns; the default
/// patterns are `*password*`, `*secret*`, `*token*` and `*key*`. A matching
/// key's whole value is replaced, whatever its type, so nested secrets under
/// a `credentials_key` table are hidden too. Stored data is never redacted:
/// only what relive shows (events, logs, diffs).
#[derive(Debug, Clone)]
pub struct Redactor {
    set: GlobSet,
    patterns: Vec<String>,
}

impl Redactor {
    /// The default patterns.
    pub const DEFAULT_PATTERNS: [&'static str; 4] = ["*password*", "*secret*", "*token*", "*key*"];

    /// A redactor for `patterns` (globs over key names).
    pub fn new<I, S>(patterns: I) -> Result<Redactor, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut builder = GlobSetBuilder::new();
        let mut kept = Vec::new();
        for pattern in patterns {
            let pattern = pattern.as_ref();
            let glob = GlobBuilder::new(pattern)
                .case_insensitive(true)
                .build()
                .map_err(|e| Error::Pattern { pattern: pattern.to_string(), message: e.to_string() })?;
            builder.add(glob);
            kept.push(pattern.to_string());
        }
        let set = builder.build().map_err(|e| Error::Pattern { pattern: kept.join(","), message: e.to_string() })?;
        Ok(Redactor { set, patterns: kept })
    }

    /// A redactor that hides nothing.
    pub fn none() -> Redactor {
        Redactor { set: GlobSet::empty(), patterns: Vec::new() }
    }

    /// The patterns in use.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// True if values under `key` are secret.
    pub fn is_secret(&self, key: &str) -> bool {
        !self.set.is_empty() && self.set.is_match(key)
    }

    /// Returns `value` with every secret redacted.
    pub fn redact(&self, value: &Value) -> Value {
        let mut out = value.clone();
        self.redact_in_place(&mut out);
        out
    }

    /// Redacts every secret in `value`.
    pub fn redact_in_place(&self, value: &mut Value) {
        if self.set.is_empty() {
            return;
        }
        match value {
            Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    if self.is_secret(key) {
                        *child = Value::String(REDACTED.to_string());
                    } else {
                        self.redact_in_place(child);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.redact_in_place(v)),
            _ => {}
        }
    }
}

impl Default for Redactor {
    fn default() -> Redactor {
        Redactor::new(Redactor::DEFAULT_PATTERNS).expect("default patterns are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn redacts_nested_secrets_case_insensitively() {
        let r = Redactor::default();
        let v = json!({
            "db": {"host": "h", "Password": "p", "pool": [{"api_key": "k", "size": 3}]},
            "auth_token": {"nested": 1},
            "name": "svc"
        });
        let out = r.redact(&v);
        assert_eq!(
            out,
            json!({
                "db": {"host": "h", "Password": REDACTED, "pool": [{"api_key": REDACTED, "size": 3}]},
                "auth_token": REDACTED,
                "name": "svc"
            })
        );
    }

    #[test]
    fn none_hides_nothing_and_bad_pattern_is_an_error() {
        let v = json!({"password": "p"});
        assert_eq!(Redactor::none().redact(&v), v);
        assert!(Redactor::new(["a[b"]).is_err());
    }
}
