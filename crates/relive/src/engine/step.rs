//! One step of the engine: the configs that changed together, prepared by
//! every subscriber of each config and of each group they are in, then
//! committed together, as one change set.
//!
//! Architecture invariant: a change set is applied whole or not at all.
//! Every value of a step is prepared (deserialized, validated) before any
//! is committed; a group whose member is refused, or whose own validators
//! refuse the combination, refuses all of its members' new values; a
//! published set ([`Worker::step`] with `whole`) is refused entirely when
//! any of its configs is. Commits cannot fail, and nothing runs between
//! them.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, Value};

use super::sink::{Commit, MemberError, Members};
use super::{Batch, ConfigErrorKind, HOSTILE_COOLDOWN, Prepared, Worker, notify};
use crate::document::{Document, Sources};
use crate::error::ConfigError;
use crate::event::ChangeEvent;

/// One config in a step, and where its new value comes from.
pub(super) struct Input {
    pub name: String,
    /// When its change was first seen.
    pub first_seen: Instant,
    /// The documents given to [`publish`](crate::HotReloadManager::publish),
    /// parsed; `None` for a config fed by its files.
    pub published: Option<Sources>,
}

impl Input {
    /// A file-fed config that changed at `first_seen`.
    pub fn files(name: String, first_seen: Instant) -> Input {
        Input { name, first_seen, published: None }
    }
}

/// What became of each config of a step.
pub(super) struct StepResult {
    /// The events to emit, the set's closing event last.
    pub events: Vec<ChangeEvent>,
    /// Per config: whether its live value changed, or why it was refused.
    pub outcomes: Vec<(String, Result<bool, ConfigError>)>,
    /// The change set's id, if anything was applied.
    pub applied: Option<crate::ChangeSetId>,
    /// The first config refused in its own right, and why.
    pub refused: Option<(String, ConfigError)>,
}

/// One config as the step carries it.
struct Item {
    name: String,
    /// The config whose refusal refused this one, if not its own.
    cause: Option<String>,
    first_seen: Instant,
    external: bool,
    sources: Option<Sources>,
    merged: Option<Value>,
    state: State,
}

enum State {
    /// No such config, and there never was one.
    Absent,
    /// The same data as the live value.
    Unchanged,
    /// Accepted by its own subscribers so far.
    Ready(Vec<Commit>),
    /// Refused; the last good value stays.
    Rejected(ConfigError),
    /// A write raced with the read: evaluated again once its files settle.
    Deferred,
}

/// A group in a step.
enum GroupStep {
    /// No member has a new value.
    Untouched,
    /// A member has a new value; not prepared yet.
    Pending,
    Prepared(Vec<Commit>),
    /// Refused, or deferred with a member: nothing of it commits.
    Failed,
}

impl Worker {
    /// Loads, prepares and commits the configs of `inputs` as one change
    /// set. With `whole`, one refusal refuses them all (a published set);
    /// otherwise configs stand alone, except that groups stand or fall
    /// with all their members.
    pub(super) fn step(&mut self, inputs: Vec<Input>, batch: Batch, whole: bool) -> StepResult {
        let mut items: Vec<Item> = Vec::with_capacity(inputs.len());
        let mut queue: std::collections::VecDeque<Input> = inputs.into();
        let mut seen = std::collections::BTreeSet::new();
        while let Some(input) = queue.pop_front() {
            if !seen.insert(input.name.clone()) {
                continue;
            }
            // A change to a member is validated with the other members as
            // they are now on disk, not as they were last applied: one
            // refused with its group before is tried again with it.
            let first_seen = input.first_seen;
            for group in self.groups.iter().filter(|g| g.members.contains(&input.name)) {
                for m in group.members.iter().filter(|m| !seen.contains(*m)) {
                    queue.push_back(Input::files(m.clone(), first_seen));
                }
            }
            if let Some(item) = self.load(input) {
                items.push(item);
            }
        }
        let mut groups: Vec<GroupStep> = self
            .groups
            .iter_mut()
            .map(|g| {
                g.sinks.retain(|s| !s.is_closed());
                let touched = g.members.iter().any(|m| items.iter().any(|i| &i.name == m && is_ready(i)));
                if touched { GroupStep::Pending } else { GroupStep::Untouched }
            })
            .collect();
        self.decide_groups(&mut items, &mut groups);
        if whole && let Some(refused) = items.iter().find(|i| matches!(i.state, State::Rejected(_))) {
            let (name, error) = (refused.name.clone(), rejection(refused).clone());
            let prefix = format!("not applied: `{name}` in the same change set was rejected: ");
            for item in items.iter_mut().filter(|i| is_ready(i)) {
                item.state = State::Rejected(error.clone().prefixed(&prefix));
                item.cause = Some(name.clone());
            }
            groups.iter_mut().for_each(|g| *g = GroupStep::Failed);
        }
        self.fence_step(&mut items, &mut groups, batch);
        self.commit_step(items, groups, batch)
    }

