//! `relive history`, `show`, `diff` and `rollback`: thin wrappers over the
//! library's version history (`data/history/` in the workspace), which
//! works without a running engine, from another process than the one that
//! records.

use std::io::Write;
use std::time::SystemTime;

use anstyle::{AnsiColor, Style};
use relive::{DiffEntry, HistoryEntry, VersionStatus, Workspace};
use serde_json::{Value, json};

use crate::app;
use crate::cli::{DiffArgs, HistoryArgs, HistoryWorkspace, RollbackArgs, ShowArgs};
use crate::exit::{Exit, Failure, Result};
use crate::output;

const ADDED: Style = AnsiColor::Green.on_default();
const REMOVED: Style = AnsiColor::Red.on_default();
const CHANGED: Style = AnsiColor::Yellow.on_default();
const DIM: Style = Style::new().dimmed();
const BOLD: Style = Style::new().bold();

fn open(ws: &HistoryWorkspace, name: &str) -> Result<(Workspace, relive::History)> {
    let workspace = app::workspace(ws.workspace.as_deref(), None)?;
    let history = workspace.open_history(name)?;
    for warning in history.warnings() {
        output::warn(&format!("skipped a history record: {warning}"));
    }
    Ok((workspace, history))
}

fn print(text: &str) {
    let mut out = anstream::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// `relive history [NAME]`: every version of NAME kept, newest first, or
/// without NAME every config's versions grouped by change set.
pub async fn history(args: HistoryArgs) -> Result<Exit> {
    let Some(name) = args.name.as_deref().filter(|_| !args.all) else { return change_sets(&args) };
    let (ws, history) = open(&args.ws, name)?;
    let entries = history.entries();
    // Which configs changed with each version: every config's history,
    // grouped by change set.
    let sets = ws.change_sets(usize::MAX)?;
    let partners = |entry: &HistoryEntry| -> Vec<(String, u64)> {
        let Some(id) = entry.change_set else { return Vec::new() };
        sets.iter()
            .find(|s| s.id == Some(id))
            .map(|s| {
                s.members.iter().filter(|m| m.config != name).map(|m| (m.config.clone(), m.entry.version)).collect()
            })
            .unwrap_or_default()
    };
    if args.ws.json {
        let all: Vec<Value> = entries
            .iter()
            .map(|e| {
                let mut record = entry_json(e);
                record["partners"] = partners(e)
                    .into_iter()
                    .map(|(config, version)| json!({"config": config, "version": version}))
                    .collect();
                record
            })
            .collect();
        print(&format!("{}\n", Value::Array(all)));
        return Ok(Exit::Ok);
    }
    if entries.is_empty() {
        output::note(&format!("config `{name}` has no recorded versions"));
        return Ok(Exit::Ok);
    }
    let live = history.latest_applied().map(|e| e.version);
    let width = entries.last().map_or(1, |e| e.version.to_string().len());
    let mut text = String::new();
    for entry in entries.iter().rev() {
        let mark = if Some(entry.version) == live { format!("{BOLD}*{BOLD:#}") } else { " ".to_string() };
        let mut detail = version_detail(name, entry);
        let with: Vec<String> = partners(entry).iter().map(|(c, v)| format!("{c} {v}")).collect();
        if !with.is_empty() {
            detail = format!("(with {}) {detail}", with.join(", "));
        }
        let env = entry.env.as_deref().map(|e| format!(" [{e}]")).unwrap_or_default();
        text.push_str(&format!(
            "{mark} {:>width$}  {DIM}{}{DIM:#}{env}  {}  {}  {detail}\n",
            entry.version,
            local_time(entry.time),
            set_id(entry),
            status(entry),
        ));
    }
    print(&text);
    Ok(Exit::Ok)
}

/// `relive history` without NAME: the newest change sets first, each a
/// header (id, time, configs) over its versions.
fn change_sets(args: &HistoryArgs) -> Result<Exit> {
    let ws = app::workspace(args.ws.workspace.as_deref(), None)?;
    let sets = ws.change_sets(args.limit)?;
    if args.ws.json {
        let all: Vec<Value> = sets
            .iter()
            .map(|set| {
                let versions: Vec<Value> = set
                    .members
                    .iter()
                    .map(|m| {
                        let mut record = entry_json(&m.entry);
                        record["config"] = json!(m.config);
                        record
                    })
                    .collect();
                json!({
                    "id": set.id.map(|id| id.to_string()),
                    "time": utc_time(set.time()),
                    "applied": set.is_applied(),
                    "configs": set.configs().collect::<Vec<_>>(),
                    "versions": versions,
                })
            })
            .collect();
        print(&format!("{}\n", Value::Array(all)));
        return Ok(Exit::Ok);
    }
    if sets.is_empty() {
        output::note(&format!("no recorded versions in {}", output::display_path(&ws.data_dir().join("history"))));
        return Ok(Exit::Ok);
    }
    let width = sets.iter().flat_map(|s| s.configs()).map(str::len).max().unwrap_or(1);
    let mut text = String::new();
    for set in &sets {
        let id = set.id.map_or_else(|| "(no change set)".to_string(), |id| format!("change set {id}"));
        let configs: Vec<&str> = set.configs().collect();
        text.push_str(&format!(
            "{BOLD}{id}{BOLD:#}  {DIM}{}{DIM:#}  {}\n",
            local_time(set.time()),
            output::escape_controls(&configs.join(", "))
        ));
        for m in &set.members {
            text.push_str(&format!(
                "  {:<width$}  {:>4}  {}  {}\n",
                output::escape_controls(&m.config),
                m.entry.version,
                status(&m.entry),
                version_detail(&m.config, &m.entry)
            ));
        }
    }
    print(&text);
    Ok(Exit::Ok)
}

fn status(entry: &HistoryEntry) -> String {
    match entry.status {
        VersionStatus::Applied => format!("{ADDED}applied{ADDED:#} "),
        VersionStatus::Rejected => format!("{REMOVED}rejected{REMOVED:#}"),
    }
}

/// The change-set id of a version, or dashes for one recorded before
/// change sets, as wide as an id.
fn set_id(entry: &HistoryEntry) -> String {
    let id = entry.change_set.map_or_else(|| "-".repeat(16), |id| id.to_string());
    format!("{DIM}{id}{DIM:#}")
}

/// The error of a rejected version, or the summary of its diff, after
/// `(rollback to N)` for a rollback.
fn version_detail(name: &str, entry: &HistoryEntry) -> String {
    let detail = match &entry.error {
        Some(error) => output::config_error(Some(name), error),
        None => diff_summary(entry),
    };
    match entry.rollback_of {
        Some(n) => format!("(rollback to {n}) {detail}"),
        None => detail,
    }
}

/// `~/port +/features/0 -/debug`, shortened to about 60 characters.
fn diff_summary(entry: &HistoryEntry) -> String {
    let entries = entry.diff.entries();
    if entries.is_empty() {
        return "no change in value".to_string();
    }
    let mut out = String::new();
    for (i, e) in entries.iter().enumerate() {
        let item = match e {
            DiffEntry::Added { path, .. } => format!("+{path}"),
            DiffEntry::Removed { path, .. } => format!("-{path}"),
            DiffEntry::Changed { path, .. } => format!("~{path}"),
        };
        if !out.is_empty() && out.len() + item.len() > 60 {
            out.push_str(&format!(" (+{} more)", entries.len() - i));
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&item);
    }
    out
}

fn local_time(time: SystemTime) -> String {
    jiff::Timestamp::try_from(time)
        .map(|t| t.to_zoned(jiff::tz::TimeZone::system()).strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|_| "?".to_string())
}

fn utc_time(time: SystemTime) -> String {
    jiff::Timestamp::try_from(time).map(|t| t.to_string()).unwrap_or_default()
}

/// A version's record as JSON: `version`, `status`, `time`, `env`, `hash`,
/// `files`, `rollback_of`, `published`, `change_set` (its id as
/// `relive history` shows it, or null), `diff` and `error`.
fn entry_json(entry: &HistoryEntry) -> Value {
    let status = match entry.status {
        VersionStatus::Applied => "applied",
        VersionStatus::Rejected => "rejected",
    };
    let error = entry.error.as_ref().map(|e| {
        json!({
            "message": e.message(),
            "path": e.file().map(|f| f.display().to_string()),
            "line": e.line(),
            "column": e.column(),
            "key": e.key(),
        })
    });
    json!({
        "version": entry.version,
        "status": status,
        "time": utc_time(entry.time),
        "env": entry.env,
        "hash": entry.hash,
        "files": entry.files().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        "rollback_of": entry.rollback_of,
        "published": entry.published,
        "change_set": entry.change_set.map(|id| id.to_string()),
        "diff": entry.diff.entries().iter().map(diff_entry_json).collect::<Vec<_>>(),
        "error": error,
    })
}

fn diff_entry_json(entry: &DiffEntry) -> Value {
    match entry {
        DiffEntry::Added { path, value } => json!({"op": "add", "path": path, "value": value}),
        DiffEntry::Removed { path, value } => json!({"op": "remove", "path": path, "value": value}),
        DiffEntry::Changed { path, old, new } => json!({"op": "change", "path": path, "old": old, "new": new}),
    }
}

/// `relive show NAME`: the value the config has now (its files merged,
/// decrypted, secrets redacted), with where each value came from; with
/// `--raw`, its files as they are on disk (encrypted ones encrypted).
async fn show_current(args: ShowArgs) -> Result<Exit> {
    let ws = app::workspace(args.ws.workspace.as_deref(), None)?;
    if args.raw {
        let files = ws.configs()?.into_iter().find(|c| c.name == args.name);
        let Some(files) = files else {
            return Err(Failure::invalid(format!("no config `{}` in {}", args.name, ws.config_dir().display())));
        };
        let mut paths = files.base.clone();
        if let Some(env) = ws.env() {
            paths.extend(files.overlays.get(env).into_iter().flatten().cloned());
        }
        let many = paths.len() > 1;
        let mut out = anstream::stdout().lock();
        for (i, path) in paths.iter().enumerate() {
            if many {
                let gap = if i == 0 { "" } else { "\n" };
                let _ = writeln!(out, "{gap}==> {} <==", output::display_path(path));
            }
            let bytes = std::fs::read(path).map_err(|e| Failure::runtime(format!("{}: {e}", path.display())))?;
            let _ = out.write_all(&bytes);
        }
        let _ = out.flush();
        return Ok(Exit::Ok);
    }
    let loaded = match ws.load(&args.name) {
        Ok(loaded) => loaded,
        Err(relive::Error::Config { error, .. }) => {
            output::error(&output::config_error(Some(&args.name), &error));
            return Ok(Exit::Invalid);
        }
        Err(e) => return Err(e.into()),
    };
    let value = loaded.redacted_value();
    let layers = loaded.layers();
    if args.ws.json {
        let layers: serde_json::Map<String, Value> = layers
            .iter()
            .map(|l| {
                let origin = output::display_path(&l.origin);
                (l.pointer.clone(), json!({"origin": origin, "line": l.line, "encrypted": l.encrypted}))
            })
            .collect();
        print(&format!("{}\n", json!({"config": args.name, "value": value, "layers": layers})));
        return Ok(Exit::Ok);
    }
    print(&format!("{}\n", serde_json::to_string_pretty(&value).unwrap_or_default()));
    // Where each value came from, on stderr so stdout stays the value.
    for layer in &layers {
        let at = match layer.line {
            Some(line) => format!("{}:{line}", output::display_path(&layer.origin)),
            None => output::display_path(&layer.origin),
        };
        let how = if layer.encrypted { " (encrypted)" } else { "" };
        output::note(&format!("{}  ← {at}{how}", output::escape_controls(&layer.pointer)));
    }
    Ok(Exit::Ok)
}

/// `relive show NAME [VERSION]`: without a version, the value the config
/// has now; with one, that version's merged value with secrets redacted,
/// or with `--raw` its documents exactly as they were.
pub async fn show(args: ShowArgs) -> Result<Exit> {
    let Some(n) = args.number else { return show_current(args).await };
    let (ws, history) = open(&args.ws, &args.name)?;
    let version = history.version(n)?;
    if args.raw {
        let many = version.documents.len() > 1;
        let mut out = anstream::stdout().lock();
        for (i, doc) in version.documents.iter().enumerate() {
            if many {
                let gap = if i == 0 { "" } else { "\n" };
                let _ = writeln!(out, "{gap}==> {} <==", output::display_path(doc.origin()));
            }
            let _ = out.write_all(doc.bytes());
        }
        let _ = out.flush();
        return Ok(Exit::Ok);
    }
    // The workspace's patterns: the defaults and those of relive.toml.
    let redactor = ws.redactor()?;
    let value = version.redacted_value(&redactor);
    if args.ws.json {
        let mut record = entry_json(&version.entry);
        record["value"] = value.unwrap_or(Value::Null);
        print(&format!("{record}\n"));
        return Ok(Exit::Ok);
    }
    let files: Vec<String> = version.entry.files().map(output::display_path).collect();
    output::note(&format!(
        "config `{}` version {n} ({}, {}) from {}",
        args.name,
        match version.entry.status {
            VersionStatus::Applied => "applied",
            VersionStatus::Rejected => "rejected",
        },
        local_time(version.entry.time),
        files.join(", ")
    ));
    match value {
        Some(value) => print(&format!("{}\n", serde_json::to_string_pretty(&value).unwrap_or_default())),
        None => {
            if let Some(error) = &version.entry.error {
                output::note(&format!("it does not parse: {}", output::config_error(Some(&args.name), error)));
            }
            output::note("show it with --raw");
        }
    }
    Ok(Exit::Ok)
}

/// `relive diff NAME A [B]`.
pub async fn diff(args: DiffArgs) -> Result<Exit> {
    let (ws, history) = open(&args.ws, &args.name)?;
    let b = match args.b {
        Some(b) => b,
        None => history
            .latest_applied()
            .map(|e| e.version)
            .ok_or_else(|| Failure::invalid(format!("config `{}` has no applied version", args.name)))?,
    };
    let diff = ws.diff(&args.name, args.a, b)?;
    if args.ws.json {
        let entries: Vec<Value> = diff.entries().iter().map(diff_entry_json).collect();
        print(&format!("{}\n", Value::Array(entries)));
        return Ok(Exit::Ok);
    }
    let mut text = String::new();
    for entry in diff.entries() {
        text.push_str(&match entry {
            DiffEntry::Added { path, value } => format!("{ADDED}+ {path}: {value}{ADDED:#}\n"),
            DiffEntry::Removed { path, value } => format!("{REMOVED}- {path}: {value}{REMOVED:#}\n"),
            DiffEntry::Changed { path, old, new } => format!("{CHANGED}~ {path}: {old} -> {new}{CHANGED:#}\n"),
        });
    }
    print(&text);
    if diff.is_empty() {
        output::note(&format!("versions {} and {b} have the same value", args.a));
    }
    Ok(Exit::Ok)
}

/// What [`previous`] needs of a version.
#[derive(Debug, Clone, Copy)]
struct Step<'a> {
    version: u64,
    applied: bool,
    published: bool,
    hash: &'a str,
    rollback_of: Option<u64>,
}

