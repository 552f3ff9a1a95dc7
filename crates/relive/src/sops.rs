//! SOPS-encrypted config files, decrypted with age identities.
//!
//! [SOPS](https://github.com/getsops/sops) encrypts the *values* of a YAML
//! or JSON document and leaves its keys in clear, so that a diff of an
//! encrypted file still shows which keys changed. This module reads such
//! files as the `sops` command (3.x) writes them and decrypts them with age
//! keys, so that relive can load them like any config. It implements the
//! format on top of the `age` crate (the data key) and RustCrypto's
//! `aes-gcm` (the values); every rule below is cited to the SOPS source
//! (github.com/getsops/sops) and proved against the `sops` binary by
//! `tests/sops.rs`.
//!
//! # The format
//!
//! - The document carries a top-level `sops` key with the metadata
//!   (`stores/stores.go`, `type metadata`): the data key encrypted to each
//!   recipient (`age: [{recipient, enc}]`, `enc` an armored age file), the
//!   time of the last change (`lastmodified`, RFC 3339), the MAC (`mac`),
//!   and at most one rule saying which values are encrypted
//!   (`unencrypted_suffix`, by default `_unencrypted`; `encrypted_suffix`;
//!   `unencrypted_regex`; `encrypted_regex`; or one of the comment regexes),
//!   plus `mac_only_encrypted`.
//! - Every other value is a leaf of a tree walked in document order
//!   (`sops.go`, `walkBranch`/`walkSlice`): keys of maps extend the path,
//!   items of lists do not. A leaf is encrypted unless a rule exempts it
//!   (`sops.go`, `shouldBeEncrypted`, which looks at every key on the path).
//!   Nulls are not leaves.
//! - An encrypted leaf is `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]`
//!   (`aes/cipher.go`, `Encrypt`): AES-256-GCM with a 32-byte nonce, the
//!   path's keys joined and followed by `:` (`a:b:c:`) as additional data,
//!   and a type (`str`, `int`, `float`, `bool`, `time`, `bytes`) that says
//!   how to read the plaintext back. An empty string is left as `""`.
//! - The MAC (`sops.go`, `Tree.Decrypt`; `decrypt/decrypt.go`) is SHA-512
//!   over every leaf's plaintext in tree order (`sops.go`, `ToBytes`: ints
//!   in decimal, floats in their shortest form, bools as `True`/`False`),
//!   or over the encrypted leaves only, after a fixed prefix, with
//!   `mac_only_encrypted`. It is stored as upper-case hex, itself encrypted
//!   with `lastmodified` as additional data. The MAC depends on key order,
//!   which is why [`decrypt`] reads the file's text rather than a
//!   `serde_json::Value`, whose maps are sorted.
//!
//! Comments in YAML are encrypted by `sops` too, but they are not part of
//! the MAC and relive does not read comments, so they are ignored.
//!
//! # Use
//!
//! ```no_run
//! # fn main() -> Result<(), relive::sops::SopsError> {
//! use relive::Format;
//! use relive::sops::{self, Identities, SopsErrorKind};
//!
//! let ids = Identities::from_env()?; // SOPS_AGE_KEY_FILE, SOPS_AGE_KEY, keys.txt
//! let bytes = std::fs::read("config/secrets.yaml").expect("readable");
//! if sops::sniff(&bytes) {
//!     match sops::decrypt(Format::Yaml, &bytes, &ids) {
//!         Ok(decrypted) => {
//!             let (value, secrets) = decrypted.into_parts();
//!             // `value` has no `sops` key; `secrets` holds the JSON
//!             // pointers of every value that was encrypted.
//!             # let _ = (value, secrets);
//!         }
//!         Err(err) if err.kind() == SopsErrorKind::NotSops => { /* a plain config */ }
//!         Err(err) => return Err(err), // err.key() locates it in the file
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! [`sniff`] is a byte search that every file `sops` writes passes, so an
//! engine can call [`decrypt`] instead of its own parser and parse the file
//! once; a file that [`sniff`] turns down is plain, and one whose parsed
//! value has SOPS metadata anyway ([`is_sops`]) is a broken one, which
//! [`decrypt`] describes. [`check`] is the test before shipping a file
//! (`relive fleet push`): its shape always, its values and MAC when a key is
//! at hand.
//!
//! [`Identities`] keep the data keys they unwrap (zeroed when dropped), by
//! the encrypted key they came from: a reload of an edited file, which
//! `sops` re-encrypts with the same data key, skips the X25519 work, and a
//! `sops rotate` is a new encrypted key, unwrapped afresh. Values and the
//! MAC are checked on every call.
//!
//! # Bounded work
//!
//! A hostile file costs bounded work and gets an error, never a panic: at
//! most 64 age entries are looked at, and only those whose recipient is one
//! of the identities' public keys are unwrapped (one agreement each); an
//! armored data key over 16 KiB, a value over 1 MiB of base64 or a regex
//! over 4 KiB in the metadata is refused; the document is parsed within
//! the limits of a plain config ([`Limits::default`](crate::Limits): file
//! size, nesting depth, values built and text built, YAML aliases
//! expanded), checked before and while parsing.
//!
//! # Limits
//!
//! Only age decrypts here: files encrypted to PGP, KMS or Vault keys only
//! are refused with an error naming them, as are Shamir key groups (more
//! than one group). Age identities are X25519 keys (`AGE-SECRET-KEY-1…`);
//! plugin and post-quantum identities are skipped with a warning, and SSH
//! keys (`SOPS_AGE_SSH_PRIVATE_KEY_FILE`) and `SOPS_AGE_KEY_CMD` are not
//! read. With a comment regex rule, relive cannot see comments, so it takes
//! a value as encrypted when it looks encrypted; the MAC still covers every
//! value unless `mac_only_encrypted` is set. `sops` writes an unencrypted
//! YAML date (`2024-01-01`) in its normalized form
//! (`2024-01-01T00:00:00Z`), which is what its MAC covers; a date-only one
//! edited in by hand afterwards fails the MAC check here, where `sops`
//! would normalize it again.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::fmt::{self, Write as _};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use aes_gcm::aead::consts::{U12, U32};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::aes::Aes256;
use aes_gcm::{AesGcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use regex::{Regex, RegexBuilder};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use sha2::{Digest, Sha512};
use zeroize::Zeroizing;

use crate::config::Limits;
use crate::format::{Format, strip_bom, yaml_flow_depth};

/// At most this many age entries (`sops.age[]`) are tried, so that a file
/// listing thousands of recipients costs a bounded amount of work.
const MAX_AGE_ENTRIES: usize = 64;
/// The largest armored age file accepted as an encrypted data key. `sops`
/// writes about 400 bytes; the bound keeps a hostile header, with many
/// stanzas, from costing more than a few key agreements.
const MAX_AGE_ARMOR: usize = 16 * 1024;
/// The largest base64 field of an encrypted value, in characters (1 MiB of
/// ciphertext): far above any config value, small enough to bound the work.
const MAX_VALUE_BASE64: usize = 1400 * 1024;
/// The largest regex pattern accepted from a file's metadata, and the size
/// limit of its compiled form.
const MAX_REGEX_LEN: usize = 4096;
const MAX_REGEX_COMPILED: usize = 1 << 20;
/// The largest key file read for identities.
const MAX_KEY_FILE: u64 = 1 << 20;

/// The suffix that exempts a key from encryption when a file names no rule
/// (`sops.go`, `DefaultUnencryptedSuffix`).
const DEFAULT_UNENCRYPTED_SUFFIX: &str = "_unencrypted";

/// The bytes that start the MAC when `mac_only_encrypted` is set, so that it
/// differs from the MAC over all values (`sops.go`,
/// `MACOnlyEncryptedInitialization`: the SHA-256 of `sops`).
const MAC_ONLY_ENCRYPTED_INIT: [u8; 32] = [
    0x8a, 0x3f, 0xd2, 0xad, 0x54, 0xce, 0x66, 0x52, 0x7b, 0x10, 0x34, 0xf3, 0xd1, 0x47, 0xbe, 0x0b, 0x0b, 0x97, 0x5b,
    0x3b, 0xf4, 0x4f, 0x72, 0xc6, 0xfd, 0xad, 0xec, 0x81, 0x76, 0xf2, 0x7d, 0x69,
];

/// The key kinds `sops` can encrypt a data key to besides age, by their
/// metadata key (`stores/stores.go`, `type metadata`).
const OTHER_KEY_KINDS: [&str; 6] = ["pgp", "kms", "gcp_kms", "azure_kv", "hc_vault", "hckms"];

// ---------------------------------------------------------------------------
// Errors

/// What kind of problem a [`SopsError`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SopsErrorKind {
    /// The document has no SOPS metadata: it is a plain config (see
    /// [`decrypt`]).
    NotSops,
    /// None of the identities at hand is a recipient of the file.
    NoIdentity,
    /// The file's data key is encrypted only to key kinds relive does not
    /// decrypt (PGP, KMS, Vault), or it uses a feature relive does not
    /// support (Shamir key groups, a TOML file).
    Unsupported,
    /// An encrypted value does not authenticate: it was changed, moved to
    /// another key, or encrypted with another data key.
    Tampered,
    /// The values do not match the file's MAC, or the MAC itself does not
    /// authenticate.
    BadMac,
    /// The file is not what `sops` writes: a value that should be encrypted
    /// is in clear, or the metadata lacks a field or holds a malformed one.
    Malformed,
    /// An identity (a key file or key string) could not be read.
    Identity,
}

