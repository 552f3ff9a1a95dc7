//! Config file formats: detection by extension, parsing into a
//! `serde_json::Value`, and the deep merge that layers overlays on a base.
//!
//! Every format is parsed into the same JSON value model so that merging,
//! key lookup and typed deserialization work the same way whatever the file
//! was written in. Parse errors carry the file and a 1-based line and column
//! (columns count characters, not bytes) so they can be shown as
//! `file:line:col: message`.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::path::Path;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::config::Limits;
use crate::error::{ConfigError, ConfigErrorKind};

/// A config file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// TOML, from files ending in `.toml`.
    Toml,
    /// YAML, from files ending in `.yaml` or `.yml`.
    Yaml,
    /// JSON, from files ending in `.json`.
    Json,
}

impl Format {
    /// The format of `path`, from its extension (`toml`, `yaml`, `yml` or
    /// `json`, lowercase), or `None` if the extension is none of those.
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "toml" => Some(Format::Toml),
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }

    /// The format's lowercase name: `"toml"`, `"yaml"` or `"json"`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Toml => "toml",
            Format::Yaml => "yaml",
            Format::Json => "json",
        }
    }
}

/// Parses a document into a JSON value.
///
/// Errors are [`ConfigErrorKind::Syntax`] errors naming `origin`, with a
/// 1-based line and column where the parser reports one.
///
/// The handling of edge cases is deliberate:
///
/// - Input that is not UTF-8 is rejected, pointing at the first invalid byte.
/// - A leading UTF-8 byte order mark is skipped, and positions are counted
///   from after it, as editors do.
/// - An empty TOML file (or one holding only whitespace and comments) is an
///   empty table, which is what the TOML specification says it is.
/// - An empty YAML file, or one whose single document is null (`~`, `---`),
///   is an empty object too, so that an empty overlay file is harmless rather
///   than replacing the whole base with null.
/// - An empty JSON file is a syntax error, because JSON has no empty document.
/// - A YAML file with more than one document is a syntax error, because it is
///   ambiguous which document is the config.
/// - YAML merge keys (`<<: *defaults`) are applied, since they are common in
///   hand-written configs and otherwise would surface as a literal `<<` key.
/// - TOML datetimes become their RFC 3339 text; TOML and YAML floats that JSON
///   cannot hold (`nan`, `inf`) become null.
pub(crate) fn parse(format: Format, bytes: &[u8], origin: &Path, limits: &Limits) -> Result<Value, ConfigError> {
    if bytes.len() as u64 > limits.max_file_size {
        return Err(too_large(origin, limits));
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => {
            let valid = err.valid_up_to();
            // The prefix up to `valid_up_to` is valid UTF-8 by definition, so
            // this conversion cannot fail; the fallback only avoids a panic.
            let prefix = std::str::from_utf8(&bytes[..valid]).unwrap_or_default();
            let prefix = prefix.strip_prefix('\u{feff}').unwrap_or(prefix);
            let (line, column) = line_col(prefix, prefix.len());
            return Err(ConfigError::new(ConfigErrorKind::Syntax, "file is not valid utf-8")
                .with_file(origin)
                .with_position(line, column));
        }
    };
    let text = strip_bom(text);
    budgeted(limits, |build| match format {
        Format::Toml => parse_toml(text, origin, build),
        Format::Yaml => parse_yaml(text, origin, build),
        Format::Json => parse_json(text, origin, build),
    })
}

/// The error for a document over [`Limits::max_file_size`].
pub(crate) fn too_large(origin: &Path, limits: &Limits) -> ConfigError {
    ConfigError::new(
        ConfigErrorKind::Limit,
        format!("larger than the limit of {} bytes (max_file_size); not parsed", limits.max_file_size),
    )
    .with_file(origin)
}

/// Deep-merges `overlay` into `base`: objects merge key by key recursively;
/// anything else (arrays, scalars, null) in the overlay replaces the base
/// value.
pub(crate) fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                // The entry API finds the slot once for both the recursive
                // merge and the insert.
                match base.entry(key) {
                    serde_json::map::Entry::Occupied(mut slot) => merge(slot.get_mut(), value),
                    serde_json::map::Entry::Vacant(slot) => {
                        slot.insert(value);
                    }
                }
            }
        }
        (base, overlay) => *base = overlay,
    }
}

/// Removes a leading UTF-8 byte order mark, which some Windows editors write
/// and which no parser here accepts as part of the document.
pub(crate) fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// The 1-based line and column of byte `offset` in `text`, with the column
/// counted in characters so that it matches what an editor shows.
///
/// An offset past the end is clamped to the end, and an offset inside a
/// multi-byte character points at that character.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let line = 1 + before[..line_start].iter().filter(|&&b| b == b'\n').count();
    // Counting the characters that end at or before `offset` both converts
    // bytes to characters and handles an offset in the middle of a character.
    let column =
        1 + text[line_start..].char_indices().take_while(|&(i, c)| line_start + i + c.len_utf8() <= offset).count();
    (line, column)
}

