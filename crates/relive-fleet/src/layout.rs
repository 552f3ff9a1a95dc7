//! Where a fleet keeps its state in etcd, and how values are encoded.
//!
//! Everything an application's fleet shares lives under one prefix
//! (`/shop`, `/teams/payments`):
//!
//! | key | value |
//! | --- | --- |
//! | `/<prefix>/configs/<name>` | a format header line, then the config document's bytes |
//! | `/<prefix>/instances/<id>/<name>` | the instance's [`StatusRecord`] for that config, as JSON, attached to the instance's lease |
//! | `/<prefix>/canary/<name>` | a [`Canary`] of that config in progress, as JSON: the canary document and the instances it goes to |
//! | `/<prefix>/rollout/<name>` | the [`Rollout`](crate::Rollout) of that config, as JSON: its plan, wave, instances and phase (the last one stays after it ends) |
//!
//! A config's version is the `mod_revision` of its key: etcd numbers every
//! write, so two versions never share a number and later ones are greater.
//!
//! The value of a config key starts with a header line that names its
//! format, `# relive-format: toml` (or `yaml`, `json`), followed by a newline
//! and the document exactly as its author wrote it. The header is a comment
//! in TOML and YAML, and one key holds both, so a format and its bytes
//! always change together, in one revision. relive strips the header before
//! parsing, so errors point at the document's own lines. A second header
//! line, `# relive-by: alice@laptop` ([`AUTHOR_HEADER`]), says who wrote the
//! version; operators' writes add it, a value put by hand may lack it. A
//! push adds a third, `# relive-push: <32 hex digits>` ([`PUSH_HEADER`]):
//! an id unique to that push, by which a push whose answer was lost finds
//! the version it wrote (one push is one version, however often it sends
//! its transaction).
//!
//! The etcd roles of a fleet ([`Layout::role_name`]) follow this layout:
//! operators read and write `configs/`, `canary/` and `rollout/` and read
//! `instances/`; an instance reads [`Layout::source_range`] and writes its
//! own `instances/<id>/`.
//!
//! An instance keeps one status key per config it serves, rather than one
//! key for all: each key is written only when that config's version is
//! applied or rejected, so acknowledgements of two configs never overwrite
//! each other, and `/<prefix>/instances/<id>/` lists one instance.
//!
//! A canary is one key, so the document and the instances it goes to
//! change together, and its version is that key's `mod_revision`. The
//! instances it names serve that version while the key exists; every other
//! instance, and any instance that joins later, serves the config key's.
//! Promoting a canary writes its document to the config key and deletes the
//! canary key in one transaction; aborting deletes the canary key.
//!
//! Instances watch one key range, [`Layout::source_range`]: from
//! `/<prefix>/canary/` to the end of `/<prefix>/configs/`. It holds the
//! canary and config keys and nothing else of the prefix (`instances/`
//! sorts after it), so one watch, with one revision to resume from, sees
//! both, and every instance's acknowledgements stay out of every other
//! instance's watch.
//!
//! A progressive rollout keeps its state in `/<prefix>/rollout/<name>`,
//! outside the instances' range: it is the operator's, and every step of
//! it is one transaction that compares that key's `mod_revision` with the
//! one the step read, so two drivers never both advance it.

use std::collections::BTreeMap;

use relive::Format;
use serde::{Deserialize, Serialize};

/// The first bytes of a config value's header line.
pub const FORMAT_HEADER: &str = "# relive-format: ";

/// The keys of one application's fleet, under its prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Normalized: a leading `/`, no trailing `/`.
    prefix: String,
}

/// A name, prefix or instance id that cannot be used as part of a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} `{value}`: {reason}")]
pub struct InvalidName {
    /// What was being checked: `prefix`, `config name`, `instance id`.
    pub what: &'static str,
    /// The value as given.
    pub value: String,
    /// Why it is refused.
    pub reason: &'static str,
}

impl Layout {
    /// The layout under `prefix`. Leading and trailing slashes are optional
    /// (`shop`, `/shop` and `/shop/` are the same prefix); the prefix may
    /// have several segments, none empty, `.` or `..`.
    pub fn new(prefix: &str) -> Result<Layout, InvalidName> {
        let trimmed = prefix.trim_matches('/');
        if trimmed.is_empty() {
            return Err(invalid("prefix", prefix, "must not be empty"));
        }
        check_segments("prefix", prefix, trimmed)?;
        Ok(Layout { prefix: format!("/{trimmed}") })
    }

