//! Key paths, and finding where in a file the value at a key path is
//! written.
//!
//! This runs only when an error is reported: a type error from
//! `serde_path_to_error` or a validator's rejection names a key path such as
//! `server.port` or `hosts[2].name`, and the error is far more useful as
//! `config/app.toml:7:8: invalid type ...` than as a bare path. Because it is
//! off the hot path, clarity wins over speed here, and every lookup that
//! cannot be resolved simply yields `None` so that the error is reported
//! without a position rather than with a wrong one.

use std::fmt::{self, Write as _};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::format::{Format, line_col, strip_bom};

/// One step of a key path: a key in a table/object, or an index in an array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    /// A key in a table, mapping or object.
    Key(String),
    /// A 0-based index in an array or sequence.
    Index(usize),
}

/// Parses a key path such as `a.b[2].c` into segments.
///
/// Dots separate keys and brackets hold indexes. Digits after a dot are a key
/// (`a.2` is the key `"2"`), because TOML and YAML tables may have numeric
/// keys. Bracket contents that are not a number are taken as a key, with
/// surrounding quotes removed, so that `a["b"]` also works. Empty segments
/// (`a..b`) are ignored.
pub(crate) fn parse_key_path(path: &str) -> Vec<Segment> {
    let mut segments = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('[') {
            let (inner, next) = match after.find(']') {
                Some(end) => (&after[..end], &after[end + 1..]),
                None => (after, ""),
            };
            segments.push(match inner.trim().parse::<usize>() {
                Ok(index) => Segment::Index(index),
                Err(_) => Segment::Key(unquote(inner.trim()).to_owned()),
            });
            rest = next;
        } else if let Some(after) = rest.strip_prefix('.') {
            rest = after;
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            segments.push(Segment::Key(rest[..end].to_owned()));
            rest = &rest[end..];
        }
    }
    segments
}

fn unquote(text: &str) -> &str {
    for quote in ['"', '\''] {
        if let Some(inner) = text.strip_prefix(quote).and_then(|t| t.strip_suffix(quote)) {
            return inner;
        }
    }
    text
}

/// Renders a `serde_path_to_error` path as `a.b[2].c`; the root renders as
/// the empty string.
///
/// Enum variants render as keys (`.variant`), because in the externally
/// tagged representation the variant name is a key in the file. Rendering
/// stops at an unknown segment (a map key that was not a string), since any
/// segment after it would be attached to the wrong parent and could point at
/// an unrelated key.
/// Renders segments as a key path (`a.b[2]`), the form errors carry.
pub(crate) fn render_segments(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Index(index) => {
                let _ = write!(out, "[{index}]");
            }
            Segment::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
        }
    }
    out
}

pub(crate) fn render_path(path: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            serde_path_to_error::Segment::Seq { index } => {
                // Writing into a String cannot fail.
                let _ = write!(out, "[{index}]");
            }
            serde_path_to_error::Segment::Map { key } | serde_path_to_error::Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            serde_path_to_error::Segment::Unknown => break,
        }
    }
    out
}

/// True if `value` has an entry at `path`; the empty path is the value
/// itself and always exists.
pub(crate) fn has_path(value: &Value, path: &[Segment]) -> bool {
    let mut current = value;
    for segment in path {
        let next = match (segment, current) {
            (Segment::Key(key), Value::Object(object)) => object.get(key),
            (Segment::Index(index), Value::Array(items)) => items.get(*index),
            _ => None,
        };
        match next {
            Some(next) => current = next,
            None => return false,
        }
    }
    true
}

/// The 1-based (line, column) of the value at `path` in `text` of `format`.
///
/// For a key in a table or object this is the start of the key itself; for
/// an array element it is the start of the element (for a TOML array of
/// tables, its `[[header]]`). Columns count characters. Returns `None` if the
/// path is empty, is not in the text, or the text does not parse.
pub(crate) fn locate(format: Format, text: &str, path: &[Segment]) -> Option<(usize, usize)> {
    if path.is_empty() {
        return None;
    }
    // Positions are counted from after a byte order mark, as parse errors
    // are, so that both kinds of error agree on where a line starts.
    let text = strip_bom(text);
    match format {
        Format::Toml => locate_toml(text, path).map(|offset| line_col(text, offset)),
        Format::Json => locate_json(text, path).map(|offset| line_col(text, offset)),
        Format::Yaml => locate_yaml(text, path),
    }
}

