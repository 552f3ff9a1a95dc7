//! Structural diffs between two config values, addressed by JSON pointer
//! (RFC 6901), with secrets redacted.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::Value;

use crate::redact::{REDACTED, Redactor};

/// What changed between two values of a config: paths added, removed or
/// changed, as JSON pointers (`/server/port`, `/hosts/2`), in path order.
///
/// Values under secret-looking keys (see [`Redactor`]) read `"[redacted]"`:
/// a diff shows *that* a secret changed, never what it was or became.
///
/// Objects are compared key by key and arrays index by index; a value whose
/// type changes (a table becoming a string) is one change at its path.
/// Its `Display` is one line per entry: `+ /a: 1`, `- /b: 2`, `~ /c: 1 -> 2`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Diff {
    entries: Vec<DiffEntry>,
}

/// One path of a [`Diff`].
#[derive(Debug, Clone, PartialEq)]
pub enum DiffEntry {
    /// The path exists only in the newer value.
    Added {
        /// The JSON pointer.
        path: String,
        /// The value added (redacted).
        value: Value,
    },
    /// The path exists only in the older value.
    Removed {
        /// The JSON pointer.
        path: String,
        /// The value removed (redacted).
        value: Value,
    },
    /// The path exists in both, with different values.
    Changed {
        /// The JSON pointer.
        path: String,
        /// The older value (redacted).
        old: Value,
        /// The newer value (redacted).
        new: Value,
    },
}

impl DiffEntry {
    /// The JSON pointer of the entry (`""` is the whole value).
    pub fn path(&self) -> &str {
        match self {
            DiffEntry::Added { path, .. } | DiffEntry::Removed { path, .. } | DiffEntry::Changed { path, .. } => path,
        }
    }
}

impl Diff {
    /// The diff from `old` to `new`, with values under keys that `redactor`
    /// calls secret replaced by `"[redacted]"`.
    pub fn between(old: &Value, new: &Value, redactor: &Redactor) -> Diff {
        Diff::between_secrets(old, new, redactor, &BTreeSet::new())
    }

    /// [`between`](Diff::between), also redacting the values at `secrets`
    /// (JSON pointers of values that were encrypted, whatever their keys).
    pub(crate) fn between_secrets(old: &Value, new: &Value, redactor: &Redactor, secrets: &BTreeSet<String>) -> Diff {
        let mut entries = Vec::new();
        let mask = Mask { redactor, secrets };
        walk(old, new, &mut String::new(), false, &mask, &mut entries);
        Diff { entries }
    }

    pub(crate) fn from_entries(entries: Vec<DiffEntry>) -> Diff {
        Diff { entries }
    }

    /// Every entry, in path order.
    pub fn entries(&self) -> &[DiffEntry] {
        &self.entries
    }

    /// The entry at `path`, if that path changed.
    pub fn get(&self, path: &str) -> Option<&DiffEntry> {
        self.entries.iter().find(|e| e.path() == path)
    }

    /// True if nothing changed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many paths changed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The paths added.
    pub fn added(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().filter(|e| matches!(e, DiffEntry::Added { .. })).map(DiffEntry::path)
    }

    /// The paths removed.
    pub fn removed(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().filter(|e| matches!(e, DiffEntry::Removed { .. })).map(DiffEntry::path)
    }

    /// The paths whose value changed.
    pub fn changed(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().filter(|e| matches!(e, DiffEntry::Changed { .. })).map(DiffEntry::path)
    }
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for entry in &self.entries {
            match entry {
                DiffEntry::Added { path, value } => writeln!(f, "+ {path}: {value}")?,
                DiffEntry::Removed { path, value } => writeln!(f, "- {path}: {value}")?,
                DiffEntry::Changed { path, old, new } => writeln!(f, "~ {path}: {old} -> {new}")?,
            }
        }
        Ok(())
    }
}

/// Escapes one JSON pointer segment (`~` → `~0`, `/` → `~1`).
fn push_segment(path: &mut String, segment: &str) {
    path.push('/');
    for c in segment.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

/// What a diff hides: values under secret key names, and values at secret
/// paths.
struct Mask<'a> {
    redactor: &'a Redactor,
    secrets: &'a BTreeSet<String>,
}

impl Mask<'_> {
    /// A value shown under `path`: the secrets at or under it redacted.
    fn show(&self, v: &Value, path: &str) -> Value {
        if self.secrets.is_empty() {
            return self.redactor.redact(v);
        }
        let under: BTreeSet<String> = self
            .secrets
            .iter()
            .filter_map(|p| p.strip_prefix(path).filter(|rest| rest.is_empty() || rest.starts_with('/')))
            .map(str::to_string)
            .collect();
        self.redactor.redact_secrets(v, &under)
    }
}