    /// The prefix, with a leading `/` and no trailing one.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `/<prefix>/configs/`: every config key starts with it.
    pub fn configs_prefix(&self) -> String {
        format!("{}/configs/", self.prefix)
    }

    /// `/<prefix>/configs/<name>`.
    pub fn config_key(&self, name: &str) -> Result<String, InvalidName> {
        check_config_name(name)?;
        Ok(format!("{}{name}", self.configs_prefix()))
    }

    /// The config name of a key under [`configs_prefix`](Layout::configs_prefix),
    /// or `None` for any other key or an unusable name.
    pub fn config_name<'k>(&self, key: &'k [u8]) -> Option<&'k str> {
        name_under(&self.configs_prefix(), key)
    }

    /// `/<prefix>/canary/`: every canary key starts with it.
    pub fn canary_prefix(&self) -> String {
        format!("{}/canary/", self.prefix)
    }

    /// `/<prefix>/canary/<name>`: the canary of config `name`, while one is
    /// in progress.
    pub fn canary_key(&self, name: &str) -> Result<String, InvalidName> {
        check_config_name(name)?;
        Ok(format!("{}{name}", self.canary_prefix()))
    }

    /// The config name of a key under [`canary_prefix`](Layout::canary_prefix),
    /// or `None` for any other key or an unusable name.
    pub fn canary_name<'k>(&self, key: &'k [u8]) -> Option<&'k str> {
        name_under(&self.canary_prefix(), key)
    }

    /// The key range instances read and watch, `[start, end)`: every canary
    /// and config key, and no status key.
    pub fn source_range(&self) -> (String, String) {
        // `/p/canary/` < `/p/configs/` < `/p/configs0` (`0` follows `/`)
        // < `/p/instances/`.
        (self.canary_prefix(), format!("{}/configs0", self.prefix))
    }

    /// `/<prefix>/rollout/`: every rollout key starts with it.
    pub fn rollout_prefix(&self) -> String {
        format!("{}/rollout/", self.prefix)
    }

    /// `/<prefix>/rollout/<name>`: the progressive rollout of config `name`
    /// (in progress, or the last one, ended).
    pub fn rollout_key(&self, name: &str) -> Result<String, InvalidName> {
        check_config_name(name)?;
        Ok(format!("{}{name}", self.rollout_prefix()))
    }

    /// `/<prefix>/instances/`: every status key starts with it.
    pub fn instances_prefix(&self) -> String {
        format!("{}/instances/", self.prefix)
    }

    /// `/<prefix>/instances/<id>/`: the status keys of one instance.
    pub fn instance_prefix(&self, instance: &str) -> Result<String, InvalidName> {
        check_instance_id(instance)?;
        Ok(format!("{}{instance}/", self.instances_prefix()))
    }

    /// `/<prefix>/instances/<id>/<name>`: what `instance` did with config `name`.
    pub fn status_key(&self, instance: &str, name: &str) -> Result<String, InvalidName> {
        check_config_name(name)?;
        Ok(format!("{}{name}", self.instance_prefix(instance)?))
    }

    /// The instance id and config name of a status key.
    pub fn parse_status_key<'k>(&self, key: &'k [u8]) -> Option<(&'k str, &'k str)> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(self.instances_prefix().as_str())?;
        let (instance, name) = rest.split_once('/')?;
        check_instance_id(instance).ok()?;
        check_config_name(name).ok()?;
        Some((instance, name))
    }
}

/// The config name after `prefix` in `key`, if it is one.
fn name_under<'k>(prefix: &str, key: &'k [u8]) -> Option<&'k str> {
    let name = std::str::from_utf8(key).ok()?.strip_prefix(prefix)?;
    check_config_name(name).ok()?;
    Some(name)
}

/// Checks a config name: segments separated by `/` (`db/main`), none empty,
/// `.` or `..`, and no control characters.
pub fn check_config_name(name: &str) -> Result<(), InvalidName> {
    if name.is_empty() {
        return Err(invalid("config name", name, "must not be empty"));
    }
    check_segments("config name", name, name)
}

