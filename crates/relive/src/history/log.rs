//! The audit log's format: one record a line, `<xxh3-64 hex> <json>\n`, and
//! the content files that records point at.
//!
//! These serde types are the on-disk format and stay in this module; the
//! public types in `history.rs` are built from them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::HistoryWarning;
use crate::document::Document;
use crate::error::{ConfigError, ConfigErrorKind};
use crate::format::Format;

/// One line of the audit log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum LogRecord {
    /// A version: applied or rejected.
    Version(Box<VersionRecord>),
    /// Retention pruned every version below `floor`, except those in `keep`.
    Prune(PruneRecord),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct VersionRecord {
    pub version: u64,
    pub status: Status,
    /// RFC 3339, microseconds, UTC.
    pub time: String,
    pub env: Option<String>,
    /// sha256 (hex) of the content file `versions/<version>.json`.
    pub hash: String,
    pub documents: Vec<DocumentRecord>,
    /// From the previous applied version, redacted.
    pub diff: Vec<DiffRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorRecord>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub published: bool,
    /// The change set the version was applied (or rejected) in: versions
    /// of several configs that went live together share it. Absent from
    /// records written before change sets, which read as `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_set: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    Applied,
    Rejected,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DocumentRecord {
    /// Relative to the workspace root when under it.
    pub origin: PathBuf,
    pub format: String,
    pub len: u64,
    /// Empty when the content is withheld.
    pub sha256: String,
    /// The file's permission bits when it was read: what a rollback that
    /// recreates it gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Why the content was not stored (a file that resolves outside the
    /// workspace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withheld: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum DiffRecord {
    Add { path: String, value: Value },
    Remove { path: String, value: Value },
    Change { path: String, old: Value, new: Value },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ErrorRecord {
    /// The `ConfigError`'s `Display`: `file:line:col: message`.
    pub display: String,
    pub kind: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PruneRecord {
    pub floor: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep: Vec<u64>,
    pub time: String,
}

/// The content file of a version: its documents, bytes as they were.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Content {
    pub documents: Vec<ContentDocument>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ContentDocument {
    pub origin: PathBuf,
    pub format: String,
    /// The bytes, when they are UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The bytes in hex, when they are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hex: Option<String>,
    /// Why there are no bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withheld: Option<String>,
}

impl ContentDocument {
    pub(crate) fn bytes(&self) -> Option<Vec<u8>> {
        match (&self.text, &self.hex) {
            (Some(text), _) => Some(text.as_bytes().to_vec()),
            (None, Some(hex)) => from_hex(hex),
            (None, None) => None,
        }
    }
}

/// A document as it is stored: its origin (relative to the workspace root
/// when under it), and its bytes unless they are withheld.
pub(crate) struct Stored<'a> {
    pub origin: PathBuf,
    pub doc: &'a Document,
    pub withheld: Option<String>,
}

/// The content file for `documents`, and its sha256. Deterministic: the
/// same documents give the same bytes and hash, which is how a rollback is
/// recognised when it comes back.
pub(crate) fn content(documents: &[Stored<'_>]) -> (Vec<u8>, String) {
    let content = Content {
        documents: documents
            .iter()
            .map(|Stored { origin, doc, withheld }| {
                let (text, hex) = match (withheld, std::str::from_utf8(doc.bytes())) {
                    (Some(_), _) => (None, None),
                    (None, Ok(text)) => (Some(text.to_string()), None),
                    (None, Err(_)) => (None, Some(to_hex(doc.bytes()))),
                };
                ContentDocument {
                    origin: origin.clone(),
                    format: doc.format().name().to_string(),
                    text,
                    hex,
                    withheld: withheld.clone(),
                }
            })
            .collect(),
    };
    let bytes = serde_json::to_vec(&content).expect("content serializes");
    let hash = sha256_hex(&bytes);
    (bytes, hash)
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    to_hex(&Sha256::digest(bytes))
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}

pub(crate) fn format_from_name(name: &str) -> Option<Format> {
    match name {
        "toml" => Some(Format::Toml),
        "yaml" => Some(Format::Yaml),
        "json" => Some(Format::Json),
        _ => None,
    }
}

fn kind_name(kind: ConfigErrorKind) -> &'static str {
    match kind {
        ConfigErrorKind::Io => "io",
        ConfigErrorKind::Syntax => "syntax",
        ConfigErrorKind::Type => "type",
        ConfigErrorKind::Invalid => "invalid",
        ConfigErrorKind::Ambiguous => "ambiguous",
        ConfigErrorKind::Missing => "missing",
        ConfigErrorKind::Limit => "limit",
        ConfigErrorKind::Decrypt => "decrypt",
    }
}

fn kind_from_name(name: &str) -> ConfigErrorKind {
    match name {
        "io" => ConfigErrorKind::Io,
        "syntax" => ConfigErrorKind::Syntax,
        "type" => ConfigErrorKind::Type,
        "ambiguous" => ConfigErrorKind::Ambiguous,
        "missing" => ConfigErrorKind::Missing,
        "limit" => ConfigErrorKind::Limit,
        "decrypt" => ConfigErrorKind::Decrypt,
        _ => ConfigErrorKind::Invalid,
    }
}

impl ErrorRecord {
    pub(crate) fn of(error: &ConfigError) -> ErrorRecord {
        ErrorRecord {
            display: error.to_string(),
            kind: kind_name(error.kind()).to_string(),
            message: error.message().to_string(),
            file: error.file().map(Path::to_path_buf),
            line: error.line(),
            column: error.column(),
            key: error.key().map(str::to_string),
        }
    }

    pub(crate) fn to_error(&self) -> ConfigError {
        let mut error = ConfigError::new(kind_from_name(&self.kind), &self.message);
        if let Some(file) = &self.file {
            error = error.with_file(file);
        }
        if let (Some(line), Some(column)) = (self.line, self.column) {
            error = error.with_position(line, column);
        }
        if let Some(key) = &self.key {
            error = error.with_key(key);
        }
        error
    }
}

/// One record as a log line: checksum, space, JSON, newline.
pub(crate) fn encode(record: &LogRecord) -> Vec<u8> {
    let json = serde_json::to_string(record).expect("records serialize");
    let mut line = format!("{:016x} ", xxhash_rust::xxh3::xxh3_64(json.as_bytes())).into_bytes();
    line.extend_from_slice(json.as_bytes());
    line.push(b'\n');
    line
}

/// Decodes one line (without its newline).
fn decode(line: &[u8]) -> Result<LogRecord, String> {
    let (sum, json) = match line.iter().position(|&b| b == b' ') {
        Some(16) => (&line[..16], &line[17..]),
        _ => return Err("malformed record (no checksum)".to_string()),
    };
    let sum = std::str::from_utf8(sum)
        .ok()
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .ok_or_else(|| "malformed record (bad checksum field)".to_string())?;
    if xxhash_rust::xxh3::xxh3_64(json) != sum {
        return Err("corrupt record (checksum mismatch)".to_string());
    }
    serde_json::from_slice(json).map_err(|e| format!("unreadable record: {e}"))
}

/// A log, read: the versions it shows, oldest first, and what was wrong
/// with it.
#[derive(Debug, Default)]
pub(crate) struct ReadLog {
    /// Versions not pruned, in order.
    pub versions: Vec<VersionRecord>,
    /// The highest version number in any valid record, pruned or not.
    pub max_version: u64,
    pub floor: u64,
    pub keep: Vec<u64>,
    /// Complete lines in the file.
    pub lines: usize,
    /// Where the complete lines end, if a torn record follows them.
    pub torn_at: Option<u64>,
    pub warnings: Vec<HistoryWarning>,
}

/// Reads the log at `path`; a missing log is an empty one. Corrupt and
/// truncated records are skipped with a warning.
pub(crate) fn read(path: &Path) -> std::io::Result<ReadLog> {
    use std::io::Read;
    // Never a blocking open: a FIFO put where the log goes would hang
    // whoever reads the history (`relive history`, a rollback).
    let file = match crate::engine::open_nonblocking(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(parse(path, &[])),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "the audit log is not a regular file"));
    }
    let mut bytes = Vec::new();
    (&file).read_to_end(&mut bytes)?;
    Ok(parse(path, &bytes))
}

