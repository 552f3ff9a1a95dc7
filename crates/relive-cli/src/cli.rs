//! The command line: every command, option and help text.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The exit codes, as shown at the end of `--help`.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  validation errors found (check), or a command's subject was invalid
  2  usage error (unknown option, bad value)
  3  runtime error (no workspace, I/O, cannot bind, engine stopped, etcd unreachable)
  4  conflict (fleet): the config is not at the expected version, or a canary
     of it is in progress; nothing was written";

/// Hot reload for programs in any language, config checks for CI, and the
/// version history of every config.
#[derive(Debug, Parser)]
#[command(name = "relive", version, propagate_version = true, after_help = EXIT_CODES)]
pub struct Cli {
    /// When to use colours: `auto` uses them on a terminal unless NO_COLOR
    /// is set.
    #[arg(long, global = true, value_enum, default_value_t = Color::Auto, value_name = "WHEN")]
    pub color: Color,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// When to use colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Color {
    /// On a terminal, unless NO_COLOR is set.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// A `relive` command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch a workspace and print every event; optionally run a program
    /// and restart or signal it when its config changes.
    ///
    /// Changes come from inotify on Linux and from the portable backend
    /// (FSEvents, ReadDirectoryChangesW, kqueue through notify) elsewhere;
    /// RELIVE_BACKEND=portable selects the portable backend on Linux too.
    #[command(after_help = EXIT_CODES)]
    Watch(WatchArgs),
    /// Validate every config (syntax, overlays, JSON Schema) and print
    /// errors as `file:line:col: message`.
    #[command(after_help = EXIT_CODES)]
    Check(CheckArgs),
    /// List the recorded versions of a config, or of every config grouped
    /// by change set.
    #[command(after_help = EXIT_CODES)]
    History(HistoryArgs),
    /// Print one recorded version of a config (default: the newest).
    #[command(after_help = EXIT_CODES)]
    Show(ShowArgs),
    /// Show what changed between two versions of a config.
    #[command(after_help = EXIT_CODES)]
    Diff(DiffArgs),
    /// Write an earlier version of a config (or of every config of a change
    /// set) back to its files; a running watcher validates and applies it
    /// like any edit.
    #[command(after_help = EXIT_CODES)]
    Rollback(RollbackArgs),
    /// Install a directory of configs into the workspace's config/ as one
    /// change set: every file is checked first, and nothing is written if
    /// any is wrong.
    #[command(after_help = EXIT_CODES, after_long_help = APPLY_EXAMPLES)]
    Apply(ApplyArgs),
    /// Serve a workspace in the browser: `static/`, pages rendered from
    /// `templates/` with the configs as context, and live reload.
    #[command(after_help = EXIT_CODES)]
    Serve(ServeArgs),
    /// Many instances, one configuration, through etcd: publish with
    /// compare-and-set, canaries, rollback, the fleet's status, and an
    /// agent that writes configs into a workspace.
    #[command(after_help = EXIT_CODES)]
    Fleet(FleetArgs),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
}

/// `relive fleet`.
#[derive(Debug, Args)]
#[command(after_long_help = FLEET_EXAMPLES)]
pub struct FleetArgs {
    /// etcd's client URLs, comma separated.
    #[arg(
        long,
        global = true,
        env = "RELIVE_ETCD_ENDPOINTS",
        value_name = "URLS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// The application's prefix in etcd (`shop` keeps its keys under
    /// /shop/).
    #[arg(long, global = true, env = "RELIVE_FLEET_PREFIX", value_name = "PREFIX")]
    pub prefix: Option<String>,
    /// How long one call to etcd may take, in milliseconds.
    #[arg(long, global = true, value_name = "MS", default_value_t = 5000)]
    pub timeout_ms: u64,
    #[command(flatten)]
    pub access: EtcdAccessArgs,
    /// The fleet command.
    #[command(subcommand)]
    pub command: FleetCommand,
}