    /// Loads one config's new value and prepares it with its own
    /// subscribers. `None` for a file change to a published config.
    fn load(&mut self, input: Input) -> Option<Item> {
        let Input { name, first_seen, published } = input;
        let external = published.is_some() || self.configs.get(&name).is_some_and(|c| c.external);
        let loaded = match published {
            Some(sources) => {
                self.configs.entry(name.clone()).or_default().external = true;
                Ok(sources)
            }
            None if external => return None,
            None => {
                let loaded = self.files.sources(&name, self.s.env.as_deref(), &self.s.config_dir, &self.s.decode);
                let refs = match &loaded {
                    Ok(sources) => sources.references(),
                    Err(_) => self.files.referenced(&name),
                };
                self.references.set(&name, &refs, Instant::now());
                loaded
            }
        };
        let mut item =
            Item { name, cause: None, first_seen, external, sources: None, merged: None, state: State::Absent };
        match loaded {
            Ok(sources) => {
                let merged = sources.merge();
                let state = self.configs.entry(item.name.clone()).or_default();
                item.state = match state.prepare(&merged, &sources, self.s.validate) {
                    Prepared::Unchanged => State::Unchanged,
                    Prepared::Rejected(error) => State::Rejected(error),
                    Prepared::Ready(commits) => State::Ready(commits),
                };
                item.sources = Some(sources);
                item.merged = Some(merged);
            }
            Err(error) => {
                let had_value = self.configs.get(&item.name).is_some_and(|c| c.value.is_some());
                // A config that never existed is not an error; one whose
                // files went away keeps its last good value, and says so.
                if error.kind() == ConfigErrorKind::Missing && !had_value {
                    return Some(item);
                }
                if error.kind() == ConfigErrorKind::Limit {
                    let until = Instant::now() + HOSTILE_COOLDOWN;
                    let files: Vec<_> = self.files.of_config(&item.name).cloned().collect();
                    self.cooldown.extend(files.into_iter().map(|f| (f, until)));
                }
                item.state = State::Rejected(error);
            }
        }
        Some(item)
    }

    /// Prepares each touched group with its members' new values (and the
    /// others' live ones), until no group changes its mind: a group fails
    /// with any member refused, and a failed group refuses its members'
    /// new values, which may fail another group they are in.
    fn decide_groups(&mut self, items: &mut [Item], groups: &mut [GroupStep]) {
        loop {
            let mut progress = false;
            #[allow(clippy::needless_range_loop)] // `prepare_group` borrows self
            for gi in 0..groups.len() {
                if matches!(groups[gi], GroupStep::Untouched | GroupStep::Failed) {
                    continue;
                }
                let members = self.groups[gi].members.clone();
                let refused = members
                    .iter()
                    .find_map(|m| items.iter().find(|i| &i.name == m && matches!(i.state, State::Rejected(_))));
                if let Some(refused) = refused {
                    let (name, error) = (refused.name.clone(), rejection(refused).clone());
                    let prefix = format!("not applied: its group's member `{name}` was rejected: ");
                    refuse(items, &members, &error.prefixed(&prefix), &name);
                    groups[gi] = GroupStep::Failed;
                    progress = true;
                    continue;
                }
                if !matches!(groups[gi], GroupStep::Pending) {
                    continue;
                }
                groups[gi] = match self.prepare_group(gi, items) {
                    Ok(commits) => GroupStep::Prepared(commits),
                    Err(MemberError { member, error }) => {
                        let error = *error;
                        for item in items.iter_mut().filter(|i| members.contains(&i.name) && is_ready(i)) {
                            if item.name != member {
                                item.cause = Some(member.clone());
                            }
                            item.state = State::Rejected(if item.name == member {
                                error.clone()
                            } else {
                                let prefix = format!("not applied: its group refused member `{member}`: ");
                                error.clone().prefixed(&prefix)
                            });
                        }
                        if !items.iter().any(|i| i.name == member && matches!(i.state, State::Rejected(_))) {
                            // The error is about a member that did not
                            // change: its partners' new values are refused
                            // on its account, and the event says so.
                            tracing::warn!(member, error = %error, "group refused a change because of a member");
                        }
                        GroupStep::Failed
                    }
                };
                progress = true;
            }
            if !progress {
                return;
            }
        }
    }