/// Checks an instance id: not empty, no `/`, not `.` or `..`, no control
/// characters.
pub fn check_instance_id(id: &str) -> Result<(), InvalidName> {
    if id.is_empty() {
        return Err(invalid("instance id", id, "must not be empty"));
    }
    if id.contains('/') {
        return Err(invalid("instance id", id, "must not contain `/`"));
    }
    check_segments("instance id", id, id)
}

fn check_segments(what: &'static str, value: &str, path: &str) -> Result<(), InvalidName> {
    if value.chars().any(char::is_control) {
        return Err(invalid(what, value, "must not contain control characters"));
    }
    for segment in path.split('/') {
        match segment {
            "" => return Err(invalid(what, value, "must not have an empty segment")),
            "." | ".." => return Err(invalid(what, value, "must not have a `.` or `..` segment")),
            _ => {}
        }
    }
    Ok(())
}

fn invalid(what: &'static str, value: &str, reason: &'static str) -> InvalidName {
    InvalidName { what, value: value.to_string(), reason }
}

/// A config value as stored: the header line naming `format`, then `document`.
pub fn encode_config(format: Format, document: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(FORMAT_HEADER.len() + 5 + document.len());
    value.extend_from_slice(FORMAT_HEADER.as_bytes());
    value.extend_from_slice(format.name().as_bytes());
    value.push(b'\n');
    value.extend_from_slice(document);
    value
}

/// The first bytes of the optional second header line: who wrote the
/// version (`# relive-by: alice@laptop`).
pub const AUTHOR_HEADER: &str = "# relive-by: ";

