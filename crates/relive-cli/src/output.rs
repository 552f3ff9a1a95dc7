//! How things are shown: paths, config errors, events as text and as JSON,
//! and messages on stderr. Colours go through `anstream`, which drops them
//! when the stream is not a terminal or NO_COLOR is set.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anstyle::{AnsiColor, Style};
use relive::{ChangeEvent, ChangeType, ConfigError};
use serde_json::{Map, Value, json};

const ERROR: Style = AnsiColor::Red.on_default().bold();
const WARN: Style = AnsiColor::Yellow.on_default().bold();
const DIM: Style = Style::new().dimmed();
const GOOD: Style = AnsiColor::Green.on_default();
const BAD: Style = AnsiColor::Red.on_default();
const NAME: Style = Style::new().bold();

/// Prints `relive: error: message` to stderr.
pub fn error(message: &str) {
    let _ = writeln!(anstream::stderr(), "relive: {ERROR}error{ERROR:#}: {message}");
}

/// Prints `relive: warning: message` to stderr.
pub fn warn(message: &str) {
    let _ = writeln!(anstream::stderr(), "relive: {WARN}warning{WARN:#}: {message}");
}

/// Prints `relive: message` to stderr.
pub fn note(message: &str) {
    let _ = writeln!(anstream::stderr(), "relive: {message}");
}

/// Whether `c` changes how a terminal shows what follows rather than being
/// shown: C0 and C1 controls (ESC starts escape sequences, which can clear
/// the screen, move the cursor, set the title), DEL, the bidirectional
/// embeddings, overrides and isolates (which reorder the text that follows),
/// and the Unicode line and paragraph separators.
fn is_terminal_control(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        || matches!(c, '\u{2028}' | '\u{2029}')
}