// ---------------------------------------------------------------------------
// TOML

/// A node of a parsed `toml_edit` document while walking a path. Array
/// elements are plain values and array-of-tables elements are tables, so an
/// `Item` alone cannot describe every node.
#[derive(Clone, Copy)]
enum TomlNode<'a> {
    Item(&'a toml_edit::Item),
    Value(&'a toml_edit::Value),
    Table(&'a toml_edit::Table),
}

impl<'a> TomlNode<'a> {
    fn table_like(self) -> Option<&'a dyn toml_edit::TableLike> {
        match self {
            TomlNode::Item(item) => item.as_table_like(),
            TomlNode::Value(value) => value.as_inline_table().map(|table| table as &dyn toml_edit::TableLike),
            TomlNode::Table(table) => Some(table),
        }
    }

    /// The element at `index` and the byte offset where it starts.
    fn element(self, index: usize) -> Option<(TomlNode<'a>, usize)> {
        let array = match self {
            TomlNode::Item(item) => {
                if let Some(tables) = item.as_array_of_tables() {
                    let table = tables.get(index)?;
                    return Some((TomlNode::Table(table), table.span()?.start));
                }
                item.as_array()?
            }
            TomlNode::Value(value) => value.as_array()?,
            TomlNode::Table(_) => return None,
        };
        let value = array.get(index)?;
        Some((TomlNode::Value(value), value.span()?.start))
    }
}

/// The byte offset in `text` of the key or element at `path`.
fn locate_toml(text: &str, path: &[Segment]) -> Option<usize> {
    // `toml_edit::Document` keeps the spans of keys, values and headers,
    // which `toml`'s own types do not expose.
    let document = toml_edit::Document::parse(text).ok()?;
    let mut node = TomlNode::Item(document.as_item());
    let mut offset = None;
    for segment in path {
        match segment {
            Segment::Key(key) => {
                let (key, item) = node.table_like()?.get_key_value(key)?;
                offset = Some(key.span()?.start);
                node = TomlNode::Item(item);
            }
            Segment::Index(index) => {
                let (element, start) = node.element(*index)?;
                offset = Some(start);
                node = element;
            }
        }
    }
    offset
}

// ---------------------------------------------------------------------------
// JSON

/// The byte offset in `text` of the key or element at `path`.
fn locate_json(text: &str, path: &[Segment]) -> Option<usize> {
    let mut scanner = JsonScanner { bytes: text.as_bytes(), pos: 0 };
    scanner.skip_whitespace();
    let mut offset = None;
    for segment in path {
        match segment {
            Segment::Key(key) => {
                let (key_at, value_at) = scanner.find_member(key)?;
                offset = Some(key_at);
                scanner.pos = value_at;
            }
            Segment::Index(index) => {
                let element_at = scanner.find_element(*index)?;
                offset = Some(element_at);
                scanner.pos = element_at;
            }
        }
    }
    offset
}

/// A minimal scanner over JSON text that skips values without building
/// them. It assumes the text is valid JSON (it parsed before an error about
/// it is reported) but never panics or loops on text that is not: anything
/// unexpected ends the search with `None`.
struct JsonScanner<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl JsonScanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.skip_whitespace();
        if self.peek()? != byte {
            return None;
        }
        self.pos += 1;
        Some(())
    }

    /// With the scanner on an object, finds the member named `key`. It
    /// returns the offsets of the key's opening quote and of the value; when
    /// a key repeats, the last one wins, as it does when the JSON is parsed.
    fn find_member(&mut self, key: &str) -> Option<(usize, usize)> {
        self.expect(b'{')?;
        let mut found = None;
        self.skip_whitespace();
        if self.peek()? == b'}' {
            return None;
        }
        loop {
            self.skip_whitespace();
            let key_at = self.pos;
            let name = self.string()?;
            self.expect(b':')?;
            self.skip_whitespace();
            if name == key {
                found = Some((key_at, self.pos));
            }
            self.skip_value()?;
            self.skip_whitespace();
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => return found,
                _ => return None,
            }
        }
    }

    /// With the scanner on an array, finds the offset where element `index`
    /// starts.
    fn find_element(&mut self, index: usize) -> Option<usize> {
        self.expect(b'[')?;
        self.skip_whitespace();
        if self.peek()? == b']' {
            return None;
        }
        for _ in 0..index {
            self.skip_value()?;
            self.expect(b',')?;
        }
        self.skip_whitespace();
        Some(self.pos)
    }

    /// Reads a string at the scanner, decoding its escapes.
    fn string(&mut self) -> Option<String> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.pos + 1;
        let end = self.string_end()?;
        self.pos = end + 1;
        let raw = std::str::from_utf8(&self.bytes[start..end]).ok()?;
        if !raw.contains('\\') {
            return Some(raw.to_owned());
        }
        decode_json_escapes(raw)
    }

    /// The offset of the closing quote of the string that starts at the
    /// scanner.
    fn string_end(&self) -> Option<usize> {
        let mut at = self.pos + 1;
        loop {
            match *self.bytes.get(at)? {
                b'"' => return Some(at),
                b'\\' => at += 2,
                _ => at += 1,
            }
        }
    }

    /// Skips the value at the scanner.
    fn skip_value(&mut self) -> Option<()> {
        self.skip_whitespace();
        match self.peek()? {
            b'"' => self.pos = self.string_end()? + 1,
            b'{' | b'[' => {
                // Only the nesting depth matters when skipping, so brackets
                // and braces are not told apart; strings are skipped whole so
                // that brackets inside them do not count.
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.pos = self.string_end()?;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth = depth.checked_sub(1)?;
                            if depth == 0 {
                                self.pos += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.pos += 1;
                }
            }
            _ => {
                let start = self.pos;
                while let Some(byte) = self.peek() {
                    if matches!(byte, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.pos += 1;
                }
                // A literal must consume something, or the caller would spin
                // on the same byte.
                if self.pos == start {
                    return None;
                }
            }
        }
        Some(())
    }
}

