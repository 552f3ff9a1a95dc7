//! `relive fleet`: the operator's commands over `relive_fleet::Fleet`, and
//! the sidecar agent.
//!
//! The library does the work (compare-and-set, canaries, status); this
//! module checks files the way `relive check` does (file:line:col, JSON
//! Schemas located at their key), prints, and maps errors to exit codes: a
//! conflict or a canary in progress is 4, an invalid document 1, anything
//! that went wrong with etcd 3.
//!
//! Text from etcd (instance ids, hosts, reasons, who started a canary) is
//! anyone's who can write to the store: it goes through
//! [`output::escape_controls`] before it is printed as text, and JSON goes
//! through [`output::escape_json_controls`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anstyle::{AnsiColor, Style};
use relive_fleet::{
    Action, Canaries, Draft, Drive, Expect, Fleet, FleetAgentBuilder, FleetBuilder, FleetSourceBuilder, FleetStatus,
    GateOutcome, Phase, Plan, Rollout, SourceEvent, SyncState,
};

use crate::cli::{
    EtcdAccessArgs, FleetAgentArgs, FleetArgs, FleetCommand, FleetPushArgs, FleetRolesArgs, FleetRollbackArgs,
    FleetRolloutCommand, FleetShowArgs, FleetStatusArgs, FleetVersionsArgs, RolloutArgs, WaitArgs,
};
use crate::exit::{Exit, Failure, Result};
use crate::output::{self, escape_controls as esc};
use crate::schema::Schema;

const GOOD: Style = AnsiColor::Green.on_default();
const WARN: Style = AnsiColor::Yellow.on_default();
const BAD: Style = AnsiColor::Red.on_default().bold();
const BOLD: Style = Style::new().bold();
const DIM: Style = Style::new().dimmed();

/// Runs a `relive fleet` command.
pub async fn run(args: FleetArgs) -> Result<Exit> {
    let prefix = args.prefix.clone().ok_or_else(|| Failure {
        exit: Exit::Usage,
        message: "which application? give --prefix (or set RELIVE_FLEET_PREFIX), e.g. --prefix shop".into(),
    })?;
    let timeout = Duration::from_millis(args.timeout_ms);
    let access = Access::from_args(&args.access)?;
    if let FleetCommand::Agent(agent) = args.command {
        return run_agent(&args.endpoints, &prefix, timeout, &access, agent).await;
    }
    let fleet = connect(&args.endpoints, &prefix, timeout, &access).await?;
    match args.command {
        FleetCommand::Push(push) => run_push(&fleet, *push).await,
        FleetCommand::Promote(a) => {
            let promoted = fleet.promote(&a.name).await.map_err(failure)?;
            println!(
                "promoted {}: version {} (the canary's document, was canary version {})",
                a.name, promoted.version, promoted.canary_version
            );
            wait_if_asked(&fleet, &a.name, promoted.version, &a.wait).await
        }
        FleetCommand::Abort(a) => {
            let aborted = fleet.abort(&a.name).await.map_err(failure)?;
            println!(
                "aborted the canary of {} (version {}): its instances return to version {}",
                a.name, aborted.canary_version, aborted.version
            );
            Ok(Exit::Ok)
        }
        FleetCommand::Rollback(rollback) => run_rollback(&fleet, rollback).await,
        FleetCommand::Versions(versions) => run_versions(&fleet, versions).await,
        FleetCommand::Show(show) => run_show(&fleet, show).await,
        FleetCommand::Status(status) => run_status(&fleet, status).await,
        FleetCommand::Roles(roles) => run_roles(&fleet, roles).await,
        FleetCommand::Rollout(command) => run_rollout(&fleet, command).await,
        FleetCommand::Agent(_) => unreachable!("handled above"),
    }
}

async fn connect(endpoints: &[String], prefix: &str, timeout: Duration, access: &Access) -> Result<Fleet> {
    let (first, rest) = endpoints.split_first().ok_or_else(|| Failure::runtime("no etcd endpoint given"))?;
    let mut builder = FleetBuilder::new(first.clone(), prefix).map_err(failure)?.request_timeout(timeout);
    for endpoint in rest {
        builder = builder.endpoint(endpoint.clone());
    }
    if let Some(ca) = &access.cacert {
        builder = builder.ca_certificate(ca);
    }
    if let Some((cert, key)) = &access.identity {
        builder = builder.client_certificate(cert, key);
    }
    if let Some((user, password)) = &access.user {
        builder = builder.user(user, password);
    }
    builder.insecure_plaintext(access.insecure_plaintext).connect().await.map_err(failure)
}

/// The TLS files and the etcd user of `--cacert`, `--cert`/`--key`,
/// `--user` with `--password-file` or RELIVE_ETCD_PASSWORD.
struct Access {
    cacert: Option<PathBuf>,
    identity: Option<(PathBuf, PathBuf)>,
    user: Option<(String, String)>,
    insecure_plaintext: bool,
}

impl Access {
    fn from_args(args: &EtcdAccessArgs) -> Result<Access> {
        let user = match (&args.user, &args.password_file) {
            (None, None) => None,
            (None, Some(_)) => return Err(usage("--password-file without --user: whose password is it?")),
            (Some(user), Some(file)) => Some((user.clone(), read_password(file)?)),
            (Some(user), None) => match std::env::var("RELIVE_ETCD_PASSWORD") {
                Ok(password) if !password.is_empty() => Some((user.clone(), password)),
                _ => {
                    return Err(usage(format!(
                        "etcd user {user} needs a password: give --password-file FILE or set RELIVE_ETCD_PASSWORD \
                         (never an argument: others can read a process's arguments)"
                    )));
                }
            },
        };
        Ok(Access {
            cacert: args.cacert.clone(),
            identity: args.cert.clone().zip(args.key.clone()),
            user,
            insecure_plaintext: args.insecure_plaintext,
        })
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure { exit: Exit::Usage, message: message.into() }
}

/// The first line of a password file.
fn read_password(file: &Path) -> Result<String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| usage(format!("cannot read the password file {}: {e}", file.display())))?;
    let password = text.lines().next().unwrap_or("").to_string();
    if password.is_empty() {
        return Err(usage(format!("the password file {} is empty", file.display())));
    }
    Ok(password)
}