/// Why a SOPS file could not be decrypted or checked.
///
/// The message is lowercase and never quotes a decrypted value. When the
/// error is about one value, [`key`](SopsError::key) is its key path in the
/// form relive's [`ConfigError`](crate::ConfigError) uses (`db.password`,
/// `hosts[2]`, `a["dotted.key"]`), so that the caller can point at its file,
/// line and column; metadata errors name a key under `sops`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SopsError {
    kind: SopsErrorKind,
    message: String,
    key: Option<String>,
}

impl SopsError {
    fn new(kind: SopsErrorKind, message: impl Into<String>) -> SopsError {
        SopsError { kind, message: message.into(), key: None }
    }

    fn at(mut self, key: impl Into<String>) -> SopsError {
        self.key = Some(key.into());
        self
    }

    /// What kind of problem this is.
    pub fn kind(&self) -> SopsErrorKind {
        self.kind
    }

    /// The message, without the key path.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The key path the error is about, when there is one.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
}

impl fmt::Display for SopsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(key) = &self.key {
            write!(f, " (at `{key}`)")?;
        }
        Ok(())
    }
}

impl std::error::Error for SopsError {}

fn malformed(message: impl Into<String>) -> SopsError {
    SopsError::new(SopsErrorKind::Malformed, message)
}

// ---------------------------------------------------------------------------
// Identities

/// The age identities (private keys) relive decrypts SOPS files with.
///
/// [`Identities::from_env`] looks where `sops` looks (`age/keysource.go`,
/// `loadIdentities`), and takes every key it finds in all of them: the keys
/// in `SOPS_AGE_KEY` (several, separated by whitespace or newlines), the key
/// file named by `SOPS_AGE_KEY_FILE`, and the default key file
/// `sops/age/keys.txt` under the user's config directory
/// (`$XDG_CONFIG_HOME`, else `~/.config`; on macOS `$XDG_CONFIG_HOME`, else
/// `~/Library/Application Support`). [`add_key_file`](Identities::add_key_file)
/// and [`add_keys`](Identities::add_keys) add keys given explicitly.
///
/// Keys are never logged or shown: `Debug` prints the recipients (public
/// keys) only.
#[derive(Clone, Default)]
pub struct Identities {
    keys: Vec<Arc<Key>>,
    /// Data keys already unwrapped, shared by clones: see [`DataKeyCache`].
    cache: Arc<Mutex<DataKeyCache>>,
}

/// The data keys of the files decrypted lately, by the hash of the
/// recipient and the encrypted data key they were unwrapped from.
///
/// Unwrapping a data key costs two X25519 scalar multiplications (the
/// agreement, and the identity's public key, which age mixes into the key
/// derivation): most of what decrypting a small file costs. A file keeps
/// its data key across edits (`sops` re-encrypts values with the same key
/// until `sops rotate`), so a reload finds it here. The same `enc` text
/// always unwraps to the same key, so the cache cannot give a wrong one;
/// the values and the MAC are still checked on every call. Entries are
/// zeroed when evicted or dropped.
#[derive(Default)]
struct DataKeyCache {
    entries: Vec<([u8; 32], Zeroizing<[u8; 32]>)>,
}

/// How many data keys [`DataKeyCache`] keeps: one per SOPS file a service
/// reads is plenty.
const DATA_KEY_CACHE: usize = 64;

impl DataKeyCache {
    fn id(recipient: &str, enc: &str) -> [u8; 32] {
        let mut hash = sha2::Sha256::new();
        hash.update(recipient.as_bytes());
        hash.update([0]);
        hash.update(enc.as_bytes());
        hash.finalize().into()
    }

    fn get(&self, id: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
        self.entries.iter().find(|(k, _)| k == id).map(|(_, key)| key.clone())
    }

    fn insert(&mut self, id: [u8; 32], key: &Zeroizing<[u8; 32]>) {
        if self.entries.len() >= DATA_KEY_CACHE {
            self.entries.remove(0);
        }
        self.entries.push((id, key.clone()));
    }
}

struct Key {
    identity: age::x25519::Identity,
    /// The public key, `age1…`, matched against a file's recipients.
    recipient: String,
}

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identities").field("recipients", &self.recipients().collect::<Vec<_>>()).finish()
    }
}

impl Identities {
    /// No identities.
    pub fn new() -> Identities {
        Identities::default()
    }

    /// The identities from where `sops` looks, read through the process
    /// environment. A missing default key file is no error; an unreadable
    /// file named by `SOPS_AGE_KEY_FILE`, or a malformed key, is.
    pub fn from_env() -> Result<Identities, SopsError> {
        Identities::from_env_with(|name| std::env::var_os(name))
    }