/// Decodes the escapes of a JSON string's contents, including `\uXXXX`
/// surrogate pairs.
fn decode_json_escapes(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let decoded = match chars.next()? {
            '"' => '"',
            '\\' => '\\',
            '/' => '/',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'u' => {
                let first = hex4(&mut chars)?;
                if (0xD800..0xDC00).contains(&first) {
                    // A high surrogate must be followed by `\u` and a low one.
                    if chars.next()? != '\\' || chars.next()? != 'u' {
                        return None;
                    }
                    let second = hex4(&mut chars)?;
                    char::decode_utf16([first, second]).next()?.ok()?
                } else {
                    char::from_u32(u32::from(first))?
                }
            }
            _ => return None,
        };
        out.push(decoded);
    }
    Some(out)
}

fn hex4(chars: &mut std::str::Chars<'_>) -> Option<u16> {
    let mut value = 0u16;
    for _ in 0..4 {
        value = value * 16 + u16::try_from(chars.next()?.to_digit(16)?).ok()?;
    }
    Some(value)
}

// ---------------------------------------------------------------------------
// YAML

/// Marks the error the YAML search raises on reaching its target. No real
/// error message contains it, so it tells a find from a failure.
const FOUND: &str = "relive-locate: target found";

/// The 1-based position of the key or element at `path` in YAML `text`.
///
/// serde_yaml_ng does not expose positions directly, but it attaches the
/// position of the current node to any error a visitor raises. The search
/// therefore walks the document with serde, skipping everything off the path,
/// and raises an error on reaching the target; the error's location is the
/// answer. This reuses libyaml's real parser, so flow and block styles,
/// quoting, anchors and aliases are all handled correctly.
fn locate_yaml(text: &str, path: &[Segment]) -> Option<(usize, usize)> {
    let error = match Seek(path).deserialize(serde_yaml_ng::Deserializer::from_str(text)) {
        Ok(()) => return None,
        Err(error) => error,
    };
    if !error.to_string().contains(FOUND) {
        return None;
    }
    let location = error.location()?;
    Some((location.line(), location.column()))
}

