//! relive's SOPS decryption against the real thing: files encrypted by the
//! `sops` binary with keys made by `age-keygen`, compared value for value
//! with what `sops decrypt` prints.
//!
//! The binaries must be on PATH (`scripts/install-deps` installs them); the
//! tests fail, not skip, without them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

mod common;

use common::{Key, binary};
use relive::Format;
use relive::sops::{self, Checked, Identities, SopsErrorKind};
use serde_json::{Value, json};

/// A `sops` command with a clean environment: no keys but those given.
fn sops_cmd(dir: &Path) -> Command {
    let mut cmd = Command::new(binary("sops"));
    cmd.current_dir(dir)
        .env("SOPS_DISABLE_VERSION_CHECK", "1")
        .env_remove("SOPS_AGE_KEY")
        .env_remove("SOPS_AGE_KEY_FILE")
        .env("XDG_CONFIG_HOME", dir.join("no-config"));
    cmd
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// A file encrypted by `sops encrypt` to `recipients`, with extra flags.
struct Encrypted {
    dir: tempfile::TempDir,
    path: PathBuf,
    format: Format,
}

impl Encrypted {
    fn new(name: &str, plain: &str, recipients: &[&Key], flags: &[&str]) -> Encrypted {
        let dir = tempfile::tempdir().unwrap();
        let plain_path = dir.path().join(name);
        std::fs::write(&plain_path, plain).unwrap();
        let recipients: Vec<&str> = recipients.iter().map(|k| k.recipient.as_str()).collect();
        let out = run(sops_cmd(dir.path()).arg("encrypt").arg("--age").arg(recipients.join(",")).args(flags).arg(name));
        let path = dir.path().join(format!("enc.{name}"));
        std::fs::write(&path, out).unwrap();
        let format = Format::from_path(&path).unwrap();
        Encrypted { dir, path, format }
    }

    /// A file encrypted by the creation rule of a `.sops.yaml` (for
    /// settings that have no flag, such as `mac_only_encrypted`).
    fn by_rule(name: &str, plain: &str, key: &Key, rule: &str) -> Encrypted {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(name), plain).unwrap();
        let config = format!("creation_rules:\n  - age: {}\n{rule}", key.recipient);
        std::fs::write(dir.path().join(".sops.yaml"), config).unwrap();
        let out = run(sops_cmd(dir.path()).arg("encrypt").arg(name));
        let path = dir.path().join(format!("enc.{name}"));
        std::fs::write(&path, out).unwrap();
        let format = Format::from_path(&path).unwrap();
        Encrypted { dir, path, format }
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }

    fn text(&self) -> String {
        String::from_utf8(self.bytes()).unwrap()
    }

    fn write(&self, text: &str) {
        std::fs::write(&self.path, text).unwrap();
    }

    /// What `sops decrypt` makes of the file, parsed as a value.
    fn sops_decrypt(&self, key: &Key) -> Result<Value, String> {
        let out = sops_cmd(self.dir.path())
            .env("SOPS_AGE_KEY_FILE", &key.file)
            .arg("decrypt")
            .arg(&self.path)
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(parse(self.format, &out.stdout))
    }

    fn relive_decrypt(&self, ids: &Identities) -> Result<sops::Decrypted, sops::SopsError> {
        sops::decrypt(self.format, &self.bytes(), ids)
    }

    /// Asserts that relive decrypts the file to what `sops decrypt` prints,
    /// and returns relive's result.
    fn assert_same_as_sops(&self, key: &Key) -> sops::Decrypted {
        let expected = self.sops_decrypt(key).expect("sops decrypts the file");
        let decrypted = self.relive_decrypt(&key.ids()).expect("relive decrypts the file");
        assert_eq!(decrypted.value(), &expected, "relive and sops disagree on {}", self.path.display());
        decrypted
    }
}

fn parse(format: Format, bytes: &[u8]) -> Value {
    match format {
        Format::Json => serde_json::from_slice(bytes).unwrap(),
        Format::Yaml => serde_yaml_ng::from_slice(bytes).unwrap(),
        Format::Toml => unreachable!("sops writes yaml and json"),
    }
}

fn secrets(decrypted: &sops::Decrypted) -> Vec<&str> {
    decrypted.secrets().iter().map(String::as_str).collect()
}

const YAML: &str = r#"# a comment, which sops encrypts too
db:
  password: hunter2 # inline comment
  port: 5432
  ratio: 1.50
  negative: -7
  tiny: 0.000001
  "on": true
  off_switch: false
  when: 2024-01-01
  empty: ""
  nothing: null