/// How `relive fleet` proves who it is to etcd. The password is never an
/// argument: a file, or RELIVE_ETCD_PASSWORD.
#[derive(Debug, Args)]
pub struct EtcdAccessArgs {
    /// The CA certificates (PEM) that sign etcd's server certificate, for
    /// https:// endpoints.
    #[arg(long, global = true, env = "RELIVE_ETCD_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// A client certificate (PEM), for etcd's --client-cert-auth.
    #[arg(long, global = true, env = "RELIVE_ETCD_CERT", value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, global = true, env = "RELIVE_ETCD_KEY", value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// The etcd user; its password comes from --password-file or
    /// RELIVE_ETCD_PASSWORD.
    #[arg(long, global = true, env = "RELIVE_ETCD_USER", value_name = "NAME")]
    pub user: Option<String>,
    /// A file holding the etcd user's password (one line).
    #[arg(long, global = true, env = "RELIVE_ETCD_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Send the password in clear to an http:// endpoint that is not on
    /// this machine (refused otherwise).
    #[arg(long, global = true)]
    pub insecure_plaintext: bool,
}

const FLEET_EXAMPLES: &str = "\
Examples:
  export RELIVE_FLEET_PREFIX=shop RELIVE_ETCD_ENDPOINTS=http://etcd-1:2379,http://etcd-2:2379
  relive fleet push server config/server.toml            check it, then publish it to every instance
  relive fleet push server server.toml --expect 41       only if server is still at version 41
  relive fleet push server server.toml --canary 10%      to 10% of the instances first
  relive fleet push --set deploy/ --expect 52            every config under deploy/ as one change set
  relive fleet status server                             who runs what: SYNCED, STALE, REJECTED
  relive fleet promote server                            the canary for everyone (or: abort)
  relive fleet versions server                           the versions etcd still holds
  relive fleet rollback server --to 38                   version 38's document as a new version
  relive fleet agent /srv/shop --instance web-1          write the configs to /srv/shop/config/
  relive fleet push server server.toml --expect 41 --waves 1,10%,50%,100% --bake 5m
                                                         a progressive rollout (then: relive fleet rollout
                                                         status|resume|abort server, from any machine)

A secured etcd (TLS, client certificates, users):
  export RELIVE_ETCD_ENDPOINTS=https://etcd-1:2379 RELIVE_ETCD_CACERT=ca.crt
  relive fleet roles --cert root.crt --key root.key --operator alice --instance web-1
  export RELIVE_ETCD_CERT=alice.crt RELIVE_ETCD_KEY=alice.key     (or --user, --password-file)

A config's version is its key's etcd revision. Every write compares the
version it read (or --expect) with etcd's in the same transaction; when they
differ nothing is written and relive exits with 4.";

/// A `relive fleet` command.
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Check a config file, then publish it as the next version (to every
    /// instance, or to a canary subset).
    #[command(after_help = EXIT_CODES)]
    Push(Box<FleetPushArgs>),
    /// Publish the canary in progress to every instance.
    #[command(after_help = EXIT_CODES)]
    Promote(FleetPromoteArgs),
    /// End the canary in progress: its instances return to the config's
    /// version.
    #[command(after_help = EXIT_CODES)]
    Abort(FleetNameArgs),
    /// Publish an earlier version's document again, as a new version.
    #[command(after_help = EXIT_CODES)]
    Rollback(FleetRollbackArgs),
    /// List the versions of a config that etcd still holds, newest first.
    #[command(after_help = EXIT_CODES)]
    Versions(FleetVersionsArgs),
    /// Print a version's document (the current one by default), as pushed.
    #[command(after_help = EXIT_CODES)]
    Show(FleetShowArgs),
    /// Each instance's version and state per config: SYNCED, STALE,
    /// REJECTED (with the reason).
    #[command(after_help = EXIT_CODES)]
    Status(FleetStatusArgs),
    /// Create etcd roles for the prefix: an operator role and an instance
    /// role, and users for operators and instances.
    #[command(after_help = EXIT_CODES)]
    Roles(FleetRolesArgs),
    /// Run an instance that writes every version it accepts to
    /// DIR/config/<name>.<ext> (atomically), until SIGINT or SIGTERM.
    #[command(after_help = EXIT_CODES)]
    Agent(FleetAgentArgs),
    /// A progressive rollout (`push --waves`): its status, or resume or
    /// abort it from any machine.
    #[command(subcommand)]
    Rollout(FleetRolloutCommand),
}