/// Walks a YAML node along `.0`, succeeding with `()` if the path is not
/// there and failing with [`FOUND`] at the target.
#[derive(Clone, Copy)]
struct Seek<'p>(&'p [Segment]);

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seek<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any yaml node")
    }

    // A scalar has no children, so a path that goes on past it is not there.
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Segment::Key(want), rest)) = self.0.split_first() else {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(());
        };
        let key = KeyMatch { want, last: rest.is_empty() };
        while let Some(matched) = map.next_key_seed(key)? {
            if matched {
                map.next_value_seed(Seek(rest))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((&Segment::Index(want), rest)) = self.0.split_first() else {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(());
        };
        let mut index = 0;
        loop {
            let more = if index != want {
                seq.next_element::<IgnoredAny>()?.is_some()
            } else if rest.is_empty() {
                seq.next_element_seed(Target)?.is_some()
            } else {
                seq.next_element_seed(Seek(rest))?.is_some()
            };
            if !more {
                return Ok(());
            }
            index += 1;
        }
    }
}

/// Compares a mapping key with the wanted one; when it matches and is the
/// last segment, fails with [`FOUND`] so the error carries the key's
/// position.
#[derive(Clone, Copy)]
struct KeyMatch<'p> {
    want: &'p str,
    last: bool,
}

impl<'de> DeserializeSeed<'de> for KeyMatch<'_> {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        // Keys are read as strings, as `format::parse` reads them, so a key
        // like `1` or `true` matches the path segment `"1"` or `"true"`.
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyMatch<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        if key != self.want {
            Ok(false)
        } else if self.last {
            Err(E::custom(FOUND))
        } else {
            Ok(true)
        }
    }
}

/// Fails with [`FOUND`] on whatever node it is given, so that the error
/// carries the node's position.
struct Target;

impl<'de> DeserializeSeed<'de> for Target {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl Visitor<'_> for Target {
    type Value = ();

    // Every `visit_*` method keeps its default, which rejects the node as an
    // invalid type and so produces an error built from this text.
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(FOUND)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    fn key(k: &str) -> Segment {
        Segment::Key(k.to_owned())
    }

    fn at(format: Format, text: &str, path: &str) -> Option<(usize, usize)> {
        locate(format, text, &parse_key_path(path))
    }