hosts:
  - alpha
  - weight: 3
    tags: [1, 2.5e3, "x"]
    deep:
      - [nested, 42]
name_unencrypted: visible
port_unencrypted: 8080
ratio_unencrypted: 0.25
flag_unencrypted: true
date_unencrypted: 2024-01-01
quoted_date_unencrypted: "2024-01-01"
ünïcødé: "çà 😀 \u00e9"
"dotted.key": secret-with-dot
"#;

const JSON: &str = r#"{
  "db": {"password": "hunter2", "port": 5432, "ratio": 1.5, "on": true, "empty": "", "nothing": null},
  "hosts": ["alpha", {"weight": 3, "tags": [1, 2500.5, "x"]}],
  "big": 12345678901234,
  "name_unencrypted": "visible",
  "count_unencrypted": 3,
  "ünïcødé": "çà 😀",
  "zeta": "last", "alpha": "first"
}
"#;

#[test]
fn a_yaml_file_decrypts_to_what_sops_prints() {
    let key = Key::generate();
    let file = Encrypted::new("app.yaml", YAML, &[&key], &[]);
    assert!(file.text().contains("#ENC["), "sops encrypts comments: {}", file.text());
    let decrypted = file.assert_same_as_sops(&key);
    let value = decrypted.value();
    assert_eq!(value["db"]["password"], "hunter2");
    assert_eq!(value["db"]["ratio"], json!(1.5));
    assert_eq!(value["db"]["when"], "2024-01-01T00:00:00Z");
    assert_eq!(value["hosts"][1]["deep"][0][1], 42);
    assert_eq!(value["ünïcødé"], "çà 😀 é");
    assert!(value.get("sops").is_none());
    let secrets = secrets(&decrypted);
    for pointer in ["/db/password", "/db/port", "/db/empty", "/hosts/0", "/hosts/1/tags/1", "/hosts/1/deep/0/1"] {
        assert!(secrets.contains(&pointer), "{pointer} is a secret: {secrets:?}");
    }
    for pointer in ["/name_unencrypted", "/port_unencrypted", "/db/nothing"] {
        assert!(!secrets.contains(&pointer), "{pointer} is not a secret: {secrets:?}");
    }
    assert!(secrets.contains(&"/dotted.key"));

    // Comments are outside the MAC: sops takes a broken encrypted comment
    // for a plain one (with a warning), and relive does not read comments.
    let line = file.text().lines().find(|l| l.starts_with("#ENC[")).unwrap().to_owned();
    file.write(&tamper_data(&file.text(), &line));
    assert_eq!(file.assert_same_as_sops(&key).value(), value);
}

#[test]
fn a_json_file_decrypts_to_what_sops_prints() {
    let key = Key::generate();
    let file = Encrypted::new("app.json", JSON, &[&key], &[]);
    let decrypted = file.assert_same_as_sops(&key);
    assert_eq!(decrypted.value()["big"], json!(12345678901234_i64));
    assert_eq!(decrypted.value()["hosts"][1]["tags"][1], json!(2500.5));
    assert!(secrets(&decrypted).contains(&"/zeta"));
}

#[test]
fn encrypted_regex_leaves_other_values_in_clear() {
    let key = Key::generate();
    let file = Encrypted::new("app.yaml", YAML, &[&key], &["--encrypted-regex", "^(password|tags)$"]);
    assert!(file.text().contains("port: 5432"), "only the matching keys are encrypted");
    let decrypted = file.assert_same_as_sops(&key);
    assert_eq!(secrets(&decrypted), ["/db/password", "/hosts/1/tags/0", "/hosts/1/tags/1", "/hosts/1/tags/2"]);
}

#[test]
fn unencrypted_regex_and_a_custom_unencrypted_suffix() {
    let key = Key::generate();
    let file = Encrypted::new("app.yaml", YAML, &[&key], &["--unencrypted-regex", "^(db|hosts)$"]);
    let decrypted = file.assert_same_as_sops(&key);
    assert!(!secrets(&decrypted).iter().any(|p| p.starts_with("/db") || p.starts_with("/hosts")));

    let plain = "password: x\nport_clear: 1\nnested_clear:\n  inner: y\nname_unencrypted: z\n";
    let file = Encrypted::new("app.yaml", plain, &[&key], &["--unencrypted-suffix", "_clear"]);
    let decrypted = file.assert_same_as_sops(&key);
    assert_eq!(secrets(&decrypted), ["/name_unencrypted", "/password"]);
}