/// `relive fleet rollout`.
#[derive(Debug, Subcommand)]
pub enum FleetRolloutCommand {
    /// Where the rollout of a config is: its wave, instances and phase.
    #[command(after_help = EXIT_CODES)]
    Status(FleetRolloutStatusArgs),
    /// Drive the rollout of a config to its end, from the state in etcd
    /// (its driver died, or is on another machine). Exit 1 if it stops.
    #[command(after_help = EXIT_CODES)]
    Resume(FleetNameArgs),
    /// Abort the rollout of a config: its instances return to the stable
    /// version, and say so in their status.
    #[command(after_help = EXIT_CODES)]
    Abort(FleetNameArgs),
}

/// `relive fleet rollout status`.
#[derive(Debug, Args)]
pub struct FleetRolloutStatusArgs {
    /// The config's name.
    pub name: String,
    /// Print the rollout's record as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `relive fleet push --waves`: a progressive rollout.
#[derive(Debug, Args)]
pub struct RolloutArgs {
    /// Roll out in waves, each a canary of a growing set, the last
    /// promoted: instance counts, percentages or labels, comma separated
    /// (`1,10%,50%,100%`, `zone=a,zone=b,100%`).
    #[arg(long, value_name = "WAVES", conflicts_with_all = ["canary", "canary_instances", "wait"])]
    pub waves: Option<String>,
    /// How long each wave runs once all its instances applied the version,
    /// before the next (`30s`, `5m`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5m", requires = "waves")]
    pub bake: Duration,
    /// Stop when more than N instances reject the version.
    #[arg(long, value_name = "N", default_value_t = 0, requires = "waves")]
    pub max_rejected: usize,
    /// A shell command run after each bake (`curl -fsS http://.../healthz`):
    /// a non-zero exit, or no exit within --gate-timeout, stops the rollout.
    /// It is stored in etcd so that any machine can resume: keep secrets
    /// out of it.
    #[arg(long, value_name = "CMD", requires = "waves")]
    pub gate: Option<String>,
    /// How long the gate may run.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "60s", requires = "gate")]
    pub gate_timeout: Duration,
    /// How long a wave's instances have to apply the version.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5m", requires = "waves")]
    pub apply_timeout: Duration,
}

/// `relive fleet push`.
#[derive(Debug, Args)]
pub struct FleetPushArgs {
    /// The config's name in the fleet (`server`, `db/main`).
    #[arg(required_unless_present = "set")]
    pub name: Option<String>,
    /// The file to publish; its extension gives the format (.toml, .yaml,
    /// .yml, .json).
    #[arg(required_unless_present = "set")]
    pub file: Option<PathBuf>,
    /// Publish every config file under DIR as one change set: one etcd
    /// transaction, one version for all of them, applied by each instance
    /// whole or not at all. A config's name is its path under DIR without
    /// the extension (`db/main.toml` is `db/main`); `*.schema.json` files
    /// are the schemas the files beside them are checked against.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["name", "file", "schema", "canary", "canary_instances", "waves"])]
    pub set: Option<PathBuf>,
    /// Publish only if the config is still at this version, the one you
    /// reviewed (`relive fleet show NAME`); 0: only if it does not exist.
    /// Required once the config exists, unless --force. With --set: every
    /// config of the set (a set pushed before is at one version).
    #[arg(long, value_name = "REV")]
    pub expect: Option<u64>,
    /// With --set: the versions of configs that are not at --expect's, as
    /// `NAME=REV` (comma separated or repeated).
    #[arg(long, value_name = "NAME=REV", value_delimiter = ',', requires = "set")]
    pub expect_each: Vec<String>,
    /// Replace whatever version is current, without --expect.
    #[arg(long, conflicts_with = "expect")]
    pub force: bool,
    /// Check the document against this JSON Schema first. Default:
    /// `<stem>.schema.json` next to FILE, if there is one.
    #[arg(long, value_name = "FILE")]
    pub schema: Option<PathBuf>,
    /// Publish to this percentage of the instances serving the config
    /// (`10%` or `10`; at least one), until promote or abort.
    #[arg(long, value_name = "N%", value_parser = parse_percent, conflicts_with = "canary_instances")]
    pub canary: Option<u8>,
    /// Publish to these instances (comma separated ids), until promote or
    /// abort.
    #[arg(long, value_name = "IDS", value_delimiter = ',')]
    pub canary_instances: Option<Vec<String>>,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[command(flatten)]
    pub rollout: RolloutArgs,
}

/// A fleet command about one config.
#[derive(Debug, Args)]
pub struct FleetNameArgs {
    /// The config's name.
    pub name: String,
}

/// `relive fleet rollback`.
#[derive(Debug, Args)]
pub struct FleetRollbackArgs {
    /// The config's name.
    pub name: String,
    /// The version to publish again (from `relive fleet versions NAME`).
    #[arg(long, value_name = "REV")]
    pub to: u64,
    /// Only if the config is at this version now. Required unless --force.
    #[arg(long, value_name = "REV")]
    pub expect: Option<u64>,
    /// Replace whatever version is current, without --expect.
    #[arg(long, conflicts_with = "expect")]
    pub force: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `relive fleet promote`.
#[derive(Debug, Args)]
pub struct FleetPromoteArgs {
    /// The config's name.
    pub name: String,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `--wait`: stay until the instances answered the new version.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Then wait until every instance that is to run the new version has
    /// applied or rejected it, at most SECS seconds (60 without a value).
    /// Exit 1 if any rejected it (with the reasons), 3 if some did not
    /// answer in time.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "60")]
    pub wait: Option<u64>,
}

/// `relive fleet versions`.
#[derive(Debug, Args)]
pub struct FleetVersionsArgs {
    /// The config's name.
    pub name: String,
    /// At most this many versions.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub limit: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `relive fleet show`.
#[derive(Debug, Args)]
pub struct FleetShowArgs {
    /// The config's name.
    pub name: String,
    /// The version; default: the current one.
    #[arg(value_name = "REV")]
    pub rev: Option<u64>,
}

/// `relive fleet status`.
#[derive(Debug, Args)]
pub struct FleetStatusArgs {
    /// Only this config.
    pub name: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Exit with 1 when any instance is REJECTED or STALE, for deploy
    /// scripts (after printing the status as usual).
    #[arg(long)]
    pub check: bool,
}

/// `relive fleet roles`.
#[derive(Debug, Args)]
pub struct FleetRolesArgs {
    /// Also create user USER with the operator role (comma separated).
    #[arg(long, value_name = "USER", value_delimiter = ',')]
    pub operator: Vec<String>,
    /// Also create the role and user PREFIX-instance-ID, which may write
    /// only instance ID's status (comma separated).
    #[arg(long, value_name = "ID", value_delimiter = ',')]
    pub instance: Vec<String>,
    /// The password of the users created (one line). Without it they sign
    /// in with a client certificate whose common name is their name.
    #[arg(long, value_name = "FILE")]
    pub new_password_file: Option<PathBuf>,
}

/// `relive fleet agent`.
#[derive(Debug, Args)]
pub struct FleetAgentArgs {
    /// The workspace to write into: configs go to DIR/config/, the agent's
    /// own state (cache) to DIR/data/fleet-agent/.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// The instance id, unique in the fleet.
    #[arg(long, value_name = "ID")]
    pub instance: String,
    /// The host reported in its status. Default: the machine's host name.
    #[arg(long, value_name = "H")]
    pub host: Option<String>,
    /// How long its status outlives it if it dies without shutting down,
    /// in seconds.
    #[arg(long, value_name = "S", default_value_t = 10)]
    pub lease_ttl: u64,
    /// A label published in its status (`zone=a`), which rollout waves can
    /// select; repeat for more.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_label)]
    pub label: Vec<(String, String)>,
}

/// Parses `zone=a` as a label.
fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').ok_or_else(|| format!("`{text}` is not a label: expected KEY=VALUE"))?;
    relive_fleet::check_label(key, value).map_err(|e| e.to_string())?;
    Ok((key.to_string(), value.to_string()))
}

/// Parses a duration: `500ms`, `30s`, `5m`, `1h`, `1m30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration: expected e.g. 30s, 5m, 1h30m or 500ms");
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let one = match &rest[..unit] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        total = one
            .checked_mul(u32::try_from(number).map_err(|_| bad())?)
            .and_then(|d| total.checked_add(d))
            .ok_or_else(bad)?;
        rest = &rest[unit..];
    }
    Ok(total)
}

