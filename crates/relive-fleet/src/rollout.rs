//! Progressive rollouts: a canary that grows wave by wave, baked and
//! checked between waves, promoted at the end or returned to the stable
//! version when something goes wrong.
//!
//! The rollout's state ([`Rollout`]) lives in etcd, at
//! `/<prefix>/rollout/<name>`, not in the process that drives it: any
//! process can read it and carry on ([`Fleet::drive_rollout`]). Each step
//! is decided by [`step`], a pure function of the state, what etcd shows
//! (an [`Observation`]) and the time, which never reads the clock, and is
//! written in one transaction that compares the rollout key's
//! `mod_revision` with the one read: two drivers can never both advance a
//! rollout, and the state and its effect (the canary key, the config key)
//! always change together.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::admin::{Expect, Fleet, now};
use crate::draft::Draft;
use crate::layout::{AckState, Canary, StatusRecord, with_author};

/// Which instances a wave adds to the canary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Wave {
    /// At least this many instances in all (`1`).
    Count(usize),
    /// At least this percentage of the live instances in all (`10%`).
    Percent(u8),
    /// Every live instance with this label (`zone=a`), besides those of
    /// the waves before.
    Label {
        /// The label's key.
        key: String,
        /// Its value.
        value: String,
    },
}

impl std::fmt::Display for Wave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wave::Count(n) => write!(f, "{n}"),
            Wave::Percent(p) => write!(f, "{p}%"),
            Wave::Label { key, value } => write!(f, "{key}={value}"),
        }
    }
}

impl From<Wave> for String {
    fn from(wave: Wave) -> String {
        wave.to_string()
    }
}

impl TryFrom<String> for Wave {
    type Error = String;
    fn try_from(text: String) -> Result<Wave, String> {
        text.parse()
    }
}

impl std::str::FromStr for Wave {
    type Err = String;

    /// `3` (instances), `10%`, or `key=value` (a label).
    fn from_str(text: &str) -> Result<Wave, String> {
        let text = text.trim();
        if let Some((key, value)) = text.split_once('=') {
            check_label(key, value).map_err(|e| e.to_string())?;
            return Ok(Wave::Label { key: key.to_string(), value: value.to_string() });
        }
        if let Some(number) = text.strip_suffix('%') {
            return match number.parse::<u8>() {
                Ok(p) if (1..=100).contains(&p) => Ok(Wave::Percent(p)),
                _ => Err(format!("wave `{text}`: a percentage is from 1% to 100%")),
            };
        }
        match text.parse::<usize>() {
            Ok(n) if n > 0 => Ok(Wave::Count(n)),
            _ => Err(format!(
                "wave `{text}`: expected a number of instances (3), a percentage (10%) or a label (zone=a)"
            )),
        }
    }
}

/// Parses waves separated by commas: `1,10%,50%,100%`, `zone=a,zone=b,100%`.
pub fn parse_waves(text: &str) -> Result<Vec<Wave>, String> {
    let waves: Vec<Wave> = text.split(',').map(str::parse).collect::<Result<_, _>>()?;
    if waves.is_empty() {
        return Err("no wave given".into());
    }
    Ok(waves)
}

/// Checks a label: its key is letters, digits and `-_./` (at most 63
/// bytes), its value has no `,`, `=` nor control characters (at most 63
/// bytes), so that a wave can name it.
pub fn check_label(key: &str, value: &str) -> Result<(), Error> {
    let bad = |reason: &'static str| {
        Err(Error::InvalidName(crate::layout::InvalidName { what: "label", value: format!("{key}={value}"), reason }))
    };
    if key.is_empty() || key.len() > 63 || !key.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)) {
        return bad("the key must be 1 to 63 letters, digits, `-`, `_`, `.` or `/`");
    }
    if value.len() > 63 || value.chars().any(|c| c.is_control() || c == ',' || c == '=') {
        return bad("the value must be at most 63 bytes, without `,`, `=` or control characters");
    }
    Ok(())
}

/// What a rollout does: its waves and what stops it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The waves, each a canary of a growing set; the last is promoted.
    pub waves: Vec<Wave>,
    /// How long each wave runs, once all its instances applied the
    /// version, before the next starts (milliseconds).
    pub bake_ms: u64,
    /// How many instances may reject the version before the rollout
    /// stops. Default 0.
    pub max_rejected: usize,
    /// How long a wave's instances have to answer the version before the
    /// rollout stops (milliseconds). Default 5 minutes.
    pub apply_timeout_ms: u64,
    /// A shell command run after each bake; a non-zero exit or a timeout
    /// stops the rollout. It is stored in etcd so that any machine can
    /// resume the rollout: keep secrets out of it (let it read them from a
    /// file).
    pub gate: Option<String>,
    /// How long the gate may run before it counts as failed
    /// (milliseconds). Default 60 s; a rollout recorded before this field
    /// existed reads as the default.
    #[serde(default = "default_gate_timeout_ms")]
    pub gate_timeout_ms: u64,
}

fn default_gate_timeout_ms() -> u64 {
    60_000
}

impl Plan {
    /// A plan with `waves` and `bake` between them, no rejection allowed,
    /// 5 minutes for each wave to apply, and no gate.
    pub fn new(waves: Vec<Wave>, bake: Duration) -> Plan {
        Plan {
            waves,
            bake_ms: millis(bake),
            max_rejected: 0,
            apply_timeout_ms: 300_000,
            gate: None,
            gate_timeout_ms: default_gate_timeout_ms(),
        }
    }
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The current wave is starting, or its instances are applying the
    /// version.
    Running,
    /// Every instance of the current wave applied it: the bake time runs.
    Baking,
    /// The last wave was promoted: every instance gets the version.
    Done,
    /// The rollout stopped itself (a rejection, an instance gone, the gate,
    /// a timeout): its instances return to the stable version.
    Stopped,
    /// An operator aborted it: its instances return to the stable version.
    Aborted,
}

impl Phase {
    /// Done, stopped or aborted.
    pub fn is_over(self) -> bool {
        matches!(self, Phase::Done | Phase::Stopped | Phase::Aborted)
    }
}