#[test]
fn encrypted_suffix() {
    let key = Key::generate();
    let plain = "{\"password_secret\": \"x\", \"nested_secret\": {\"a\": 1}, \"port\": 8080}\n";
    let file = Encrypted::new("app.json", plain, &[&key], &["--encrypted-suffix", "_secret"]);
    let decrypted = file.assert_same_as_sops(&key);
    assert_eq!(secrets(&decrypted), ["/nested_secret/a", "/password_secret"]);
}

#[test]
fn mac_only_encrypted_covers_only_the_encrypted_values() {
    let key = Key::generate();
    let rule = "    mac_only_encrypted: true\n    encrypted_regex: ^password$\n";
    let file = Encrypted::by_rule("app.yaml", YAML, &key, rule);
    assert!(file.text().contains("mac_only_encrypted: true"));
    file.assert_same_as_sops(&key);

    // A value in clear is outside the MAC: sops and relive both accept a
    // hand edit of it.
    file.write(&file.text().replace("port: 5432", "port: 6543"));
    let decrypted = file.assert_same_as_sops(&key);
    assert_eq!(decrypted.value()["db"]["port"], 6543);

    // Without the flag, the same edit breaks the MAC, for both.
    let file = Encrypted::new("app.yaml", YAML, &[&key], &["--encrypted-regex", "^password$"]);
    file.write(&file.text().replace("port: 5432", "port: 6543"));
    assert!(file.sops_decrypt(&key).is_err());
    let err = file.relive_decrypt(&key.ids()).unwrap_err();
    assert_eq!(err.kind(), SopsErrorKind::BadMac, "{err}");
    assert_eq!(err.key(), Some("sops.mac"));
}

#[test]
fn a_file_for_two_recipients_decrypts_with_either_key() {
    let (a, b) = (Key::generate(), Key::generate());
    for (name, plain) in [("app.yaml", YAML), ("app.json", JSON)] {
        let file = Encrypted::new(name, plain, &[&a, &b], &[]);
        let from_a = file.assert_same_as_sops(&a);
        let from_b = file.assert_same_as_sops(&b);
        assert_eq!(from_a, from_b);
    }
}

#[test]
fn updatekeys_and_rotate_then_decrypt() {
    let (a, b) = (Key::generate(), Key::generate());
    let file = Encrypted::new("app.yaml", YAML, &[&a], &[]);
    // One set of identities throughout, as a running service keeps: the
    // data key it caches must not outlive `sops rotate`.
    let ids_a = a.ids();
    let before = file.relive_decrypt(&ids_a).unwrap();
    let err = file.relive_decrypt(&b.ids()).unwrap_err();
    assert_eq!(err.kind(), SopsErrorKind::NoIdentity);

    // Add b through a creation rule, as a team adds a member.
    let config = file.dir.path().join(".sops.yaml");
    std::fs::write(&config, format!("creation_rules:\n  - age: {},{}\n", a.recipient, b.recipient)).unwrap();
    run(sops_cmd(file.dir.path()).env("SOPS_AGE_KEY_FILE", &a.file).args(["updatekeys", "-y"]).arg(&file.path));
    let after = file.assert_same_as_sops(&b);
    assert_eq!(after.value(), before.value());

    // Rotate the data key: every value is re-encrypted.
    let old = file.text();
    run(sops_cmd(file.dir.path()).env("SOPS_AGE_KEY_FILE", &a.file).args(["rotate", "-i"]).arg(&file.path));
    assert_ne!(file.text(), old);
    let rotated = file.assert_same_as_sops(&a);
    assert_eq!(rotated.value(), before.value());
    assert_eq!(file.relive_decrypt(&ids_a).unwrap().value(), before.value());
    file.assert_same_as_sops(&b);
}

/// The line of `text` that holds `needle`, with its `ENC[...]` changed in
/// one character of its data.
fn tamper_data(text: &str, needle: &str) -> String {
    let line = text.lines().find(|l| l.contains(needle)).unwrap();
    let start = line.find("data:").unwrap() + "data:".len();
    let mut tampered = line.to_owned();
    let c = if &line[start..start + 1] == "A" { "B" } else { "A" };
    tampered.replace_range(start..start + 1, c);
    text.replacen(line, &tampered, 1)
}