/// `text` with every character that could act on a terminal escaped, to
/// print text from outside (etcd, the network, log fields) as text: `\n`,
/// `\r` and `\t` as such, the others as `\u{1b}`. Everything else,
/// non-ASCII letters included, is unchanged.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(is_terminal_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_terminal_control(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// JSON text (as serde_json writes it) with the terminal controls that
/// serde_json leaves raw (DEL, C1, bidirectional controls, the line and
/// paragraph separators) written as `\uXXXX` escapes: the same JSON value,
/// safe to print on a terminal. serde_json escapes C0 (ESC included)
/// inside strings itself, and the newlines and spaces outside strings are
/// layout; the others can only occur inside strings.
pub fn escape_json_controls(json: &str) -> std::borrow::Cow<'_, str> {
    let raw = |c: char| is_terminal_control(c) && c > '\u{1f}';
    if !json.chars().any(raw) {
        return std::borrow::Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 8);
    for c in json.chars() {
        match c {
            c if raw(c) => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `path` as people want to read it: relative to the current directory
/// when it is inside it, as given otherwise, and with controls escaped (a
/// file name may hold any byte but `/`).
pub fn display_path(path: &Path) -> String {
    static CWD: OnceLock<Option<PathBuf>> = OnceLock::new();
    let cwd = CWD.get_or_init(|| std::env::current_dir().ok());
    let shown = match cwd.as_deref().and_then(|cwd| path.strip_prefix(cwd).ok()) {
        Some(rel) if !rel.as_os_str().is_empty() => rel.display().to_string(),
        _ => path.display().to_string(),
    };
    escape_controls(&shown).into_owned()
}

/// A config error as `file:line:col: message (at `key`)`, with the file
/// relative to the current directory; `file: message` without a position,
/// `config `name`: message` without a file.
pub fn config_error(name: Option<&str>, error: &ConfigError) -> String {
    let mut out = String::new();
    match (error.file(), error.line(), error.column()) {
        (Some(file), Some(line), Some(column)) => out.push_str(&format!("{}:{line}:{column}: ", display_path(file))),
        (Some(file), _, _) => out.push_str(&format!("{}: ", display_path(file))),
        (None, _, _) => {
            if let Some(name) = name {
                out.push_str(&format!("config `{}`: ", escape_controls(name)));
            }
        }
    }
    // Parser messages may quote the file's text.
    out.push_str(&escape_controls(error.message()));
    if let Some(key) = error.key() {
        out.push_str(&format!(" (at `{}`)", escape_controls(key)));
    }
    out
}

/// The local time of day as `12:00:01.234`.
pub fn clock() -> String {
    jiff::Zoned::now().strftime("%H:%M:%S%.3f").to_string()
}

/// One event as one line of text (without the time).
pub fn event_text(event: &ChangeEvent) -> String {
    let kind = event.kind();
    // Config names come from file names.
    let esc = |text: &str| escape_controls(text).into_owned();
    match event {
        ChangeEvent::ConfigChanged { config_name, files, .. } => {
            let files: Vec<String> = files.iter().map(|f| display_path(f)).collect();
            format!("{GOOD}{kind}{GOOD:#} {NAME}{}{NAME:#} ({})", esc(config_name), files.join(", "))
        }
        ChangeEvent::FileChanged { path, change_type, .. } => match change_type {
            ChangeType::Renamed { from } => {
                format!("{kind} {} {} (from {})", change_type.as_str(), display_path(path), display_path(from))
            }
            _ => format!("{kind} {} {}", change_type.as_str(), display_path(path)),
        },
        ChangeEvent::ValidationFailed { config_name, error } => {
            format!("{BAD}{kind}{BAD:#} {NAME}{}{NAME:#}: {}", esc(config_name), config_error(Some(config_name), error))
        }
        ChangeEvent::ReloadCompleted { config_name, duration } => {
            format!("{DIM}{kind} {} in {:.3} ms{DIM:#}", esc(config_name), duration.as_secs_f64() * 1e3)
        }
        ChangeEvent::HandlerFailed { handler, error, .. } => {
            format!("{BAD}{kind}{BAD:#} {}: {}", esc(handler), esc(&error.to_string()))
        }
        ChangeEvent::ReadFailed { path, error } => {
            format!("{BAD}{kind}{BAD:#} {}: {}", display_path(path), esc(&error.to_string()))
        }
        _ => kind.to_string(),
    }
}

/// Prints one event to stdout, as text or as a JSON line.
pub fn print_event(event: &ChangeEvent, as_json: &Option<Value>) {
    let mut out = anstream::stdout().lock();
    let _ = match as_json {
        Some(value) => writeln!(out, "{}", escape_json_controls(&value.to_string())),
        None => writeln!(out, "{DIM}{}{DIM:#} {}", clock(), event_text(event)),
    };
    let _ = out.flush();
}

/// One event as a JSON object with stable field names:
///
/// - every event: `time` (RFC 3339, UTC), `kind`;
/// - `config_changed`: `config`, `path` (the base file), `files`, `old`,
///   `new` (values redacted by the library);
/// - `file_changed`: `path`, `change` (`created`, `modified`, `deleted`,
///   `renamed`), and `from` for a rename;
/// - `validation_failed`: `config`, `error` (the message), `path`, `line`,
///   `column`, `key` where known, and `location` (`file:line:col: message`);
/// - `change_set_applied`: `change_set` (its id, as `relive history`
///   shows it), `configs` (in the order of their `config_changed` events);
/// - `reload_completed`: `config`, `duration_ms`;
/// - `handler_failed`: `handler`, `error`; `read_failed`: `path`, `error`.
pub fn event_json(event: &ChangeEvent) -> Value {
    let mut o = Map::new();
    let time = jiff::Timestamp::now().round(jiff::Unit::Millisecond).unwrap_or_else(|_| jiff::Timestamp::now());
    o.insert("time".into(), json!(time.to_string()));
    o.insert("kind".into(), json!(event.kind()));
    let path = |p: &Path| json!(p.display().to_string());
    match event {
        ChangeEvent::ConfigChanged { config_name, old_value, new_value, files } => {
            o.insert("config".into(), json!(config_name));
            if let Some(first) = files.first() {
                o.insert("path".into(), path(first));
            }
            o.insert("files".into(), files.iter().map(|f| path(f)).collect());
            o.insert("old".into(), Value::clone(old_value));
            o.insert("new".into(), Value::clone(new_value));
        }
        ChangeEvent::FileChanged { path: p, change_type, .. } => {
            o.insert("path".into(), path(p));
            o.insert("change".into(), json!(change_type.as_str()));
            if let ChangeType::Renamed { from } = change_type {
                o.insert("from".into(), path(from));
            }
        }
        ChangeEvent::ValidationFailed { config_name, error } => {
            o.insert("config".into(), json!(config_name));
            o.insert("error".into(), json!(error.message()));
            if let Some(file) = error.file() {
                o.insert("path".into(), path(file));
            }
            if let (Some(line), Some(column)) = (error.line(), error.column()) {
                o.insert("line".into(), json!(line));
                o.insert("column".into(), json!(column));
            }
            if let Some(key) = error.key() {
                o.insert("key".into(), json!(key));
            }
            o.insert("location".into(), json!(config_error(Some(config_name), error)));
        }
        ChangeEvent::ChangeSetApplied { id, configs } => {
            o.insert("change_set".into(), json!(id.to_string()));
            o.insert("configs".into(), json!(configs.as_ref()));
        }
        ChangeEvent::ReloadCompleted { config_name, duration } => {
            o.insert("config".into(), json!(config_name));
            o.insert("duration_ms".into(), json!(duration.as_secs_f64() * 1e3));
        }
        ChangeEvent::HandlerFailed { handler, error, located } => {
            o.insert("handler".into(), json!(handler));
            o.insert("error".into(), json!(error));
            if let Some(at) = located {
                if let Some(file) = at.file() {
                    o.insert("file".into(), path(file));
                }
                if let (Some(line), Some(column)) = (at.line(), at.column()) {
                    o.insert("line".into(), json!(line));
                    o.insert("column".into(), json!(column));
                }
            }
        }
        ChangeEvent::ReadFailed { path: p, error } => {
            o.insert("path".into(), path(p));
            o.insert("error".into(), json!(error));
        }
        _ => {}
    }
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use relive::ConfigErrorKind;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn config_errors_render_like_compilers() {
        let e = ConfigError::new(ConfigErrorKind::Syntax, "expected `=`")
            .with_file("/nowhere/config/app.toml")
            .with_position(3, 7);
        assert_eq!(config_error(None, &e), "/nowhere/config/app.toml:3:7: expected `=`");
        let e = ConfigError::new(ConfigErrorKind::Invalid, "too big").with_key("server.port");
        assert_eq!(config_error(Some("app"), &e), "config `app`: too big (at `server.port`)");
    }

    #[test]
    fn terminal_controls_are_escaped() {
        assert!(matches!(escape_controls("web-1 café 日本"), std::borrow::Cow::Borrowed("web-1 café 日本")));
        assert_eq!(escape_controls("\u{1b}[2Jgone"), "\\u{1b}[2Jgone");
        assert_eq!(escape_controls("a\nb\rc\td"), "a\\nb\\rc\\td");
        assert_eq!(escape_controls("\u{7f}\u{9b}31m\u{85}"), "\\u{7f}\\u{9b}31m\\u{85}");
        assert_eq!(
            escape_controls("\u{202e}txt.exe\u{2066}\u{2069}\u{200f}\u{61c}"),
            "\\u{202e}txt.exe\\u{2066}\\u{2069}\\u{200f}\\u{61c}"
        );
        assert_eq!(escape_controls("\u{2028}\u{2029}\u{0}"), "\\u{2028}\\u{2029}\\u{0}");
        // Nothing that acts on a terminal is left, for every character
        // below U+3000.
        let all: String = (0..0x3000).filter_map(char::from_u32).collect();
        let escaped = escape_controls(&all);
        assert!(!escaped.chars().any(is_terminal_control), "{escaped:?}");
    }

    #[test]
    fn json_keeps_its_value_when_controls_are_escaped() {
        let value = json!({"host": "a\u{1b}[2J\u{9b}\u{202e}b\u{2028}\u{7f}", "n": 1});
        for text in [serde_json::to_string(&value).unwrap(), serde_json::to_string_pretty(&value).unwrap()] {
            let escaped = escape_json_controls(&text);
            assert!(!escaped.chars().any(|c| is_terminal_control(c) && c != '\n'), "{escaped}");
            assert_eq!(serde_json::from_str::<Value>(&escaped).unwrap(), value);
        }
    }

    #[test]
    fn events_as_text_hold_no_terminal_control() {
        let hostile = "evil\u{1b}[2J\u{202e}\u{9b}";
        let error = ConfigError::new(ConfigErrorKind::Syntax, format!("unexpected `{hostile}`"))
            .with_file(format!("/w/config/{hostile}.toml"))
            .with_position(1, 2)
            .with_key(hostile);
        let events = [
            ChangeEvent::ValidationFailed { config_name: hostile.into(), error: Arc::new(error) },
            ChangeEvent::ConfigChanged {
                config_name: hostile.into(),
                old_value: Arc::new(Value::Null),
                new_value: Arc::new(Value::Null),
                files: vec![PathBuf::from(format!("/w/config/{hostile}.toml"))].into(),
            },
            ChangeEvent::ReloadCompleted { config_name: hostile.into(), duration: Duration::from_millis(1) },
        ];
        for event in &events {
            let text = event_text(event);
            assert!(!text.chars().any(|c| c != '\u{1b}' && is_terminal_control(c)), "{text:?}");
            // The only ESC left is the colours' (none without a terminal).
            assert!(!text.contains("\u{1b}[2J"), "{text:?}");
            assert!(text.contains("evil\\u{1b}[2J\\u{202e}\\u{9b}"), "{text:?}");
        }
    }

    #[test]
    fn json_fields_are_stable() {
        let event = ChangeEvent::ReloadCompleted { config_name: "app".into(), duration: Duration::from_micros(1500) };
        let v = event_json(&event);
        assert_eq!(v["kind"], "reload_completed");
        assert_eq!(v["config"], "app");
        assert_eq!(v["duration_ms"], 1.5);
        let error =
            ConfigError::new(ConfigErrorKind::Invalid, "no").with_file("/w/config/app.toml").with_position(2, 1);
        let event = ChangeEvent::ValidationFailed { config_name: "app".into(), error: Arc::new(error) };
        let v = event_json(&event);
        assert_eq!((v["error"].as_str(), v["line"].as_u64(), v["column"].as_u64()), (Some("no"), Some(2), Some(1)));
        assert_eq!(v["path"], "/w/config/app.toml");
    }
}