/// Appends the differences between `old` and `new` at `path`. `secret` is
/// true under a key the redactor hides, or at a secret path: every value
/// there is redacted whole.
fn walk(old: &Value, new: &Value, path: &mut String, secret: bool, mask: &Mask<'_>, out: &mut Vec<DiffEntry>) {
    let secret = secret || mask.secrets.contains(path.as_str());
    let redactor = mask.redactor;
    let at = path.clone();
    let shown = |v: &Value| if secret { Value::String(REDACTED.to_string()) } else { mask.show(v, &at) };
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))).collect();
            keys.sort();
            for key in keys {
                let len = path.len();
                push_segment(path, key);
                let secret = secret || redactor.is_secret(key) || mask.secrets.contains(path.as_str());
                let here = path.clone();
                let shown = |v: &Value| if secret { Value::String(REDACTED.to_string()) } else { mask.show(v, &here) };
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => walk(x, y, path, secret, mask, out),
                    (Some(x), None) => out.push(DiffEntry::Removed { path: path.clone(), value: shown(x) }),
                    (None, Some(y)) => out.push(DiffEntry::Added { path: path.clone(), value: shown(y) }),
                    (None, None) => {}
                }
                path.truncate(len);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for i in 0..a.len().max(b.len()) {
                let len = path.len();
                push_segment(path, &i.to_string());
                let secret = secret || mask.secrets.contains(path.as_str());
                let here = path.clone();
                let shown = |v: &Value| if secret { Value::String(REDACTED.to_string()) } else { mask.show(v, &here) };
                match (a.get(i), b.get(i)) {
                    (Some(x), Some(y)) => walk(x, y, path, secret, mask, out),
                    (Some(x), None) => out.push(DiffEntry::Removed { path: path.clone(), value: shown(x) }),
                    (None, Some(y)) => out.push(DiffEntry::Added { path: path.clone(), value: shown(y) }),
                    (None, None) => {}
                }
                path.truncate(len);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(DiffEntry::Changed { path: path.clone(), old: shown(a), new: shown(b) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_arrays_and_type_changes() {
        let old = json!({"a": 1, "b": {"c": [1, 2, 3]}, "gone": true, "t": {"x": 1}, "s/l~": 0});
        let new = json!({"a": 2, "b": {"c": [1, 5]}, "added": "x", "t": "flat", "s/l~": 1});
        let d = Diff::between(&old, &new, &Redactor::none());
        assert_eq!(
            d.entries(),
            &[
                DiffEntry::Changed { path: "/a".into(), old: json!(1), new: json!(2) },
                DiffEntry::Added { path: "/added".into(), value: json!("x") },
                DiffEntry::Changed { path: "/b/c/1".into(), old: json!(2), new: json!(5) },
                DiffEntry::Removed { path: "/b/c/2".into(), value: json!(3) },
                DiffEntry::Removed { path: "/gone".into(), value: json!(true) },
                DiffEntry::Changed { path: "/s~1l~0".into(), old: json!(0), new: json!(1) },
                DiffEntry::Changed { path: "/t".into(), old: json!({"x": 1}), new: json!("flat") },
            ]
        );
        assert!(Diff::between(&old, &old, &Redactor::none()).is_empty());
        assert_eq!(d.added().collect::<Vec<_>>(), ["/added"]);
        assert_eq!(d.to_string().lines().next(), Some("~ /a: 1 -> 2"));
    }

    #[test]
    fn secrets_are_redacted_at_any_depth() {
        let r = Redactor::default();
        let old = json!({"db": {"password": "old", "host": "a"}, "creds_key": {"user": "u"}});
        let new = json!({"db": {"password": "new", "host": "b"}, "creds_key": {"user": "v"}, "x": {"token": "t"}});
        let d = Diff::between(&old, &new, &r);
        let text = d.to_string();
        for secret in ["old", "new", "\"u\"", "\"v\"", "\"t\""] {
            assert!(!text.contains(secret), "{secret} leaked in {text}");
        }
        assert_eq!(
            d.get("/db/password"),
            Some(&DiffEntry::Changed { path: "/db/password".into(), old: json!(REDACTED), new: json!(REDACTED) })
        );
        assert_eq!(d.get("/x"), Some(&DiffEntry::Added { path: "/x".into(), value: json!({"token": REDACTED}) }));
        assert!(d.get("/creds_key/user").is_some());
    }
}