fn syntax_error(origin: &Path, message: impl Into<String>) -> ConfigError {
    ConfigError::new(ConfigErrorKind::Syntax, message).with_file(origin)
}

/// Removes the first occurrence of `position` (such as ` at line 3 column 7`)
/// from a parser's message, since the position is reported separately. It is
/// not always a suffix: libyaml appends context after it.
fn remove_once(mut message: String, position: &str) -> String {
    if let Some(at) = message.find(position) {
        message.replace_range(at..at + position.len(), "");
    }
    message
}

// ---------------------------------------------------------------------------
// TOML

fn parse_toml(text: &str, origin: &Path, build: Build<'_>) -> Result<Value, ConfigError> {
    // Deserializing straight into a JSON value through a custom visitor avoids
    // building a `toml::Table` first and converting it, which would allocate
    // every string and table twice.
    toml::Deserializer::parse(text).and_then(|de| build.deserialize(de)).map_err(|err| {
        let error = syntax_error(origin, err.message());
        // The parser's own bound on nesting (below `max_depth` when that is
        // set high) is a limit too, not a mistake in the document.
        let error = if err.message().contains("max recursion depth") || err.message() == "recursion limit" {
            error.with_kind(ConfigErrorKind::Limit)
        } else {
            error
        };
        match err.span() {
            Some(span) => {
                let (line, column) = line_col(text, span.start);
                error.with_position(line, column)
            }
            None => error,
        }
    })
}

/// The field name under which `toml` hands a datetime to a visitor, as a
/// one-entry map. It is `toml_datetime`'s private convention, also used by
/// `toml::Value`, and is stable across the 0.x releases.
const TOML_DATETIME_FIELD: &str = "$__toml_private_datetime";

/// What a parse may still spend: values to build and levels to descend.
/// Shared by every level of one parse.
struct Budget {
    nodes_left: usize,
    max_nodes: usize,
    max_depth: usize,
    /// Bytes of text (strings and keys) still allowed. A document without
    /// aliases cannot build more text than it holds, so this is the file
    /// size limit again; it is what stops an alias of a long string, which
    /// costs one value per copy but its whole length in memory.
    text_left: u64,
    max_text: u64,
    /// Which limit a parse ran into, to report it as such rather than as a
    /// syntax error.
    exceeded: Cell<Option<&'static str>>,
}

impl Budget {
    fn new(limits: &Limits) -> Budget {
        Budget {
            nodes_left: limits.max_nodes,
            max_nodes: limits.max_nodes,
            max_depth: limits.max_depth,
            text_left: limits.max_file_size,
            max_text: limits.max_file_size,
            exceeded: Cell::new(None),
        }
    }
}

/// Builds a `serde_json::Value` from any format's deserializer, counting
/// every value it builds against the [`Budget`] and failing as soon as it
/// is spent: a YAML alias replays its anchor's events through this
/// visitor, so an alias bomb is stopped after `max_nodes` values, not after
/// it has filled memory. TOML datetimes (the maps `toml` hands over) become
/// their RFC 3339 strings.
#[derive(Clone, Copy)]
struct Build<'b> {
    budget: &'b RefCell<Budget>,
    depth: usize,
}

impl<'b> Build<'b> {
    fn spend<E: de::Error>(self) -> Result<(), E> {
        let mut budget = self.budget.borrow_mut();
        if budget.nodes_left == 0 {
            budget.exceeded.set(Some("max_nodes"));
            return Err(E::custom(format_args!(
                "more than {} values (after YAML aliases are expanded); the limit is max_nodes",
                budget.max_nodes
            )));
        }
        budget.nodes_left -= 1;
        Ok(())
    }

    /// The builder for the children of a collection, one level down.
    fn child<E: de::Error>(self) -> Result<Self, E> {
        self.spend()?;
        let budget = self.budget.borrow();
        if self.depth >= budget.max_depth {
            budget.exceeded.set(Some("max_depth"));
            return Err(E::custom(format_args!(
                "nested deeper than {} levels; the limit is max_depth",
                budget.max_depth
            )));
        }
        Ok(Build { budget: self.budget, depth: self.depth + 1 })
    }

    fn leaf<E: de::Error>(self, value: Value) -> Result<Value, E> {
        self.spend()?;
        Ok(value)
    }