    #[test]
    fn parse_key_path_splits_keys_and_indexes() {
        assert_eq!(parse_key_path(""), vec![]);
        assert_eq!(parse_key_path("server"), vec![key("server")]);
        assert_eq!(parse_key_path("a.b[2].c"), vec![key("a"), key("b"), Segment::Index(2), key("c")]);
        assert_eq!(parse_key_path("a.2.c"), vec![key("a"), key("2"), key("c")]);
        assert_eq!(parse_key_path("[0][1].x"), vec![Segment::Index(0), Segment::Index(1), key("x")]);
        assert_eq!(parse_key_path("a[\"b.c\"]"), vec![key("a"), key("b.c")]);
        assert_eq!(parse_key_path("a..b."), vec![key("a"), key("b")]);
        assert_eq!(parse_key_path("a[3"), vec![key("a"), Segment::Index(3)]);
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Config {
        server: Server,
        hosts: Vec<Host>,
        mode: Mode,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Server {
        port: u16,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Host {
        name: String,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    #[serde(rename_all = "lowercase")]
    enum Mode {
        Tcp { port: u16 },
    }

    fn error_path(value: Value) -> String {
        let error = serde_path_to_error::deserialize::<_, Config>(value).unwrap_err();
        render_path(error.path())
    }

    #[test]
    fn render_path_matches_parse_key_path() {
        let base = json!({
            "server": {"port": 1},
            "hosts": [{"name": "a"}, {"name": "b"}],
            "mode": {"tcp": {"port": 2}},
        });
        let mut bad = base.clone();
        bad["server"]["port"] = json!("x");
        assert_eq!(error_path(bad), "server.port");
        let mut bad = base.clone();
        bad["hosts"][1]["name"] = json!(5);
        assert_eq!(error_path(bad), "hosts[1].name");
        let mut bad = base.clone();
        bad["mode"]["tcp"]["port"] = json!(-1);
        assert_eq!(error_path(bad), "mode.tcp.port");
        assert_eq!(parse_key_path("hosts[1].name"), vec![key("hosts"), Segment::Index(1), key("name")]);
        // A type error on the root has an empty path.
        let error = serde_path_to_error::deserialize::<_, Config>(json!(5)).unwrap_err();
        assert_eq!(render_path(error.path()), "");
    }

    #[test]
    fn has_path_follows_keys_and_indexes() {
        let value = json!({"a": {"b": [10, {"c": null}]}});
        assert!(has_path(&value, &[]));
        assert!(has_path(&value, &parse_key_path("a.b[1].c")));
        assert!(has_path(&value, &parse_key_path("a.b[0]")));
        assert!(!has_path(&value, &parse_key_path("a.b[2]")));
        assert!(!has_path(&value, &parse_key_path("a.x")));
        assert!(!has_path(&value, &parse_key_path("a.b.0")));
        assert!(!has_path(&value, &parse_key_path("a[0]")));
    }

    #[test]
    fn empty_path_is_none() {
        assert_eq!(locate(Format::Json, "{}", &[]), None);
        assert_eq!(locate(Format::Toml, "a = 1", &[]), None);
        assert_eq!(locate(Format::Yaml, "a: 1", &[]), None);
    }

    const TOML: &str = r#"title = "t"

[server]
host = "h"
  port = 8080
limits = { max = 5, nested = { deep = true } }
list = [1, 2, [3, 4], { inner = "x" }]
a.b.c = 1

[[servers]]
name = "first"

[[servers]]
name = "second"
tags = ["x", "y"]

["quoted key"]
"with \"escape\"" = 1

[x.y]
z = 1
"#;

    #[test]
    fn toml_keys_in_tables() {
        assert_eq!(at(Format::Toml, TOML, "title"), Some((1, 1)));
        assert_eq!(at(Format::Toml, TOML, "server"), Some((3, 2)));
        assert_eq!(at(Format::Toml, TOML, "server.host"), Some((4, 1)));
        assert_eq!(at(Format::Toml, TOML, "server.port"), Some((5, 3)));
    }

    #[test]
    fn toml_inline_tables_and_dotted_keys() {
        assert_eq!(at(Format::Toml, TOML, "server.limits.max"), Some((6, 12)));
        assert_eq!(at(Format::Toml, TOML, "server.limits.nested.deep"), Some((6, 32)));
        assert_eq!(at(Format::Toml, TOML, "server.a"), Some((8, 1)));
        assert_eq!(at(Format::Toml, TOML, "server.a.b.c"), Some((8, 5)));
    }

    #[test]
    fn toml_arrays() {
        assert_eq!(at(Format::Toml, TOML, "server.list[0]"), Some((7, 9)));
        assert_eq!(at(Format::Toml, TOML, "server.list[2]"), Some((7, 15)));
        assert_eq!(at(Format::Toml, TOML, "server.list[2][1]"), Some((7, 19)));
        assert_eq!(at(Format::Toml, TOML, "server.list[3].inner"), Some((7, 25)));
        assert_eq!(at(Format::Toml, TOML, "server.list[4]"), None);
    }

    #[test]
    fn toml_arrays_of_tables() {
        assert_eq!(at(Format::Toml, TOML, "servers"), Some((10, 3)));
        assert_eq!(at(Format::Toml, TOML, "servers[0]"), Some((10, 1)));
        assert_eq!(at(Format::Toml, TOML, "servers[1]"), Some((13, 1)));
        assert_eq!(at(Format::Toml, TOML, "servers[1].name"), Some((14, 1)));
        assert_eq!(at(Format::Toml, TOML, "servers[1].tags[1]"), Some((15, 14)));
        assert_eq!(at(Format::Toml, TOML, "servers[2]"), None);
    }

    #[test]
    fn toml_quoted_keys_and_implicit_tables() {
        assert_eq!(at(Format::Toml, TOML, "quoted key"), Some((17, 2)));
        let path = [key("quoted key"), key("with \"escape\"")];
        assert_eq!(locate(Format::Toml, TOML, &path), Some((18, 1)));
        assert_eq!(at(Format::Toml, TOML, "x"), Some((20, 2)));
        assert_eq!(at(Format::Toml, TOML, "x.y.z"), Some((21, 1)));
    }

    #[test]
    fn toml_missing_and_mismatched_paths() {
        assert_eq!(at(Format::Toml, TOML, "server.nope"), None);
        assert_eq!(at(Format::Toml, TOML, "title.deeper"), None);
        assert_eq!(at(Format::Toml, TOML, "server[0]"), None);
        assert_eq!(at(Format::Toml, "not toml = = 1", "not"), None);
    }

    #[test]
    fn toml_columns_count_characters() {
        assert_eq!(at(Format::Toml, "\"ö\" = { \"é\" = 1, x = 2 }", "ö.x"), Some((1, 18)));
        assert_eq!(at(Format::Toml, "\u{feff}a = 1\nb = 2", "b"), Some((2, 1)));
    }

    const JSON: &str = r#"{
  "title": "t",
  "server": {
    "port": 8080,
    "tricky \"key\"": "va}]lue\\",
    "\u00e9t\u00e9": 1,
    "\ud83d\ude00": 2,
    "list": [1, [2, 3], {"inner": [true, null]}]
  },
  "hosts": [
    {"name": "a"},
    {"name": "b"}
  ],
  "dup": 1,
  "dup": 2
}"#;

    #[test]
    fn json_nested_keys() {
        assert_eq!(at(Format::Json, JSON, "title"), Some((2, 3)));
        assert_eq!(at(Format::Json, JSON, "server"), Some((3, 3)));
        assert_eq!(at(Format::Json, JSON, "server.port"), Some((4, 5)));
    }

    #[test]
    fn json_keys_with_escapes() {
        let path = [key("server"), key("tricky \"key\"")];
        assert_eq!(locate(Format::Json, JSON, &path), Some((5, 5)));
        assert_eq!(at(Format::Json, JSON, "server.été"), Some((6, 5)));
        assert_eq!(at(Format::Json, JSON, "server.😀"), Some((7, 5)));
        // The key after the string holding `}]` and `\\` is still found.
        assert_eq!(at(Format::Json, JSON, "server.list"), Some((8, 5)));
    }

    #[test]
    fn json_arrays() {
        assert_eq!(at(Format::Json, JSON, "server.list[0]"), Some((8, 14)));
        assert_eq!(at(Format::Json, JSON, "server.list[1][1]"), Some((8, 21)));
        assert_eq!(at(Format::Json, JSON, "server.list[2].inner[1]"), Some((8, 42)));
        assert_eq!(at(Format::Json, JSON, "hosts[1]"), Some((12, 5)));
        assert_eq!(at(Format::Json, JSON, "hosts[1].name"), Some((12, 6)));
        assert_eq!(at(Format::Json, JSON, "hosts[2]"), None);
        assert_eq!(at(Format::Json, "[]", "[0]"), None);
        assert_eq!(at(Format::Json, " [ 5 ]", "[0]"), Some((1, 4)));
    }

    #[test]
    fn json_duplicate_key_takes_the_last() {
        assert_eq!(at(Format::Json, JSON, "dup"), Some((15, 3)));
    }

    #[test]
    fn json_missing_and_mismatched_paths() {
        assert_eq!(at(Format::Json, JSON, "server.nope"), None);
        assert_eq!(at(Format::Json, JSON, "title.x"), None);
        assert_eq!(at(Format::Json, JSON, "server[0]"), None);
        assert_eq!(at(Format::Json, JSON, "hosts.name"), None);
        assert_eq!(at(Format::Json, "{}", "a"), None);
        assert_eq!(at(Format::Json, "{\"a\": ", "a.b"), None);
        assert_eq!(at(Format::Json, "{\"a\": [1,", "a[1]"), None);
    }

    #[test]
    fn json_columns_count_characters() {
        assert_eq!(at(Format::Json, "{\"é\": 1, \"x\": 2}", "x"), Some((1, 10)));
    }

    const YAML: &str = r#"title: t
server:
  port: 8080
  "quoted \"key\"": 1
  'single': 2
  nested:
    deep: true
hosts:
  - name: a
  - name: b
    tags: [x, y]
  -   plain
flow: {a: 1, b: {c: [10, 20]}}
1: numeric
base: &base
  shared: 1
alias: *base
"#;

    #[test]
    fn yaml_nested_keys() {
        assert_eq!(at(Format::Yaml, YAML, "title"), Some((1, 1)));
        assert_eq!(at(Format::Yaml, YAML, "server"), Some((2, 1)));
        assert_eq!(at(Format::Yaml, YAML, "server.port"), Some((3, 3)));
        assert_eq!(at(Format::Yaml, YAML, "server.nested.deep"), Some((7, 5)));
        assert_eq!(at(Format::Yaml, YAML, "1"), Some((14, 1)));
    }

    #[test]
    fn yaml_keys_with_escapes() {
        let path = [key("server"), key("quoted \"key\"")];
        assert_eq!(locate(Format::Yaml, YAML, &path), Some((4, 3)));
        assert_eq!(at(Format::Yaml, YAML, "server.single"), Some((5, 3)));
    }

    #[test]
    fn yaml_block_sequences() {
        assert_eq!(at(Format::Yaml, YAML, "hosts[0]"), Some((9, 5)));
        assert_eq!(at(Format::Yaml, YAML, "hosts[1].name"), Some((10, 5)));
        assert_eq!(at(Format::Yaml, YAML, "hosts[1].tags"), Some((11, 5)));
        assert_eq!(at(Format::Yaml, YAML, "hosts[1].tags[1]"), Some((11, 15)));
        assert_eq!(at(Format::Yaml, YAML, "hosts[2]"), Some((12, 7)));
        assert_eq!(at(Format::Yaml, YAML, "hosts[3]"), None);
    }

    #[test]
    fn yaml_flow_collections() {
        assert_eq!(at(Format::Yaml, YAML, "flow.a"), Some((13, 8)));
        assert_eq!(at(Format::Yaml, YAML, "flow.b.c"), Some((13, 18)));
        assert_eq!(at(Format::Yaml, YAML, "flow.b.c[1]"), Some((13, 26)));
    }

    #[test]
    fn yaml_aliases_point_at_the_anchored_node() {
        assert_eq!(at(Format::Yaml, YAML, "alias"), Some((17, 1)));
        assert_eq!(at(Format::Yaml, YAML, "alias.shared"), Some((16, 3)));
    }

    #[test]
    fn yaml_missing_and_mismatched_paths() {
        assert_eq!(at(Format::Yaml, YAML, "server.nope"), None);
        assert_eq!(at(Format::Yaml, YAML, "title.x"), None);
        assert_eq!(at(Format::Yaml, YAML, "server[0]"), None);
        assert_eq!(at(Format::Yaml, YAML, "hosts.name"), None);
        // The search stops at the target, so only a path past a syntax
        // error fails to resolve.
        assert_eq!(at(Format::Yaml, "a: [1\nb: 2\n", "b"), None);
        assert_eq!(at(Format::Yaml, "", "a"), None);
    }

    #[test]
    fn yaml_columns_count_characters() {
        assert_eq!(at(Format::Yaml, "é: {ü: 1, x: 2}", "é.x"), Some((1, 11)));
    }
}