#[test]
fn a_tampered_value_is_named_by_its_key_path() {
    let key = Key::generate();
    let file = Encrypted::new("app.yaml", YAML, &[&key], &[]);
    let good = file.text();

    file.write(&tamper_data(&good, "password: ENC["));
    assert!(file.sops_decrypt(&key).is_err(), "sops refuses it too");
    let err = file.relive_decrypt(&key.ids()).unwrap_err();
    assert_eq!(err.kind(), SopsErrorKind::Tampered, "{err}");
    assert_eq!(err.key(), Some("db.password"));
    assert!(err.to_string().contains("does not authenticate"), "{err}");

    // An item of a nested list.
    file.write(&tamper_data(&good, "- ENC[AES256_GCM,data:"));
    let err = file.relive_decrypt(&key.ids()).unwrap_err();
    assert_eq!((err.kind(), err.key()), (SopsErrorKind::Tampered, Some("hosts[0]")), "{err}");

    // A valid encrypted value moved to another key fails too: the key path
    // is its additional data.
    let password = good.lines().find(|l| l.contains("password: ENC[")).unwrap();
    let port = good.lines().find(|l| l.contains("port: ENC[")).unwrap();
    let moved = good.replacen(port, &password.replace("password:", "port:"), 1);
    file.write(&moved);
    assert!(file.sops_decrypt(&key).is_err());
    let err = file.relive_decrypt(&key.ids()).unwrap_err();
    assert_eq!((err.kind(), err.key()), (SopsErrorKind::Tampered, Some("db.port")), "{err}");
}

#[test]
fn a_tampered_mac_or_lastmodified_fails_the_mac_check() {
    let key = Key::generate();
    let file = Encrypted::new("app.json", JSON, &[&key], &[]);
    let good = file.text();

    file.write(&tamper_data(&good, "\"mac\": \"ENC["));
    assert!(file.sops_decrypt(&key).is_err());
    let err = file.relive_decrypt(&key.ids()).unwrap_err();
    assert_eq!((err.kind(), err.key()), (SopsErrorKind::BadMac, Some("sops.mac")), "{err}");

    let line = good.lines().find(|l| l.contains("\"lastmodified\"")).unwrap();
    // One second later: the last digit of the seconds, changed.
    let at = line.find("Z\"").unwrap() - 1;
    let digit = if &line[at..=at] == "9" { "8" } else { "9" };
    let mut changed = line.to_owned();
    changed.replace_range(at..=at, digit);
    assert_ne!(line, changed);
    file.write(&good.replacen(line, &changed, 1));
    assert!(file.sops_decrypt(&key).is_err());
    let err = file.relive_decrypt(&key.ids()).unwrap_err();
    assert_eq!(err.kind(), SopsErrorKind::BadMac, "{err}");

    // A value in clear changed by hand: the values no longer match the MAC.
    file.write(&good.replacen("\"visible\"", "\"changed\"", 1));
    assert!(file.sops_decrypt(&key).is_err());
    let err = file.relive_decrypt(&key.ids()).unwrap_err();
    assert_eq!(err.kind(), SopsErrorKind::BadMac, "{err}");

    // Reordering keys changes the MAC too (sops hashes in file order).
    let zeta = good.lines().find(|l| l.contains("\"zeta\"")).unwrap();
    let alpha = good.lines().find(|l| l.contains("\"alpha\": \"ENC")).unwrap();
    let swapped = good.replacen(zeta, "@@", 1).replacen(alpha, zeta, 1).replacen("@@", alpha, 1);
    let swapped = fix_json_commas(&swapped);
    file.write(&swapped);
    assert!(file.sops_decrypt(&key).is_err(), "sops refuses reordered keys");
    let err = file.relive_decrypt(&key.ids()).unwrap_err();
    assert_eq!(err.kind(), SopsErrorKind::BadMac, "{err}");
}

/// Keeps the reordered JSON valid: every member line but the last of an
/// object ends with a comma.
fn fix_json_commas(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let next = lines.get(i + 1).map(|l| l.trim_start()).unwrap_or("");
        let trimmed = line.trim_end().trim_end_matches(',');
        let needs_comma = !next.starts_with('}') && !next.starts_with(']') && !next.is_empty();
        let opens = trimmed.ends_with('{') || trimmed.ends_with('[');
        if needs_comma && !opens { out.push(format!("{trimmed},")) } else { out.push(trimmed.to_owned()) }
    }
    out.join("\n") + "\n"
}