/// The exit code an error of the fleet library ends a command with.
fn failure(error: relive_fleet::Error) -> Failure {
    use relive_fleet::Error as E;
    let exit = match &error {
        E::Conflict { .. }
        | E::CanaryInProgress { .. }
        | E::CanaryChanged { .. }
        | E::CanaryStale { .. }
        | E::RolloutInProgress { .. } => Exit::Conflict,
        // The document, or the version, canary or instances named, is wrong.
        E::Invalid(_)
        | E::NotAVersion { .. }
        | E::Compacted { .. }
        | E::FutureRevision { .. }
        | E::NoCanary { .. }
        | E::NoConfig { .. }
        | E::CanaryUnchanged { .. }
        | E::NoLiveInstances { .. }
        | E::UnknownInstances { .. }
        | E::NoRollout { .. }
        | E::UnknownFormat { .. } => Exit::Invalid,
        E::InvalidName(_)
        | E::InvalidPercent { .. }
        | E::Certificate { .. }
        | E::NotHttps { .. }
        | E::InvalidRollout { .. }
        | E::Plaintext { .. } => Exit::Usage,
        _ => Exit::Runtime,
    };
    let message = match &error {
        E::Invalid(e) => output::config_error(None, e),
        E::Etcd { message, .. } if message.contains("permission denied") => {
            format!(
                "{error}; the etcd user (--user, or the common name of --cert) lacks a role for this (relive fleet roles)"
            )
        }
        E::Etcd { message, .. } if message.contains("certificate") || message.contains("credentials") => {
            format!("{error} (--cacert, --cert, --key, --user, --password-file)")
        }
        E::Etcd { .. } => format!("{error}; is etcd running there? (--endpoints or RELIVE_ETCD_ENDPOINTS)"),
        E::Plaintext { .. } => format!("{error} (--insecure-plaintext)"),
        _ => with_hint(&error).unwrap_or_else(|| error.to_string()),
    };
    // Errors quote what they found in etcd.
    Failure { exit, message: esc(&message).into_owned() }
}

/// The message of an error whose remedy is a `relive fleet` command or
/// flag: the library says what happened in its own terms, the CLI says
/// what to type.
fn with_hint(error: &relive_fleet::Error) -> Option<String> {
    use relive_fleet::Error as E;
    let is_at = |version: Option<u64>| match version {
        Some(0) | None => "does not exist".to_string(),
        Some(v) => format!("is at version {v}"),
    };
    Some(match error {
        E::Conflict { config, key, current, expected } => format!(
            "conflict: {key} {}, but this push expected {}; nothing was written: someone else changed it \
             since it was read; review the current value (`relive fleet versions {config}`), then push again \
             with --expect {}",
            is_at(*current),
            if *expected == 0 { "it not to exist".to_string() } else { format!("version {expected}") },
            current.unwrap_or(0)
        ),
        E::CanaryInProgress { config, version, instances } => format!(
            "a canary of {config} is in progress (version {version}, on {}): promote it (`relive fleet promote \
             {config}`) or abort it (`relive fleet abort {config}`) first",
            instances.join(", ")
        ),
        E::CanaryStale { config, base, now } => format!(
            "{config} changed since its canary started (its key {}, the canary was based on version {base}): \
             abort the canary (`relive fleet abort {config}`) and start it again",
            is_at(*now)
        ),
        E::CanaryChanged { config } => format!(
            "the canary of {config} changed while this command ran; nothing was written: check `relive fleet \
             status {config}` and try again"
        ),
        E::NotAVersion { config, .. } => format!("{error} (`relive fleet versions {config}` lists them)"),
        E::Compacted { config, version, compacted } => format!(
            "version {version} of {config} is gone: etcd compacted its history up to revision {compacted} \
             (its --auto-compaction-mode and --auto-compaction-retention decide how long versions are kept); \
             pick a newer one from `relive fleet versions {config}`"
        ),
        E::NoConfig { config, key, .. } => format!(
            "{config} does not exist (no key {key}): a canary needs a version to compare with: push a first \
             version without --canary"
        ),
        _ => return None,
    })
}

/// The version a write must find. `--expect N` is exact; without it a
/// config that does not exist yet must still not exist, and one that does
/// needs `--force`: reading the version just before writing would let two
/// operators overwrite each other without a word.
async fn expect(fleet: &Fleet, name: &str, rev: Option<u64>, force: bool) -> Result<Expect> {
    match (rev, force) {
        (Some(rev), _) => Ok(Expect::Version(rev)),
        (None, true) => Ok(Expect::Current),
        (None, false) => match fleet.versions(name, 1).await.map_err(failure)?.versions.first() {
            None => Ok(Expect::Version(0)),
            Some(current) => Err(Failure {
                exit: Exit::Usage,
                message: format!(
                    "{name} exists (version {v}): review it (`relive fleet show {name}`), then write with \
                     --expect {v}, so that a change someone made meanwhile is not overwritten; or --force \
                     to replace whatever is current",
                    v = current.version
                ),
            }),
        },
    }
}