/// `value` (a stored config value) with its author line set to `by`
/// (control characters dropped): the format line, `# relive-by: <by>`,
/// then the document. A value without a format header is returned as it
/// is.
pub fn with_author(value: &[u8], by: &str) -> Vec<u8> {
    let Ok((format, document)) = decode_config(value) else { return value.to_vec() };
    let by: String = by.chars().filter(|c| !c.is_control()).collect();
    let mut out = Vec::with_capacity(value.len() + AUTHOR_HEADER.len() + by.len() + 1);
    out.extend_from_slice(FORMAT_HEADER.as_bytes());
    out.extend_from_slice(format.name().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(AUTHOR_HEADER.as_bytes());
    out.extend_from_slice(by.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(document);
    out
}

/// The first bytes of the optional third header line: the push that wrote
/// the version (`# relive-push: 9f86d081884c7d65...`, 32 hex digits), unique
/// to one call of `Fleet::push`, `Fleet::rollback`, `Fleet::push_set`,
/// `Fleet::canary` (in the canary's document) or `Fleet::promote`, however
/// often it sends its transaction. A push whose answer was lost reads the key back and
/// knows its own version by it, so it neither writes a second version nor
/// reports a conflict with itself.
pub const PUSH_HEADER: &str = "# relive-push: ";

/// `value` (a stored config value) with its header set to: the format
/// line, `# relive-by: <by>` (control characters dropped), `# relive-push:
/// <push>` (ASCII letters and digits only), then the document. A value
/// without a format header is returned as it is.
pub fn with_author_and_push(value: &[u8], by: &str, push: &str) -> Vec<u8> {
    let Ok((format, document)) = decode_config(value) else { return value.to_vec() };
    let push: String = push.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let header = with_author(&encode_config(format, b""), by);
    let mut out = Vec::with_capacity(header.len() + PUSH_HEADER.len() + push.len() + 1 + document.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(PUSH_HEADER.as_bytes());
    out.extend_from_slice(push.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(document);
    out
}

/// The header line of a stored config value that starts with `prefix`
/// (after the format line), without the prefix.
fn header_line<'v>(value: &'v [u8], prefix: &str) -> Option<&'v [u8]> {
    let rest = value.strip_prefix(FORMAT_HEADER.as_bytes())?;
    let mut rest = &rest[rest.iter().position(|&b| b == b'\n')? + 1..];
    while let Some(kind) = [AUTHOR_HEADER, PUSH_HEADER].into_iter().find(|h| rest.starts_with(h.as_bytes())) {
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        if kind == prefix {
            return Some(&rest[kind.len()..end]);
        }
        rest = &rest[(end + 1).min(rest.len())..];
    }
    None
}

/// Who wrote a stored config value, from its author line, if it has one
/// (a value put with `etcdctl` has none).
pub fn config_author(value: &[u8]) -> Option<String> {
    let line = header_line(value, AUTHOR_HEADER)?;
    // Anyone who may write the key may write this line: no control
    // characters reach a terminal from it.
    Some(String::from_utf8_lossy(line).chars().filter(|c| !c.is_control()).collect::<String>().trim().to_string())
}

/// The push id of a stored config value ([`PUSH_HEADER`]), if it has one.
pub fn push_id(value: &[u8]) -> Option<String> {
    let line = header_line(value, PUSH_HEADER)?;
    Some(String::from_utf8_lossy(line).trim().to_string())
}

/// Splits a stored config value into its format and its document's bytes
/// (after the author line, if any). Fails with a message (for the
/// instance's rejection) when the header is missing or names an unknown
/// format.
pub fn decode_config(value: &[u8]) -> Result<(Format, &[u8]), String> {
    let Some(rest) = value.strip_prefix(FORMAT_HEADER.as_bytes()) else {
        return Err(format!("missing format header: the value must start with `{FORMAT_HEADER}toml` (or yaml, json)"));
    };
    let (line, document) = match rest.iter().position(|&b| b == b'\n') {
        Some(end) => (&rest[..end], &rest[end + 1..]),
        None => (rest, &[][..]),
    };
    let name = String::from_utf8_lossy(line);
    let format = match name.trim() {
        "toml" => Format::Toml,
        "yaml" | "yml" => Format::Yaml,
        "json" => Format::Json,
        // The name is quoted only when it looks like one: the line runs to
        // the first newline, and a value without one would put the whole
        // document (a secret, megabytes) in every instance's status.
        other if other.len() <= 16 && other.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) => {
            return Err(format!("unknown format `{other}` in header (expected toml, yaml or json)"));
        }
        _ => {
            return Err(format!(
                "unknown format in header (a {}-byte line; expected `{FORMAT_HEADER}toml` (or yaml, json) and a newline)",
                line.len()
            ));
        }
    };
    // The author and push lines are part of the header: the document
    // starts after them.
    let mut document = document;
    while let Some(line) = [AUTHOR_HEADER, PUSH_HEADER].iter().find_map(|h| document.strip_prefix(h.as_bytes())) {
        document = line.iter().position(|&b| b == b'\n').map_or(&[][..], |end| &line[end + 1..]);
    }
    Ok((format, document))
}

/// What an instance did with a version of a config: the value of its
/// status key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRecord {
    /// The instance's id.
    pub instance: String,
    /// The host it runs on.
    pub host: String,
    /// The config's name.
    pub config: String,
    /// The version this report answers: the one just applied or rejected.
    pub version: u64,
    /// The version the instance serves now (its last good one), if any.
    pub applied_version: Option<u64>,
    /// Whether `version` was applied or rejected.
    pub state: AckState,
    /// Why `version` was rejected (`etcd:/shop/configs/server:3:11: ...`).
    pub error: Option<String>,
    /// When, in RFC 3339 (UTC).
    pub at: String,
    /// The instance's labels (`zone=a`), which a rollout's waves can
    /// select by ([`FleetSourceBuilder::label`](crate::FleetSourceBuilder::label)).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Whether an instance applied or rejected a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckState {
    /// The version is live on the instance.
    Applied,
    /// The instance refused it and serves its last good version.
    Rejected,
}

/// The value of a status key.
#[deprecated(note = "renamed `StatusRecord`")]
pub type Status = StatusRecord;

/// Whether an instance applied or rejected a version.
#[deprecated(note = "renamed `AckState`")]
pub type State = AckState;

impl StatusRecord {
    /// The status as stored in etcd.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a status always serializes")
    }

    /// A status read from etcd.
    pub fn from_json(bytes: &[u8]) -> Result<StatusRecord, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// A canary in progress: the value of `/<prefix>/canary/<name>`.
///
/// Its version is the canary key's `mod_revision`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canary {
    /// The canary document as a config key would hold it: the format header
    /// line, then the document.
    pub value: String,
    /// The instances that serve it, sorted.
    pub instances: Vec<String>,
    /// The config key's version when the canary started: what the others
    /// serve.
    pub base_version: u64,
    /// The percentage the instances were chosen by, if they were.
    pub percent: Option<u8>,
    /// Who started it (`alice@laptop`).
    pub by: String,
    /// When, in RFC 3339 (UTC).
    pub at: String,
    /// Set when a rollout stopped: why. The canary then goes to no
    /// instance ([`instances`](Canary::instances) is empty) and the
    /// instances it went to ([`returning`](Canary::returning)) say, when
    /// they return to the stable version, `rollout aborted: <why>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted: Option<String>,
    /// The instances returning to the stable version after an abort.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub returning: Vec<String>,
}