/// Parses `10%` or `10` as a percentage from 1 to 100.
pub fn parse_percent(text: &str) -> Result<u8, String> {
    let number = text.trim().strip_suffix('%').unwrap_or(text.trim());
    match number.parse::<u8>() {
        Ok(p) if (1..=100).contains(&p) => Ok(p),
        _ => Err(format!("`{text}` is not a percentage from 1% to 100%")),
    }
}

/// A host name for `--allow-host`, as `relive_web::Access` takes it.
fn parse_allow_host(text: &str) -> Result<String, String> {
    match relive_web::Access::loopback().with_host(text) {
        Ok(_) => Ok(text.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// `relive serve`.
#[derive(Debug, Args)]
#[command(after_long_help = SERVE_EXAMPLES)]
pub struct ServeArgs {
    /// The workspace directory. Default: RELIVE_WORKSPACE, else the nearest
    /// directory at or above the current one with relive.toml or config/.
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
    #[command(flatten)]
    pub env: EnvArgs,
    /// The port to listen on; 0 picks a free one (printed on the first
    /// line of output).
    #[arg(long, short, value_name = "P", default_value_t = 8000)]
    pub port: u16,
    /// The address to listen on. Anything but loopback exposes the
    /// workspace's files and configs to the network.
    #[arg(long, value_name = "H", default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// Also answer requests for host NAME (an exact name or address, any
    /// port; repeat for more). Only localhost, 127.x.y.z, [::1] and the
    /// --host address are answered otherwise, so that a page of another
    /// site cannot read this one through DNS rebinding.
    #[arg(long = "allow-host", value_name = "NAME", value_parser = parse_allow_host)]
    pub allow_host: Vec<String>,
    /// Do not record config versions in the workspace's history (data/history/).
    #[arg(long)]
    pub no_history: bool,
    /// Also speak the LiveReload protocol on this port of --host, where the
    /// LiveReload browser extensions look (35729); 0 turns it off. A port
    /// in use is reported and skipped.
    #[arg(long, value_name = "P", default_value_t = 35729)]
    pub livereload_port: u16,
    /// Do not put relive's live reload client into pages, for a browser
    /// that has the LiveReload extension (or livereload-js) to do it:
    /// with both, every change would be applied twice. Error pages then
    /// show the error without the overlay, and are not reloaded when it is
    /// fixed unless the extension is on.
    #[arg(long)]
    pub no_inject: bool,
}

const SERVE_EXAMPLES: &str = "\
Pages: `/` renders templates/index.html, `/about` templates/about.html, with
every config as a variable (config/site.toml is `site`). Static files are at
/static/..., and `static_url('app.css')` in a template gives the
fingerprinted URL. Editing a template, a config or a static file updates the
browser: CSS in place, anything else with a reload; a template error shows
as an overlay until it is fixed.

The first line of output is `serving http://ADDR`.";

/// Options that choose the workspace and its environment.
#[derive(Debug, Clone, Args)]
pub struct EnvArgs {
    /// The environment whose overlays apply (`production` selects
    /// `app.production.toml`). Default: RELIVE_ENV.
    #[arg(long, value_name = "ENV")]
    pub env: Option<String>,
}

/// `relive watch`.
#[derive(Debug, Args)]
#[command(after_long_help = WATCH_EXAMPLES)]
pub struct WatchArgs {
    /// The workspace directory. Default: RELIVE_WORKSPACE, else the nearest
    /// directory at or above the current one with relive.toml or config/.
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
    #[command(flatten)]
    pub env: EnvArgs,
    /// Print events as JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
    /// Run CMD and restart it after each config change that validated: a
    /// simple command (words and quotes) directly, anything else with
    /// `sh -c` (on Windows every CMD with `cmd /C`). It gets RELIVE_CONFIG
    /// (the configs that changed, comma separated; unset at first start)
    /// and RELIVE_WORKSPACE.
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// With --exec: send this signal (HUP, USR1, SIGHUP, ...) to the
    /// program instead of restarting it (to its whole process group when
    /// CMD needs a shell). Linux and macOS only.
    #[arg(long, value_name = "SIGNAL", requires = "exec", value_parser = parse_signal)]
    pub signal: Option<Signal>,
    /// With --exec: how long the program has to exit after SIGTERM before
    /// it is killed, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub grace_ms: u64,
    /// POST every event as JSON to URL (repeatable). Failed deliveries are
    /// retried with exponential backoff, without delaying the watcher.
    #[arg(long, value_name = "URL", value_parser = crate::webhook::parse_url)]
    pub webhook: Vec<String>,
    /// How many times a failed webhook delivery is retried.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub webhook_retries: u32,
    /// The first delay between webhook retries, in milliseconds; it doubles
    /// after each retry, up to 30 seconds.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    pub webhook_backoff_ms: u64,
    /// Give up on one webhook request after this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub webhook_timeout_ms: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics (off unless given).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Do not record versions in the workspace's history (data/history/).
    #[arg(long)]
    pub no_history: bool,
    /// Whether to poll instead of using kernel events.
    #[arg(long, value_enum, default_value_t = PollingArg::Auto, value_name = "WHEN")]
    pub polling: PollingArg,
}

const WATCH_EXAMPLES: &str = "\
Examples:
  relive watch                                   print every change in the workspace found from here
  relive watch --json deploy/                    JSON lines, one per event
  relive watch --exec './server'                 restart ./server after each valid config change
  relive watch --exec 'nginx -g \"daemon off;\"' --signal HUP
  relive watch --webhook http://127.0.0.1:8080/-/reload --metrics-addr 127.0.0.1:9090

--exec runs a simple command (words and quotes: `./server --port 80`) as
the program itself, and anything else (pipes, `&&`, `$VAR`, redirections)
with `sh -c`. The program runs in a process group of its own, and relive
keeps track of the group: a restart sends SIGTERM to the group, waits
--grace-ms for every process in it to exit, SIGKILLs what is left, and
starts the next copy only once the group is empty. --signal goes to the
program when it runs directly, and to the whole group when a shell runs it
(the shell would otherwise take the signal in its place). SIGINT and
SIGTERM received by relive are passed on the same way, and relive exits
once the group is gone. relive reaps the orphans its program leaves (it is
their subreaper) and stops those outside the group after it; as PID 1 it
reaps every orphan. If relive is killed with SIGKILL, the kernel kills the
process it started, but not what that process started.

Platforms: the above is Linux. macOS has the process group and --signal,
but no subreaper (what leaves the group is not stopped) and no parent-death
signal (a relive killed with SIGKILL leaves its program running). Windows
restarts only: CMD runs under `cmd /S /C` in a job object; a restart, Ctrl-C
or Ctrl-Break sends Ctrl-Break to the program, waits --grace-ms, then ends
every process of the job, and the job ends with relive however relive
dies. --signal is an error there. Linux is tested; macOS and Windows are
type-checked in CI, not run.";

/// `--polling`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PollingArg {
    /// Kernel events, polling where there are none (NFS, FUSE, ...).
    Auto,
    /// Always poll.
    Always,
    /// Never poll.
    Never,
}

/// `relive check`.
#[derive(Debug, Args)]
#[command(after_long_help = CHECK_EXAMPLES)]
pub struct CheckArgs {
    /// The workspace directory. Default: RELIVE_WORKSPACE, else the nearest
    /// directory at or above the current one with relive.toml or config/.
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Check only this environment's overlays. Default: RELIVE_ENV, else
    /// every environment that has an overlay (and the base files alone).
    #[arg(long, value_name = "ENV")]
    pub env: Option<String>,
    /// Print how long each step took, to stderr.
    #[arg(long)]
    pub timings: bool,
    /// Print nothing but the errors.
    #[arg(long, short)]
    pub quiet: bool,
}

const CHECK_EXAMPLES: &str = "\
Checks, for every config under config/: that each file parses, that the base
merged with each environment's overlay is valid, and that the result matches
config/<name>.schema.json when there is one. Errors are printed to stdout as
`file:line:col: message`, with paths relative to the current directory.

As a git pre-commit hook (.git/hooks/pre-commit):
  #!/bin/sh
  exec relive check";

/// Options shared by the history commands.
#[derive(Debug, Clone, Args)]
pub struct HistoryWorkspace {
    /// The workspace directory. Default: RELIVE_WORKSPACE, else the nearest
    /// directory at or above the current one with relive.toml or config/.
    #[arg(long, short = 'w', value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `relive history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The config's name (`app` for config/app.toml, `db/main` for
    /// config/db/main.yaml). Without it, the versions of every config,
    /// grouped by change set.
    pub name: Option<String>,
    /// Every config's versions, grouped by change set, newest first (what
    /// no NAME does).
    #[arg(long, conflicts_with = "name")]
    pub all: bool,
    /// Without NAME: at most this many change sets.
    #[arg(long, value_name = "N", default_value_t = 50, conflicts_with = "name")]
    pub limit: usize,
    #[command(flatten)]
    pub ws: HistoryWorkspace,
}

/// `relive show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The config's name.
    pub name: String,
    /// The version number. Default: the newest.
    #[arg(value_name = "VERSION")]
    pub number: Option<u64>,
    /// Print the documents exactly as they were on disk, secrets included,
    /// instead of the merged value with secrets redacted.
    #[arg(long, conflicts_with = "json")]
    pub raw: bool,
    #[command(flatten)]
    pub ws: HistoryWorkspace,
}

/// `relive diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The config's name.
    pub name: String,
    /// The older version.
    pub a: u64,
    /// The newer version. Default: the newest applied version.
    pub b: Option<u64>,
    #[command(flatten)]
    pub ws: HistoryWorkspace,
}