    /// The identities from where `sops` looks, reading environment
    /// variables through `var` (for tests, or a service that keeps its
    /// settings elsewhere). `HOME` and `XDG_CONFIG_HOME` are read through it
    /// too.
    pub fn from_env_with(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<Identities, SopsError> {
        let mut ids = Identities::new();
        if let Some(keys) = var("SOPS_AGE_KEY") {
            let keys = keys
                .into_string()
                .map_err(|_| SopsError::new(SopsErrorKind::Identity, "SOPS_AGE_KEY is not valid utf-8"))?;
            ids.parse_keys(&keys, "SOPS_AGE_KEY", true)?;
        }
        if let Some(path) = var("SOPS_AGE_KEY_FILE") {
            ids.add_key_file(PathBuf::from(path))?;
        }
        if let Some(path) = default_key_file(&var) {
            // sops reads the default file only if it exists, and so do we.
            if path.is_file() {
                ids.add_key_file(path)?;
            }
        }
        Ok(ids)
    }

    /// Adds the identities of an age key file (as `age-keygen` writes it:
    /// one key a line, `#` comments and blank lines ignored).
    pub fn add_key_file(&mut self, path: impl AsRef<Path>) -> Result<&mut Identities, SopsError> {
        let path = path.as_ref();
        let fail = |what: &str| {
            SopsError::new(SopsErrorKind::Identity, format!("cannot read age key file {}: {what}", path.display()))
        };
        let file = std::fs::File::open(path).map_err(|err| fail(&err.to_string()))?;
        let mut text = String::new();
        file.take(MAX_KEY_FILE + 1).read_to_string(&mut text).map_err(|err| fail(&err.to_string()))?;
        if text.len() as u64 > MAX_KEY_FILE {
            return Err(fail("larger than 1 MiB"));
        }
        self.parse_keys(&text, &path.display().to_string(), false)?;
        Ok(self)
    }

    /// Adds the identities in `keys`: `AGE-SECRET-KEY-1…` strings separated
    /// by whitespace or newlines, `#` comment lines ignored (as
    /// `SOPS_AGE_KEY` holds them).
    pub fn add_keys(&mut self, keys: &str) -> Result<&mut Identities, SopsError> {
        self.parse_keys(keys, "the given keys", true)?;
        Ok(self)
    }

    /// Adds every identity of `other`.
    pub fn extend(&mut self, other: &Identities) -> &mut Identities {
        for key in &other.keys {
            if !self.keys.iter().any(|k| k.recipient == key.recipient) {
                self.keys.push(Arc::clone(key));
            }
        }
        self
    }

    /// How many identities there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The recipients (age public keys, `age1…`) of the identities.
    pub fn recipients(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|key| key.recipient.as_str())
    }

    /// Parses identities as `age/keysource.go`'s `parseIdentities` does:
    /// blank lines and `#` lines are skipped, and `several_per_line` (for
    /// `SOPS_AGE_KEY`) splits lines at whitespace. Errors name the source
    /// and the line, never the line's text, which may be a key.
    fn parse_keys(&mut self, text: &str, source: &str, several_per_line: bool) -> Result<(), SopsError> {
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = if several_per_line { line.split_whitespace().collect() } else { vec![line] };
            for word in words {
                if word.starts_with("AGE-PLUGIN-") || word.starts_with("AGE-SECRET-KEY-PQ-") {
                    tracing::warn!(
                        source,
                        line = index + 1,
                        "skipping an age plugin or post-quantum identity: relive decrypts with x25519 age keys only"
                    );
                    continue;
                }
                let identity = word.parse::<age::x25519::Identity>().map_err(|_| {
                    SopsError::new(
                        SopsErrorKind::Identity,
                        format!("line {} of {source} is not an age identity (AGE-SECRET-KEY-1…)", index + 1),
                    )
                })?;
                let recipient = identity.to_public().to_string();
                if !self.keys.iter().any(|k| k.recipient == recipient) {
                    self.keys.push(Arc::new(Key { identity, recipient }));
                }
            }
        }
        Ok(())
    }
}

/// The default key file, as `age/keysource.go`'s `getUserConfigDir` and Go's
/// `os.UserConfigDir` find it.
fn default_key_file(var: &impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    let non_empty = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let config_dir = if cfg!(target_os = "macos") {
        non_empty("XDG_CONFIG_HOME").or_else(|| non_empty("HOME").map(|h| h.join("Library/Application Support")))
    } else {
        non_empty("XDG_CONFIG_HOME").or_else(|| non_empty("HOME").map(|h| h.join(".config")))
    }?;
    Some(config_dir.join("sops/age/keys.txt"))
}

// ---------------------------------------------------------------------------
// The public entry points

/// True if `doc` carries SOPS metadata: a top-level `sops` map with a MAC,
/// a modification time or a list of keys. A config that merely has a
/// `sops` section of its own (say, `sops: {enabled: true}`) is not taken
/// for one.
pub fn is_sops(doc: &Value) -> bool {
    const MARKERS: [&str; 10] =
        ["mac", "lastmodified", "age", "key_groups", "pgp", "kms", "gcp_kms", "azure_kv", "hc_vault", "hckms"];
    doc.get("sops").and_then(Value::as_object).is_some_and(|meta| MARKERS.iter().any(|m| meta.contains_key(*m)))
}

/// A decrypted SOPS document.
#[derive(Clone, PartialEq)]
pub struct Decrypted {
    value: Value,
    secrets: BTreeSet<String>,
}

impl fmt::Debug for Decrypted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The value holds the secrets in clear: show where they are only.
        f.debug_struct("Decrypted").field("secrets", &self.secrets).finish_non_exhaustive()
    }
}

impl Decrypted {
    /// The plaintext document, without its `sops` key.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The JSON pointers (RFC 6901: `/db/password`, `/hosts/0`) of every
    /// value that was encrypted in the file (and so is a secret, whatever
    /// its key is called), including empty strings, which `sops` leaves as
    /// `""`.
    pub fn secrets(&self) -> &BTreeSet<String> {
        &self.secrets
    }

    /// The plaintext document and the pointers of its secrets.
    pub fn into_parts(self) -> (Value, BTreeSet<String>) {
        (self.value, self.secrets)
    }
}

/// True if `bytes` may be a SOPS file: it holds an encrypted value. Every
/// file `sops` writes does (its MAC is one), so when this is false the file
/// is plain, and a byte search is all it cost.
///
/// An engine can call this before parsing: when true, [`decrypt`] parses
/// the file itself (and says [`SopsErrorKind::NotSops`] if it has no
/// metadata after all), so the file is parsed once.
pub fn sniff(bytes: &[u8]) -> bool {
    const MARKER: &[u8] = b"ENC[AES256_GCM,";
    // Jumping from one `E` to the next is several times faster than
    // comparing a window at every byte.
    let mut rest = bytes;
    while let Some(at) = rest.iter().position(|&b| b == b'E') {
        if rest[at..].starts_with(MARKER) {
            return true;
        }
        rest = &rest[at + 1..];
    }
    false
}

/// Decrypts a SOPS document (YAML or JSON, as `sops` writes them) with the
/// first of `ids` that is one of its recipients, and verifies its MAC.
///
/// `bytes` is the file's content: the MAC depends on the order of keys in
/// the file, which a parsed `serde_json::Value` does not keep. A document
/// without SOPS metadata is an error of kind [`SopsErrorKind::NotSops`],
/// which the caller takes as "parse it as a plain config".
pub fn decrypt(format: Format, bytes: &[u8], ids: &Identities) -> Result<Decrypted, SopsError> {
    let file = SopsFile::parse(format, bytes)?;
    let data_key = file.data_key(ids)?;
    file.decrypt_with(&data_key)
}

/// What [`check`] could verify.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Checked {
    /// Every value decrypts and the MAC holds.
    Verified,
    /// The file is well formed (its metadata is complete and every value
    /// that should be encrypted is), but no identity at hand is one of its
    /// recipients, so neither the values nor the MAC could be verified.
    NoIdentity {
        /// The age recipients the file is encrypted to.
        recipients: Vec<String>,
    },
}

/// Checks a SOPS document before it is shipped (as `relive fleet push`
/// does): its metadata and the shape of every value always, and, when one
/// of `ids` is a recipient, that every value decrypts and the MAC holds.
///
/// Nothing decrypted is returned or kept.
pub fn check(format: Format, bytes: &[u8], ids: &Identities) -> Result<Checked, SopsError> {
    let file = SopsFile::parse(format, bytes)?;
    match file.data_key(ids) {
        Ok(data_key) => {
            file.decrypt_with(&data_key)?;
            Ok(Checked::Verified)
        }
        Err(err) if err.kind == SopsErrorKind::NoIdentity => {
            file.walk(None)?;
            Ok(Checked::NoIdentity { recipients: file.meta.age.iter().map(|a| a.recipient.clone()).collect() })
        }
        Err(err) => Err(err),
    }
}