#[test]
fn a_wrong_key_names_the_recipients() {
    let (a, b, stranger) = (Key::generate(), Key::generate(), Key::generate());
    let file = Encrypted::new("app.yaml", YAML, &[&a, &b], &[]);
    assert!(file.sops_decrypt(&stranger).is_err());
    let err = file.relive_decrypt(&stranger.ids()).unwrap_err();
    assert_eq!((err.kind(), err.key()), (SopsErrorKind::NoIdentity, Some("sops.age")), "{err}");
    let message = err.to_string();
    assert!(message.contains(&a.recipient) && message.contains(&b.recipient), "{message}");
    assert!(!message.contains(&stranger.recipient), "{message}");

    let err = file.relive_decrypt(&Identities::new()).unwrap_err();
    assert!(err.to_string().contains("no age key was found"), "{err}");
}

#[test]
fn a_value_put_in_clear_by_hand_is_refused_without_quoting_it() {
    let key = Key::generate();
    let file = Encrypted::new("app.yaml", YAML, &[&key], &[]);
    let good = file.text();
    let line = good.lines().find(|l| l.contains("password: ENC[")).unwrap();
    file.write(&good.replacen(line, "    password: hunter3", 1));
    assert!(file.sops_decrypt(&key).is_err(), "sops refuses it too");
    let err = file.relive_decrypt(&key.ids()).unwrap_err();
    assert_eq!((err.kind(), err.key()), (SopsErrorKind::Malformed, Some("db.password")), "{err}");
    assert!(!err.to_string().contains("hunter3"), "{err}");

    // A number in clear where an encrypted value belongs.
    let line = good.lines().find(|l| l.contains("port: ENC[")).unwrap();
    file.write(&good.replacen(line, "    port: 1234", 1));
    let err = file.relive_decrypt(&key.ids()).unwrap_err();
    assert_eq!((err.kind(), err.key()), (SopsErrorKind::Malformed, Some("db.port")), "{err}");

    // The check before a push finds it without a key, too.
    let err = sops::check(file.format, &file.bytes(), &Identities::new()).unwrap_err();
    assert_eq!(err.key(), Some("db.port"));
}

#[test]
fn metadata_missing_a_field_is_malformed() {
    let key = Key::generate();
    let file = Encrypted::new("app.yaml", YAML, &[&key], &[]);
    let good = file.text();
    for field in ["    mac: ", "    lastmodified: "] {
        let line = good.lines().find(|l| l.starts_with(field)).unwrap();
        file.write(&good.replacen(line, "", 1));
        let err = file.relive_decrypt(&key.ids()).unwrap_err();
        assert_eq!((err.kind(), err.key()), (SopsErrorKind::Malformed, Some("sops")), "{err}");
        assert!(err.to_string().contains(field.trim().trim_end_matches(':')), "{err}");
    }
}

#[test]
fn pgp_and_kms_only_files_are_unsupported_by_name() {
    let text = r#"{"password": "ENC[AES256_GCM,data:AAAA,iv:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=,tag:AAAAAAAAAAAAAAAAAAAAAA==,type:str]",
"sops": {"pgp": [{"fp": "ABCD", "enc": "x", "created_at": "2024-01-01T00:00:00Z"}],
"kms": [{"arn": "arn:aws:kms:x", "enc": "x", "created_at": "2024-01-01T00:00:00Z"}],
"lastmodified": "2024-01-01T00:00:00Z", "mac": "ENC[AES256_GCM,data:AA==,iv:AA==,tag:AA==,type:str]", "version": "3.11.0"}}"#;
    let err = sops::decrypt(Format::Json, text.as_bytes(), &Identities::new()).unwrap_err();
    assert_eq!(err.kind(), SopsErrorKind::Unsupported, "{err}");
    let message = err.to_string();
    assert!(
        message.contains("pgp") && message.contains("kms") && message.contains("decrypts age keys only"),
        "{message}"
    );
}

#[test]
fn is_sops_tells_sops_files_from_plain_ones() {
    let key = Key::generate();
    let file = Encrypted::new("app.json", JSON, &[&key], &[]);
    assert!(sops::is_sops(&parse(Format::Json, &file.bytes())));
    assert!(!sops::is_sops(&parse(Format::Json, JSON.as_bytes())));
    assert!(!sops::is_sops(&json!({"sops": {"enabled": true}})));
    assert!(!sops::is_sops(&json!({"sops": "yes"})));
}