/// A rollout's state: the value of `/<prefix>/rollout/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// The config.
    pub config: String,
    /// The plan.
    pub plan: Plan,
    /// The document rolled out, as a config key holds it (header lines,
    /// then the document).
    pub draft: String,
    /// The config's version when the rollout started: the stable version
    /// everyone else serves, and that a stop returns to.
    pub base_version: u64,
    /// The current wave (0-based).
    pub wave: usize,
    /// The instances of each wave started so far (each wave's whole set:
    /// the canary's instances during it), sorted.
    pub instances: Vec<Vec<String>>,
    /// Where it is.
    pub phase: Phase,
    /// Why it stopped or was aborted.
    pub reason: Option<String>,
    /// When the current phase began, in milliseconds since the Unix epoch
    /// (the driver's clock).
    pub since_ms: u64,
    /// A stopped or aborted rollout whose canary is gone: nothing left to
    /// do.
    pub settled: bool,
    /// The version promoted, once done: the revision of the transaction
    /// that wrote both the config key and the done record (stored as null;
    /// [`Fleet::rollout`] fills it in from the record's revision).
    #[serde(default)]
    pub version: Option<u64>,
    /// Who started it (`alice@laptop`).
    pub started_by: String,
    /// When it started, RFC 3339.
    pub started_at: String,
    /// When it last changed, RFC 3339.
    pub updated_at: String,
}

impl Rollout {
    /// The rollout as stored in etcd.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a rollout always serializes")
    }

    /// A rollout read from etcd.
    pub fn from_json(bytes: &[u8]) -> Result<Rollout, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Whether nothing is left to do: done, or stopped and settled.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Done || (self.phase.is_over() && self.settled)
    }

    /// The instances of the current wave, if it started.
    pub fn current(&self) -> &[String] {
        self.instances.get(self.wave).map_or(&[], Vec::as_slice)
    }

    /// The rollout, aborted by an operator for `reason` at `now_ms`: its
    /// instances return to the stable version at the next [`step`]. A
    /// rollout that is over stays as it is.
    pub fn aborted(&self, reason: &str, now_ms: u64) -> Rollout {
        if self.phase.is_over() {
            return self.clone();
        }
        let mut next = self.clone();
        next.phase = Phase::Aborted;
        next.reason = Some(reason.to_string());
        next.since_ms = now_ms;
        next
    }
}

/// One live instance serving the config, as its status key says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Its id.
    pub id: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// The version its status answers.
    pub version: u64,
    /// The version it serves.
    pub applied_version: Option<u64>,
    /// Whether it rejected `version`.
    pub rejected: bool,
    /// Why.
    pub error: Option<String>,
}

impl Seen {
    /// What an instance's status record says.
    pub fn from_status(status: &StatusRecord) -> Seen {
        Seen {
            id: status.instance.clone(),
            labels: status.labels.clone(),
            version: status.version,
            applied_version: status.applied_version,
            rejected: status.state == AckState::Rejected,
            error: status.error.clone(),
        }
    }
}

/// The canary key, as a step sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenCanary {
    /// Its version (the key's `mod_revision`).
    pub version: u64,
    /// The instances it goes to.
    pub instances: Vec<String>,
    /// Whether it is a stopped rollout's (going to no one).
    pub aborted: bool,
}

/// What a gate command said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateOutcome {
    /// Exit status 0.
    Passed,
    /// Why not (`exit status 1`, `no answer within 60s`): never its output,
    /// which may hold secrets.
    Failed(String),
}

/// What etcd shows, read in one transaction, and the gate's answer if the
/// driver ran it for this step.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observation {
    /// The config key's version.
    pub config_version: Option<u64>,
    /// The canary key.
    pub canary: Option<SeenCanary>,
    /// Every live instance serving the config, by id.
    pub instances: Vec<Seen>,
    /// The gate's outcome for the current wave, once run.
    pub gate: Option<GateOutcome>,
}

impl Observation {
    fn seen(&self, id: &str) -> Option<&Seen> {
        self.instances.iter().find(|s| s.id == id)
    }
}

/// What a driver does with a step, in the same transaction as the new
/// state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing (write the state if it changed).
    None,
    /// Write the canary key for these instances (a wave starts).
    StartWave(Vec<String>),
    /// Run the gate, then step again with its outcome (nothing written).
    RunGate,
    /// Write the draft to the config key and delete the canary key.
    Promote,
    /// Make the canary go to no one, marked with the reason: these
    /// instances return to the stable version and say why.
    Return(Vec<String>),
    /// Delete the canary key of a stopped rollout.
    Settle,
}

/// The next state and action of `state`, given what etcd shows and the
/// time (`now_ms`, milliseconds since the Unix epoch). Never reads the
/// clock; the state it returns equals `state` when nothing changed.
pub fn step(state: &Rollout, obs: &Observation, now_ms: u64) -> (Rollout, Action) {
    let mut next = state.clone();
    match state.phase {
        Phase::Done => (next, Action::None),
        Phase::Stopped | Phase::Aborted if state.settled => (next, Action::None),
        Phase::Stopped | Phase::Aborted => match &obs.canary {
            None => {
                next.settled = true;
                (next, Action::None)
            }
            Some(canary) if !canary.aborted => {
                let returning = next_returning(&next, canary);
                (next, Action::Return(returning))
            }
            Some(_) => {
                // The stable version is the base, unless someone pushed
                // meanwhile (which stopped the rollout).
                let stable = obs.config_version.unwrap_or(state.base_version);
                let back = state.current().iter().all(|id| match obs.seen(id) {
                    None => true,
                    Some(s) => s.version == stable && s.applied_version == Some(stable),
                });
                if back || now_ms.saturating_sub(state.since_ms) >= state.plan.apply_timeout_ms {
                    next.settled = true;
                    (next, Action::Settle)
                } else {
                    (next, Action::None)
                }
            }
        },
        Phase::Running | Phase::Baking => {
            let started = state.instances.len() > state.wave;
            if obs.config_version != Some(state.base_version) {
                let reason = match obs.config_version {
                    Some(v) => format!("{} changed to version {v} outside the rollout", state.config),
                    None => format!("{} was deleted outside the rollout", state.config),
                };
                return stop(next, obs, reason, now_ms);
            }
            if !started {
                if state.wave == 0 && obs.canary.is_some() {
                    // Someone else's canary: not this rollout's to touch.
                    next.phase = Phase::Stopped;
                    next.reason = Some(format!("a canary of {} was started outside the rollout", state.config));
                    next.since_ms = now_ms;
                    next.settled = true;
                    return (next, Action::None);
                }
                return start_wave(next, obs, now_ms);
            }
            let Some(canary) = obs.canary.as_ref().filter(|c| !c.aborted) else {
                return stop(next, obs, "the canary was removed outside the rollout".into(), now_ms);
            };
            if canary.instances != state.current() {
                return stop(next, obs, "the canary was changed outside the rollout".into(), now_ms);
            }
            if let Some(reason) = unhealthy(state, obs) {
                return stop(next, obs, reason, now_ms);
            }
            let elapsed = now_ms.saturating_sub(state.since_ms);
            if state.phase == Phase::Running {
                let waiting: Vec<&String> = state
                    .current()
                    .iter()
                    // Answered: applied or rejected this very version (a
                    // rejection of an earlier wave's does not count).
                    .filter(|id| obs.seen(id).is_some_and(|s| s.version != canary.version))
                    .collect();
                if waiting.is_empty() {
                    next.phase = Phase::Baking;
                    next.since_ms = now_ms;
                } else if elapsed >= state.plan.apply_timeout_ms {
                    let reason = format!(
                        "{} did not apply version {} within {}",
                        list(&waiting),
                        canary.version,
                        humantime::format_duration(Duration::from_millis(state.plan.apply_timeout_ms))
                    );
                    return stop(next, obs, reason, now_ms);
                }
                return (next, Action::None);
            }
            if elapsed < state.plan.bake_ms {
                return (next, Action::None);
            }
            if state.plan.gate.is_some() {
                match &obs.gate {
                    None => return (next, Action::RunGate),
                    Some(GateOutcome::Failed(why)) => {
                        let reason = format!("the gate failed after wave {}: {why}", state.wave + 1);
                        return stop(next, obs, reason, now_ms);
                    }
                    Some(GateOutcome::Passed) => {}
                }
            }
            if state.wave + 1 >= state.plan.waves.len() {
                next.phase = Phase::Done;
                next.since_ms = now_ms;
                return (next, Action::Promote);
            }
            next.wave += 1;
            next.phase = Phase::Running;
            start_wave(next, obs, now_ms)
        }
    }
}