/// `relive fleet push NAME FILE`.
async fn run_push(fleet: &Fleet, args: FleetPushArgs) -> Result<Exit> {
    if let Some(dir) = &args.set {
        return run_push_set(fleet, dir, &args).await;
    }
    let (Some(name), Some(file)) = (args.name.clone(), args.file.clone()) else {
        return Err(Failure { exit: Exit::Usage, message: "give NAME FILE, or --set DIR".into() });
    };
    let draft = match checked_draft(&file, args.schema.as_deref())? {
        Ok(draft) => draft,
        Err(errors) => return invalid(&errors),
    };
    let name = name.as_str();
    if let Some(waves) = &args.rollout.waves {
        let expect = expect(fleet, name, args.expect, args.force).await?;
        return start_rollout(fleet, name, &draft, expect, waves, &args.rollout).await;
    }
    let canaries = match (args.canary, args.canary_instances) {
        (Some(percent), _) => Some(Canaries::Percent(percent)),
        (None, Some(ids)) => Some(Canaries::Instances(ids)),
        (None, None) => None,
    };
    match canaries {
        None => {
            let expect = expect(fleet, name, args.expect, args.force).await?;
            let pushed = fleet.push(name, &draft, expect).await.map_err(failure)?;
            print_pushed(&pushed);
            wait_if_asked(fleet, name, pushed.version, &args.wait).await
        }
        Some(canaries) => {
            let expect = expect(fleet, name, args.expect, args.force).await?;
            let canary = fleet.canary(name, &draft, expect, &canaries).await.map_err(failure)?;
            println!(
                "canary {}: version {} on {} (the others stay at version {}); then `relive fleet promote {}` or `relive fleet abort {}`",
                name,
                canary.version,
                esc(&canary.instances.join(", ")),
                canary.base_version,
                name,
                name
            );
            wait_if_asked(fleet, name, canary.version, &args.wait).await
        }
    }
}

/// `relive fleet push --set DIR`: every config file under DIR, checked,
/// then pushed as one change set.
async fn run_push_set(fleet: &Fleet, dir: &Path, args: &FleetPushArgs) -> Result<Exit> {
    let files = set_files(dir)?;
    if files.is_empty() {
        return Err(Failure::runtime(format!("{}: no config file (.toml, .yaml, .yml, .json) in it", dir.display())));
    }
    let mut drafts = Vec::new();
    let mut errors = Vec::new();
    for (name, file) in &files {
        match checked_draft(file, None)? {
            Ok(draft) => drafts.push((name.clone(), draft)),
            Err(e) => errors.extend(e),
        }
    }
    if !errors.is_empty() {
        return invalid(&errors);
    }
    let mut each = std::collections::BTreeMap::new();
    for pair in &args.expect_each {
        let parsed = pair.split_once('=').and_then(|(name, rev)| Some((name.to_string(), rev.parse::<u64>().ok()?)));
        let (name, rev) = parsed.ok_or_else(|| Failure {
            exit: Exit::Usage,
            message: format!("--expect-each {}: give NAME=REV (`server=41`)", esc(pair)),
        })?;
        if !files.iter().any(|(n, _)| *n == name) {
            return Err(Failure {
                exit: Exit::Usage,
                message: format!("--expect-each {}: {} is not in {}", esc(pair), esc(&name), dir.display()),
            });
        }
        each.insert(name, rev);
    }
    let mut set = Vec::new();
    for (name, draft) in &drafts {
        let rev = each.get(name).copied().or(args.expect);
        set.push((name.as_str(), draft, expect(fleet, name, rev, args.force).await?));
    }
    let pushed = fleet.push_set(&set).await.map_err(failure)?;
    match pushed.revision {
        Some(revision) => println!("pushed a change set of {} configs: version {revision}", pushed.configs.len()),
        None => println!("unchanged: every config of the set is already at its version"),
    }
    for config in &pushed.configs {
        print_pushed(config);
    }
    let mut exit = Exit::Ok;
    if let Some(revision) = pushed.revision {
        for config in pushed.configs.iter().filter(|c| !c.unchanged) {
            let waited = wait_if_asked(fleet, &config.config, revision, &args.wait).await?;
            if waited != Exit::Ok && exit == Exit::Ok {
                exit = waited;
            }
        }
    }
    Ok(exit)
}

/// The config files under `dir`, recursively, with their config names
/// (the path under `dir` without the extension), sorted by name: the
/// workspace's rule ([`relive::config_path`]), so schemas
/// (`*.schema.json`), hidden files and directories (`.git/`, `.github/`)
/// and files of other kinds are left out. An overlay (`name.env.ext`) is
/// refused: a fleet config is one document.
fn set_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(at) = dirs.pop() {
        let entries = std::fs::read_dir(&at).map_err(|e| Failure::runtime(format!("{}: {e}", at.display())))?;
        for entry in entries {
            let entry = entry.map_err(|e| Failure::runtime(format!("{}: {e}", at.display())))?;
            let path = entry.path();
            if entry.file_type().map_err(|e| Failure::runtime(format!("{}: {e}", path.display())))?.is_dir() {
                // `.git/` and the like hold nothing to push.
                if !entry.file_name().to_string_lossy().starts_with('.') {
                    dirs.push(path);
                }
                continue;
            }
            let Ok(rel) = path.strip_prefix(dir) else { continue };
            let name = match relive::config_path(rel) {
                Some(relive::ConfigPath::Document { name, env: None, .. }) => name,
                Some(relive::ConfigPath::Document { name, env: Some(env), .. }) => {
                    return Err(Failure {
                        exit: Exit::Usage,
                        message: format!(
                            "{}: the {} overlay of config {}; a fleet config is one document (push the merged one)",
                            output::display_path(&path),
                            esc(&env),
                            esc(&name)
                        ),
                    });
                }
                _ => continue,
            };
            if out.iter().any(|(n, _): &(String, PathBuf)| *n == name) {
                return Err(Failure {
                    exit: Exit::Usage,
                    message: format!("{}: two files for config {} (one format per config)", dir.display(), esc(&name)),
                });
            }
            out.push((name, path));
        }
    }
    out.sort();
    Ok(out)
}

/// `file` read and checked (and against its schema, if any): the draft,
/// or the errors to print.
fn checked_draft(file: &Path, schema: Option<&Path>) -> Result<std::result::Result<Draft, Vec<relive::ConfigError>>> {
    let draft = Draft::read(file).map_err(failure)?;
    let checked = match draft.check() {
        Ok(checked) => checked,
        Err(error) => return Ok(Err(vec![error])),
    };
    if let Some(recipients) = checked.sealed() {
        output::note(&format!(
            "{} is encrypted (sops) to {}, and no age key here opens it: its shape is checked, not its values \
             nor its MAC; each instance decrypts it with its own key",
            output::display_path(file),
            recipients.join(", ")
        ));
    } else if let Some(path) = schema_for(file, schema) {
        let schema = Schema::load(&path).map_err(|e| Failure::invalid(output::config_error(None, &e)))?;
        let errors: Vec<_> =
            schema.errors(checked.value()).into_iter().map(|e| checked.error_at(&e.key, e.message)).collect();
        if !errors.is_empty() {
            return Ok(Err(errors));
        }
    }
    Ok(Ok(draft))
}