#[test]
fn plain_files_are_not_sops_and_sniff_finds_sops_files() {
    let key = Key::generate();
    let json = Encrypted::new("app.json", JSON, &[&key], &[]);
    let yaml = Encrypted::new("app.yaml", YAML, &[&key], &[]);
    assert!(sops::sniff(&json.bytes()) && sops::sniff(&yaml.bytes()));
    assert!(!sops::sniff(JSON.as_bytes()) && !sops::sniff(YAML.as_bytes()));
    for (format, text) in [
        (Format::Json, JSON),
        (Format::Yaml, YAML),
        (Format::Yaml, "- a list\n"),
        (Format::Yaml, ""),
        (Format::Toml, "a = 1\n"),
        (Format::Toml, "not toml ["),
    ] {
        let err = sops::decrypt(format, text.as_bytes(), &key.ids()).unwrap_err();
        assert_eq!(err.kind(), SopsErrorKind::NotSops, "{text:?}: {err}");
    }
    // `sops` writes no TOML: one that carries its metadata is refused.
    let toml = "a = 1\n[sops]\nlastmodified = \"2024-01-01T00:00:00Z\"\nmac = \"x\"\n";
    let err = sops::decrypt(Format::Toml, toml.as_bytes(), &key.ids()).unwrap_err();
    assert_eq!((err.kind(), err.key()), (SopsErrorKind::Unsupported, Some("sops")), "{err}");
}

#[test]
fn check_verifies_with_a_key_and_the_shape_without_one() {
    let (key, stranger) = (Key::generate(), Key::generate());
    let file = Encrypted::new("app.yaml", YAML, &[&key], &[]);
    assert_eq!(sops::check(file.format, &file.bytes(), &key.ids()), Ok(Checked::Verified));
    assert_eq!(
        sops::check(file.format, &file.bytes(), &stranger.ids()),
        Ok(Checked::NoIdentity { recipients: vec![key.recipient.clone()] })
    );
    // With a key, the MAC is checked; without, it cannot be.
    file.write(&file.text().replacen("visible", "changed", 1));
    let err = sops::check(file.format, &file.bytes(), &key.ids()).unwrap_err();
    assert_eq!(err.kind(), SopsErrorKind::BadMac);
    assert!(matches!(sops::check(file.format, &file.bytes(), &stranger.ids()), Ok(Checked::NoIdentity { .. })));
}

#[test]
fn identities_come_from_where_sops_looks() {
    let (a, b, c) = (Key::generate(), Key::generate(), Key::generate());
    let file = Encrypted::new("app.yaml", YAML, &[&a], &[]);
    let secret_of = |key: &Key| {
        std::fs::read_to_string(&key.file)
            .unwrap()
            .lines()
            .find(|l| l.starts_with("AGE-SECRET-KEY-"))
            .unwrap()
            .to_owned()
    };
    let home = tempfile::tempdir().unwrap();
    let env = |pairs: Vec<(&'static str, std::ffi::OsString)>| {
        move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())
    };

    // SOPS_AGE_KEY, holding several keys.
    let several = format!("# two keys\n{}\n{}\n", secret_of(&b), secret_of(&a));
    let ids =
        Identities::from_env_with(env(vec![("SOPS_AGE_KEY", several.into()), ("HOME", home.path().into())])).unwrap();
    assert_eq!(ids.len(), 2);
    file.relive_decrypt(&ids).unwrap();

    // SOPS_AGE_KEY_FILE.
    let ids = Identities::from_env_with(env(vec![("SOPS_AGE_KEY_FILE", a.file.clone().into())])).unwrap();
    file.relive_decrypt(&ids).unwrap();

    // The default keys.txt under XDG_CONFIG_HOME, then under ~/.config.
    let xdg = home.path().join("xdg");
    std::fs::create_dir_all(xdg.join("sops/age")).unwrap();
    std::fs::copy(&a.file, xdg.join("sops/age/keys.txt")).unwrap();
    let ids = Identities::from_env_with(env(vec![("XDG_CONFIG_HOME", xdg.clone().into())])).unwrap();
    file.relive_decrypt(&ids).unwrap();
    std::fs::create_dir_all(home.path().join(".config/sops/age")).unwrap();
    std::fs::copy(&a.file, home.path().join(".config/sops/age/keys.txt")).unwrap();
    let ids = Identities::from_env_with(env(vec![("HOME", home.path().into())])).unwrap();
    file.relive_decrypt(&ids).unwrap();

    // All sources are taken together, as sops does.
    let ids = Identities::from_env_with(env(vec![
        ("SOPS_AGE_KEY", secret_of(&b).into()),
        ("SOPS_AGE_KEY_FILE", c.file.clone().into()),
        ("XDG_CONFIG_HOME", xdg.into()),
    ]))
    .unwrap();
    assert_eq!(ids.len(), 3);
    file.relive_decrypt(&ids).unwrap();

    // Nothing anywhere: no identities, and no error.
    let ids = Identities::from_env_with(env(vec![("HOME", home.path().join("nowhere").into())])).unwrap();
    assert!(ids.is_empty());

    // A malformed key is an error naming the line, not quoting it; Debug
    // shows recipients only.
    let broken = home.path().join("broken.txt");
    std::fs::write(&broken, format!("# ok\n{}\nAGE-SECRET-KEY-1NOTAKEY\n", secret_of(&b))).unwrap();
    let err = Identities::new().add_key_file(&broken).map(|_| ()).unwrap_err();
    assert_eq!(err.kind(), SopsErrorKind::Identity);
    assert!(err.to_string().contains("line 3 of"), "{err}");
    assert!(!err.to_string().contains("NOTAKEY"), "{err}");
    let debug = format!("{:?}", b.ids());
    assert!(debug.contains(&b.recipient) && !debug.contains("AGE-SECRET-KEY"), "{debug}");
    let decrypted = file.relive_decrypt(&a.ids()).unwrap();
    assert!(!format!("{decrypted:?}").contains("hunter2"));
}