impl<'a> From<&'a HistoryEntry> for Step<'a> {
    fn from(e: &'a HistoryEntry) -> Step<'a> {
        Step {
            version: e.version,
            applied: e.status == VersionStatus::Applied,
            published: e.published,
            hash: &e.hash,
            rollback_of: e.rollback_of,
        }
    }
}

/// The version `rollback` goes back to by default, undoing the newest
/// change: the newest applied version, older than the live one, with other
/// content. A live version that is itself a rollback to `k` counts as `k`,
/// so that rolling back again steps further back instead of undoing the
/// rollback.
fn previous(steps: &[Step<'_>]) -> Option<u64> {
    let live = steps.iter().rev().find(|s| s.applied)?;
    let mut bound = live.version;
    let mut at = live;
    // Follow a chain of rollbacks; each link points further back, and the
    // count bounds it anyway.
    for _ in 0..steps.len() {
        let Some(k) = at.rollback_of.filter(|&k| k < at.version) else { break };
        bound = k;
        match steps.iter().find(|s| s.version == k) {
            Some(target) => at = target,
            None => break,
        }
    }
    steps
        .iter()
        .rev()
        .find(|s| s.version < bound && s.applied && !s.published && s.hash != live.hash)
        .map(|s| s.version)
}

/// `relive rollback NAME [--to N]`, `relive rollback --change-set ID` and
/// `relive rollback --to-change-set ID`.
pub async fn rollback(args: RollbackArgs) -> Result<Exit> {
    if let Some(id) = args.change_set.or(args.to_change_set) {
        return rollback_change_set(&args, id).await;
    }
    let name = args.name.as_deref().expect("clap requires NAME without --change-set");
    let (ws, history) = open(&args.ws, name)?;
    let n = match args.to {
        Some(n) => n,
        None => previous(&history.entries().iter().map(Step::from).collect::<Vec<_>>())
            .ok_or_else(|| Failure::invalid(format!("config `{name}` has no earlier applied version to go back to")))?,
    };
    let version = history.version(n)?;
    let unchanged =
        version.documents.iter().all(|d| std::fs::read(d.origin()).is_ok_and(|bytes| bytes[..] == d.bytes()[..]));
    ws.rollback(name, n).await?;
    let files: Vec<String> = version.documents.iter().map(|d| output::display_path(d.origin())).collect();
    if unchanged {
        output::note(&format!("{} already has the content of version {n}; nothing written", files.join(", ")));
    } else {
        output::note(&format!(
            "config `{}` rolled back to version {n}: wrote {}; a running watcher validates and applies it, \
             and records it as a rollback to {n}",
            name,
            files.join(", ")
        ));
    }
    Ok(Exit::Ok)
}

/// `relive rollback --change-set ID` (undo the set: each of its configs
/// back to its version before it) or `--to-change-set ID` (each back to
/// its version in it), as one change set; then, if a watcher records the
/// history, its verdict.
async fn rollback_change_set(args: &RollbackArgs, id: relive::ChangeSetId) -> Result<Exit> {
    let ws = app::workspace(args.ws.workspace.as_deref(), None)?;
    // Its configs, whose versions stamped after `since` are the
    // rollback's.
    let set = ws.change_sets(usize::MAX)?.into_iter().find(|s| s.id == Some(id));
    let configs = set.map(|s| s.configs().map(str::to_string).collect()).unwrap_or_default();
    let since = std::time::SystemTime::now();
    let undo = args.change_set.is_some();
    let targets = if undo { ws.rollback_change_set(id).await? } else { ws.restore_change_set(id).await? };
    let list: Vec<String> = targets.iter().map(|(name, n)| format!("`{name}` to version {n}")).collect();
    let how = if undo { format!("change set {id} undone") } else { format!("back to change set {id}") };
    output::note(&format!("{how}: {}, written as one change", list.join(", ")));
    crate::apply::verdict(&ws, &configs, since, std::time::Duration::from_secs(10)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(version: u64, applied: bool, hash: &'static str, rollback_of: Option<u64>) -> Step<'static> {
        Step { version, applied, published: false, hash, rollback_of }
    }

    #[test]
    fn previous_undoes_the_newest_change_and_steps_back() {
        assert_eq!(previous(&[]), None);
        let a = [step(1, true, "a", None)];
        assert_eq!(previous(&a), None, "nothing before the first version");
        // 1 a, 2 b, 3 rejected, 4 c: back to 2.
        let mut h = vec![step(1, true, "a", None), step(2, true, "b", None), step(3, false, "x", None)];
        h.push(step(4, true, "c", None));
        assert_eq!(previous(&h), Some(2));
        // After rolling back to 2 (version 5), again goes to 1, not to 4.
        h.push(step(5, true, "b", Some(2)));
        assert_eq!(previous(&h), Some(1));
        // After rolling back to 1 (version 6, through 5 → 2 → 1): nothing left.
        h.push(step(6, true, "a", Some(1)));
        assert_eq!(previous(&h), None);
    }

    #[test]
    fn previous_skips_versions_with_the_live_content() {
        let h =
            [step(1, true, "a", None), step(2, true, "b", None), step(3, true, "a", None), step(4, true, "a", None)];
        assert_eq!(previous(&h), Some(2));
    }
}