    /// The group's value from its members' new values and the others' live
    /// ones, prepared by each of its subscribers.
    fn prepare_group(&mut self, gi: usize, items: &[Item]) -> Result<Vec<Commit>, MemberError> {
        let members = self.groups[gi].members.clone();
        let mut object = Map::new();
        let mut sources: Vec<Sources> = Vec::with_capacity(members.len());
        for m in &members {
            let new = items.iter().find(|i| &i.name == m && is_ready(i));
            let (value, src) = match new {
                Some(item) => (item.merged.clone(), item.sources.clone()),
                None => (self.configs.get(m).and_then(|c| c.value.as_deref().cloned()), self.current_sources(m).ok()),
            };
            let Some(value) = value else {
                let error = ConfigError::new(ConfigErrorKind::Missing, format!("group member `{m}` has no value"));
                return Err(MemberError::new(m.clone(), error));
            };
            object.insert(m.clone(), value);
            sources.push(src.unwrap_or_default());
        }
        let value = Value::Object(object);
        let members = Members { members: members.iter().map(String::as_str).zip(sources.iter()).collect() };
        let validate = self.s.validate;
        let mut commits = Vec::with_capacity(self.groups[gi].sinks.len());
        for sink in &self.groups[gi].sinks {
            let prepared =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink.prepare(&value, &members, validate)));
            match prepared {
                Ok(Ok(commit)) => commits.push(commit),
                Ok(Err(error)) => return Err(error),
                Err(panic) => {
                    let first = members.members.first().map_or("", |(n, _)| n).to_string();
                    return Err(MemberError::new(first, super::apply::panicked(&*panic)));
                }
            }
        }
        Ok(commits)
    }

    /// The documents of config `name`'s live value, to locate errors.
    pub(super) fn current_sources(&mut self, name: &str) -> Result<Sources, ConfigError> {
        match self.configs.get(name) {
            Some(c) if c.external => Ok(c.published.clone().unwrap_or_default()),
            _ => self.files.sources(name, self.s.env.as_deref(), &self.s.config_dir, &self.s.decode),
        }
    }

    /// Parsing and validating took time: looks at the kernel queue once
    /// more, so that a write which raced with the read (a multi-page write
    /// caught mid-copy, a truncation queued late) defers the value instead
    /// of delivering it; the path is pending again and is re-read when its
    /// writer is done. Reads under a lease cannot be torn, so only a batch
    /// with a read that had none needs this. A deferred member defers its
    /// groups' other members.
    fn fence_step(&mut self, items: &mut [Item], groups: &mut [GroupStep], batch: Batch) {
        if !(self.intake.has_events() && batch.unleased && items.iter().any(is_ready)) {
            return;
        }
        self.fence();
        for item in items.iter_mut().filter(|i| is_ready(i)) {
            let pending =
                item.sources.as_ref().is_some_and(|s| s.docs.iter().any(|d| self.coalescer.is_pending(d.doc.origin())));
            if pending {
                item.state = State::Deferred;
            }
        }
        loop {
            let mut progress = false;
            for (gi, group) in groups.iter_mut().enumerate() {
                if !matches!(group, GroupStep::Prepared(_)) {
                    continue;
                }
                let members = &self.groups[gi].members;
                if items.iter().any(|i| members.contains(&i.name) && matches!(i.state, State::Deferred)) {
                    for item in items.iter_mut().filter(|i| members.contains(&i.name) && is_ready(i)) {
                        item.state = State::Deferred;
                    }
                    *group = GroupStep::Failed;
                    progress = true;
                }
            }
            if !progress {
                break;
            }
        }
        for item in items.iter().filter(|i| matches!(i.state, State::Deferred)) {
            self.deferred.entry(item.name.clone()).or_insert(item.first_seen);
        }
    }

    /// Commits every accepted value (the configs', then the groups'),
    /// records every outcome, and says what happened.
    fn commit_step(&mut self, items: Vec<Item>, groups: Vec<GroupStep>, batch: Batch) -> StepResult {
        let set = Some(batch.change_set);
        let mut committed = Vec::new();
        let mut rest = Vec::new();
        // Every commit first, one after the other, so that no subscriber
        // of the set sees one member new and another old for longer than
        // the commits take.
        for mut item in items {
            if !is_ready(&item) {
                rest.push(item);
                continue;
            }
            if let State::Ready(commits) = std::mem::replace(&mut item.state, State::Unchanged) {
                let merged = Arc::new(item.merged.take().expect("a ready config has a value"));
                let sources = item.sources.take().expect("a ready config has sources");
                let secrets = sources.secrets();
                let state = self.configs.get_mut(&item.name).expect("prepared in load");
                let old = state.commit(commits, Arc::clone(&merged), Arc::clone(&secrets));
                committed.push((item, merged, sources, secrets, old));
            } else {
                rest.push(item);
            }
        }
        for group in groups {
            if let GroupStep::Prepared(commits) = group {
                commits.into_iter().for_each(|commit| commit());
            }
        }
        let mut events = Vec::new();
        let mut outcomes = Vec::new();
        let mut applied = Vec::new();
        let mut refused = None;
        for (item, merged, sources, secrets, old) in committed {
            let docs = file_docs(&sources);
            self.record(&item.name, docs, Some((Arc::clone(&merged), Arc::clone(&secrets))), None, item.external, set);
            let duration = item.first_seen.elapsed();
            let name = item.name.clone();
            metrics::counter!("relive_reloads_total", "config" => name.clone(), "result" => "applied").increment(1);
            metrics::histogram!("relive_reload_duration_seconds", "config" => name.clone())
                .record(duration.as_secs_f64());
            tracing::info!(config = %name, duration_us = duration.as_micros() as u64, change_set = %batch.change_set, "config applied");
            if self.notifier.has_listeners() {
                let redactor = &self.s.redactor;
                let old_value = old.map_or(Value::Null, |(v, s)| redactor.redact_secrets(&v, &s));
                events.push(ChangeEvent::ConfigChanged {
                    config_name: name.clone(),
                    old_value: Arc::new(old_value),
                    new_value: Arc::new(redactor.redact_secrets(&merged, &secrets)),
                    files: sources.files(),
                });
                events.push(ChangeEvent::ReloadCompleted { config_name: name.clone(), duration });
            }
            outcomes.push((name.clone(), Ok(true)));
            applied.push(name);
        }
        for item in rest {
            match item.state {
                State::Unchanged => {
                    // Same data (whitespace, comments, key order): nothing
                    // to do. The history is told all the same: a rollback
                    // to the live value is done when its content comes back.
                    if let (Some(sources), Some(merged)) = (&item.sources, item.merged) {
                        let value = Some((Arc::new(merged), sources.secrets()));
                        self.record(&item.name, file_docs(sources), value, None, item.external, None);
                    }
                    outcomes.push((item.name, Ok(false)));
                }
                State::Rejected(error) => {
                    let (docs, value) = match (&item.sources, item.merged) {
                        (Some(sources), Some(merged)) => {
                            (file_docs(sources), Some((Arc::new(merged), sources.secrets())))
                        }
                        _ => (self.files.documents(&item.name, self.s.env.as_deref()), None),
                    };
                    self.record(&item.name, docs, value, Some(&error), item.external, set);
                    events.push(notify::rejected(&item.name, error.clone()));
                    if item.cause.is_none() && refused.is_none() {
                        refused = Some((item.name.clone(), error.clone()));
                    }
                    outcomes.push((item.name, Err(error)));
                }
                State::Deferred | State::Absent => outcomes.push((item.name, Ok(false))),
                State::Ready(_) => unreachable!("committed above"),
            }
        }
        let applied_id = (!applied.is_empty()).then_some(batch.change_set);
        events.extend(super::set_applied(batch, applied));
        StepResult { events, outcomes, applied: applied_id, refused }
    }
}

fn is_ready(item: &Item) -> bool {
    matches!(item.state, State::Ready(_))
}

fn rejection(item: &Item) -> &ConfigError {
    match &item.state {
        State::Rejected(error) => error,
        _ => unreachable!("called on a rejected item"),
    }
}

/// Refuses the new values of `members` with `error`.
fn refuse(items: &mut [Item], members: &[String], error: &ConfigError, cause: &str) {
    for item in items.iter_mut().filter(|i| members.contains(&i.name) && is_ready(i)) {
        item.state = State::Rejected(error.clone());
        item.cause = Some(cause.to_string());
    }
}

/// What history records: the files, not the environment layer.
fn file_docs(sources: &Sources) -> Vec<Document> {
    sources.docs.iter().filter(|p| !p.env).map(|p| p.doc.clone()).collect()
}