pub(crate) fn parse(path: &Path, bytes: &[u8]) -> ReadLog {
    let mut log = ReadLog::default();
    let mut all: Vec<VersionRecord> = Vec::new();
    let mut start = 0;
    let mut line_no = 0;
    while start < bytes.len() {
        line_no += 1;
        let Some(len) = bytes[start..].iter().position(|&b| b == b'\n') else {
            log.torn_at = Some(start as u64);
            log.warnings.push(HistoryWarning {
                path: path.to_path_buf(),
                line: line_no,
                truncated: true,
                message: "truncated record (an interrupted write); skipped".to_string(),
            });
            break;
        };
        let line = &bytes[start..start + len];
        start += len + 1;
        log.lines += 1;
        let mut warn = |message: String| {
            log.warnings.push(HistoryWarning { path: path.to_path_buf(), line: line_no, truncated: false, message })
        };
        match decode(line) {
            // The writer numbers the next version after the highest: a
            // record that leaves no number after it is damage (or forged).
            Ok(LogRecord::Version(v)) if v.version == u64::MAX => {
                warn(format!("version {} out of range; skipped", v.version));
            }
            Ok(LogRecord::Version(v)) if v.version <= log.max_version => {
                warn(format!("version {} out of order (after {}); skipped", v.version, log.max_version));
            }
            Ok(LogRecord::Version(v)) => {
                log.max_version = v.version;
                all.push(*v);
            }
            Ok(LogRecord::Prune(p)) => {
                log.floor = log.floor.max(p.floor);
                log.keep = p.keep;
            }
            Err(message) => warn(format!("{message}; skipped")),
        }
    }
    let (floor, keep) = (log.floor, &log.keep);
    log.versions = all.into_iter().filter(|v| v.version >= floor || keep.contains(&v.version)).collect();
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(n: u64) -> LogRecord {
        LogRecord::Version(Box::new(VersionRecord {
            version: n,
            status: Status::Applied,
            time: "2026-01-01T00:00:00.000000Z".into(),
            env: None,
            hash: "h".into(),
            documents: Vec::new(),
            diff: Vec::new(),
            rollback_of: None,
            error: None,
            published: false,
            change_set: None,
        }))
    }

    #[test]
    fn lines_round_trip_and_damage_is_skipped() {
        let mut log = Vec::new();
        for n in 1..=4 {
            log.extend(encode(&version(n)));
        }
        let p = Path::new("log");
        let read = parse(p, &log);
        assert_eq!(read.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert!(read.warnings.is_empty());

        // A flipped byte in record 2 and a torn record 5.
        let second = log.iter().position(|&b| b == b'\n').unwrap() + 30;
        log[second] ^= 1;
        let mut torn = encode(&version(5));
        torn.truncate(torn.len() / 2);
        let end = log.len() as u64;
        log.extend(torn);
        let read = parse(p, &log);
        assert_eq!(read.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 3, 4]);
        assert_eq!(read.warnings.len(), 2);
        assert!(!read.warnings[0].truncated && read.warnings[0].line == 2);
        assert!(read.warnings[1].truncated);
        assert_eq!(read.torn_at, Some(end));
    }

    #[test]
    fn prune_records_hide_old_versions_but_keep_pinned_ones() {
        let mut log = Vec::new();
        for n in 1..=5 {
            log.extend(encode(&version(n)));
        }
        log.extend(encode(&LogRecord::Prune(PruneRecord { floor: 4, keep: vec![2], time: String::new() })));
        let read = parse(Path::new("log"), &log);
        assert_eq!(read.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [2, 4, 5]);
        assert_eq!(read.max_version, 5);
    }

    #[test]
    fn content_is_deterministic_and_keeps_non_utf8_bytes() {
        let a = Document::new("/w/config/a.toml", Format::Toml, &b"x = 1\n"[..]);
        let b = Document::new("/w/config/a.prod.toml", Format::Toml, &[0xff, 0x00, 0x41][..]);
        let docs = [
            Stored { origin: PathBuf::from("config/a.toml"), doc: &a, withheld: None },
            Stored { origin: PathBuf::from("config/a.prod.toml"), doc: &b, withheld: None },
        ];
        let (bytes, hash) = content(&docs);
        assert_eq!(content(&docs).1, hash);
        let parsed: Content = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(parsed.documents[1].bytes().unwrap(), [0xff, 0x00, 0x41]);
        assert_eq!(parsed.documents[0].bytes().unwrap(), b"x = 1\n");
        let withheld = [Stored { origin: PathBuf::from("config/a.toml"), doc: &a, withheld: Some("why".into()) }];
        let (bytes, _) = content(&withheld);
        assert!(!String::from_utf8(bytes.clone()).unwrap().contains("x = 1"));
        let parsed: Content = serde_json::from_slice(&bytes).unwrap();
        assert_eq!((parsed.documents[0].bytes(), parsed.documents[0].withheld.as_deref()), (None, Some("why")));
    }

    #[test]
    fn the_highest_version_number_is_damage_not_a_version() {
        let mut log = encode(&version(1));
        log.extend(encode(&version(u64::MAX)));
        let read = parse(Path::new("log"), &log);
        assert_eq!(read.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [1]);
        assert_eq!((read.max_version, read.warnings.len()), (1, 1));
    }

    #[test]
    fn records_without_a_change_set_still_read() {
        // A line as relive wrote it before change sets, byte for byte.
        let json = r#"{"type":"version","version":7,"status":"applied","time":"2026-06-01T10:00:00.000000Z","env":null,"hash":"ab","documents":[{"origin":"config/app.toml","format":"toml","len":9,"sha256":"cd","mode":384}],"diff":[{"op":"change","path":"/port","old":1,"new":2}],"rollback_of":3}"#;
        let line = format!("{:016x} {json}\n", xxhash_rust::xxh3::xxh3_64(json.as_bytes()));
        let read = parse(Path::new("log"), line.as_bytes());
        assert!(read.warnings.is_empty(), "{:?}", read.warnings);
        let v = &read.versions[0];
        assert_eq!((v.version, v.rollback_of, v.change_set), (7, Some(3), None));

        // A new record keeps its change set, and writes no field without one.
        let mut record = version(8);
        if let LogRecord::Version(v) = &mut record {
            v.change_set = Some(42);
        }
        let read = parse(Path::new("log"), &encode(&record));
        assert_eq!(read.versions[0].change_set, Some(42));
        assert!(!String::from_utf8(encode(&version(9))).unwrap().contains("change_set"));
    }
}