/// `relive rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The config's name.
    #[arg(required_unless_present_any = ["change_set", "to_change_set"])]
    pub name: Option<String>,
    /// The version to go back to. Default: the newest applied version
    /// before the live one whose content differs from it (so that repeated
    /// rollbacks step back through the changes).
    #[arg(long, value_name = "N", conflicts_with_all = ["change_set", "to_change_set"])]
    pub to: Option<u64>,
    /// Undo change set ID (as `relive history` shows it): every config it
    /// changed goes back to its version before it, as one change set.
    #[arg(long, value_name = "ID", conflicts_with_all = ["name", "to_change_set"])]
    pub change_set: Option<relive::ChangeSetId>,
    /// Restore every config of change set ID to its version in that set,
    /// as one change set.
    #[arg(long, value_name = "ID", conflicts_with = "name")]
    pub to_change_set: Option<relive::ChangeSetId>,
    #[command(flatten)]
    pub ws: HistoryWorkspace,
}

/// `relive apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The directory of configs, laid out as config/ is (`app.toml`,
    /// `db/main.production.yaml`).
    #[arg(value_name = "SRC_DIR")]
    pub src: PathBuf,
    /// Check every file and print what would change; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also remove the config files of config/ that SRC_DIR does not have.
    #[arg(long)]
    pub delete: bool,
    /// How long to wait for a running watcher to apply or reject the
    /// change, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub timeout_ms: u64,
    #[command(flatten)]
    pub ws: HistoryWorkspace,
}