impl Canary {
    /// Whether `instance` serves the canary.
    pub fn includes(&self, instance: &str) -> bool {
        self.instances.binary_search_by(|i| i.as_str().cmp(instance)).is_ok()
    }

    /// The canary as stored in etcd.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a canary always serializes")
    }

    /// A canary read from etcd. Its instances are sorted again, whoever
    /// wrote it.
    pub fn from_json(bytes: &[u8]) -> Result<Canary, serde_json::Error> {
        let mut canary: Canary = serde_json::from_slice(bytes)?;
        canary.instances.sort();
        canary.instances.dedup();
        Ok(canary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_normalized() {
        for p in ["shop", "/shop", "/shop/", "shop//"] {
            assert_eq!(Layout::new(p).unwrap().prefix(), "/shop", "{p}");
        }
        assert_eq!(Layout::new("teams/payments").unwrap().prefix(), "/teams/payments");
        for bad in ["", "/", "a//b", "a/../b", "./a"] {
            assert!(Layout::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn config_keys_round_trip() {
        let l = Layout::new("shop").unwrap();
        assert_eq!(l.configs_prefix(), "/shop/configs/");
        assert_eq!(l.config_key("server").unwrap(), "/shop/configs/server");
        assert_eq!(l.config_key("db/main").unwrap(), "/shop/configs/db/main");
        assert_eq!(l.config_name(b"/shop/configs/db/main"), Some("db/main"));
        assert_eq!(l.config_name(b"/shop/configs/"), None);
        assert_eq!(l.config_name(b"/shop/configs/a/../b"), None);
        assert_eq!(l.config_name(b"/shopx/configs/a"), None);
        assert_eq!(l.config_name(b"/shop/instances/a/b"), None);
        assert!(l.config_key("").is_err());
        assert!(l.config_key("a/").is_err());
        assert!(l.config_key("..").is_err());
    }

    #[test]
    fn status_keys_round_trip() {
        let l = Layout::new("/shop/").unwrap();
        let key = l.status_key("web-1", "db/main").unwrap();
        assert_eq!(key, "/shop/instances/web-1/db/main");
        assert_eq!(l.parse_status_key(key.as_bytes()), Some(("web-1", "db/main")));
        assert_eq!(l.instance_prefix("web-1").unwrap(), "/shop/instances/web-1/");
        assert_eq!(l.parse_status_key(b"/shop/instances/web-1"), None);
        assert!(l.status_key("a/b", "server").is_err());
        assert!(l.status_key("", "server").is_err());
        assert!(l.status_key("..", "server").is_err());
        assert!(l.status_key("web\n1", "server").is_err());
    }

    #[test]
    fn canary_keys_round_trip_and_the_source_range_holds_canaries_and_configs_only() {
        let l = Layout::new("shop").unwrap();
        let key = l.canary_key("db/main").unwrap();
        assert_eq!(key, "/shop/canary/db/main");
        assert_eq!(l.canary_name(key.as_bytes()), Some("db/main"));
        assert_eq!(l.canary_name(b"/shop/configs/db"), None);
        assert_eq!(l.config_name(key.as_bytes()), None);
        let (start, end) = l.source_range();
        let inside = |k: &str| start.as_str() <= k && k < end.as_str();
        assert!(inside(&l.canary_key("a").unwrap()));
        assert!(inside(&l.config_key("a").unwrap()));
        assert!(inside(&l.config_key("zzz/\u{10ffff}").unwrap()));
        assert!(!inside(&l.status_key("a", "a").unwrap()));
        assert!(!inside("/shop/rollout/a"));
        assert!(!inside("/shopx/configs/a"));
    }

    #[test]
    fn canaries_round_trip_with_sorted_instances() {
        let canary = Canary {
            value: "# relive-format: toml\nport = 2\n".into(),
            instances: vec!["web-2".into(), "web-1".into(), "web-2".into()],
            base_version: 5,
            percent: Some(10),
            by: "alice@laptop".into(),
            at: "2026-01-01T00:00:00.000Z".into(),
            aborted: None,
            returning: Vec::new(),
        };
        let back = Canary::from_json(&canary.to_json()).unwrap();
        assert_eq!(back.instances, ["web-1", "web-2"]);
        assert!(back.includes("web-2") && !back.includes("web-3"));
        assert_eq!(back.base_version, 5);
        assert!(Canary::from_json(b"{}").is_err());
    }

    #[test]
    fn config_values_round_trip() {
        let value = encode_config(Format::Toml, b"port = 1\n");
        assert_eq!(value, b"# relive-format: toml\nport = 1\n");
        assert_eq!(decode_config(&value).unwrap(), (Format::Toml, &b"port = 1\n"[..]));
        let value = encode_config(Format::Json, b"{}");
        assert_eq!(decode_config(&value).unwrap(), (Format::Json, &b"{}"[..]));
        assert_eq!(decode_config(b"# relive-format: yml").unwrap(), (Format::Yaml, &b""[..]));
        assert_eq!(decode_config(b"# relive-format: yaml \r\na: 1").unwrap(), (Format::Yaml, &b"a: 1"[..]));
    }

    #[test]
    fn the_author_line_is_part_of_the_header() {
        let value = with_author(&encode_config(Format::Toml, b"port = 1\n"), "alice@laptop");
        assert_eq!(value, b"# relive-format: toml\n# relive-by: alice@laptop\nport = 1\n");
        assert_eq!(decode_config(&value).unwrap(), (Format::Toml, &b"port = 1\n"[..]));
        assert_eq!(config_author(&value).as_deref(), Some("alice@laptop"));
        // Set again, it replaces the line; a newline cannot forge another.
        let again = with_author(&value, "bob@h\n# relive-by: mallory");
        assert_eq!(config_author(&again).as_deref(), Some("bob@h# relive-by: mallory"));
        assert_eq!(decode_config(&again).unwrap().1, b"port = 1\n");
        assert_eq!(config_author(&encode_config(Format::Json, b"{}")), None);
    }

    #[test]
    fn the_push_line_is_part_of_the_header() {
        let value = with_author_and_push(&encode_config(Format::Json, b"{}"), "alice@laptop", "00ff\n# x");
        assert_eq!(value, b"# relive-format: json\n# relive-by: alice@laptop\n# relive-push: 00ffx\n{}");
        assert_eq!(decode_config(&value).unwrap(), (Format::Json, &b"{}"[..]));
        assert_eq!(config_author(&value).as_deref(), Some("alice@laptop"));
        assert_eq!(push_id(&value).as_deref(), Some("00ffx"));
        // Pushed again (a rollback), the line is replaced, not added.
        let again = with_author_and_push(&value, "bob@h", "abc");
        assert_eq!(again, b"# relive-format: json\n# relive-by: bob@h\n# relive-push: abc\n{}");
        assert_eq!(push_id(&with_author(&value, "bob@h")), None);
        // Only the header counts: a document line that looks like one does not.
        assert_eq!(push_id(&encode_config(Format::Toml, b"a = 1\n# relive-push: 1\n")), None);
    }

    #[test]
    fn bad_headers_are_explained() {
        let e = decode_config(b"port = 1\n").unwrap_err();
        assert!(e.contains("missing format header"), "{e}");
        let e = decode_config(b"# relive-format: ini\nx=1").unwrap_err();
        assert!(e.contains("unknown format `ini`"), "{e}");
    }

    #[test]
    fn status_json_has_the_documented_fields() {
        let status = StatusRecord {
            instance: "web-1".into(),
            host: "h".into(),
            config: "server".into(),
            version: 7,
            applied_version: Some(5),
            state: AckState::Rejected,
            error: Some("bad".into()),
            at: "2026-01-01T00:00:00.000Z".into(),
            labels: BTreeMap::new(),
        };
        let json: serde_json::Value = serde_json::from_slice(&status.to_json()).unwrap();
        assert_eq!(json["state"], "rejected");
        assert_eq!(json["applied_version"], 5);
        assert_eq!(json["version"], 7);
        assert_eq!(json["error"], "bad");
        assert_eq!(StatusRecord::from_json(&status.to_json()).unwrap(), status);
    }
}