// ---------------------------------------------------------------------------
// The document, parsed in order

/// A parsed document that keeps the order of keys, which the MAC depends
/// on (`serde_json::Map` sorts them unless its `preserve_order` feature is
/// on, which would change every other output of the workspace).
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(String, Node)>),
}

fn parse_ordered(format: Format, bytes: &[u8]) -> Result<Node, SopsError> {
    // The same limits as a plain config, checked the same way: before the
    // parser sees the text (size, YAML flow nesting) and while values are
    // built (values, text, depth), so a hostile file costs about what
    // reading it costs.
    let limits = Limits::default();
    if bytes.len() as u64 > limits.max_file_size {
        return Err(malformed(format!(
            "file is larger than the limit of {} bytes (max_file_size); not parsed",
            limits.max_file_size
        )));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| malformed("file is not valid utf-8"))?;
    let text = strip_bom(text);
    let budget = Budget::new(&limits);
    let seed = NodeSeed { budget: &budget, depth: 0 };
    // The caller has parsed this text already, so these errors are only for
    // completeness; they do not quote the parser's message, which may hold
    // a value.
    let parsed = match format {
        Format::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            seed.deserialize(&mut de)
                .and_then(|node| de.end().map(|()| node))
                .map_err(|_| malformed("file is not valid json"))
        }
        Format::Yaml => {
            if yaml_flow_depth(text, limits.max_depth).is_some() {
                return Err(malformed(format!(
                    "flow collections nested deeper than {} levels; the limit is max_depth",
                    limits.max_depth
                )));
            }
            seed.deserialize(serde_yaml_ng::Deserializer::from_str(text))
                .map_err(|_| malformed("file is not valid yaml (or holds more than one document)"))
        }
        // `sops` writes no TOML, so a TOML file is SOPS only if it was made
        // by hand to look like one: say so rather than load it as a plain
        // config with a stray `sops` table.
        Format::Toml => {
            return match crate::format::parse(Format::Toml, text.as_bytes(), Path::new(""), &limits) {
                Ok(value) if is_sops(&value) => Err(SopsError::new(
                    SopsErrorKind::Unsupported,
                    "sops metadata in a toml file: sops writes yaml and json, relive decrypts those",
                )
                .at("sops")),
                _ => Err(SopsError::new(SopsErrorKind::NotSops, "file has no sops metadata")),
            };
        }
    };
    match budget.exceeded.get() {
        Some(limit) => Err(malformed(format!("file exceeds the limit {limit} (after YAML aliases are expanded)"))),
        None => parsed,
    }
}

/// What one parse may still build: the limits of a plain config
/// ([`Limits`]), counted across every level.
struct Budget {
    nodes_left: Cell<usize>,
    text_left: Cell<u64>,
    max_depth: usize,
    /// The name of the limit a parse ran into.
    exceeded: Cell<Option<&'static str>>,
}

impl Budget {
    fn new(limits: &Limits) -> Budget {
        Budget {
            nodes_left: Cell::new(limits.max_nodes),
            text_left: Cell::new(limits.max_file_size),
            max_depth: limits.max_depth,
            exceeded: Cell::new(None),
        }
    }

    fn fail<E: de::Error>(&self, limit: &'static str) -> E {
        self.exceeded.set(Some(limit));
        E::custom(limit)
    }
}

/// Builds a [`Node`], spending the [`Budget`]: one value per node (a YAML
/// alias replays its anchor, so each copy counts), its bytes per string
/// or key, and one level per collection.
#[derive(Clone, Copy)]
struct NodeSeed<'b> {
    budget: &'b Budget,
    depth: usize,
}