    /// Charges `len` bytes of text (a string value or a key) to the budget.
    fn text<E: de::Error>(self, len: usize) -> Result<(), E> {
        let mut budget = self.budget.borrow_mut();
        match budget.text_left.checked_sub(len as u64) {
            Some(left) => {
                budget.text_left = left;
                Ok(())
            }
            None => {
                budget.exceeded.set(Some("max_file_size"));
                Err(E::custom(format_args!(
                    "more than {} bytes of text (after YAML aliases are expanded); the limit is max_file_size",
                    budget.max_text
                )))
            }
        }
    }

    fn string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.text(v.len())?;
        self.leaf(Value::String(v))
    }

    /// The seed of a map key: a string, charged to the text budget like a
    /// string value (a key is text an alias copies too).
    fn key(self) -> Key<'b> {
        Key(self)
    }
}

/// Deserializes a map key as a `String`, charging its bytes to the budget.
#[derive(Clone, Copy)]
struct Key<'b>(Build<'b>);

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = String;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        let key = <String as de::Deserialize>::deserialize(deserializer)?;
        self.0.text(key.len())?;
        Ok(key)
    }
}

impl<'de> DeserializeSeed<'de> for Build<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Build<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.leaf(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.leaf(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.leaf(Value::Number(v.into()))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        match i64::try_from(v) {
            Ok(v) => self.visit_i64(v),
            Err(_) => match u64::try_from(v) {
                Ok(v) => self.visit_u64(v),
                Err(_) => self.visit_f64(v as f64),
            },
        }
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => self.visit_f64(v as f64),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        // JSON numbers cannot be NaN or infinite; null is what serde_json
        // itself produces for them.
        self.leaf(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.text(v.len())?;
        self.leaf(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.string(v)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.leaf(Value::Null)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.leaf(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let child = self.child()?;
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element_seed(child)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let Some(first) = map.next_key_seed(self.key())? else {
            return self.leaf(Value::Object(Map::new()));
        };
        if first == TOML_DATETIME_FIELD {
            return self.string(map.next_value::<String>()?);
        }
        let child = self.child()?;
        let mut object = Map::new();
        let value = map.next_value_seed(child)?;
        object.insert(first, value);
        while let Some(key) = map.next_key_seed(self.key())? {
            let value = map.next_value_seed(child)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// Runs `parse` with a fresh budget; an error caused by a limit is a
/// [`ConfigErrorKind::Limit`] error, any other keeps its kind.
fn budgeted(
    limits: &Limits,
    parse: impl FnOnce(Build<'_>) -> Result<Value, ConfigError>,
) -> Result<Value, ConfigError> {
    let budget = RefCell::new(Budget::new(limits));
    let result = parse(Build { budget: &budget, depth: 0 });
    let exceeded = budget.borrow().exceeded.get();
    match (result, exceeded) {
        (Err(error), Some(_)) => Err(error.with_kind(ConfigErrorKind::Limit)),
        (result, _) => result,
    }
}

// ---------------------------------------------------------------------------
// YAML

fn parse_yaml(text: &str, origin: &Path, build: Build<'_>) -> Result<Value, ConfigError> {
    let max_depth = build.budget.borrow().max_depth;
    if let Some((offset, depth)) = yaml_flow_depth(text, max_depth) {
        // libyaml's scanner takes time quadratic in the nesting of flow
        // collections (`[[[[...`): refuse before it is handed the text.
        build.budget.borrow().exceeded.set(Some("max_depth"));
        let (line, column) = line_col(text, offset);
        return Err(syntax_error(
            origin,
            format!("flow collections nested deeper than {depth} levels; the limit is max_depth"),
        )
        .with_position(line, column));
    }
    // Aliases are replayed by serde_yaml_ng, so an alias bomb costs the
    // whole `max_nodes` budget before it is stopped (some 200 ms in a
    // release build, with every other config waiting): count what the
    // aliases expand to from the events first, which costs about a read of
    // the text. Only documents with both anchors and aliases pay for it.
    if text.contains('&') && text.contains('*') {
        let budget = build.budget.borrow();
        if let Some((limit, message, line, column)) = yaml_expansion(text, budget.max_nodes, budget.max_text) {
            budget.exceeded.set(Some(limit));
            return Err(syntax_error(origin, message).with_position(line, column));
        }
    }
    let mut documents = serde_yaml_ng::Deserializer::from_str(text);
    let mut value = match documents.next() {
        None => Value::Null,
        Some(de) => match build.deserialize(de) {
            Ok(value) => value,
            Err(err) => return Err(yaml_error(text, origin, &err)),
        },
    };
    // One document only: a second one is ambiguous (which is the config?).
    if documents.next().is_some() {
        let error = syntax_error(origin, "deserializing from YAML containing more than one document is not supported");
        return Err(match second_document_line(text) {
            Some(line) => error.with_position(line, 1),
            None => error,
        });
    }
    // A document that holds nothing (empty, comments only, `~`) deserializes
    // as null; an empty object keeps an empty overlay from wiping the base.
    if value.is_null() {
        return Ok(Value::Object(Map::new()));
    }
    // Merge keys are rare, so the cheap substring test spares the walk over
    // the whole value in the common case.
    if text.contains("<<") {
        apply_yaml_merges(&mut value).map_err(|message| syntax_error(origin, message))?;
    }
    Ok(value)
}

fn yaml_error(text: &str, origin: &Path, err: &serde_yaml_ng::Error) -> ConfigError {
    let message = err.to_string();
    if let Some(location) = err.location() {
        let (line, column) = (location.line(), location.column());
        // serde_yaml_ng prints a position as `line L column C`, or as
        // `position N` when it is at the very start of the input.
        let message = remove_once(message, &format!(" at line {line} column {column}"));
        let message = remove_once(message, &format!(" at position {}", location.index()));
        return syntax_error(origin, message).with_position(line, column);
    }
    // serde_yaml_ng does not say where a second document starts, so find it
    // to point at it.
    let line = if message.contains("more than one document") { second_document_line(text) } else { None };
    let error = syntax_error(origin, message);
    match line {
        Some(line) => error.with_position(line, 1),
        None => error,
    }
}

/// The 1-based line where a second YAML document starts, if there is one.
///
/// A `---` at the start of a line always starts a document. The first one
/// may be preceded only by comments, blank lines and directives, so any
/// marker after a marker or content starts a second document; so does
/// content after a document end marker (`...`).
fn second_document_line(text: &str) -> Option<usize> {
    let mut seen_document = false;
    let mut ended = false;
    for (index, line) in text.lines().enumerate() {
        let is_marker = |marker: &str| {
            line.strip_prefix(marker).is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r']))
        };
        if is_marker("---") {
            if seen_document {
                return Some(index + 1);
            }
            seen_document = true;
        } else if is_marker("...") {
            ended = true;
        } else {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') || line.starts_with('%') {
                continue;
            }
            if ended {
                return Some(index + 1);
            }
            seen_document = true;
        }
    }
    None
}

/// Where flow collections (`[`, `{`) nest deeper than `max_depth`, if they
/// do: the byte offset of the first bracket too deep, and the limit.
///
/// A lexical scan, linear in the text: quoted scalars and comments are
/// skipped, and a bracket counts only where a flow collection can start (at
/// the start of a node, or anywhere inside a flow collection), so brackets
/// inside plain scalars (`pattern: ^[a-z]+$`) do not count.
pub(crate) fn yaml_flow_depth(text: &str, max_depth: usize) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    // Whether the next non-blank byte starts a node.
    let mut node_start = true;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\n' => {
                node_start = true;
            }
            b' ' | b'\t' | b'\r' => {}
            b'#' if i == 0 || matches!(bytes[i - 1], b' ' | b'\t' | b'\n' | b'\r') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'\'' | b'"' if node_start || depth > 0 => {
                // A quoted scalar: skip to its closing quote ('' and \"
                // escapes included). An unclosed one ends the scan.
                i += 1;
                while i < bytes.len() {
                    match (b, bytes[i]) {
                        (b'"', b'\\') => i += 1,
                        (b'\'', b'\'') if bytes.get(i + 1) == Some(&b'\'') => i += 1,
                        (q, c) if q == c => break,
                        _ => {}
                    }
                    i += 1;
                }
                node_start = false;
            }
            b'[' | b'{' if node_start || depth > 0 => {
                depth += 1;
                if depth > max_depth {
                    return Some((i, max_depth));
                }
                node_start = true;
            }
            b']' | b'}' if depth > 0 => {
                depth -= 1;
                node_start = false;
            }
            b',' if depth > 0 => node_start = true,
            b':' | b'-' | b'?' if bytes.get(i + 1).is_none_or(|n| matches!(n, b' ' | b'\t' | b'\n' | b'\r')) => {
                node_start = true;
            }
            // Anchors, tags and aliases stand before a node.
            b'&' | b'!' if node_start => {
                while i < bytes.len() && !matches!(bytes[i], b' ' | b'\t' | b'\n' | b'\r') {
                    i += 1;
                }
                continue;
            }
            _ => node_start = false,
        }
        i += 1;
    }
    None
}

/// Where a YAML document's aliases expand past `max_nodes` values or
/// `max_text` bytes of text, counted as [`Build`] counts them: the limit,
/// the message, and the 1-based line and column of the alias that crosses
/// it. Linear in the events: each anchor's size is kept, and an alias adds
/// it without replaying it. Text the parser cannot read is left to libyaml,
/// which reports it.
fn yaml_expansion(text: &str, max_nodes: usize, max_text: u64) -> Option<(&'static str, String, usize, usize)> {
    use yaml_rust2::parser::{Event, Parser};
    use yaml_rust2::scanner::TScalarStyle;

    /// An open collection: its anchor, what it holds so far (values, text),
    /// and, for a mapping, whether the next node is a key.
    struct Open {
        anchor: usize,
        values: u64,
        text: u64,
        mapping: bool,
        key_next: bool,
    }
    let mut anchors: std::collections::HashMap<usize, (u64, u64)> = std::collections::HashMap::new();
    let mut stack = vec![Open { anchor: 0, values: 0, text: 0, mapping: false, key_next: false }];
    let mut parser = Parser::new_from_str(text);
    loop {
        let (event, mark) = parser.next_token().ok()?;
        // The size of the node this event completes, if it completes one.
        let node = match event {
            Event::StreamEnd => return None,
            Event::Scalar(value, style, anchor, _) => {
                // Build counts strings' bytes; a plain scalar that reads as
                // a number, boolean or null is no string.
                let plain_non_string = style == TScalarStyle::Plain
                    && (value.parse::<f64>().is_ok()
                        || matches!(
                            value.as_str(),
                            "" | "~" | "null" | "Null" | "NULL" | "true" | "false" | "True" | "False"
                        ));
                let size = (1, if plain_non_string { 0 } else { value.len() as u64 });
                if anchor > 0 {
                    anchors.insert(anchor, size);
                }
                Some(size)
            }
            Event::Alias(id) => Some(anchors.get(&id).copied().unwrap_or((1, 0))),
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                let mapping = matches!(event, Event::MappingStart(..));
                stack.push(Open { anchor, values: 1, text: 0, mapping, key_next: true });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let done = stack.pop()?;
                if done.anchor > 0 {
                    anchors.insert(done.anchor, (done.values, done.text));
                }
                Some((done.values, done.text))
            }
            _ => None,
        };
        let Some((values, node_text)) = node else { continue };
        let parent = stack.last_mut()?;
        if parent.mapping && parent.key_next {
            // A key: its text only, as Build counts keys.
            parent.text = parent.text.saturating_add(node_text);
        } else {
            parent.values = parent.values.saturating_add(values);
            parent.text = parent.text.saturating_add(node_text);
        }
        if parent.mapping {
            parent.key_next = !parent.key_next;
        }
        let total_values = stack.iter().fold(0u64, |n, o| n.saturating_add(o.values));
        let total_text = stack.iter().fold(0u64, |n, o| n.saturating_add(o.text));
        let at = (mark.line().max(1), mark.col() + 1);
        if total_values > max_nodes as u64 {
            let message =
                format!("more than {max_nodes} values (after YAML aliases are expanded); the limit is max_nodes");
            return Some(("max_nodes", message, at.0, at.1));
        }
        if total_text > max_text {
            let message = format!(
                "more than {max_text} bytes of text (after YAML aliases are expanded); the limit is max_file_size"
            );
            return Some(("max_file_size", message, at.0, at.1));
        }
    }
}

/// Applies YAML 1.1 merge keys in place: the mappings under `<<` (one, or a
/// list of them) supply the keys the mapping itself does not define, earlier
/// ones in a list taking precedence.
fn apply_yaml_merges(value: &mut Value) -> Result<(), String> {
    match value {
        Value::Array(items) => items.iter_mut().try_for_each(apply_yaml_merges),
        Value::Object(object) => {
            // Children first, so that merged-in mappings have already had
            // their own merge keys applied.
            object.values_mut().try_for_each(apply_yaml_merges)?;
            let Some(sources) = object.remove("<<") else {
                return Ok(());
            };
            let sources = match sources {
                Value::Object(source) => vec![Value::Object(source)],
                Value::Array(sources) => sources,
                _ => {
                    return Err("expected a mapping or list of mappings for merging, but found scalar".to_owned());
                }
            };
            for source in sources {
                let Value::Object(source) = source else {
                    return Err("expected a mapping for merging, but found a non-mapping".into());
                };
                for (key, value) in source {
                    object.entry(key).or_insert(value);
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// JSON

fn parse_json(text: &str, origin: &Path, build: Build<'_>) -> Result<Value, ConfigError> {
    let mut de = serde_json::Deserializer::from_str(text);
    build.deserialize(&mut de).and_then(|value| de.end().map(|()| value)).map_err(|err| {
        let (line, byte_column) = (err.line(), err.column());
        let message = remove_once(err.to_string(), &format!(" at line {line} column {byte_column}"));
        let column = json_char_column(text, line, byte_column);
        // serde_json stops at 128 levels whatever `max_depth` says: a limit.
        let kind = if message.starts_with("recursion limit exceeded") {
            ConfigErrorKind::Limit
        } else {
            ConfigErrorKind::Syntax
        };
        syntax_error(origin, message).with_kind(kind).with_position(line, column)
    })
}

/// Converts serde_json's column, which counts bytes up to and including the
/// offending one (0 at the start of a line), into a 1-based character column.
fn json_char_column(text: &str, line: usize, byte_column: usize) -> usize {
    let line_start = if line <= 1 {
        0
    } else {
        match text.match_indices('\n').nth(line - 2) {
            Some((at, _)) => at + 1,
            None => return byte_column.max(1),
        }
    };
    let offset = line_start + byte_column.saturating_sub(1);
    line_col(text, offset).1
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn origin() -> &'static Path {
        Path::new("config/app.conf")
    }

    fn ok(format: Format, text: &str) -> Value {
        parse(format, text.as_bytes(), origin(), &Limits::default()).unwrap()
    }

    fn err(format: Format, text: &str) -> ConfigError {
        parse(format, text.as_bytes(), origin(), &Limits::default()).unwrap_err()
    }

    fn pos(error: &ConfigError) -> (usize, usize) {
        (error.line().unwrap(), error.column().unwrap())
    }

    #[test]
    fn format_from_path_and_name() {
        assert_eq!(Format::from_path(Path::new("a/app.toml")), Some(Format::Toml));
        assert_eq!(Format::from_path(Path::new("app.yaml")), Some(Format::Yaml));
        assert_eq!(Format::from_path(Path::new("app.yml")), Some(Format::Yaml));
        assert_eq!(Format::from_path(Path::new("app.json")), Some(Format::Json));
        assert_eq!(Format::from_path(Path::new("app.ini")), None);
        assert_eq!(Format::from_path(Path::new("toml")), None);
        assert_eq!(Format::Toml.name(), "toml");
        assert_eq!(Format::Yaml.name(), "yaml");
        assert_eq!(Format::Json.name(), "json");
    }

    #[test]
    fn line_col_counts_characters() {
        let text = "ab\néé=x\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 2), (1, 3));
        assert_eq!(line_col(text, 3), (2, 1));
        // `=` is at byte 7 after two two-byte characters.
        assert_eq!(line_col(text, 7), (2, 3));
        // An offset inside `é` points at it.
        assert_eq!(line_col(text, 4), (2, 1));
        assert_eq!(line_col(text, 100), (3, 1));
    }

    #[test]
    fn toml_parses_nested_tables_arrays_and_datetimes() {
        let value = ok(
            Format::Toml,
            "title = \"x\"\nwhen = 1979-05-27T07:32:00Z\nday = 1979-05-27\n\
             [server]\nport = 8080\nratio = 0.5\non = true\n\
             [[hosts]]\nname = \"a\"\n[[hosts]]\nname = \"b\"\n",
        );
        assert_eq!(
            value,
            json!({
                "title": "x",
                "when": "1979-05-27T07:32:00Z",
                "day": "1979-05-27",
                "server": {"port": 8080, "ratio": 0.5, "on": true},
                "hosts": [{"name": "a"}, {"name": "b"}],
            })
        );
    }

    #[test]
    fn toml_nan_becomes_null() {
        assert_eq!(ok(Format::Toml, "x = nan\ny = [1, inf]"), json!({"x": null, "y": [1, null]}));
    }

    #[test]
    fn toml_empty_and_comment_only_are_empty_tables() {
        assert_eq!(ok(Format::Toml, ""), json!({}));
        assert_eq!(ok(Format::Toml, "  \n# just a comment\n\n"), json!({}));
    }

    #[test]
    fn toml_error_reports_line_and_column() {
        let error = err(Format::Toml, "a = 1\n[server]\nport = = 8080\n");
        assert_eq!(error.kind(), ConfigErrorKind::Syntax);
        assert_eq!(error.file(), Some(origin()));
        assert_eq!(error.line(), Some(3));
        assert_eq!(error.column(), Some(8));
        assert!(!error.message().contains("line"), "{}", error.message());
        assert!(!error.message().is_empty());
    }

    #[test]
    fn toml_error_column_counts_characters() {
        let error = err(Format::Toml, "s = \"ééé\" x\n");
        assert_eq!(pos(&error), (1, 11));
    }

    #[test]
    fn toml_duplicate_key_points_at_second_key() {
        let error = err(Format::Toml, "a = 1\nb = 2\na = 3\n");
        assert_eq!(error.line(), Some(3));
        assert!(error.message().contains("duplicate"), "{}", error.message());
    }

    #[test]
    fn bom_is_skipped() {
        let mut bytes = b"\xef\xbb\xbf".to_vec();
        bytes.extend_from_slice(b"a = 1\n");
        assert_eq!(parse(Format::Toml, &bytes, origin(), &Limits::default()).unwrap(), json!({"a": 1}));
        let mut bytes = b"\xef\xbb\xbf".to_vec();
        bytes.extend_from_slice(b"{\"a\": 1}");
        assert_eq!(parse(Format::Json, &bytes, origin(), &Limits::default()).unwrap(), json!({"a": 1}));
        let mut bytes = b"\xef\xbb\xbf".to_vec();
        bytes.extend_from_slice(b"a: 1\n");
        assert_eq!(parse(Format::Yaml, &bytes, origin(), &Limits::default()).unwrap(), json!({"a": 1}));
        // Positions are counted from after the mark.
        let mut bytes = b"\xef\xbb\xbf".to_vec();
        bytes.extend_from_slice(b"{,}");
        let error = parse(Format::Json, &bytes, origin(), &Limits::default()).unwrap_err();
        assert_eq!(pos(&error), (1, 2));
    }

    #[test]
    fn invalid_utf8_points_at_first_bad_byte() {
        for format in [Format::Toml, Format::Yaml, Format::Json] {
            let error = parse(format, b"a = 1\nb = \"x\xffy\"\n", origin(), &Limits::default()).unwrap_err();
            assert_eq!(error.kind(), ConfigErrorKind::Syntax);
            assert_eq!(pos(&error), (2, 7));
            assert!(error.message().contains("utf-8"));
        }
        let error = parse(Format::Json, b"\"\xc3\xa9\xc3\"", origin(), &Limits::default()).unwrap_err();
        assert_eq!(pos(&error), (1, 3));
    }

    #[test]
    fn yaml_parses_mappings_sequences_and_flow() {
        let value = ok(
            Format::Yaml,
            "server:\n  port: 8080\n  hosts:\n    - a\n    - name: b\nflow: {x: [1, 2.5, true, null]}\n",
        );
        assert_eq!(
            value,
            json!({
                "server": {"port": 8080, "hosts": ["a", {"name": "b"}]},
                "flow": {"x": [1, 2.5, true, null]},
            })
        );
    }

    #[test]
    fn yaml_non_string_keys_become_strings() {
        let value = ok(Format::Yaml, "1: one\ntrue: yes\n2.5: x\n");
        assert_eq!(value, json!({"1": "one", "true": "yes", "2.5": "x"}));
    }

    #[test]
    fn yaml_empty_and_null_documents_are_empty_objects() {
        assert_eq!(ok(Format::Yaml, ""), json!({}));
        assert_eq!(ok(Format::Yaml, "# nothing here\n"), json!({}));
        assert_eq!(ok(Format::Yaml, "---\n"), json!({}));
        assert_eq!(ok(Format::Yaml, "~\n"), json!({}));
    }

    #[test]
    fn yaml_merge_keys_are_applied() {
        let value = ok(
            Format::Yaml,
            "base: &base\n  a: 1\n  b: 2\nother: &other\n  c: 3\n\
             derived:\n  <<: [*base, *other]\n  b: 20\nsingle:\n  <<: *base\n",
        );
        assert_eq!(value["derived"], json!({"a": 1, "b": 20, "c": 3}));
        assert_eq!(value["single"], json!({"a": 1, "b": 2}));
        let error = err(Format::Yaml, "a:\n  <<: 5\n");
        assert_eq!(error.kind(), ConfigErrorKind::Syntax);
    }

    #[test]
    fn yaml_bad_indentation_reports_position() {
        let error = err(Format::Yaml, "server:\n  port: 1\n host: x\n");
        assert_eq!(error.kind(), ConfigErrorKind::Syntax);
        assert_eq!(pos(&error), (3, 2));
        assert!(!error.message().contains(" at line 3 column"), "{}", error.message());
    }

    #[test]
    fn yaml_mapping_value_in_wrong_place_reports_position() {
        let error = err(Format::Yaml, "a: 1\nb: c: d\n");
        assert_eq!(pos(&error), (2, 5));
        assert_eq!(error.message(), "mapping values are not allowed in this context");
    }

    #[test]
    fn yaml_multiple_documents_are_an_error() {
        let error = err(Format::Yaml, "# leading\na: 1\n---\nb: 2\n");
        assert_eq!(error.kind(), ConfigErrorKind::Syntax);
        assert!(error.message().contains("more than one document"), "{}", error.message());
        assert_eq!(pos(&error), (3, 1));
        let error = err(Format::Yaml, "---\na: 1\n--- \nb: 2\n");
        assert_eq!(pos(&error), (3, 1));
        // Content after a document end marker is a second document.
        let error = err(Format::Yaml, "a: 1\n...\n# c\nb: 2\n");
        assert_eq!(pos(&error), (4, 1));
        // A single document with an explicit start marker is fine.
        assert_eq!(ok(Format::Yaml, "%YAML 1.2\n---\na: 1\n"), json!({"a": 1}));
    }

    #[test]
    fn the_parsers_own_depth_bounds_are_limit_errors() {
        // Set above what the parsers themselves allow, `max_depth` is not
        // what stops these; the parser is, and that is a limit too.
        let limits = Limits { max_depth: 1000, ..Limits::default() };
        for (format, text) in [
            (Format::Json, format!("{}{}", "[".repeat(200), "]".repeat(200))),
            (Format::Toml, format!("a = {}{}", "[".repeat(200), "]".repeat(200))),
            (Format::Toml, format!("a = {}1{}", "{b=".repeat(200), "}".repeat(200))),
            (Format::Toml, format!("[{}]", vec!["t"; 200].join("."))),
        ] {
            let error = parse(format, text.as_bytes(), origin(), &limits).unwrap_err();
            assert_eq!(error.kind(), ConfigErrorKind::Limit, "{format:?}: {error}");
        }
    }

    #[test]
    fn yaml_aliases_are_counted_before_they_are_expanded() {
        // 36 million values from 60 KB: refused from the events, at the
        // alias that crosses the limit, before serde_yaml_ng replays any.
        let items: Vec<String> = (0..6000).map(|i| format!("x{i}")).collect();
        let bomb = format!("base: &a [{}]\nrefs: [{}]\n", items.join(","), vec!["*a"; 6000].join(","));
        let error = err(Format::Yaml, &bomb);
        assert_eq!(error.kind(), ConfigErrorKind::Limit);
        assert_eq!(
            error.message(),
            "more than 1000000 values (after YAML aliases are expanded); the limit is max_nodes"
        );
        // The 166th alias: 166 copies of 6,001 values are past a million.
        assert_eq!(error.line(), Some(2));
        assert_eq!(error.column(), Some(8 + 165 * 3), "{error}");
        // Copies of a long string: few values, much text.
        let limits = Limits { max_file_size: 100_000, ..Limits::default() };
        let text = format!("s: &s \"{}\"\nss: [{}]\n", "x".repeat(10_000), vec!["*s"; 20].join(","));
        let error = parse(Format::Yaml, text.as_bytes(), origin(), &limits).unwrap_err();
        assert_eq!(error.kind(), ConfigErrorKind::Limit);
        assert!(error.message().starts_with("more than 100000 bytes of text"), "{error}");
        // Within the limits, aliases are just what they were.
        let value = ok(Format::Yaml, "a: &a {x: [1, 2]}\nb: *a\nc: [*a, *a]\n");
        assert_eq!(value["c"][1], json!({"x": [1, 2]}));
    }

    #[test]
    fn json_parses_values() {
        let value = ok(Format::Json, r#"{"a": {"b": [1, "x\"y", null]}, "\u00e9": 1.5}"#);
        assert_eq!(value, json!({"a": {"b": [1, "x\"y", null]}, "é": 1.5}));
    }

    #[test]
    fn json_empty_is_an_error() {
        let error = err(Format::Json, "");
        assert_eq!(error.kind(), ConfigErrorKind::Syntax);
        assert_eq!(pos(&error), (1, 1));
        let error = err(Format::Json, "  \n  ");
        assert_eq!(error.kind(), ConfigErrorKind::Syntax);
    }

    #[test]
    fn json_trailing_comma_reports_position() {
        let error = err(Format::Json, "{\n  \"a\": 1,\n  \"b\": 2,\n}\n");
        assert_eq!(error.kind(), ConfigErrorKind::Syntax);
        assert_eq!(pos(&error), (4, 1));
        assert_eq!(error.message(), "trailing comma");
    }

    #[test]
    fn json_column_counts_characters() {
        let error = err(Format::Json, "{\"é\": tru}");
        assert_eq!(error.line(), Some(1));
        // `tru}` starts at character 7; serde_json fails on the `}` at 10.
        assert_eq!(error.column(), Some(10));
    }

    #[test]
    fn merge_objects_recursively_and_replaces_the_rest() {
        let mut base = json!({
            "a": {"x": 1, "y": {"deep": true, "keep": 1}},
            "list": [1, 2, 3],
            "s": "base",
            "n": 1,
        });
        merge(
            &mut base,
            json!({
                "a": {"y": {"deep": false}, "z": 3},
                "list": [9],
                "s": null,
                "n": {"now": "object"},
                "new": 1,
            }),
        );
        assert_eq!(
            base,
            json!({
                "a": {"x": 1, "y": {"deep": false, "keep": 1}, "z": 3},
                "list": [9],
                "s": null,
                "n": {"now": "object"},
                "new": 1,
            })
        );
        let mut scalar = json!(1);
        merge(&mut scalar, json!({"a": 1}));
        assert_eq!(scalar, json!({"a": 1}));
    }
}