/// Starts wave `next.wave`: its instances are those of the wave before and
/// the ones its selector adds.
fn start_wave(mut next: Rollout, obs: &Observation, now_ms: u64) -> (Rollout, Action) {
    let before: BTreeSet<String> = next.instances.last().cloned().unwrap_or_default().into_iter().collect();
    let alive: Vec<String> = obs.instances.iter().map(|s| s.id.clone()).collect();
    let wave = &next.plan.waves[next.wave];
    let set = match wave {
        Wave::Count(n) => grow(&next.config, &alive, &before, *n),
        Wave::Percent(p) => grow(&next.config, &alive, &before, (alive.len() * usize::from(*p)).div_ceil(100)),
        Wave::Label { key, value } => {
            let matching: BTreeSet<String> =
                obs.instances.iter().filter(|s| s.labels.get(key) == Some(value)).map(|s| s.id.clone()).collect();
            if matching.is_empty() {
                let reason = format!("wave {} ({wave}) selects no live instance", next.wave + 1);
                return stop(next, obs, reason, now_ms);
            }
            before.union(&matching).cloned().collect()
        }
    };
    if set.is_empty() {
        let reason = format!("wave {} ({wave}): no live instance serves {}", next.wave + 1, next.config);
        return stop(next, obs, reason, now_ms);
    }
    let set: Vec<String> = set.into_iter().collect();
    next.instances.push(set.clone());
    next.phase = Phase::Running;
    next.since_ms = now_ms;
    (next, Action::StartWave(set))
}

/// `before` and more of `alive`, in [`choose_canaries`](crate::choose_canaries)' order, until
/// there are `total` (or every one of `alive`).
fn grow(config: &str, alive: &[String], before: &BTreeSet<String>, total: usize) -> BTreeSet<String> {
    let mut set = before.clone();
    let mut others: Vec<&String> = alive.iter().filter(|id| !before.contains(*id)).collect();
    others.sort_by_key(|id| (crate::admin::fnv1a(config, id), *id));
    for id in others {
        if set.len() >= total.max(1) {
            break;
        }
        set.insert(id.clone());
    }
    set
}

/// Why the current wave is not healthy: too many rejections, or an
/// instance gone.
fn unhealthy(state: &Rollout, obs: &Observation) -> Option<String> {
    let base = state.base_version;
    let gone: Vec<&String> = state.current().iter().filter(|id| obs.seen(id).is_none()).collect();
    if !gone.is_empty() {
        return Some(format!("{} vanished (no status: its lease expired) during wave {}", list(&gone), state.wave + 1));
    }
    // Only this rollout's canaries are newer than the base while it runs.
    let rejected: Vec<&Seen> =
        state.current().iter().filter_map(|id| obs.seen(id)).filter(|s| s.rejected && s.version > base).collect();
    if rejected.len() > state.plan.max_rejected {
        let first = rejected[0];
        let why = first.error.as_deref().map(|e| bounded(e, 200)).unwrap_or_default();
        let ids: Vec<&String> = rejected.iter().map(|s| &s.id).collect();
        return Some(format!(
            "{} rejected version {} (at most {} may) during wave {}; {}: {why}",
            list(&ids),
            first.version,
            state.plan.max_rejected,
            state.wave + 1,
            first.id
        ));
    }
    None
}

/// Stops the rollout: its instances return to the stable version.
fn stop(mut next: Rollout, obs: &Observation, reason: String, now_ms: u64) -> (Rollout, Action) {
    next.phase = Phase::Stopped;
    next.reason = Some(reason);
    next.since_ms = now_ms;
    match &obs.canary {
        Some(canary) if !canary.aborted => {
            let returning = next_returning(&next, canary);
            (next, Action::Return(returning))
        }
        Some(_) => (next, Action::None),
        None => {
            next.settled = true;
            (next, Action::None)
        }
    }
}

fn next_returning(next: &Rollout, canary: &SeenCanary) -> Vec<String> {
    let mut ids: BTreeSet<String> = next.current().iter().cloned().collect();
    ids.extend(canary.instances.iter().cloned());
    ids.into_iter().collect()
}

/// `ids` for a message: the first five, and how many more.
fn list(ids: &[&String]) -> String {
    let shown: Vec<&str> = ids.iter().take(5).map(|s| s.as_str()).collect();
    match ids.len() {
        0..=5 => shown.join(", "),
        n => format!("{} and {} more", shown.join(", "), n - 5),
    }
}

/// At most `max` characters of `text`, without control characters.
fn bounded(text: &str, max: usize) -> String {
    let clean: String = text.chars().filter(|c| !c.is_control()).collect();
    match clean.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &clean[..cut]),
        None => clean,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the Unix epoch, for [`step`].
pub fn now_ms() -> u64 {
    millis(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default())
}

/// A gate: run after each bake; [`GateOutcome::Failed`] stops the
/// rollout. Closures `|rollout: Rollout| async { ... }` are gates.
pub trait Gate: Send + Sync {
    /// Checks the fleet after `rollout`'s current wave baked.
    fn check(&self, rollout: Rollout) -> Pin<Box<dyn Future<Output = GateOutcome> + Send>>;
}