const APPLY_EXAMPLES: &str = "\
Every file under SRC_DIR is checked before anything is written: it must be
a config file relive loads (name[.env].toml, .yaml, .yml or .json, or a
name.schema.json) that parses within the limits; SOPS files are checked
for their shape and installed encrypted. Symlinks that leave SRC_DIR,
FIFOs, sockets and devices are refused. Then the files are written, each
atomically (keeping the mode and owner of the file it replaces; new files
0600), while the workspace's engine is held, so that a running watcher
applies them as one change set. relive apply waits for that watcher's
verdict and exits 1 if it rejected the change.

Examples:
  relive apply --dry-run release/config    what would change
  relive apply release/config              install it as one change
  relive apply --delete release/config     and remove configs it no longer has";

/// `relive completions`.
#[derive(Debug, Args)]
#[command(
    after_long_help = "Examples:\n  relive completions bash > /etc/bash_completion.d/relive\n  relive completions zsh > \"${fpath[1]}/_relive\"\n  relive completions fish > ~/.config/fish/completions/relive.fish"
)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// A signal, by name and number.
#[cfg(unix)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal {
    /// The name without `SIG`, such as `HUP`.
    pub name: &'static str,
    /// The signal.
    pub signal: rustix::process::Signal,
}

/// No signal: Windows has none to send, and `--signal` never parses there
/// ([`parse_signal`]).
#[cfg(not(unix))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {}