/// Real encrypted files, made once for the mutation tests.
#[allow(clippy::type_complexity)]
fn corpus() -> &'static (Key, Vec<(Format, Vec<u8>, bool)>) {
    static CORPUS: OnceLock<(Key, Vec<(Format, Vec<u8>, bool)>)> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let key = Key::generate();
        let files = [
            Encrypted::new("app.yaml", YAML, &[&key], &[]),
            Encrypted::new("app.json", JSON, &[&key], &[]),
            Encrypted::by_rule("app.yaml", YAML, &key, "    mac_only_encrypted: true\n    encrypted_regex: ^pass\n"),
        ];
        let files =
            files.iter().map(|file| (file.format, file.bytes(), file.text().contains("mac_only_encrypted"))).collect();
        (key, files)
    })
}

#[test]
fn every_single_byte_change_is_an_error_or_a_faithful_decryption() {
    let (key, files) = corpus();
    let ids = key.ids();
    for (format, bytes, mac_only) in files {
        let good = sops::decrypt(*format, bytes, &ids).unwrap();
        // Every position, with one of three mutations in turn.
        for at in 0..bytes.len() {
            let mut bytes = bytes.clone();
            match at % 3 {
                0 => bytes[at] ^= 0x01,
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, b'A'),
            }
            // No panic; and anything that still decrypts holds the same
            // secrets, and the same values unless the MAC covers the
            // secrets only: the edits the MAC allows are to whitespace,
            // quoting, comments, and the names of keys in clear.
            if let Ok(decrypted) = sops::decrypt(*format, &bytes, &ids) {
                assert_eq!(secret_values(&decrypted), secret_values(&good), "a mutation at byte {at} changed a secret");
                if !mac_only {
                    assert_eq!(
                        leaves(decrypted.value()),
                        leaves(good.value()),
                        "a mutation at byte {at} changed a value"
                    );
                }
            }
        }
    }
}

/// The values of the secrets, as text, sorted.
fn secret_values(decrypted: &sops::Decrypted) -> Vec<String> {
    let mut out: Vec<String> =
        decrypted.secrets().iter().filter_map(|p| decrypted.value().pointer(p)).flat_map(leaves).collect();
    out.sort();
    out
}

/// The leaf values of a document, as text, sorted. Empty strings and nulls
/// are left out: neither adds a byte to the MAC (`sops.go`, `ToBytes` and
/// `walkValue`), so `sops` too accepts `empty: ""` edited into `empty:`.
fn leaves(value: &Value) -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Null => {}
            Value::String(s) if s.is_empty() => {}
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            Value::Object(map) => map.values().for_each(|v| walk(v, out)),
            leaf => out.push(leaf.to_string()),
        }
    }
    let mut out = Vec::new();
    walk(value, &mut out);
    out.sort();
    out
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

    #[test]
    fn hostile_splices_never_panic(file in 0usize..3, at in 0usize..4096, len in 0usize..64, junk in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
        let (key, files) = corpus();
        let (format, bytes, _) = &files[file % files.len()];
        let mut bytes = bytes.clone();
        let at = at % bytes.len();
        let end = (at + len).min(bytes.len());
        bytes.splice(at..end, junk);
        let _ = sops::decrypt(*format, &bytes, &key.ids());
        let _ = sops::check(*format, &bytes, &Identities::new());
    }
}