impl NodeSeed<'_> {
    fn spend<E: de::Error>(self) -> Result<(), E> {
        match self.budget.nodes_left.get().checked_sub(1) {
            Some(left) => {
                self.budget.nodes_left.set(left);
                Ok(())
            }
            None => Err(self.budget.fail("max_nodes")),
        }
    }

    fn text<E: de::Error>(self, len: usize) -> Result<(), E> {
        match self.budget.text_left.get().checked_sub(len as u64) {
            Some(left) => {
                self.budget.text_left.set(left);
                Ok(())
            }
            None => Err(self.budget.fail("max_file_size")),
        }
    }

    fn child<E: de::Error>(self) -> Result<Self, E> {
        self.spend()?;
        if self.depth >= self.budget.max_depth {
            return Err(self.budget.fail("max_depth"));
        }
        Ok(NodeSeed { budget: self.budget, depth: self.depth + 1 })
    }
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_> {
    type Value = Node;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_> {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a yaml or json value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        self.spend()?;
        Ok(Node::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        self.spend()?;
        Ok(Node::I64(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        self.spend()?;
        Ok(i64::try_from(v).map_or(Node::U64(v), Node::I64))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        self.spend()?;
        Ok(Node::F64(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        self.spend()?;
        self.text(v.len())?;
        Ok(Node::Str(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        self.spend()?;
        self.text(v.len())?;
        Ok(Node::Str(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        self.spend()?;
        Ok(Node::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        self.spend()?;
        Ok(Node::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let child = self.child()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(child)? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let child = self.child()?;
        let mut entries = Vec::new();
        while let Some(key) = map.next_key_seed(KeySeed(child))? {
            let value = map.next_value_seed(child)?;
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
}

/// A map key as text: YAML allows scalar keys of any type (`1: x`), which
/// relive's own parser also turns into their text.
struct KeySeed<'b>(NodeSeed<'b>);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = String;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        let key = match self.0.deserialize(deserializer)? {
            Node::Str(s) => return Ok(s),
            Node::Bool(b) => b.to_string(),
            Node::I64(i) => i.to_string(),
            Node::U64(u) => u.to_string(),
            Node::F64(f) => f.to_string(),
            Node::Null => "null".to_owned(),
            Node::Seq(_) | Node::Map(_) => return Err(de::Error::custom("a map key must be a scalar")),
        };
        // A number's text can be longer than the number as written
        // (`1e300` is 301 digits): charge it too.
        self.0.text(key.len())?;
        Ok(key)
    }
}

// ---------------------------------------------------------------------------
// Metadata

struct AgeEntry {
    recipient: String,
    enc: String,
}

/// Which values are encrypted (`sops.go`, `shouldBeEncrypted`); a file has
/// one rule at most (`stores/stores.go`, `ToInternal`).
enum Rule {
    UnencryptedSuffix(String),
    EncryptedSuffix(String),
    UnencryptedRegex(Regex),
    EncryptedRegex(Regex),
    /// `encrypted_comment_regex` or `unencrypted_comment_regex`: decided by
    /// comments, which relive does not see, so a value is taken as
    /// encrypted when it has the shape of one.
    ByComment,
}

impl Rule {
    /// Whether the leaf at `path` is encrypted, given its value's shape for
    /// the comment rules.
    fn encrypts(&self, path: &[&str], leaf: &Node) -> bool {
        match self {
            Rule::UnencryptedSuffix(suffix) => !path.iter().any(|k| k.ends_with(suffix.as_str())),
            Rule::EncryptedSuffix(suffix) => path.iter().any(|k| k.ends_with(suffix.as_str())),
            Rule::UnencryptedRegex(re) => !path.iter().any(|k| re.is_match(k)),
            Rule::EncryptedRegex(re) => path.iter().any(|k| re.is_match(k)),
            Rule::ByComment => matches!(leaf, Node::Str(s) if s.starts_with("ENC[AES256_GCM,")),
        }
    }
}

struct Metadata {
    age: Vec<AgeEntry>,
    /// Other key kinds the data key is encrypted to (`pgp`, `kms`, …).
    others: Vec<&'static str>,
    lastmodified: String,
    mac: String,
    rule: Rule,
    mac_only_encrypted: bool,
}

fn get<'a>(map: &'a [(String, Node)], key: &str) -> Option<&'a Node> {
    map.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn meta_string<'a>(map: &'a [(String, Node)], key: &str) -> Result<Option<&'a str>, SopsError> {
    match get(map, key) {
        None | Some(Node::Null) => Ok(None),
        Some(Node::Str(s)) if s.is_empty() => Ok(None),
        Some(Node::Str(s)) => Ok(Some(s)),
        Some(_) => Err(malformed(format!("sops metadata field `{key}` is not a string")).at(format!("sops.{key}"))),
    }
}

impl Metadata {
    fn parse(node: &Node) -> Result<Metadata, SopsError> {
        let Node::Map(map) = node else {
            return Err(malformed("sops metadata is not a map").at("sops"));
        };
        let lastmodified = meta_string(map, "lastmodified")?
            .ok_or_else(|| malformed("sops metadata lacks `lastmodified`").at("sops"))?;
        let lastmodified = go_rfc3339(lastmodified)
            .ok_or_else(|| malformed("sops metadata `lastmodified` is not an rfc 3339 time").at("sops.lastmodified"))?;
        let mac = meta_string(map, "mac")?.ok_or_else(|| malformed("sops metadata lacks `mac`").at("sops"))?.to_owned();

        // Keys are listed at the top of the metadata (one group), or in
        // `key_groups` (`stores/stores.go`, `internalKeygroups`).
        let mut age = Vec::new();
        let mut others = Vec::new();
        let has_top_level_keys = std::iter::once("age").chain(OTHER_KEY_KINDS).any(|k| get(map, k).is_some());
        if has_top_level_keys {
            collect_keys(map, "sops", &mut age, &mut others)?;
        } else if let Some(groups) = get(map, "key_groups") {
            let Node::Seq(groups) = groups else {
                return Err(malformed("sops metadata `key_groups` is not a list").at("sops.key_groups"));
            };
            if groups.len() > 1 {
                return Err(SopsError::new(
                    SopsErrorKind::Unsupported,
                    format!(
                        "the data key is split into {} shamir key groups; relive decrypts files with one key group",
                        groups.len()
                    ),
                )
                .at("sops.key_groups"));
            }
            if let Some(Node::Map(group)) = groups.first() {
                collect_keys(group, "sops.key_groups[0]", &mut age, &mut others)?;
            }
        }
        if age.is_empty() && others.is_empty() {
            return Err(malformed("sops metadata lists no keys").at("sops"));
        }

        let mut rules = Vec::new();
        for field in ["unencrypted_suffix", "encrypted_suffix", "unencrypted_regex", "encrypted_regex"] {
            if let Some(value) = meta_string(map, field)? {
                rules.push((field, value));
            }
        }
        for field in ["unencrypted_comment_regex", "encrypted_comment_regex"] {
            if meta_string(map, field)?.is_some() {
                rules.push((field, ""));
            }
        }
        if rules.len() > 1 {
            return Err(malformed(
                "sops metadata names more than one of encrypted_suffix, unencrypted_suffix, encrypted_regex, \
                 unencrypted_regex and the comment regexes",
            )
            .at("sops"));
        }
        let rule = match rules.first() {
            None => Rule::UnencryptedSuffix(DEFAULT_UNENCRYPTED_SUFFIX.to_owned()),
            Some(("unencrypted_suffix", s)) => Rule::UnencryptedSuffix((*s).to_owned()),
            Some(("encrypted_suffix", s)) => Rule::EncryptedSuffix((*s).to_owned()),
            Some(("unencrypted_regex", s)) => Rule::UnencryptedRegex(compile(s, "unencrypted_regex")?),
            Some(("encrypted_regex", s)) => Rule::EncryptedRegex(compile(s, "encrypted_regex")?),
            Some(_) => Rule::ByComment,
        };
        let mac_only_encrypted = match get(map, "mac_only_encrypted") {
            None | Some(Node::Null) => false,
            Some(Node::Bool(b)) => *b,
            Some(_) => {
                return Err(
                    malformed("sops metadata `mac_only_encrypted` is not a boolean").at("sops.mac_only_encrypted")
                );
            }
        };
        Ok(Metadata { age, others, lastmodified, mac, rule, mac_only_encrypted })
    }
}

fn collect_keys(
    map: &[(String, Node)],
    at: &str,
    age: &mut Vec<AgeEntry>,
    others: &mut Vec<&'static str>,
) -> Result<(), SopsError> {
    for kind in OTHER_KEY_KINDS {
        if matches!(get(map, kind), Some(Node::Seq(items)) if !items.is_empty()) && !others.contains(&kind) {
            others.push(kind);
        }
    }
    match get(map, "age") {
        None | Some(Node::Null) => {}
        Some(Node::Seq(entries)) => {
            for (i, entry) in entries.iter().enumerate() {
                let bad = || malformed("sops age entry lacks `recipient` or `enc`").at(format!("{at}.age[{i}]"));
                let Node::Map(entry) = entry else { return Err(bad()) };
                let recipient = meta_string(entry, "recipient").map_err(|_| bad())?.ok_or_else(bad)?;
                let enc = meta_string(entry, "enc").map_err(|_| bad())?.ok_or_else(bad)?;
                age.push(AgeEntry { recipient: recipient.to_owned(), enc: enc.to_owned() });
            }
        }
        Some(_) => return Err(malformed("sops metadata `age` is not a list").at(format!("{at}.age"))),
    }
    Ok(())
}

fn compile(pattern: &str, field: &str) -> Result<Regex, SopsError> {
    let bad = || malformed(format!("sops metadata `{field}` is not a valid regex")).at(format!("sops.{field}"));
    if pattern.len() > MAX_REGEX_LEN {
        return Err(bad());
    }
    RegexBuilder::new(pattern).size_limit(MAX_REGEX_COMPILED).build().map_err(|_| bad())
}

/// `lastmodified` as Go prints it after parsing it (`decrypt/decrypt.go`:
/// `LastModified.Format(time.RFC3339)`): fractional seconds dropped, a zero
/// offset written `Z`. This text is the MAC's additional data.
fn go_rfc3339(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || !matches!(b[10], b'T' | b't')
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let end = frac.find(|c: char| !c.is_ascii_digit()).unwrap_or(frac.len());
        if end == 0 {
            return None;
        }
        rest = &frac[end..];
    }
    let zone = match rest {
        "Z" | "z" | "+00:00" | "-00:00" => "Z".to_owned(),
        _ if rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':'
            && rest[1..3].bytes().chain(rest[4..6].bytes()).all(|c| c.is_ascii_digit()) =>
        {
            rest.to_owned()
        }
        _ => return None,
    };
    Some(format!("{}T{}{zone}", &text[..10], &text[11..19]))
}

// ---------------------------------------------------------------------------
// Decryption

struct SopsFile {
    meta: Metadata,
    /// The document without its `sops` key, in file order.
    tree: Vec<(String, Node)>,
}

impl SopsFile {
    fn parse(format: Format, bytes: &[u8]) -> Result<SopsFile, SopsError> {
        let Node::Map(entries) = parse_ordered(format, bytes)? else {
            return Err(SopsError::new(SopsErrorKind::NotSops, "file has no sops metadata"));
        };
        let mut meta = None;
        let mut tree = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            if key == "sops" {
                meta = Some(value);
            } else {
                tree.push((key, value));
            }
        }
        let meta = meta.ok_or_else(|| SopsError::new(SopsErrorKind::NotSops, "file has no sops metadata"))?;
        Ok(SopsFile { meta: Metadata::parse(&meta)?, tree })
    }

    /// The data key, from the first age entry one of `ids` decrypts.
    ///
    /// Only entries whose recipient is one of `ids`' public keys are tried,
    /// each with that identity only: one key agreement per matching entry,
    /// whatever the file lists (`sops` writes the recipient an entry is
    /// encrypted to beside it, `stores/stores.go`, `agekey`).
    fn data_key(&self, ids: &Identities) -> Result<Zeroizing<[u8; 32]>, SopsError> {
        if self.meta.age.is_empty() {
            return Err(SopsError::new(
                SopsErrorKind::Unsupported,
                format!(
                    "the data key is encrypted to {} keys only; relive decrypts age keys only",
                    self.meta.others.join(", ")
                ),
            )
            .at("sops"));
        }
        let mut last_error = None;
        for (index, entry) in self.meta.age.iter().enumerate().take(MAX_AGE_ENTRIES) {
            let Some(key) = ids.keys.iter().find(|k| k.recipient == entry.recipient) else { continue };
            let id = DataKeyCache::id(&entry.recipient, &entry.enc);
            // A poisoned lock only means another thread panicked while
            // holding it; the cache is a plain list and still consistent.
            if let Some(data_key) = ids.cache.lock().unwrap_or_else(PoisonError::into_inner).get(&id) {
                return Ok(data_key);
            }
            match unwrap_age(&entry.enc, &key.identity) {
                Ok(data_key) => {
                    ids.cache.lock().unwrap_or_else(PoisonError::into_inner).insert(id, &data_key);
                    return Ok(data_key);
                }
                Err(message) => last_error = Some(malformed(message).at(format!("sops.age[{index}].enc"))),
            }
        }
        if let Some(err) = last_error {
            return Err(err);
        }
        let recipients: Vec<&str> = self.meta.age.iter().map(|a| a.recipient.as_str()).collect();
        let mut message = format!("no age identity matches: the file is encrypted to {}", recipients.join(", "));
        if !self.meta.others.is_empty() {
            let _ = write!(message, " (and to {} keys, which relive does not decrypt)", self.meta.others.join(", "));
        }
        if ids.is_empty() {
            message.push_str("; no age key was found (SOPS_AGE_KEY_FILE, SOPS_AGE_KEY, sops/age/keys.txt)");
        }
        Err(SopsError::new(SopsErrorKind::NoIdentity, message).at("sops.age"))
    }

    fn decrypt_with(&self, data_key: &[u8; 32]) -> Result<Decrypted, SopsError> {
        let ciphers = Ciphers::new(data_key);
        let (value, secrets, mac) = self.walk(Some(&ciphers))?;
        let stored = decrypt_value(&self.meta.mac, &ciphers, self.meta.lastmodified.as_bytes())
            .map_err(|err| match err {
                ValueError::Auth => SopsError::new(
                    SopsErrorKind::BadMac,
                    "the mac does not authenticate: it, lastmodified or the data key was changed",
                ),
                _ => malformed("the mac is not a sops encrypted value"),
            })
            .map_err(|err| err.at("sops.mac"))?;
        let text = String::from_utf8(stored.plaintext)
            .ok()
            .filter(|_| stored.datatype == "str")
            .ok_or_else(|| malformed("the mac is not a string").at("sops.mac"))?;
        // Upper-case hex, as `sops.go` prints it (`fmt.Sprintf("%X", ...)`).
        if !text.eq_ignore_ascii_case(&mac) {
            return Err(SopsError::new(
                SopsErrorKind::BadMac,
                "the values do not match the mac: a value was changed, added, removed or reordered",
            )
            .at("sops.mac"));
        }
        Ok(Decrypted { value, secrets })
    }

    /// Walks the tree in order as `sops.go`'s `Tree.Decrypt` does. With a
    /// key, decrypts every encrypted leaf and returns the plaintext, the
    /// pointers of the secrets and the hex MAC; without one, only checks
    /// that every leaf that should be encrypted is.
    fn walk(&self, ciphers: Option<&Ciphers>) -> Result<(Value, BTreeSet<String>, String), SopsError> {
        let mut walker = Walker {
            rule: &self.meta.rule,
            mac_only: self.meta.mac_only_encrypted,
            ciphers,
            hash: Sha512::new(),
            secrets: BTreeSet::new(),
            keys: Vec::new(),
            location: Vec::new(),
        };
        if self.meta.mac_only_encrypted {
            walker.hash.update(MAC_ONLY_ENCRYPTED_INIT);
        }
        let mut object = Map::new();
        for (key, node) in &self.tree {
            walker.keys.push(key);
            walker.location.push(Step::Key(key));
            let value = walker.node(node)?;
            walker.keys.pop();
            walker.location.pop();
            object.insert(key.clone(), value);
        }
        let mac = walker.hash.finalize().iter().fold(String::with_capacity(128), |mut s, b| {
            let _ = write!(s, "{b:02X}");
            s
        });
        Ok((Value::Object(object), walker.secrets, mac))
    }
}

/// Decrypts an age-armored data key (`age/keysource.go`, `Decrypt`).
fn unwrap_age(enc: &str, identity: &age::x25519::Identity) -> Result<Zeroizing<[u8; 32]>, String> {
    if enc.len() > MAX_AGE_ARMOR {
        return Err("the encrypted data key is larger than an age file of one key".to_owned());
    }
    let reader = age::armor::ArmoredReader::new(enc.trim().as_bytes());
    let decryptor = age::Decryptor::new_buffered(reader)
        .map_err(|_| "the encrypted data key is not an armored age file".to_owned())?;
    let mut stream = decryptor
        .decrypt(std::iter::once(identity as &dyn age::Identity))
        .map_err(|_| "the encrypted data key does not decrypt with the identity of its recipient".to_owned())?;
    let mut key = Zeroizing::new(Vec::with_capacity(33));
    (&mut stream)
        .take(33)
        .read_to_end(&mut key)
        .map_err(|_| "the encrypted data key does not decrypt with the identity of its recipient".to_owned())?;
    <[u8; 32]>::try_from(key.as_slice()).map(Zeroizing::new).map_err(|_| "the data key is not 32 bytes".to_owned())
}

enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

struct Walker<'a> {
    rule: &'a Rule,
    mac_only: bool,
    ciphers: Option<&'a Ciphers>,
    hash: Sha512,
    secrets: BTreeSet<String>,
    /// The keys on the path, which the rules and the additional data see
    /// (list indexes are not part of it: `sops.go`, `walkSlice`).
    keys: Vec<&'a str>,
    /// The full location, for errors and secrets.
    location: Vec<Step<'a>>,
}

impl<'a> Walker<'a> {
    fn node(&mut self, node: &'a Node) -> Result<Value, SopsError> {
        match node {
            // Nulls are not walked (`sops.go`, `walkValue`).
            Node::Null => Ok(Value::Null),
            Node::Seq(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (index, item) in items.iter().enumerate() {
                    self.location.push(Step::Index(index));
                    let value = self.node(item);
                    self.location.pop();
                    out.push(value?);
                }
                Ok(Value::Array(out))
            }
            Node::Map(entries) => {
                let mut out = Map::new();
                for (key, item) in entries {
                    self.keys.push(key);
                    self.location.push(Step::Key(key));
                    let value = self.node(item);
                    self.keys.pop();
                    self.location.pop();
                    out.insert(key.clone(), value?);
                }
                Ok(Value::Object(out))
            }
            leaf => self.leaf(leaf),
        }
    }

    fn leaf(&mut self, leaf: &Node) -> Result<Value, SopsError> {
        let encrypted = self.rule.encrypts(&self.keys, leaf);
        let (value, bytes) = if encrypted {
            self.secrets.insert(self.pointer());
            match leaf {
                // `aes/cipher.go`, `Encrypt`/`Decrypt`: an empty string is
                // not encrypted.
                Node::Str(s) if s.is_empty() => (Value::String(String::new()), Vec::new()),
                Node::Str(s) => match self.ciphers {
                    Some(ciphers) => self.decrypt_leaf(s, ciphers)?,
                    None => {
                        parse_enc(s).map_err(|err| self.value_error(err))?;
                        return Ok(Value::Null);
                    }
                },
                _ => return Err(self.value_error(ValueError::Clear)),
            }
        } else {
            (plain_value(leaf), go_bytes(leaf))
        };
        if !self.mac_only || encrypted {
            self.hash.update(&bytes);
        }
        Ok(value)
    }

    fn decrypt_leaf(&self, text: &str, ciphers: &Ciphers) -> Result<(Value, Vec<u8>), SopsError> {
        // The additional data is the path's keys, each followed by `:`
        // (`sops.go`, `Tree.Decrypt`: `strings.Join(path, ":") + ":"`).
        let mut aad = String::new();
        for key in &self.keys {
            aad.push_str(key);
            aad.push(':');
        }
        let decrypted = decrypt_value(text, ciphers, aad.as_bytes()).map_err(|err| self.value_error(err))?;
        read_typed(&decrypted.plaintext, &decrypted.datatype).map_err(|err| self.value_error(err))
    }

    fn value_error(&self, err: ValueError) -> SopsError {
        let (kind, message) = match err {
            ValueError::Clear => (
                SopsErrorKind::Malformed,
                "value is in clear where the file's rules say it is encrypted (edited by hand?)".to_owned(),
            ),
            ValueError::Shape(what) => (SopsErrorKind::Malformed, format!("encrypted value is malformed: {what}")),
            ValueError::Auth => (
                SopsErrorKind::Tampered,
                "encrypted value does not authenticate: it was changed, moved from another key or encrypted with \
                 another data key"
                    .to_owned(),
            ),
            ValueError::Type(datatype) => {
                (SopsErrorKind::Malformed, format!("decrypted value is not a valid `{datatype}`"))
            }
        };
        SopsError::new(kind, message).at(self.key_path())
    }

    /// The location in relive's key path form (`a.b[2]`, `a["x.y"]`).
    fn key_path(&self) -> String {
        let mut out = String::new();
        for step in &self.location {
            match step {
                Step::Index(i) => {
                    let _ = write!(out, "[{i}]");
                }
                Step::Key(k) if k.contains(['.', '[', ']']) || k.is_empty() => {
                    let _ = write!(out, "[\"{k}\"]");
                }
                Step::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
            }
        }
        out
    }

    /// The location as a JSON pointer (RFC 6901).
    fn pointer(&self) -> String {
        let mut out = String::new();
        for step in &self.location {
            out.push('/');
            match step {
                Step::Index(i) => {
                    let _ = write!(out, "{i}");
                }
                Step::Key(k) => out.push_str(&k.replace('~', "~0").replace('/', "~1")),
            }
        }
        out
    }
}

enum ValueError {
    /// A value that should be encrypted is not.
    Clear,
    /// An `ENC[...]` value that does not parse.
    Shape(&'static str),
    /// AES-GCM authentication failed.
    Auth,
    /// The plaintext does not read as its declared type.
    Type(String),
}

struct EncValue {
    data: Vec<u8>,
    iv: Vec<u8>,
    tag: Vec<u8>,
    datatype: String,
}

struct Plain {
    plaintext: Vec<u8>,
    datatype: String,
}

/// Parses `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]` (`aes/cipher.go`,
/// `parse`, whose regex is anchored at the start only).
fn parse_enc(text: &str) -> Result<EncValue, ValueError> {
    let inner = text.strip_prefix("ENC[AES256_GCM,").ok_or(ValueError::Clear)?;
    let inner = inner.strip_suffix(']').ok_or(ValueError::Shape("no closing bracket"))?;
    let mut fields = inner.splitn(4, ',');
    let mut field = |name: &'static str| {
        fields
            .next()
            .and_then(|f| f.strip_prefix(name))
            .and_then(|f| f.strip_prefix(':'))
            .ok_or(ValueError::Shape("fields are not data, iv, tag, type"))
    };
    let (data, iv, tag, datatype) = (field("data")?, field("iv")?, field("tag")?, field("type")?);
    if data.len() > MAX_VALUE_BASE64 {
        return Err(ValueError::Shape("larger than 1 MiB"));
    }
    let decode = |field: &str| BASE64.decode(field).map_err(|_| ValueError::Shape("a field is not base64"));
    let (data, iv, tag) = (decode(data)?, decode(iv)?, decode(tag)?);
    if tag.len() != 16 {
        return Err(ValueError::Shape("the tag is not 16 bytes"));
    }
    if iv.len() != 32 && iv.len() != 12 {
        return Err(ValueError::Shape("the iv is not 32 bytes"));
    }
    if datatype.len() > 16 {
        return Err(ValueError::Shape("unknown type"));
    }
    Ok(EncValue { data, iv, tag, datatype: datatype.to_owned() })
}

/// AES-256-GCM under a file's data key, built once per file (the key
/// schedule and GHASH key are the same for every value).
struct Ciphers {
    /// The nonce size `sops` writes (`aes/cipher.go`, `nonceSize`).
    long: AesGcm<Aes256, U32>,
    /// The standard size, which Go's `NewGCMWithNonceSize(len(iv))` would
    /// also take.
    short: AesGcm<Aes256, U12>,
}

impl Ciphers {
    fn new(key: &[u8; 32]) -> Ciphers {
        Ciphers { long: AesGcm::new(key.into()), short: AesGcm::new(key.into()) }
    }
}

/// Decrypts one value (`aes/cipher.go`, `Decrypt`): AES-256-GCM with the
/// nonce size of its iv, the tag after the data.
fn decrypt_value(text: &str, ciphers: &Ciphers, aad: &[u8]) -> Result<Plain, ValueError> {
    let enc = parse_enc(text)?;
    let mut message = enc.data;
    message.extend_from_slice(&enc.tag);
    let payload = Payload { msg: &message, aad };
    let plaintext = if enc.iv.len() == 32 {
        ciphers.long.decrypt(Nonce::<U32>::from_slice(&enc.iv), payload)
    } else {
        ciphers.short.decrypt(Nonce::<U12>::from_slice(&enc.iv), payload)
    }
    .map_err(|_| ValueError::Auth)?;
    Ok(Plain { plaintext, datatype: enc.datatype })
}

/// Reads a decrypted plaintext as its type (`aes/cipher.go`, `Decrypt`),
/// and gives the bytes the MAC takes for it (`sops.go`, `ToBytes`).
fn read_typed(plaintext: &[u8], datatype: &str) -> Result<(Value, Vec<u8>), ValueError> {
    let bad = || ValueError::Type(datatype.to_owned());
    let text = || std::str::from_utf8(plaintext).map_err(|_| bad());
    Ok(match datatype {
        "str" | "time" => {
            // A `time` is Go's `time.Time` text (RFC 3339), which is what
            // `sops --decrypt` prints and what `ToBytes` hashes.
            let s = text()?;
            (Value::String(s.to_owned()), plaintext.to_vec())
        }
        "bytes" => (Value::String(text()?.to_owned()), plaintext.to_vec()),
        "int" => {
            // Go's `strconv.Atoi`: an optional sign and decimal digits.
            let s = text()?;
            let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let n: i64 = s.parse().map_err(|_| bad())?;
            (Value::from(n), n.to_string().into_bytes())
        }
        "float" => {
            let f = go_parse_float(text()?).ok_or_else(bad)?;
            (float_value(f), go_format_float(f).into_bytes())
        }
        "bool" => {
            // Go's `strconv.ParseBool`.
            let b = match text()? {
                "1" | "t" | "T" | "TRUE" | "true" | "True" => true,
                "0" | "f" | "F" | "FALSE" | "false" | "False" => false,
                _ => return Err(bad()),
            };
            (Value::Bool(b), go_bool(b).to_vec())
        }
        _ => return Err(bad()),
    })
}

fn go_parse_float(s: &str) -> Option<f64> {
    // Go's `strconv.ParseFloat` takes what Rust's parser takes for the
    // forms `sops` writes (`strconv.FormatFloat(f, 'f', -1, 64)`), and the
    // special values in Go's spelling.
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        _ if s.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E')) => s.parse().ok(),
        _ => None,
    }
}

/// Go's `strconv.FormatFloat(f, 'f', -1, 64)`: the shortest digits that
/// read back as `f`, never in exponent form. Rust's `Display` for `f64` is
/// the same, but for the spelling of the special values.
fn go_format_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".to_owned()
    } else if f.is_infinite() {
        if f > 0.0 { "+Inf".to_owned() } else { "-Inf".to_owned() }
    } else {
        f.to_string()
    }
}

/// A decrypted float as JSON. `sops` prints a float with no fraction
/// without a decimal point (`5432`, as its JSON store encrypts every number
/// as a float before 3.13, and YAML's `2.5e3` as `2500`), so the value is
/// the integer that `sops --decrypt` shows, which a typed field such as a
/// `u16` port accepts.
fn float_value(f: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53: every integer below is exact.
    if f.fract() == 0.0 && f.abs() < EXACT && !(f == 0.0 && f.is_sign_negative()) {
        // The cast is exact: `f` is an integer of magnitude below 2^53.
        Value::from(f as i64)
    } else {
        serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
    }
}

fn go_bool(b: bool) -> &'static [u8] {
    if b { b"True" } else { b"False" }
}