#[cfg(unix)]
const SIGNALS: &[(&str, rustix::process::Signal)] = {
    use rustix::process::Signal as S;
    &[
        ("HUP", S::HUP),
        ("INT", S::INT),
        ("QUIT", S::QUIT),
        ("KILL", S::KILL),
        ("USR1", S::USR1),
        ("USR2", S::USR2),
        ("ALRM", S::ALARM),
        ("TERM", S::TERM),
        ("CONT", S::CONT),
        ("STOP", S::STOP),
        ("TSTP", S::TSTP),
        ("WINCH", S::WINCH),
        ("IO", S::IO),
        // macOS and the BSDs have no SIGPWR.
        #[cfg(target_os = "linux")]
        ("PWR", S::POWER),
    ]
};

/// Parses `HUP`, `sighup`, `SIGHUP` or a number such as `1`; on Windows,
/// refuses every value ([`crate::platform::signal_unavailable`]).
pub fn parse_signal(text: &str) -> Result<Signal, String> {
    parse_signal_on(crate::platform::OS, text)
}

/// [`parse_signal`] as it is on `os`.
fn parse_signal_on(os: crate::platform::Os, text: &str) -> Result<Signal, String> {
    if let Some(why) = crate::platform::signal_unavailable(os) {
        return Err(why.to_string());
    }
    signal_by_name(text)
}