impl<F, Fut> Gate for F
where
    F: Fn(Rollout) -> Fut + Send + Sync,
    Fut: Future<Output = GateOutcome> + Send + 'static,
{
    fn check(&self, rollout: Rollout) -> Pin<Box<dyn Future<Output = GateOutcome> + Send>> {
        Box::pin(self(rollout))
    }
}

/// Told of each step a driver wrote: the new state and its action.
pub type Progress = dyn FnMut(&Rollout, &Action) + Send;

/// A driver's settings: how often it reads etcd, and what it reports.
pub struct Drive<'a> {
    /// How long between reads of etcd. Default 250 ms.
    pub poll: Duration,
    /// The gate, if the plan has one (it runs the plan's command).
    pub gate: Option<&'a dyn Gate>,
    /// Called with each state written and its action.
    pub progress: Option<&'a mut Progress>,
    /// How long etcd may fail without a break before the driver gives up
    /// (the rollout stays where it is, to be resumed). Default 60 s.
    pub patience: Duration,
}

impl std::fmt::Debug for Drive<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drive").field("poll", &self.poll).finish_non_exhaustive()
    }
}

impl Default for Drive<'_> {
    fn default() -> Self {
        Drive { poll: Duration::from_millis(250), gate: None, progress: None, patience: Duration::from_secs(60) }
    }
}

/// The keys a rollout step reads, at one revision.
struct Read {
    rollout: Option<KeyValue>,
    config: Option<KeyValue>,
    canary: Option<KeyValue>,
    statuses: Vec<StatusRecord>,
}

impl Fleet {
    /// Starts a progressive rollout of `draft` to config `name`: stores its
    /// state, in one transaction that requires the config to be at the
    /// `expect`ed version, no canary of it, and no rollout of it in
    /// progress ([`Error::RolloutInProgress`]). The first wave starts when
    /// a driver takes it ([`drive_rollout`](Fleet::drive_rollout)).
    pub async fn start_rollout(&self, name: &str, draft: &Draft, expect: Expect, plan: Plan) -> Result<Rollout, Error> {
        draft.check().map_err(|e| Error::Invalid(Box::new(e)))?;
        if plan.waves.is_empty() {
            return Err(Error::InvalidRollout { message: "a rollout needs at least one wave".into() });
        }
        let read = self.read_rollout(name).await?;
        if let Some(kv) = &read.rollout {
            let existing = self.parse_rollout(name, kv)?;
            if !existing.is_finished() {
                return Err(in_progress(&existing));
            }
        }
        if let Some(kv) = &read.canary {
            let instances = Canary::from_json(kv.value()).map(|c| c.instances).unwrap_or_default();
            return Err(Error::CanaryInProgress {
                config: name.to_string(),
                version: kv.mod_revision() as u64,
                instances,
            });
        }
        let layout = self.layout();
        let key = layout.config_key(name)?;
        let Some(current) = &read.config else {
            return Err(Error::NoConfig {
                config: name.to_string(),
                key,
                hint: "a rollout needs a stable version to return to: publish a first version to every instance",
            });
        };
        let base = current.mod_revision() as u64;
        if let Expect::Version(v) = expect {
            if v != base {
                return Err(Error::Conflict { config: name.to_string(), key, current: Some(base), expected: v });
            }
        }
        let value = with_author(&draft.encoded(), self.operator());
        if crate::admin::same_document(current.value(), &value) {
            return Err(Error::CanaryUnchanged { config: name.to_string(), version: base });
        }
        let draft = String::from_utf8(value)
            .map_err(|_| Error::InvalidRollout { message: "the document is not UTF-8".into() })?;
        let at = now();
        let rollout = Rollout {
            config: name.to_string(),
            plan,
            draft,
            base_version: base,
            wave: 0,
            instances: Vec::new(),
            phase: Phase::Running,
            reason: None,
            since_ms: now_ms(),
            settled: false,
            version: None,
            started_by: self.operator().to_string(),
            started_at: at.clone(),
            updated_at: at,
        };
        let rollout_key = layout.rollout_key(name)?;
        let canary_key = layout.canary_key(name)?;
        let txn = Txn::new()
            .when(vec![
                match &read.rollout {
                    None => Compare::create_revision(rollout_key.clone(), CompareOp::Equal, 0),
                    Some(kv) => Compare::mod_revision(rollout_key.clone(), CompareOp::Equal, kv.mod_revision()),
                },
                Compare::mod_revision(key, CompareOp::Equal, base as i64),
                Compare::create_revision(canary_key, CompareOp::Equal, 0),
            ])
            .and_then(vec![TxnOp::put(rollout_key, rollout.to_json(), None)]);
        if !self.rollout_txn("start the rollout", txn).await? {
            // Someone else started one (or pushed) in between: say which.
            let read = self.read_rollout(name).await?;
            if let Some(kv) = &read.rollout {
                let existing = self.parse_rollout(name, kv)?;
                if !existing.is_finished() {
                    return Err(in_progress(&existing));
                }
            }
            return Err(Error::Conflict {
                config: name.to_string(),
                key: self.layout().config_key(name)?,
                current: read.config.as_ref().map(|kv| kv.mod_revision() as u64),
                expected: base,
            });
        }
        Ok(rollout)
    }

    /// The rollout of config `name` (in progress, or the last one), if any.
    pub async fn rollout(&self, name: &str) -> Result<Option<Rollout>, Error> {
        let read = self.read_rollout(name).await?;
        read.rollout.as_ref().map(|kv| self.parse_rollout(name, kv)).transpose()
    }

    /// Every config's rollout record (in progress, or the last one), by
    /// config name. Records that do not parse are skipped with a warning.
    pub async fn rollouts(&self) -> Result<Vec<Rollout>, Error> {
        let layout = self.layout();
        let resp = self
            .bounded(crate::kv(self.client()).get(layout.rollout_prefix(), Some(GetOptions::new().with_prefix())))
            .await
            .map_err(|e| self.failed("read the rollouts".into(), e))?;
        let mut out = Vec::new();
        for kv in resp.kvs() {
            let Some(name) = std::str::from_utf8(kv.key()).ok().and_then(|k| k.strip_prefix(&layout.rollout_prefix()))
            else {
                continue;
            };
            match self.parse_rollout(name, kv) {
                Ok(rollout) => out.push(rollout),
                Err(error) => tracing::warn!(config = name, %error, "ignoring a rollout record"),
            }
        }
        Ok(out)
    }

