//! Redaction of secret values in events, logs and diffs.

use std::collections::BTreeSet;
use std::sync::Arc;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde_json::Value;

use crate::error::Error;

/// The text that replaces a redacted value.
pub const REDACTED: &str = "[redacted]";

/// Replaces values under secret-looking keys with `"[redacted]"`.
///
/// Keys are matched case-insensitively against glob patterns
/// ([`DEFAULT_PATTERNS`](Redactor::DEFAULT_PATTERNS): passwords, secrets,
/// tokens, keys, credentials, auth headers, cookies, private keys and PEM
/// blocks, DSNs). A matching key's whole value is replaced, whatever its
/// type, so nested secrets under a `credentials` table are hidden too.
/// Whatever the key, a URL's password (`postgres://user:pw@host/db`) is
/// replaced in any string value. Values that came from an encrypted
/// document are redacted by their path. Stored data is never redacted:
/// only what relive shows (events, logs, diffs).
#[derive(Debug, Clone)]
pub struct Redactor {
    set: Arc<GlobSet>,
    patterns: Arc<[String]>,
}

impl Redactor {
    /// The default patterns.
    pub const DEFAULT_PATTERNS: [&'static str; 21] = [
        "*password*",
        "*passwd*",
        "*passphrase*",
        "pass",
        "*_pass",
        "pass_*",
        "*pwd*",
        "*secret*",
        "*token*",
        "*key*",
        "*credential*",
        "auth",
        "*_auth",
        "auth_*",
        "*authorization*",
        "*cookie*",
        "*private*",
        "*pem",
        "*_pem_*",
        "dsn",
        "*_dsn",
    ];

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
        Ok(Redactor { set: Arc::new(set), patterns: kept.into() })
    }

    /// A redactor that hides nothing.
    pub fn none() -> Redactor {
        Redactor { set: Arc::new(GlobSet::empty()), patterns: Arc::from([]) }
    }

    /// The patterns in use.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// True if values under `key` are secret.
    pub fn is_secret(&self, key: &str) -> bool {
        !self.set.is_empty() && self.set.is_match(key)
    }

    /// Returns `value` with every secret redacted: values under secret key
    /// names, and the values at `secrets` (JSON pointers of values that are
    /// secret because of where they came from: a SOPS file, a reference).
    pub(crate) fn redact_secrets(&self, value: &Value, secrets: &BTreeSet<String>) -> Value {
        let mut out = value.clone();
        self.redact_in_place(&mut out);
        for pointer in secrets {
            if let Some(v) = out.pointer_mut(pointer) {
                *v = Value::String(REDACTED.to_string());
            }
        }
        out
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
            Value::String(text) => {
                if let Some(hidden) = url_password_redacted(text) {
                    *text = hidden;
                }
            }
            _ => {}
        }
    }
}

/// `text` with the password of a URL in it replaced, if it holds one
/// (`scheme://user:password@host`, anywhere in the text).
pub(crate) fn url_password_redacted(text: &str) -> Option<String> {
    let mut out: Option<String> = None;
    let mut rest = text;
    let mut done = 0;
    while let Some(at) = rest.find("://") {
        let start = done + at + 3;
        let authority_end = text[start..].find(['/', '?', '#', ' ', '"', '\'']).map_or(text.len(), |i| start + i);
        let authority = &text[start..authority_end];
        if let Some(userinfo_end) = authority.rfind('@') {
            if let Some(colon) = authority[..userinfo_end].find(':') {
                let buf = out.get_or_insert_with(|| text.to_string());
                // Offsets into `text` hold in `buf` only up to the first
                // replacement; later ones are found again on `buf`.
                let (from, to) = (start + colon + 1, start + userinfo_end);
                let shift = buf.len() as isize - text.len() as isize;
                let (from, to) = ((from as isize + shift) as usize, (to as isize + shift) as usize);
                buf.replace_range(from..to, REDACTED);
            }
        }
        done = authority_end;
        rest = &text[authority_end..];
    }
    out
}

/// Appends one JSON pointer segment (`~` → `~0`, `/` → `~1`).
pub(crate) fn push_pointer_segment(pointer: &mut String, segment: &str) {
    pointer.push('/');
    for c in segment.chars() {
        match c {
            '~' => pointer.push_str("~0"),
            '/' => pointer.push_str("~1"),
            c => pointer.push(c),
        }
    }
}