/// A leaf left in clear, as a JSON value.
fn plain_value(leaf: &Node) -> Value {
    match leaf {
        Node::Bool(b) => Value::Bool(*b),
        Node::I64(i) => Value::from(*i),
        Node::U64(u) => Value::from(*u),
        Node::F64(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Node::Str(s) => Value::String(s.clone()),
        Node::Null | Node::Seq(_) | Node::Map(_) => Value::Null,
    }
}

/// The bytes the MAC takes for a leaf left in clear (`sops.go`, `ToBytes`).
/// An integer too large for Go's `int` is a float to `sops`'s JSON store
/// (`stores/json/store.go`, `normalizeJSONNumber`).
fn go_bytes(leaf: &Node) -> Vec<u8> {
    match leaf {
        Node::Bool(b) => go_bool(*b).to_vec(),
        Node::I64(i) => i.to_string().into_bytes(),
        Node::U64(u) => go_format_float(*u as f64).into_bytes(),
        Node::F64(f) => go_format_float(*f).into_bytes(),
        Node::Str(s) => s.as_bytes().to_vec(),
        Node::Null | Node::Seq(_) | Node::Map(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lastmodified_is_printed_as_go_prints_it() {
        assert_eq!(go_rfc3339("2026-12-01T02:14:38Z").as_deref(), Some("2026-12-01T02:14:38Z"));
        assert_eq!(go_rfc3339("2026-12-01T02:14:38.123456Z").as_deref(), Some("2026-12-01T02:14:38Z"));
        assert_eq!(go_rfc3339("2026-12-01T02:14:38+00:00").as_deref(), Some("2026-12-01T02:14:38Z"));
        assert_eq!(go_rfc3339("2026-12-01T02:14:38+02:00").as_deref(), Some("2026-12-01T02:14:38+02:00"));
        assert_eq!(go_rfc3339("2026-12-01 02:14:38"), None);
        assert_eq!(go_rfc3339("2026-12-01T02:14:38é"), None);
    }

    #[test]
    fn floats_are_formatted_as_go_formats_them() {
        for (f, go) in [(1.5, "1.5"), (2500.0, "2500"), (1e21, "1000000000000000000000"), (1e-7, "0.0000001")] {
            assert_eq!(go_format_float(f), go);
        }
        assert_eq!(go_format_float(f64::INFINITY), "+Inf");
    }

    #[test]
    fn key_paths_and_pointers_escape_odd_keys() {
        let rule = Rule::ByComment;
        let mut w = Walker {
            rule: &rule,
            mac_only: false,
            ciphers: None,
            hash: Sha512::new(),
            secrets: BTreeSet::new(),
            keys: Vec::new(),
            location: vec![Step::Key("a"), Step::Key("b.c"), Step::Index(2), Step::Key("d/e~")],
        };
        assert_eq!(w.key_path(), "a[\"b.c\"][2].d/e~");
        assert_eq!(w.pointer(), "/a/b.c/2/d~1e~0");
        w.location.clear();
        assert_eq!(w.key_path(), "");
    }

    #[test]
    fn identities_can_be_shared_between_threads() {
        fn shared<T: Send + Sync + Clone + 'static>() {}
        shared::<Identities>();
        shared::<SopsError>();
    }

    #[test]
    fn deep_nesting_and_alias_bombs_are_bounded_errors() {
        let ids = Identities::new();
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        for format in [Format::Json, Format::Yaml] {
            let err = decrypt(format, deep.as_bytes(), &ids).unwrap_err();
            assert_eq!(err.kind(), SopsErrorKind::Malformed, "{err}");
        }
        // Nine levels of nine aliases: a billion strings if expanded.
        let mut bomb =
            String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
        for (prev, name) in
            ["a", "b", "c", "d", "e", "f", "g", "h"].iter().zip(["b", "c", "d", "e", "f", "g", "h", "i"])
        {
            let refs = vec![format!("*{prev}"); 9].join(",");
            bomb.push_str(&format!("{name}: &{name} [{refs}]\n"));
        }
        bomb.push_str("sops: {mac: x}\n");
        let started = std::time::Instant::now();
        let err = decrypt(Format::Yaml, bomb.as_bytes(), &ids).unwrap_err();
        assert_eq!(err.kind(), SopsErrorKind::Malformed, "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn malformed_values_are_errors_not_panics() {
        for text in [
            "ENC[AES256_GCM,",
            "ENC[AES256_GCM,data:,iv:,tag:,type:str]",
            "ENC[AES256_GCM,data:!!,iv:AA==,tag:AA==,type:str]",
            "ENC[AES256_GCM,data:AA==,iv:AA==,tag:AAAAAAAAAAAAAAAAAAAAAA==,type:str]",
            "ENC[AES256_GCM,type:str,data:AA==]",
        ] {
            assert!(decrypt_value(text, &Ciphers::new(&[0; 32]), b"a:").is_err(), "{text}");
        }
    }
}