    /// Aborts the rollout of config `name`: its instances return to the
    /// stable version (at the driver's next step; call
    /// [`drive_rollout`](Fleet::drive_rollout) to see it through if no
    /// driver runs).
    pub async fn abort_rollout(&self, name: &str, reason: &str) -> Result<Rollout, Error> {
        loop {
            let read = self.read_rollout(name).await?;
            let Some(kv) = &read.rollout else { return Err(Error::NoRollout { config: name.to_string() }) };
            let state = self.parse_rollout(name, kv)?;
            if state.phase.is_over() {
                return Err(Error::NoRollout { config: name.to_string() });
            }
            let mut next = state.aborted(reason, now_ms());
            next.updated_at = now();
            let key = self.layout().rollout_key(name)?;
            let txn = Txn::new()
                .when(vec![Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision())])
                .and_then(vec![TxnOp::put(key, next.to_json(), None)]);
            if self.rollout_txn("abort the rollout", txn).await? {
                return Ok(next);
            }
        }
    }

    /// Drives the rollout of config `name` to its end, from whatever state
    /// etcd holds (so any process can resume it): returns its final state,
    /// [`Phase::Done`] or stopped/aborted and settled. Another driver may
    /// run at the same time: each step is a compare-and-set on the
    /// rollout's key, so only one of them makes it.
    pub async fn drive_rollout(&self, name: &str, mut drive: Drive<'_>) -> Result<Rollout, Error> {
        let mut failing_since: Option<tokio::time::Instant> = None;
        loop {
            match self.drive_once(name, &mut drive).await {
                Ok(Some(done)) => return Ok(done),
                Ok(None) => failing_since = None,
                // etcd away (a restart, a leader election): the state is
                // in etcd, so the next read carries on from it.
                Err(error @ Error::Etcd { .. }) => {
                    let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= drive.patience {
                        return Err(error);
                    }
                    tracing::warn!(%error, "the rollout's driver retries");
                    tokio::time::sleep(drive.poll.max(Duration::from_millis(200))).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// One step of [`drive_rollout`](Fleet::drive_rollout): the final
    /// state if there is nothing left to do, else `None` once it wrote a
    /// step (or lost one to another driver) or waited a poll interval.
    async fn drive_once(&self, name: &str, drive: &mut Drive<'_>) -> Result<Option<Rollout>, Error> {
        let read = self.read_rollout(name).await?;
        let Some(kv) = &read.rollout else { return Err(Error::NoRollout { config: name.to_string() }) };
        let state = self.parse_rollout(name, kv)?;
        if state.is_finished() {
            return Ok(Some(state));
        }
        let mut obs = self.observe(name, &read);
        let (mut next, mut action) = step(&state, &obs, now_ms());
        if action == Action::RunGate {
            obs.gate = Some(match drive.gate {
                Some(gate) => gate.check(state.clone()).await,
                None => GateOutcome::Failed("the plan has a gate but this driver cannot run it".into()),
            });
            (next, action) = step(&state, &obs, now_ms());
        }
        if next == state && action == Action::None {
            tokio::time::sleep(drive.poll).await;
            return Ok(None);
        }
        next.updated_at = now();
        // None: another driver moved first; read again.
        if let Some(promoted) = self.write_step(name, kv, &read, &next, &action).await? {
            if promoted.is_some() {
                next.version = promoted;
            }
            if let Some(progress) = drive.progress.as_mut() {
                progress(&next, &action);
            }
        }
        Ok(None)
    }

    /// Writes `next` and its action in one transaction, if the rollout key
    /// is still at `kv`'s revision. `None`: another driver moved first;
    /// `Some(Some(v))`: promoted as version `v`.
    async fn write_step(
        &self,
        name: &str,
        kv: &KeyValue,
        read: &Read,
        next: &Rollout,
        action: &Action,
    ) -> Result<Option<Option<u64>>, Error> {
        let layout = self.layout();
        let (rollout_key, canary_key, config_key) =
            (layout.rollout_key(name)?, layout.canary_key(name)?, layout.config_key(name)?);
        let mut when = vec![Compare::mod_revision(rollout_key.clone(), CompareOp::Equal, kv.mod_revision())];
        let mut ops = vec![TxnOp::put(rollout_key, next.to_json(), None)];
        let canary = |instances: Vec<String>, aborted: Option<String>, returning: Vec<String>| Canary {
            value: next.draft.clone(),
            instances,
            base_version: next.base_version,
            percent: None,
            by: next.started_by.clone(),
            at: now(),
            aborted,
            returning,
        };
        let canary_rev = read.canary.as_ref().map_or(0, KeyValue::mod_revision);
        match action {
            Action::None | Action::RunGate => {}
            Action::StartWave(ids) => {
                when.push(Compare::mod_revision(config_key, CompareOp::Equal, next.base_version as i64));
                when.push(Compare::mod_revision(canary_key.clone(), CompareOp::Equal, canary_rev));
                ops.push(TxnOp::put(canary_key, canary(ids.clone(), None, Vec::new()).to_json(), None));
            }
            Action::Return(ids) => {
                when.push(Compare::mod_revision(canary_key.clone(), CompareOp::Equal, canary_rev));
                let reason = next.reason.clone().unwrap_or_else(|| "stopped".into());
                ops.push(TxnOp::put(canary_key, canary(Vec::new(), Some(reason), ids.clone()).to_json(), None));
            }
            Action::Settle => {
                when.push(Compare::mod_revision(canary_key.clone(), CompareOp::Equal, canary_rev));
                ops.push(TxnOp::delete(canary_key, None));
            }
            Action::Promote => {
                when.push(Compare::mod_revision(config_key.clone(), CompareOp::Equal, next.base_version as i64));
                when.push(Compare::mod_revision(canary_key.clone(), CompareOp::Equal, canary_rev));
                // Recorded as written by whoever started the rollout.
                ops.push(TxnOp::put(config_key, with_author(next.draft.as_bytes(), &next.started_by), None));
                ops.push(TxnOp::delete(canary_key, None));
            }
        }
        let txn = Txn::new().when(when).and_then(ops);
        let resp = self
            .bounded(crate::kv(self.client()).txn(txn))
            .await
            .map_err(|e| self.failed("advance the rollout".into(), e))?;
        if !resp.succeeded() {
            return Ok(None);
        }
        let revision = resp.header().map_or(0, |h| h.revision() as u64);
        Ok(Some((*action == Action::Promote).then_some(revision)))
    }

    /// The rollout, config and canary keys and the statuses of config
    /// `name`, in one transaction.
    async fn read_rollout(&self, name: &str) -> Result<Read, Error> {
        let layout = self.layout();
        let txn = Txn::new().and_then(vec![
            TxnOp::get(layout.rollout_key(name)?, None),
            TxnOp::get(layout.config_key(name)?, None),
            TxnOp::get(layout.canary_key(name)?, None),
            TxnOp::get(layout.instances_prefix(), Some(GetOptions::new().with_prefix())),
        ]);
        let resp = self
            .bounded(crate::kv(self.client()).txn(txn))
            .await
            .map_err(|e| self.failed(format!("read the rollout of {name}"), e))?;
        let mut gets = resp.op_responses().into_iter().map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().to_vec(),
            _ => Vec::new(),
        });
        let mut one = || gets.next().and_then(|kvs| kvs.into_iter().next());
        let (rollout, config, canary) = (one(), one(), one());
        let statuses = gets
            .next()
            .unwrap_or_default()
            .iter()
            .filter(|kv| layout.parse_status_key(kv.key()).is_some_and(|(_, config)| config == name))
            .filter_map(|kv| StatusRecord::from_json(kv.value()).ok())
            .collect();
        Ok(Read { rollout, config, canary, statuses })
    }

    fn observe(&self, name: &str, read: &Read) -> Observation {
        let canary = read.canary.as_ref().and_then(|kv| match Canary::from_json(kv.value()) {
            Ok(c) => Some(SeenCanary {
                version: kv.mod_revision() as u64,
                instances: c.instances,
                aborted: c.aborted.is_some(),
            }),
            Err(error) => {
                tracing::warn!(config = name, %error, "a canary record that is not valid JSON");
                None
            }
        });
        let mut instances: Vec<Seen> =
            read.statuses.iter().filter(|s| s.config == name).map(Seen::from_status).collect();
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        Observation {
            config_version: read.config.as_ref().map(|kv| kv.mod_revision() as u64),
            canary,
            instances,
            gate: None,
        }
    }

    fn parse_rollout(&self, name: &str, kv: &KeyValue) -> Result<Rollout, Error> {
        let mut rollout = Rollout::from_json(kv.value()).map_err(|e| Error::BadRollout {
            key: self.layout().rollout_key(name).unwrap_or_default(),
            message: e.to_string(),
        })?;
        // The promotion wrote the config key and this record in one
        // transaction: the record's revision is the promoted version.
        if rollout.phase == Phase::Done {
            rollout.version = Some(kv.mod_revision() as u64);
        }
        Ok(rollout)
    }

    async fn rollout_txn(&self, action: &str, txn: Txn) -> Result<bool, Error> {
        let resp =
            self.bounded(crate::kv(self.client()).txn(txn)).await.map_err(|e| self.failed(action.to_string(), e))?;
        Ok(resp.succeeded())
    }
}

fn in_progress(rollout: &Rollout) -> Error {
    Error::RolloutInProgress {
        config: rollout.config.clone(),
        wave: rollout.wave + 1,
        waves: rollout.plan.waves.len(),
        by: rollout.started_by.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 10;
    const SECOND: u64 = 1000;

    fn plan(waves: &str, bake_s: u64) -> Plan {
        Plan::new(parse_waves(waves).unwrap(), Duration::from_secs(bake_s))
    }

    #[test]
    fn the_gate_timeout_is_kept_and_an_older_record_reads_the_default() {
        let mut r = rollout(plan("1,100%", 5));
        r.plan.gate_timeout_ms = 1_500;
        assert_eq!(Rollout::from_json(&r.to_json()).unwrap().plan.gate_timeout_ms, 1_500);
        let mut older: serde_json::Value = serde_json::from_slice(&r.to_json()).unwrap();
        older["plan"].as_object_mut().unwrap().remove("gate_timeout_ms");
        let older = Rollout::from_json(&serde_json::to_vec(&older).unwrap()).unwrap();
        assert_eq!(older.plan.gate_timeout_ms, 60_000);
    }

    fn rollout(plan: Plan) -> Rollout {
        Rollout {
            config: "server".into(),
            plan,
            draft: "# relive-format: toml\nport = 2\n".into(),
            base_version: BASE,
            wave: 0,
            instances: Vec::new(),
            phase: Phase::Running,
            reason: None,
            since_ms: 0,
            settled: false,
            version: None,
            started_by: "alice@h".into(),
            started_at: "t".into(),
            updated_at: "t".into(),
        }
    }

    /// A simulated fleet: instances with labels, the version each
    /// answered, and the canary key.
    struct World {
        config_version: Option<u64>,
        canary: Option<SeenCanary>,
        instances: Vec<Seen>,
        revision: u64,
        /// Instances that reject every canary version.
        strict: Vec<String>,
    }

    impl World {
        fn new(n: usize) -> World {
            World::labelled((0..n).map(|i| (format!("web-{i}"), "")).collect())
        }

        /// Instances with a `zone` label (none when empty).
        fn labelled(ids: Vec<(String, &str)>) -> World {
            let instances = ids
                .into_iter()
                .map(|(id, zone)| Seen {
                    id,
                    labels: if zone.is_empty() {
                        BTreeMap::new()
                    } else {
                        BTreeMap::from([("zone".to_string(), zone.to_string())])
                    },
                    version: BASE,
                    applied_version: Some(BASE),
                    rejected: false,
                    error: None,
                })
                .collect();
            World { config_version: Some(BASE), canary: None, instances, revision: BASE, strict: Vec::new() }
        }

        fn obs(&self) -> Observation {
            Observation {
                config_version: self.config_version,
                canary: self.canary.clone(),
                instances: self.instances.clone(),
                gate: None,
            }
        }

        /// Does what a driver would do with `action` in etcd.
        fn apply(&mut self, action: &Action) {
            self.revision += 1;
            match action {
                Action::None | Action::RunGate => self.revision -= 1,
                Action::StartWave(ids) => {
                    self.canary = Some(SeenCanary { version: self.revision, instances: ids.clone(), aborted: false })
                }
                Action::Return(_) => {
                    let c = self.canary.as_mut().unwrap();
                    c.version = self.revision;
                    c.instances.clear();
                    c.aborted = true;
                }
                Action::Settle => self.canary = None,
                Action::Promote => {
                    self.canary = None;
                    self.config_version = Some(self.revision);
                }
            }
        }

        /// Every instance answers its target (the strict ones reject
        /// canaries).
        fn answer(&mut self) {
            for s in &mut self.instances {
                let target = match &self.canary {
                    Some(c) if c.instances.contains(&s.id) => c.version,
                    _ => self.config_version.unwrap(),
                };
                s.version = target;
                s.rejected = self.strict.contains(&s.id) && self.canary.as_ref().is_some_and(|c| c.version == target);
                s.error = s.rejected.then(|| "port: too low".to_string());
                if !s.rejected {
                    s.applied_version = Some(target);
                }
            }
        }
    }

    /// Steps `state` at `now` and applies the action to `world`.
    fn run(state: &mut Rollout, world: &mut World, now: u64, gate: Option<GateOutcome>) -> Action {
        let mut obs = world.obs();
        obs.gate = gate;
        let (next, action) = step(state, &obs, now);
        world.apply(&action);
        *state = next;
        action
    }

    #[test]
    fn four_waves_grow_bake_and_promote() {
        let mut world = World::new(10);
        let mut state = rollout(plan("1,10%,50%,100%", 60));
        let mut now = 0;
        let mut sizes = Vec::new();
        for wave in 0..4 {
            let Action::StartWave(ids) = run(&mut state, &mut world, now, None) else { panic!("wave {wave}") };
            sizes.push(ids.len());
            if wave > 0 {
                assert!(state.instances[wave - 1].iter().all(|id| ids.contains(id)), "a wave keeps the ones before");
            }
            // Nobody has answered yet: the wave waits.
            assert_eq!(run(&mut state, &mut world, now + SECOND, None), Action::None);
            assert_eq!(state.phase, Phase::Running);
            world.answer();
            assert_eq!(run(&mut state, &mut world, now + 2 * SECOND, None), Action::None);
            assert_eq!(state.phase, Phase::Baking);
            // The bake has not passed yet.
            assert_eq!(run(&mut state, &mut world, now + 61 * SECOND, None), Action::None);
            now += 62 * SECOND;
            if wave == 3 {
                assert_eq!(run(&mut state, &mut world, now, None), Action::Promote);
            }
        }
        assert_eq!(sizes, [1, 1, 5, 10]);
        assert_eq!(state.phase, Phase::Done);
        assert!(state.is_finished());
        assert_eq!(world.config_version, Some(world.revision));
        assert_eq!(run(&mut state, &mut world, now + SECOND, None), Action::None);
    }

    #[test]
    fn a_rejection_in_wave_two_returns_everyone_to_stable() {
        let mut world = World::new(10);
        let mut state = rollout(plan("1,50%,100%", 5));
        run(&mut state, &mut world, 0, None);
        // The strict instance is not in wave 1 but is in wave 2.
        let first = state.instances[0][0].clone();
        world.strict = world.instances.iter().map(|s| s.id.clone()).filter(|id| *id != first).take(1).collect();
        let strict = world.strict[0].clone();
        world.answer();
        run(&mut state, &mut world, SECOND, None);
        let Action::StartWave(ids) = run(&mut state, &mut world, 7 * SECOND, None) else { panic!("wave 2") };
        if !ids.contains(&strict) {
            world.strict = vec![ids.iter().find(|id| **id != first).unwrap().clone()];
        }
        world.answer();
        let Action::Return(returning) = run(&mut state, &mut world, 8 * SECOND, None) else { panic!("no stop") };
        assert_eq!(state.phase, Phase::Stopped);
        assert_eq!(returning, ids, "every instance of the wave returns");
        let reason = state.reason.clone().unwrap();
        assert!(
            reason.contains("rejected version") && reason.contains("wave 2") && reason.contains("port: too low"),
            "{reason}"
        );
        // Until they are back, the canary key stays (marked aborted).
        assert_eq!(run(&mut state, &mut world, 9 * SECOND, None), Action::None);
        world.answer();
        assert_eq!(run(&mut state, &mut world, 10 * SECOND, None), Action::Settle);
        assert!(state.is_finished());
        assert!(world.canary.is_none());
        assert!(world.instances.iter().all(|s| s.applied_version == Some(BASE)));
    }

    #[test]
    fn max_rejected_lets_that_many_reject() {
        let mut world = World::new(4);
        let mut p = plan("100%", 0);
        p.max_rejected = 1;
        let mut state = rollout(p);
        world.strict = vec!["web-2".into()];
        run(&mut state, &mut world, 0, None);
        world.answer();
        run(&mut state, &mut world, SECOND, None);
        assert_eq!(state.phase, Phase::Baking);
        assert_eq!(run(&mut state, &mut world, 2 * SECOND, None), Action::Promote);
        // Two rejections with max 1: stop.
        let mut world = World::new(4);
        let mut p = plan("100%", 0);
        p.max_rejected = 1;
        let mut state = rollout(p);
        world.strict = vec!["web-2".into(), "web-3".into()];
        run(&mut state, &mut world, 0, None);
        world.answer();
        assert!(matches!(run(&mut state, &mut world, SECOND, None), Action::Return(_)));
        assert!(state.reason.unwrap().contains("web-2, web-3 rejected"));
    }

    #[test]
    fn an_instance_that_vanishes_stops_it() {
        let mut world = World::new(3);
        let mut state = rollout(plan("2,100%", 10));
        run(&mut state, &mut world, 0, None);
        world.answer();
        run(&mut state, &mut world, SECOND, None);
        let gone = state.instances[0][1].clone();
        world.instances.retain(|s| s.id != gone);
        assert!(matches!(run(&mut state, &mut world, 2 * SECOND, None), Action::Return(_)));
        let reason = state.reason.clone().unwrap();
        assert!(reason.starts_with(&format!("{gone} vanished")), "{reason}");
        // A vanished instance does not hold up the return.
        world.answer();
        assert_eq!(run(&mut state, &mut world, 3 * SECOND, None), Action::Settle);
    }

    #[test]
    fn the_gate_runs_after_each_bake_and_a_failure_stops() {
        let mut world = World::new(3);
        let mut p = plan("1,100%", 5);
        p.gate = Some("check".into());
        let mut state = rollout(p);
        run(&mut state, &mut world, 0, None);
        world.answer();
        run(&mut state, &mut world, SECOND, None);
        assert_eq!(run(&mut state, &mut world, 2 * SECOND, None), Action::None, "baking");
        assert_eq!(run(&mut state, &mut world, 6 * SECOND, None), Action::RunGate);
        assert!(matches!(run(&mut state, &mut world, 6 * SECOND, Some(GateOutcome::Passed)), Action::StartWave(_)));
        world.answer();
        run(&mut state, &mut world, 7 * SECOND, None);
        assert_eq!(run(&mut state, &mut world, 12 * SECOND, None), Action::RunGate);
        let failed = Some(GateOutcome::Failed("exit status 3".into()));
        assert!(matches!(run(&mut state, &mut world, 12 * SECOND, failed), Action::Return(_)));
        assert_eq!(state.reason.as_deref(), Some("the gate failed after wave 2: exit status 3"));
    }

    #[test]
    fn a_wave_that_does_not_apply_in_time_stops() {
        let mut world = World::new(2);
        let mut p = plan("100%", 5);
        p.apply_timeout_ms = 30 * SECOND;
        let mut state = rollout(p);
        run(&mut state, &mut world, 0, None);
        // web-0 applies the canary, web-1 never answers.
        let canary = world.canary.as_ref().unwrap().version;
        world.instances[0].version = canary;
        world.instances[0].applied_version = Some(canary);
        assert_eq!(run(&mut state, &mut world, 29 * SECOND, None), Action::None);
        assert!(matches!(run(&mut state, &mut world, 30 * SECOND, None), Action::Return(_)));
        let reason = state.reason.clone().unwrap();
        assert_eq!(reason, format!("web-1 did not apply version {canary} within 30s"));
        // Instances that never answer cannot hold the canary forever.
        assert_eq!(run(&mut state, &mut world, 31 * SECOND, None), Action::None);
        assert_eq!(run(&mut state, &mut world, 61 * SECOND, None), Action::Settle);
    }

    #[test]
    fn label_waves_take_every_instance_with_the_label() {
        let ids = [("a1", "a"), ("a2", "a"), ("b1", "b"), ("c1", "")];
        let mut world = World::labelled(ids.iter().map(|(i, z)| (i.to_string(), *z)).collect());
        let mut state = rollout(plan("zone=a,zone=b,100%", 0));
        let mut sets = Vec::new();
        let mut now = 0;
        loop {
            now += SECOND;
            match run(&mut state, &mut world, now, None) {
                Action::StartWave(ids) => sets.push(ids),
                Action::Promote => break,
                _ => world.answer(),
            }
        }
        assert_eq!(sets, [vec!["a1", "a2"], vec!["a1", "a2", "b1"], vec!["a1", "a2", "b1", "c1"]]);
        // A label no live instance has stops the rollout before any wave.
        let mut state = rollout(plan("zone=z,100%", 0));
        let mut world = World::labelled(ids.iter().map(|(i, z)| (i.to_string(), *z)).collect());
        assert_eq!(run(&mut state, &mut world, 0, None), Action::None);
        assert_eq!(state.phase, Phase::Stopped);
        assert!(state.settled, "no canary was written: nothing to undo");
        assert_eq!(state.reason.as_deref(), Some("wave 1 (zone=z) selects no live instance"));
    }

    #[test]
    fn a_canary_removed_or_a_config_pushed_outside_stops_it() {
        let mut world = World::new(2);
        let mut state = rollout(plan("1,100%", 5));
        run(&mut state, &mut world, 0, None);
        world.canary = None;
        assert_eq!(run(&mut state, &mut world, SECOND, None), Action::None);
        assert_eq!((state.phase, state.settled), (Phase::Stopped, true));
        assert_eq!(state.reason.as_deref(), Some("the canary was removed outside the rollout"));

        let mut world = World::new(2);
        let mut state = rollout(plan("1,100%", 5));
        run(&mut state, &mut world, 0, None);
        world.config_version = Some(99);
        assert!(matches!(run(&mut state, &mut world, SECOND, None), Action::Return(_)));
        assert_eq!(state.reason.as_deref(), Some("server changed to version 99 outside the rollout"));
        // They return to the version pushed, not to the base.
        world.answer();
        assert_eq!(run(&mut state, &mut world, 2 * SECOND, None), Action::Settle);
    }

    #[test]
    fn a_canary_started_or_changed_outside_is_left_alone_or_stops_it() {
        let mut world = World::new(3);
        world.canary = Some(SeenCanary { version: 11, instances: vec!["web-2".into()], aborted: false });
        let mut state = rollout(plan("1,100%", 5));
        assert_eq!(run(&mut state, &mut world, 0, None), Action::None, "someone else's canary is not overwritten");
        assert_eq!((state.phase, state.settled), (Phase::Stopped, true));
        assert_eq!(state.reason.as_deref(), Some("a canary of server was started outside the rollout"));

        let mut world = World::new(3);
        let mut state = rollout(plan("1,100%", 5));
        run(&mut state, &mut world, 0, None);
        world.canary.as_mut().unwrap().instances = vec!["web-0".into(), "web-1".into(), "web-2".into()];
        assert!(matches!(run(&mut state, &mut world, SECOND, None), Action::Return(_)));
        assert_eq!(state.reason.as_deref(), Some("the canary was changed outside the rollout"));
    }

    #[test]
    fn an_operator_abort_returns_the_instances_then_settles() {
        let mut world = World::new(3);
        let mut state = rollout(plan("2,100%", 5));
        run(&mut state, &mut world, 0, None);
        world.answer();
        state = state.aborted("by alice", SECOND);
        assert_eq!(state.phase, Phase::Aborted);
        let Action::Return(ids) = run(&mut state, &mut world, SECOND, None) else { panic!("no return") };
        assert_eq!(ids, state.instances[0]);
        world.answer();
        assert_eq!(run(&mut state, &mut world, 2 * SECOND, None), Action::Settle);
        assert!(state.is_finished());
        // Aborting what is over changes nothing.
        assert_eq!(state.aborted("again", 3 * SECOND), state);
    }

    #[test]
    fn a_step_that_changes_nothing_returns_the_same_state() {
        let mut world = World::new(2);
        let mut state = rollout(plan("100%", 60));
        run(&mut state, &mut world, 0, None);
        world.answer();
        run(&mut state, &mut world, SECOND, None);
        let (next, action) = step(&state, &world.obs(), 2 * SECOND);
        assert_eq!((next, action), (state, Action::None), "a driver writes nothing while baking");
    }

    #[test]
    fn waves_parse_and_round_trip_as_text() {
        assert_eq!(
            parse_waves("1, 10%,zone=a,100%").unwrap(),
            [
                Wave::Count(1),
                Wave::Percent(10),
                Wave::Label { key: "zone".into(), value: "a".into() },
                Wave::Percent(100)
            ]
        );
        for bad in ["", "0", "0%", "101%", "x", "=a", "zone=a,b=c=d", "1,,2", "-1"] {
            assert!(parse_waves(bad).is_err(), "{bad:?} accepted");
        }
        let state = rollout(plan("1,50%,zone=a", 300));
        let json: serde_json::Value = serde_json::from_slice(&state.to_json()).unwrap();
        assert_eq!(json["plan"]["waves"], serde_json::json!(["1", "50%", "zone=a"]));
        assert_eq!(json["phase"], "running");
        assert_eq!(Rollout::from_json(&state.to_json()).unwrap(), state);
        assert!(Rollout::from_json(br#"{"plan":{"waves":["0%"]}}"#).is_err());
    }
}