/// A message about a secret with the value taken out: text in double or
/// single quotes or back-ticks, and a number or word that opens the
/// message (JSON Schema starts with the instance: `5 is less than …`), are
/// replaced by `[redacted]`. What is left says which rule failed.
pub(crate) fn scrub_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars().peekable();
    // The first token, if it is not a word of the message's own: serde's
    // messages start with a lowercase word ("invalid type"), JSON Schema's
    // with the value.
    let first: String = message.chars().take_while(|c| !c.is_whitespace()).collect();
    let opens_with_value = !first.is_empty()
        && !first.starts_with(['"', '\'', '`'])
        && !first.chars().all(|c| c.is_ascii_lowercase() || c == ':' || c == ',');
    if opens_with_value {
        out.push_str(REDACTED);
        for _ in 0..first.chars().count() {
            chars.next();
        }
    }
    while let Some(c) = chars.next() {
        match c {
            '"' | '`' | '\'' => {
                // Skip to the closing quote (a backslash escapes one), and
                // put the marker in the value's place.
                let mut escaped = false;
                for d in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if d == '\\' {
                        escaped = true;
                    } else if d == c {
                        break;
                    }
                }
                out.push_str(REDACTED);
            }
            c => out.push(c),
        }
    }
    out
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
    fn messages_about_secrets_lose_their_values() {
        for (message, leaked) in [
            ("invalid type: string \"hunter2\", expected u16", "hunter2"),
            ("invalid value: integer `1234`, expected a string", "1234"),
            ("\"pk_test_x\" does not match \"^sk_live_\"", "pk_test_x"),
            ("5150 is less than the minimum of 10000", "5150"),
            ("unknown variant `s3cr3t`, expected one of `a`, `b`", "s3cr3t"),
            ("'it''s' is not allowed", "it"),
        ] {
            let scrubbed = scrub_message(message);
            assert!(!scrubbed.contains(leaked), "{leaked} in {scrubbed}");
            assert!(scrubbed.contains(REDACTED), "{scrubbed}");
        }
        assert_eq!(
            scrub_message("invalid type: string \"x\", expected u16"),
            "invalid type: string [redacted], expected u16"
        );
        assert_eq!(scrub_message("missing field `port`"), "missing field [redacted]");
    }

    #[test]
    fn secrets_by_pointer_are_redacted_whatever_their_key() {
        let v = json!({"db": {"host": "h", "pass": "x"}, "list": ["a", "b"]});
        let secrets: BTreeSet<String> = ["/db/pass".to_string(), "/list/1".to_string()].into();
        let out = Redactor::none().redact_secrets(&v, &secrets);
        assert_eq!(out, json!({"db": {"host": "h", "pass": REDACTED}, "list": ["a", REDACTED]}));
    }

    #[test]
    fn common_secret_names_are_redacted_by_default() {
        let r = Redactor::default();
        for key in [
            "passwd",
            "db_pwd",
            "pass",
            "smtp_pass",
            "pass_phrase",
            "credentials",
            "aws_credentials",
            "auth",
            "basic_auth",
            "Authorization",
            "cookie",
            "session_cookie",
            "private_key",
            "tls_key_pem",
            "cert_pem",
            "dsn",
            "sentry_dsn",
            "api_key",
            "PASSWORD",
        ] {
            assert!(r.is_secret(key), "{key} is a secret");
        }
        for key in ["port", "host", "name", "compass_heading", "url", "pool_size", "author"] {
            assert!(!r.is_secret(key), "{key} is not");
        }
    }

    #[test]
    fn a_url_s_password_is_redacted_in_any_value() {
        let r = Redactor::default();
        let v = json!({
            "database_url": "postgres://app:hunter2@db:5432/main",
            "mirrors": ["https://u:p4ss@a.example/x", "https://b.example/y", "redis://:onlypw@cache"],
            "note": "see http://x:y@h and ftp://anon@h",
        });
        let out = r.redact(&v).to_string();
        for leaked in ["hunter2", "p4ss", "onlypw", ":y@"] {
            assert!(!out.contains(leaked), "{leaked} in {out}");
        }
        assert!(out.contains("postgres://app:[redacted]@db:5432/main"), "{out}");
        assert!(out.contains("https://b.example/y") && out.contains("ftp://anon@h"), "{out}");
    }

    #[test]
    fn none_hides_nothing_and_bad_pattern_is_an_error() {
        let v = json!({"password": "p"});
        assert_eq!(Redactor::none().redact(&v), v);
        assert!(Redactor::new(["a[b"]).is_err());
    }
}