#[cfg(unix)]
fn signal_by_name(text: &str) -> Result<Signal, String> {
    let upper = text.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    let found = match bare.parse::<i32>() {
        Ok(number) => SIGNALS.iter().find(|(_, s)| s.as_raw() == number),
        Err(_) => SIGNALS.iter().find(|(name, _)| *name == bare),
    };
    found.map(|&(name, signal)| Signal { name, signal }).ok_or_else(|| {
        let names: Vec<&str> = SIGNALS.iter().map(|(n, _)| *n).collect();
        format!("unknown signal `{text}`; use one of {}", names.join(", "))
    })
}

/// Never reached: [`parse_signal`] refuses `--signal` on Windows first.
#[cfg(not(unix))]
fn signal_by_name(_text: &str) -> Result<Signal, String> {
    Err(crate::platform::signal_unavailable(crate::platform::Os::Windows).unwrap_or_default().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    // Signals have names and numbers on Unix only.
    #[cfg(unix)]
    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("HUP").unwrap().name, "HUP");
        assert_eq!(parse_signal("sigusr1").unwrap().name, "USR1");
        assert_eq!(parse_signal("SIGTERM").unwrap().name, "TERM");
        assert_eq!(parse_signal("1").unwrap().name, "HUP");
        assert!(parse_signal("BOGUS").unwrap_err().contains("unknown signal `BOGUS`"));
    }

    // Run where the Unix names exist, to show that only the platform
    // argument makes the difference.
    #[cfg(unix)]
    #[test]
    fn signal_is_refused_when_parsed_for_windows() {
        use crate::platform::Os;
        assert_eq!(
            parse_signal_on(Os::Windows, "HUP"),
            Err("--signal is not available on Windows: the child is restarted".to_string())
        );
        assert_eq!(parse_signal_on(Os::Unix, "HUP").unwrap().name, "HUP");
        assert_eq!(parse_signal_on(Os::Linux, "usr1").unwrap().name, "USR1");
    }

    #[test]
    fn percentages_parse_with_or_without_the_sign() {
        assert_eq!(parse_percent("10%"), Ok(10));
        assert_eq!(parse_percent("100"), Ok(100));
        for bad in ["0%", "101", "x", "-5%", ""] {
            assert!(parse_percent(bad).is_err(), "{bad:?}");
        }
    }
    #[test]
    fn durations_parse_in_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "5", "m", "5x", "1.5s", "-1s", "99999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn labels_parse_as_key_and_value() {
        assert_eq!(parse_label("zone=a"), Ok(("zone".into(), "a".into())));
        for bad in ["zone", "=a", "zone=a,b", "zo ne=a"] {
            assert!(parse_label(bad).is_err(), "{bad:?}");
        }
    }
}