/// How often `--wait` reads the fleet's status.
const WAIT_POLL: Duration = Duration::from_millis(100);

/// With `--wait`, waits until every instance that is to run `version` of
/// config `name` has answered it: exit 0 if all applied it, 1 if any
/// rejected it (each reason printed), 3 if some had not answered in time.
async fn wait_if_asked(fleet: &Fleet, name: &str, version: u64, wait: &WaitArgs) -> Result<Exit> {
    let Some(secs) = wait.wait else { return Ok(Exit::Ok) };
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let status = fleet.status().await.map_err(failure)?.only(name);
        let targets: Vec<_> = status.instances.iter().filter(|i| i.target == Some(version)).collect();
        if targets.is_empty() {
            output::note(&format!("no instance is to run {name} version {version}: nothing to wait for"));
            return Ok(Exit::Ok);
        }
        let pending: Vec<String> =
            targets.iter().filter(|i| i.state == SyncState::Stale).map(|i| esc(&i.instance).into_owned()).collect();
        if pending.is_empty() {
            let rejected: Vec<_> = targets.iter().filter(|i| i.state == SyncState::Rejected).collect();
            println!(
                "{name} version {version}: {} applied, {} rejected",
                targets.len() - rejected.len(),
                rejected.len()
            );
            for r in &rejected {
                output::error(&format!(
                    "{} rejected {name} version {version}: {}",
                    esc(&r.instance),
                    esc(r.error.as_deref().unwrap_or("no reason given"))
                ));
            }
            return Ok(if rejected.is_empty() { Exit::Ok } else { Exit::Invalid });
        }
        if Instant::now() >= deadline {
            return Err(Failure::runtime(format!(
                "{name} version {version}: {} of {} instances did not answer within {secs} s: {}",
                pending.len(),
                targets.len(),
                pending.join(", ")
            )));
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

fn print_pushed(pushed: &relive_fleet::Pushed) {
    match (pushed.unchanged, pushed.previous) {
        (true, _) => println!("unchanged {}: already version {}", pushed.config, pushed.version),
        (false, Some(previous)) => println!("pushed {}: version {} (was {previous})", pushed.config, pushed.version),
        (false, None) => println!("pushed {}: version {} (new)", pushed.config, pushed.version),
    }
}

/// The schema to check FILE against: the one given, else
/// `<stem>.schema.json` beside it (as `relive check` finds
/// `config/<name>.schema.json`).
fn schema_for(file: &Path, given: Option<&Path>) -> Option<PathBuf> {
    if let Some(given) = given {
        return Some(given.to_path_buf());
    }
    let stem = file.file_name()?.to_str()?.split('.').next()?;
    let beside = file.with_file_name(format!("{stem}.schema.json"));
    beside.is_file().then_some(beside)
}

/// Prints each error as `file:line:col: message` on stdout and ends with 1.
fn invalid(errors: &[relive::ConfigError]) -> Result<Exit> {
    let mut out = anstream::stdout().lock();
    for error in errors {
        let _ = writeln!(out, "{}", output::config_error(None, error));
    }
    let _ = out.flush();
    let n = errors.len();
    output::error(&format!("not published: {n} error{}", if n == 1 { "" } else { "s" }));
    Ok(Exit::Invalid)
}

/// `relive fleet rollback NAME --to REV`.
async fn run_rollback(fleet: &Fleet, args: FleetRollbackArgs) -> Result<Exit> {
    let expect = expect(fleet, &args.name, args.expect, args.force).await?;
    let pushed = fleet.rollback(&args.name, args.to, expect).await.map_err(failure)?;
    if !pushed.unchanged {
        print!("rolled back to {}'s document; ", args.to);
    }
    print_pushed(&pushed);
    wait_if_asked(fleet, &args.name, pushed.version, &args.wait).await
}

/// `relive fleet show NAME [REV]`: the document alone on stdout (pipe it
/// to a file, edit, push with --expect), its version and format on stderr.
async fn run_show(fleet: &Fleet, args: FleetShowArgs) -> Result<Exit> {
    let version = match args.rev {
        Some(rev) => fleet.version(&args.name, rev).await.map_err(failure)?,
        None => fleet.versions(&args.name, 1).await.map_err(failure)?.versions.into_iter().next().ok_or_else(|| {
            Failure::invalid(format!("{} is not published under {}", args.name, fleet.layout().prefix()))
        })?,
    };
    let (format, document) = relive_fleet::layout::decode_config(&version.value)
        .map_err(|e| Failure::runtime(format!("{}: {e}", args.name)))?;
    output::note(&format!("{} version {} ({})", args.name, version.version, format.name()));
    let mut out = std::io::stdout().lock();
    out.write_all(document).and_then(|()| out.flush()).map_err(|e| Failure::runtime(format!("stdout: {e}")))?;
    Ok(Exit::Ok)
}

/// `relive fleet versions NAME`.
async fn run_versions(fleet: &Fleet, args: FleetVersionsArgs) -> Result<Exit> {
    let versions = fleet.versions(&args.name, args.limit).await.map_err(failure)?;
    if args.json {
        let json = serde_json::to_string_pretty(&versions).expect("versions serialize");
        println!("{}", output::escape_json_controls(&json));
        return Ok(Exit::Ok);
    }
    if versions.versions.is_empty() {
        output::note(&format!("{} has no version in etcd", args.name));
        return Ok(Exit::Ok);
    }
    let mut out = anstream::stdout().lock();
    let by = |v: &relive_fleet::ConfigVersion| v.by.clone().unwrap_or_else(|| "-".to_string());
    let width = versions.versions.iter().map(|v| esc(&by(v)).chars().count()).max().unwrap_or(0).max(2);
    let _ = writeln!(out, "{BOLD}{:<10} {:<7} {:>8}  {:<width$}{BOLD:#}", "VERSION", "FORMAT", "BYTES", "BY");
    for (i, v) in versions.versions.iter().enumerate() {
        let current = if i == 0 { format!("  {GOOD}current{GOOD:#}") } else { String::new() };
        let format = esc(v.format.as_deref().unwrap_or("?"));
        let _ = writeln!(out, "{:<10} {format:<7} {:>8}  {:<width$}{current}", v.version, v.size, esc(&by(v)));
    }
    if versions.truncated {
        let _ = writeln!(out, "{DIM}(more: --limit){DIM:#}");
    }
    if let Some(compacted) = versions.compacted {
        let _ = writeln!(out, "{DIM}(older versions compacted: etcd keeps revisions from {compacted} on){DIM:#}");
    }
    let _ = out.flush();
    Ok(Exit::Ok)
}

/// `relive fleet roles`: the prefix's roles, and users for operators and
/// instances.
async fn run_roles(fleet: &Fleet, args: FleetRolesArgs) -> Result<Exit> {
    let password = args.new_password_file.as_deref().map(read_password).transpose()?;
    let mut done = vec![fleet.create_roles().await.map_err(failure)?];
    for user in &args.operator {
        done.push(fleet.add_operator(user, password.as_deref()).await.map_err(failure)?);
    }
    for id in &args.instance {
        done.push(fleet.add_instance(id, password.as_deref()).await.map_err(failure)?);
    }
    let layout = fleet.layout();
    let mut roles: Vec<&String> = done.iter().flat_map(|d| &d.roles).collect();
    roles.sort();
    roles.dedup();
    for role in roles {
        let what = if *role == layout.role_name("operator") {
            "reads and writes configs/, canary/ and rollout/; reads instances/".to_string()
        } else if *role == layout.role_name("instance") {
            "reads canary/ and configs/; writes instances/ (any instance's status)".to_string()
        } else {
            let id = role.strip_prefix(&layout.role_name("instance-")).unwrap_or(role);
            format!("reads canary/ and configs/; writes instances/{id}/ only")
        };
        println!("role {role}: {what}");
    }
    let how = if password.is_some() {
        "with the password given"
    } else {
        "signs in with a client certificate whose common name is its name"
    };
    for d in &done {
        for user in &d.users {
            println!("user {user}: created ({how}), roles {}", d.roles.join(", "));
        }
        for user in &d.existing_users {
            println!("user {user}: exists (password unchanged), granted {}", d.roles.join(", "));
        }
    }
    Ok(Exit::Ok)
}

/// `relive fleet status [NAME]`.
async fn run_status(fleet: &Fleet, args: FleetStatusArgs) -> Result<Exit> {
    let mut status = fleet.status().await.map_err(failure)?;
    if let Some(name) = &args.name {
        status = status.only(name);
    }
    // With --check, any instance that does not run what it should fails.
    let behind = status.instances.iter().filter(|i| matches!(i.state, SyncState::Rejected | SyncState::Stale)).count();
    let exit = if args.check && behind > 0 { Exit::Invalid } else { Exit::Ok };
    if args.json {
        let json = serde_json::to_string_pretty(&status).expect("status serializes");
        println!("{}", output::escape_json_controls(&json));
        return Ok(exit);
    }
    let mut out = anstream::stdout().lock();
    let _ = write!(out, "{}", status_table(&status));
    let _ = out.flush();
    if status.instances.is_empty() {
        output::note(&format!("no instance reports to {} yet", fleet.layout().prefix()));
    }
    // Rollouts in progress, which the table shows only as canaries.
    for r in fleet.rollouts().await.map_err(failure)? {
        if !r.is_finished() && args.name.as_ref().is_none_or(|n| *n == r.config) {
            output::note(&format!(
                "rollout of {}: {} (relive fleet rollout status {})",
                esc(&r.config),
                where_it_is(&r),
                esc(&r.config)
            ));
        }
    }
    if exit != Exit::Ok {
        output::note(&format!("{behind} instance(s) REJECTED or STALE"));
    }
    Ok(exit)
}

/// The status as a table, then the reasons of rejections and the canaries
/// in progress.
fn status_table(status: &FleetStatus) -> String {
    let version = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let rows: Vec<[String; 6]> = status
        .instances
        .iter()
        .map(|r| {
            let target = if r.canary { format!("{} (canary)", version(r.target)) } else { version(r.target) };
            let text = |s: &str| esc(s).into_owned();
            [text(&r.instance), text(&r.host), text(&r.config), version(r.version), target, r.state.as_str().into()]
        })
        .collect();
    let header = ["INSTANCE", "HOST", "CONFIG", "VERSION", "TARGET", "STATE"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: [&str; 6], styled_state: String| {
        let mut text = String::new();
        for (i, cell) in cells.iter().take(5).enumerate() {
            text.push_str(&format!("{cell:<w$}  ", w = widths[i]));
        }
        text.push_str(&styled_state);
        text.push('\n');
        text
    };
    out.push_str(&format!("{BOLD}{}{BOLD:#}", line(header, header[5].to_string()).trim_end()));
    out.push('\n');
    for (row, r) in rows.iter().zip(&status.instances) {
        let style = match r.state {
            SyncState::Synced => GOOD,
            SyncState::Stale | SyncState::Removed => WARN,
            SyncState::Rejected => BAD,
        };
        let cells = [&row[0], &row[1], &row[2], &row[3], &row[4], &row[5]].map(String::as_str);
        out.push_str(&line(cells, format!("{style}{}{style:#}", row[5])));
    }
    for r in status.instances.iter().filter(|r| r.state == SyncState::Rejected) {
        let reason = esc(r.error.as_deref().unwrap_or("no reason given"));
        out.push_str(&format!(
            "{BAD}rejected{BAD:#} {} {} version {}: {reason}\n",
            esc(&r.instance),
            esc(&r.config),
            version(r.target)
        ));
    }
    for c in &status.configs {
        if let (Some(version), Some(by)) = (c.version, &c.by) {
            out.push_str(&format!("{} version {version} by {by}\n", c.config));
        }
        if let Some(canary) = &c.canary {
            out.push_str(&format!(
                "canary {}: version {} on {} (others at {}), by {} at {}\n",
                esc(&c.config),
                canary.version,
                esc(&canary.instances.join(", ")),
                canary.base_version,
                esc(&canary.by),
                esc(&canary.at)
            ));
        }
    }
    out
}

/// `relive fleet agent DIR --instance ID`: until SIGINT or SIGTERM.
async fn run_agent(
    endpoints: &[String],
    prefix: &str,
    timeout: Duration,
    access: &Access,
    args: FleetAgentArgs,
) -> Result<Exit> {
    let (first, rest) = endpoints.split_first().ok_or_else(|| Failure::runtime("no etcd endpoint given"))?;
    let mut source = FleetSourceBuilder::new(first.clone(), prefix)
        .and_then(|s| s.instance(args.instance.clone()))
        .map_err(failure)?
        .request_timeout(timeout)
        .lease_ttl(Duration::from_secs(args.lease_ttl));
    for endpoint in rest {
        source = source.endpoint(endpoint.clone());
    }
    if let Some(host) = args.host {
        source = source.host(host);
    }
    if let Some(ca) = &access.cacert {
        source = source.ca_certificate(ca);
    }
    if let Some((cert, key)) = &access.identity {
        source = source.client_certificate(cert, key);
    }
    if let Some((user, password)) = &access.user {
        source = source.user(user, password);
    }
    source = source.insecure_plaintext(access.insecure_plaintext);
    for (key, value) in &args.label {
        source = source.label(key, value).map_err(failure)?;
    }
    if !args.dir.is_dir() {
        return Err(Failure::runtime(format!("{}: not a directory", args.dir.display())));
    }
    let mut shutdown = crate::platform::Shutdown::listen().map_err(Failure::runtime)?;
    let agent = FleetAgentBuilder::new(source, &args.dir).start().await.map_err(failure)?;
    let mut events = agent.subscribe();
    let boot = match agent.boot() {
        relive_fleet::Boot::Etcd { revision } => format!("from etcd at revision {revision}"),
        relive_fleet::Boot::Cache { configs } => format!("from its cache ({configs} configs): etcd did not answer"),
    };
    output::note(&format!(
        "agent {} writing {} for {} ({}), started {boot}",
        args.instance,
        output::display_path(agent.config_dir()),
        endpoints.join(","),
        prefix
    ));
    loop {
        tokio::select! {
            _ = shutdown.recv() => break,
            event = events.recv() => match event {
                Ok(event) => print_agent_event(&event),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    output::warn(&format!("{n} agent events not shown (output too slow)"));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    return Err(Failure::runtime("the agent stopped: its engine stopped"));
                }
            },
        }
    }
    agent.shutdown().await.map_err(failure)?;
    output::note(&format!("agent {} stopped; its status is withdrawn", args.instance));
    Ok(Exit::Ok)
}

fn print_agent_event(event: &SourceEvent) {
    let text = match event {
        SourceEvent::Applied { config, version } => format!("{GOOD}applied{GOOD:#} {} version {version}", esc(config)),
        SourceEvent::Rejected { config, version, error } => {
            format!("{BAD}rejected{BAD:#} {} version {version}: {}", esc(config), esc(&error.to_string()))
        }
        SourceEvent::Connected { revision } => format!("{DIM}connected at revision {revision}{DIM:#}"),
        SourceEvent::Disconnected { error, retry_in } => {
            format!("{WARN}disconnected{WARN:#}: {}; retrying in {} ms", esc(&error.to_string()), retry_in.as_millis())
        }
        SourceEvent::Resync { compacted } => format!("{WARN}re-reading{WARN:#}: etcd compacted up to {compacted}"),
        _ => return,
    };
    let mut out = anstream::stdout().lock();
    let _ = writeln!(out, "{DIM}{}{DIM:#} {text}", output::clock());
    let _ = out.flush();
}

/// `relive fleet push NAME FILE --waves ...`: starts the rollout, then
/// drives it to its end.
async fn start_rollout(
    fleet: &Fleet,
    name: &str,
    draft: &Draft,
    expect: Expect,
    waves: &str,
    args: &RolloutArgs,
) -> Result<Exit> {
    let waves = relive_fleet::parse_waves(waves).map_err(|e| usage(format!("--waves: {e}")))?;
    let mut plan = Plan::new(waves, args.bake);
    plan.max_rejected = args.max_rejected;
    plan.apply_timeout_ms = u64::try_from(args.apply_timeout.as_millis()).unwrap_or(u64::MAX);
    plan.gate = args.gate.clone();
    plan.gate_timeout_ms = u64::try_from(args.gate_timeout.as_millis()).unwrap_or(u64::MAX);
    let rollout = fleet.start_rollout(name, draft, expect, plan).await.map_err(failure)?;
    let waves: Vec<String> = rollout.plan.waves.iter().map(ToString::to_string).collect();
    println!(
        "rollout of {name} started: waves {}, bake {}, from version {}; if this process stops, \
         `relive fleet rollout resume {name}` carries on from any machine",
        waves.join(","),
        humantime_short(args.bake),
        rollout.base_version
    );
    drive(fleet, name).await
}

/// `relive fleet rollout status|resume|abort NAME`.
async fn run_rollout(fleet: &Fleet, command: FleetRolloutCommand) -> Result<Exit> {
    match command {
        FleetRolloutCommand::Status(args) => {
            let rollout = fleet.rollout(&args.name).await.map_err(failure)?;
            let Some(rollout) = rollout else {
                return Err(Failure::invalid(format!("no rollout of {} was ever started", args.name)));
            };
            if args.json {
                let json = String::from_utf8(rollout.to_json()).expect("JSON is UTF-8");
                println!("{}", output::escape_json_controls(&json));
            } else {
                print!("{}", rollout_text(&rollout));
            }
            Ok(Exit::Ok)
        }
        FleetRolloutCommand::Resume(args) => {
            let rollout = fleet.rollout(&args.name).await.map_err(failure)?;
            match rollout {
                None => Err(Failure::invalid(format!("no rollout of {} was ever started", args.name))),
                Some(r) if r.is_finished() => {
                    print!("{}", rollout_text(&r));
                    Ok(ended(&r))
                }
                Some(r) => {
                    println!("resuming the rollout of {}: {}", args.name, where_it_is(&r));
                    drive(fleet, &args.name).await
                }
            }
        }
        FleetRolloutCommand::Abort(args) => {
            let reason = format!("aborted by {}", fleet.operator());
            let aborted = fleet.abort_rollout(&args.name, &reason).await.map_err(failure)?;
            println!("aborting the rollout of {}: its instances return to version {}", args.name, aborted.base_version);
            let drive = Drive { progress: Some(&mut |r: &Rollout, a: &Action| print_step(r, a)), ..Drive::default() };
            let rollout = fleet.drive_rollout(&args.name, drive).await.map_err(failure)?;
            if rollout.phase == Phase::Aborted {
                println!("aborted the rollout of {}", args.name);
                return Ok(Exit::Ok);
            }
            Ok(ended(&rollout))
        }
    }
}

/// Drives the rollout of `name` to its end, one line per step; exit 0
/// when it is done, 1 when it stopped or was aborted. The gate runs with
/// the time limit the plan in etcd gives it, whichever process drives.
async fn drive(fleet: &Fleet, name: &str) -> Result<Exit> {
    let gate = |rollout: Rollout| {
        let limit = Duration::from_millis(rollout.plan.gate_timeout_ms);
        run_gate(rollout, limit)
    };
    let mut progress = |r: &Rollout, action: &Action| print_step(r, action);
    let drive = Drive { gate: Some(&gate), progress: Some(&mut progress), ..Drive::default() };
    let rollout = fleet.drive_rollout(name, drive).await.map_err(failure)?;
    Ok(ended(&rollout))
}

fn ended(rollout: &Rollout) -> Exit {
    match rollout.phase {
        Phase::Done => Exit::Ok,
        _ => {
            output::error(&format!(
                "the rollout of {} {}: {}",
                rollout.config,
                if rollout.phase == Phase::Aborted { "was aborted" } else { "stopped" },
                esc(rollout.reason.as_deref().unwrap_or("no reason recorded"))
            ));
            Exit::Invalid
        }
    }
}

fn print_step(r: &Rollout, action: &Action) {
    let n = r.plan.waves.len();
    let text = match action {
        Action::StartWave(ids) => format!(
            "wave {}/{n} ({}): {} instance{}: {}",
            r.wave + 1,
            r.plan.waves[r.wave],
            ids.len(),
            if ids.len() == 1 { "" } else { "s" },
            esc(&short_list(ids))
        ),
        Action::Promote => format!(
            "{GOOD}done{GOOD:#}: {} promoted to every instance{}",
            r.config,
            r.version.map_or(String::new(), |v| format!(" as version {v}"))
        ),
        Action::Return(ids) => format!(
            "{BAD}stopped{BAD:#}: {}; {} instance{} return to version {}",
            esc(r.reason.as_deref().unwrap_or("")),
            ids.len(),
            if ids.len() == 1 { "" } else { "s" },
            r.base_version
        ),
        Action::Settle => format!("every instance is back on version {}; the canary is removed", r.base_version),
        Action::None | Action::RunGate => match r.phase {
            Phase::Baking => format!(
                "wave {}/{n}: every instance applied it; baking {}",
                r.wave + 1,
                humantime_short(Duration::from_millis(r.plan.bake_ms))
            ),
            Phase::Stopped | Phase::Aborted => {
                format!("{}: {}", where_it_is(r), esc(r.reason.as_deref().unwrap_or("")))
            }
            _ => return,
        },
    };
    let mut out = anstream::stdout().lock();
    let _ = writeln!(out, "{DIM}{}{DIM:#} {text}", output::clock());
    let _ = out.flush();
}

/// Phase and wave in words.
fn where_it_is(r: &Rollout) -> String {
    let n = r.plan.waves.len();
    let wave = r.plan.waves.get(r.wave).map(ToString::to_string).unwrap_or_default();
    match r.phase {
        Phase::Running if r.instances.len() <= r.wave => format!("wave {}/{n} ({wave}) starting", r.wave + 1),
        Phase::Running => format!("wave {}/{n} ({wave}) applying", r.wave + 1),
        Phase::Baking => format!("wave {}/{n} ({wave}) baking", r.wave + 1),
        Phase::Done => "done".to_string(),
        Phase::Stopped if r.settled => format!("stopped in wave {}/{n}", r.wave + 1),
        Phase::Aborted if r.settled => format!("aborted in wave {}/{n}", r.wave + 1),
        Phase::Stopped => format!("stopped in wave {}/{n}, instances returning", r.wave + 1),
        Phase::Aborted => format!("aborted in wave {}/{n}, instances returning", r.wave + 1),
    }
}

/// The rollout for `relive fleet rollout status`.
fn rollout_text(r: &Rollout) -> String {
    let waves: Vec<String> = r.plan.waves.iter().map(ToString::to_string).collect();
    let mut text = format!("rollout of {}: {}\n", r.config, where_it_is(r));
    text +=
        &format!("  waves      {} (bake {}", waves.join(","), humantime_short(Duration::from_millis(r.plan.bake_ms)));
    text += &format!(", at most {} rejected", r.plan.max_rejected);
    if r.plan.gate.is_some() {
        text += ", with a gate";
    }
    text += ")\n";
    text += &format!("  from       version {}\n", r.base_version);
    if let Some(v) = r.version {
        text += &format!("  promoted   version {v}\n");
    }
    if !r.current().is_empty() {
        text += &format!("  instances  {} ({})\n", r.current().len(), esc(&short_list(r.current())));
    }
    if let Some(reason) = &r.reason {
        text += &format!("  reason     {}\n", esc(reason));
    }
    text += &format!("  started    {} by {}\n", esc(&r.started_at), esc(&r.started_by));
    text += &format!("  updated    {}\n", esc(&r.updated_at));
    text
}

fn short_list(ids: &[String]) -> String {
    match ids.len() {
        0..=8 => ids.join(", "),
        n => format!("{}, and {} more", ids[..8].join(", "), n - 8),
    }
}

fn humantime_short(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".to_string(),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// The most of each of the gate's output streams kept (and shown on this
/// terminal only).
const GATE_OUTPUT: usize = 4096;

/// Runs the plan's gate command with `sh -c`, in a process group of its
/// own, for at most `limit`. Its outcome says only how it ended: its
/// output may hold secrets (a health endpoint's answer, a token in an
/// error), so it is never written to etcd; the first 4 KiB of each stream
/// are shown on this terminal, control characters escaped.
async fn run_gate(rollout: Rollout, limit: Duration) -> GateOutcome {
    let Some(command) = rollout.plan.gate.clone() else { return GateOutcome::Passed };
    let wave = rollout.wave + 1;
    let instances = rollout.current().join(",");
    let config = rollout.config.clone();
    output::note(&format!("wave {wave}: running the gate"));
    let ran = tokio::task::spawn_blocking(move || gate_blocking(&command, &config, wave, &instances, limit)).await;
    let (outcome, stdout, stderr) =
        ran.unwrap_or_else(|e| (GateOutcome::Failed(format!("the gate panicked: {e}")), vec![], vec![]));
    for (stream, bytes) in [("stdout", stdout), ("stderr", stderr)] {
        let text = String::from_utf8_lossy(&bytes);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            output::note(&format!("gate {stream}: {}", esc(line)));
        }
    }
    match &outcome {
        GateOutcome::Passed => output::note(&format!("wave {wave}: the gate passed")),
        GateOutcome::Failed(why) => output::warn(&format!("wave {wave}: the gate failed: {why}")),
    }
    outcome
}

fn gate_blocking(
    command: &str,
    config: &str,
    wave: usize,
    instances: &str,
    limit: Duration,
) -> (GateOutcome, Vec<u8>, Vec<u8>) {
    use std::io::Read;
    let spawned = gate::Tree::spawn(
        gate::shell(command)
            .env("RELIVE_ROLLOUT_CONFIG", config)
            .env("RELIVE_ROLLOUT_WAVE", wave.to_string())
            .env("RELIVE_ROLLOUT_INSTANCES", instances)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    );
    let (mut child, tree) = match spawned {
        Ok(spawned) => spawned,
        Err(e) => return (GateOutcome::Failed(format!("cannot run {}: {e}", gate::SHELL)), vec![], vec![]),
    };
    // Each stream is read to its end (so the gate never blocks on a full
    // pipe) and only its first bytes kept.
    let keep = |stream: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            if let Some(mut stream) = stream {
                let mut buf = [0u8; 8192];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let room = GATE_OUTPUT.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
            kept
        })
    };
    let out = keep(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let err = keep(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let deadline = Instant::now() + limit;
    let outcome = loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break GateOutcome::Passed,
            Ok(Some(status)) => break GateOutcome::Failed(status.to_string()),
            Ok(None) if Instant::now() >= deadline => {
                // The whole tree: the shell may have started others.
                tree.kill(&child);
                let _ = child.wait();
                break GateOutcome::Failed(format!("no exit within {}", humantime_short(limit)));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => break GateOutcome::Failed(format!("cannot wait for the gate: {e}")),
        }
    };
    (outcome, out.join().unwrap_or_default(), err.join().unwrap_or_default())
}

/// How a gate command runs, and how all it started is stopped: a process
/// group on Unix, a job object on Windows.
mod gate {
    use std::io;
    use std::process::{Child, Command};

    /// The shell a gate command runs in.
    #[cfg(unix)]
    pub(super) const SHELL: &str = "sh";
    /// The shell a gate command runs in.
    #[cfg(windows)]
    pub(super) const SHELL: &str = "cmd";

    /// `command` run by the shell.
    pub(super) fn shell(command: &str) -> Command {
        #[cfg(unix)]
        {
            let mut shell = Command::new(SHELL);
            shell.arg("-c").arg(command);
            shell
        }
        #[cfg(windows)]
        {
            use std::os::windows::process::CommandExt;
            let mut shell = Command::new(SHELL);
            shell.arg("/S").arg("/C").raw_arg(format!("\"{command}\""));
            shell
        }
    }

    /// Everything a gate started, to be killed at its deadline.
    pub(super) struct Tree {
        #[cfg(windows)]
        job: crate::platform::Job,
    }

    impl Tree {
        /// Starts `command` in a tree of its own.
        pub(super) fn spawn(command: &mut Command) -> io::Result<(Child, Tree)> {
            #[cfg(unix)]
            {
                use std::os::unix::process::CommandExt;
                Ok((command.process_group(0).spawn()?, Tree {}))
            }
            #[cfg(windows)]
            {
                let job = crate::platform::Job::new()?;
                let child = command.spawn()?;
                if let Err(e) = job.assign(&child) {
                    let mut child = child;
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e);
                }
                Ok((child, Tree { job }))
            }
        }

        /// Kills the gate and everything it started.
        pub(super) fn kill(&self, child: &Child) {
            #[cfg(unix)]
            if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            #[cfg(windows)]
            {
                let _ = child;
                let _ = self.job.terminate();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(dir: &Path, rel: &str) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "a = 1\n").unwrap();
    }

    #[test]
    fn a_set_directory_is_read_by_the_workspace_rule() {
        let dir = tempfile::tempdir().unwrap();
        for rel in ["a.toml", "db/main.yaml", "a.schema.json", "notes.txt", ".github/workflows/ci.yml", ".env.json"] {
            put(dir.path(), rel);
        }
        let names: Vec<String> = set_files(dir.path()).unwrap().into_iter().map(|(name, _)| name).collect();
        assert_eq!(names, ["a", "db/main"]);

        put(dir.path(), "db/main.production.yaml");
        let err = set_files(dir.path()).unwrap_err();
        assert_eq!(err.exit, Exit::Usage);
        assert!(err.message.contains("the production overlay of config db/main"), "{}", err.message);
    }
}