/// A real encrypted YAML file with `extra` top-level keys in front of it.
fn with_keys_in_front(extra: &str) -> Vec<u8> {
    let (_, files) = corpus();
    let mut bytes = extra.as_bytes().to_vec();
    bytes.extend_from_slice(&files[0].1);
    bytes
}

#[test]
fn regression_hostile_sops_files_are_refused_within_the_limits() {
    let (key, _) = corpus();
    let ids = key.ids();
    let long = "x".repeat(50_000);
    let items: Vec<String> = (0..6000).map(|i| format!("x{i}")).collect();
    let cases = [
        // 200 copies of a 50 KB string: 10 MB of text from 60 KB.
        ("max_file_size", format!("bomb: &b \"{long}\"\nrefs: [{}]\n", vec!["*b"; 200].join(","))),
        // 36 million values from 60 KB.
        ("max_nodes", format!("bomb: &b [{}]\nrefs: [{}]\n", items.join(","), vec!["*b"; 6000].join(","))),
        // libyaml's scanner is quadratic in flow nesting: 100 KB took 5 s.
        ("max_depth", format!("deep: {}{}\n", "[".repeat(50_000), "]".repeat(50_000))),
        ("max_file_size", format!("pad: \"{}\"\n", "p".repeat(9 << 20))),
    ];
    for (limit, extra) in cases {
        let bytes = with_keys_in_front(&extra);
        let started = std::time::Instant::now();
        // `check` parses as `decrypt` does; the alias bomb builds a million
        // values before it is stopped, which takes seconds in a debug build,
        // so it goes through `decrypt` only.
        let check = (limit != "max_nodes").then(|| sops::check(Format::Yaml, &bytes, &ids).map(drop));
        for result in [Some(sops::decrypt(Format::Yaml, &bytes, &ids).map(drop)), check].into_iter().flatten() {
            let err = result.unwrap_err();
            assert_eq!(err.kind(), SopsErrorKind::Malformed, "{limit}: {err}");
            assert!(err.to_string().contains(limit), "{limit}: {err}");
        }
        // Generous: a release build rejects each in milliseconds.
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "{limit}: {:?}", started.elapsed());
    }
}

/// YAML that costs a parser work or memory out of proportion to its size.
fn hostile_fragment() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        (1usize..200).prop_map(|n| format!("[{}", "[".repeat(n))),
        (1usize..200).prop_map(|n| "{a: ".repeat(n)),
        (1usize..50).prop_map(|n| "- ".repeat(n)),
        Just("&a ".to_string()),
        Just("*a".to_string()),
        Just("<<: *a\n".to_string()),
        (1usize..2000).prop_map(|n| format!("*a, {}", "*a, ".repeat(n))),
        Just("!!binary ".to_string()),
        Just("? ".to_string()),
        Just("\n---\n".to_string()),
        Just("ENC[AES256_GCM,data:".to_string()),
        Just("\"\\u0000\\uD800\"".to_string()),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 96, ..Default::default() })]

    /// Hostile YAML (aliases, anchors, deep flow collections, merge keys,
    /// tags) spliced into real encrypted files: an error or a faithful
    /// decryption, never a panic, in bounded time.
    #[test]
    fn hostile_yaml_spliced_into_a_real_file_is_bounded(
        file in 0usize..3,
        edits in proptest::collection::vec((0usize..4096, hostile_fragment()), 1..6),
    ) {
        let (key, files) = corpus();
        let (format, bytes, _) = &files[file % files.len()];
        let mut bytes = bytes.clone();
        for (at, fragment) in edits {
            let at = at % bytes.len();
            bytes.splice(at..at, fragment.into_bytes());
        }
        let started = std::time::Instant::now();
        let _ = sops::decrypt(*format, &bytes, &key.ids());
        let _ = sops::check(*format, &bytes, &Identities::new());
        proptest::prop_assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
    }
}
