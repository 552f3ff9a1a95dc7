//! Tests for the coalescer.
//!
//! Most behaviour is described as data: each file in `cases/` is a scenario of
//! timed signals and expectations, replayed against a fresh [`Coalescer`] with
//! synthetic time. Keeping scenarios as data makes the editor save sequences
//! easy to read and to extend without touching Rust code.

use super::*;
use serde::Deserialize;
use std::collections::BTreeSet as Set;

/// Every scenario file, embedded at compile time so the tests need no runtime
/// path to find them; `every_case_file_is_listed` guards against forgetting one.
macro_rules! cases {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("cases/", $name, ".toml")))),*]
    };
}

const CASES: &[(&str, &str)] = cases![
    "atomic_save",
    "burst_many_paths",
    "burst_one_path",
    "created_complete",
    "delete_no_recreate",
    "delete_then_write",
    "jetbrains_safe_write",
    "moved_in",
    "in_place_write",
    "never_closes",
    "ordering_and_clear",
    "polling_long_quiet",
    "polling_quiet",
    "retry_backoff",
    "retry_interrupted",
    "throttle",
    "torn_write",
    "touch",
    "vim_backup_rename",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    description: String,
    settings: CaseSettings,
    steps: Vec<Step>,
}

/// Timing in milliseconds; an omitted backoff means [`Backoff::default`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseSettings {
    write_timeout: u64,
    delete_grace: u64,
    quiet: Option<u64>,
    backoff: Option<CaseBackoff>,
    #[serde(default)]
    min_interval: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseBackoff {
    base: u64,
    factor: u32,
    max_delay: u64,
    max_attempts: u32,
}

/// One step of a scenario. Exactly one kind of action is allowed per step; the
/// fields are flat (rather than an untagged enum) so that a typo produces a
/// precise error instead of "did not match any variant".
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    /// Milliseconds since the start of the scenario; never decreasing.
    at: u64,

    /// Signal steps: `signal` (or a sequence in `signals`) for `path`, with
    /// `from` for "moved-in". With `repeat = n`, the sequence is observed n
    /// times, `every` ms apart, and `{i}` in `path` becomes the repetition index.
    path: Option<String>,
    signal: Option<String>,
    signals: Option<Vec<String>>,
    from: Option<String>,
    repeat: Option<u64>,
    every: Option<u64>,

    /// take_ready must return exactly this list.
    take: Option<Vec<Expected>>,
    /// take_ready must return this many entries (for bursts too big to list).
    take_count: Option<usize>,

    /// next_deadline must be this many ms, or the string "none".
    deadline: Option<toml::Value>,

    /// Retry steps: retry(path, attempt, first_seen) must return `scheduled`.
    retry: Option<String>,
    attempt: Option<u32>,
    first_seen: Option<u64>,
    scheduled: Option<bool>,

    /// State checks: these paths are pending, these are not, and the count.
    pending: Option<Vec<String>>,
    idle: Option<Vec<String>>,
    len: Option<usize>,

    /// `clear = true` drops every pending entry.
    clear: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    path: String,
    moved_from: Option<String>,
    first_seen: u64,
    #[serde(default)]
    attempt: u32,
}

fn ms(value: u64) -> Duration {
    Duration::from_millis(value)
}

fn parse_signal(name: &str, from: Option<&str>) -> Result<Signal, String> {
    if from.is_some() && name != "moved-in" {
        return Err(format!("`from` only applies to \"moved-in\", not {name:?}"));
    }
    Ok(match name {
        "modified" => Signal::Modified,
        "closed" => Signal::Closed,
        "created" => Signal::Created { complete: false },
        "created-complete" => Signal::Created { complete: true },
        "removed" => Signal::Removed,
        "moved-in" => Signal::MovedIn { from: from.map(PathBuf::from) },
        "touched" => Signal::Touched,
        other => return Err(format!("unknown signal {other:?}")),
    })
}

/// Checks the coalescer's internal bookkeeping: the deadline index must hold
/// exactly one item per entry, at that entry's deadline. A leak here would make
/// bursts grow memory and next_deadline report times when nothing is due.
fn assert_consistent(coalescer: &Coalescer) {
    assert_eq!(coalescer.deadlines.len(), coalescer.entries.len(), "deadline index and entries disagree in size");
    for (deadline, key) in &coalescer.deadlines {
        let entry = coalescer.entries.get(key).unwrap_or_else(|| panic!("indexed path {key:?} has no entry"));
        assert_eq!(*deadline, entry.deadline, "stale deadline for {key:?}");
    }
}

/// Replays one scenario, returning a description of the first mismatch.
fn run_case(source: &str) -> Result<(), String> {
    let case: Case = toml::from_str(source).map_err(|e| format!("bad case file: {e}"))?;
    if case.description.trim().is_empty() {
        return Err("the case needs a description".into());
    }
    let backoff = case.settings.backoff.as_ref().map_or_else(Backoff::default, |b| Backoff {
        base: ms(b.base),
        factor: b.factor,
        max_delay: ms(b.max_delay),
        max_attempts: b.max_attempts,
    });
    let mut coalescer = Coalescer::new(Timing {
        write_timeout: ms(case.settings.write_timeout),
        delete_grace: ms(case.settings.delete_grace),
        quiet: case.settings.quiet.map(ms),
        backoff,
        min_interval: ms(case.settings.min_interval),
    });
    let start = Instant::now();
    let mut clock = 0;
    let mut checks = 0;
    for (index, step) in case.steps.iter().enumerate() {
        run_step(&mut coalescer, start, &mut clock, step)
            .map_err(|e| format!("step {} (at = {}): {e}", index + 1, step.at))?;
        assert_consistent(&coalescer);
        if step.signal.is_none() && step.signals.is_none() && step.clear.is_none() {
            checks += 1;
        }
    }
    if checks == 0 {
        return Err("the case checks nothing".into());
    }
    Ok(())
}

fn run_step(coalescer: &mut Coalescer, start: Instant, clock: &mut u64, step: &Step) -> Result<(), String> {
    if step.at < *clock {
        return Err(format!("time goes backwards (previous step ended at {clock})"));
    }
    *clock = step.at;
    let now = start + ms(step.at);
    let kinds = [
        step.signal.is_some() || step.signals.is_some(),
        step.take.is_some() || step.take_count.is_some(),
        step.deadline.is_some(),
        step.retry.is_some(),
        step.pending.is_some() || step.idle.is_some() || step.len.is_some(),
        step.clear.is_some(),
    ];
    if kinds.iter().filter(|kind| **kind).count() != 1 {
        return Err("a step must do exactly one kind of thing".into());
    }

    if step.signal.is_some() || step.signals.is_some() {
        let names: Vec<&str> = match (&step.signal, &step.signals) {
            (Some(one), None) => vec![one.as_str()],
            (None, Some(many)) if !many.is_empty() => many.iter().map(String::as_str).collect(),
            _ => return Err("use either `signal` or a non-empty `signals`".into()),
        };
        let path = step.path.as_deref().ok_or("a signal step needs `path`")?;
        let repeat = step.repeat.unwrap_or(1);
        let every = step.every.unwrap_or(0);
        if repeat == 0 {
            return Err("`repeat` must be at least 1".into());
        }
        for i in 0..repeat {
            let at = step.at + i * every;
            let path = PathBuf::from(path.replace("{i}", &i.to_string()));
            for name in &names {
                let signal = parse_signal(name, step.from.as_deref())?;
                coalescer.observe(&path, signal, start + ms(at));
            }
            *clock = at;
        }
        return Ok(());
    }
    if step.path.is_some() || step.from.is_some() || step.repeat.is_some() || step.every.is_some() {
        return Err("`path`, `from`, `repeat` and `every` belong to signal steps".into());
    }

    if step.take.is_some() || step.take_count.is_some() {
        let due = coalescer.next_deadline().is_some_and(|deadline| deadline <= now);
        let taken = coalescer.take_ready(now);
        // next_deadline must agree with take_ready, before and after.
        if due == taken.is_empty() {
            return Err(format!("next_deadline said due = {due} but take_ready returned {} entries", taken.len()));
        }
        if let Some(deadline) = coalescer.next_deadline() {
            if deadline <= now {
                return Err("something is still due after take_ready".into());
            }
        }
        for ready in &taken {
            if coalescer.is_pending(&ready.path) {
                return Err(format!("{:?} is still pending after being taken", ready.path));
            }
        }
        if !taken.windows(2).all(|pair| pair[0].path < pair[1].path) {
            return Err("take_ready is not ordered by path".into());
        }
        if let Some(count) = step.take_count {
            if taken.len() != count {
                return Err(format!("expected {count} ready, got {}", taken.len()));
            }
        }
        if let Some(expected) = &step.take {
            let expected: Vec<Ready> = expected
                .iter()
                .map(|e| Ready {
                    path: PathBuf::from(&e.path),
                    moved_from: e.moved_from.as_ref().map(PathBuf::from),
                    first_seen: start + ms(e.first_seen),
                    attempt: e.attempt,
                })
                .collect();
            if taken != expected {
                return Err(format!(
                    "take_ready returned\n  {}\nexpected\n  {}",
                    describe(start, &taken),
                    describe(start, &expected)
                ));
            }
        }
        return Ok(());
    }

    if let Some(spec) = &step.deadline {
        let expected = match spec {
            toml::Value::Integer(at) => {
                let at = u64::try_from(*at).map_err(|_| "negative deadline")?;
                Some(start + ms(at))
            }
            toml::Value::String(none) if none == "none" => None,
            other => return Err(format!("deadline must be ms or \"none\", not {other}")),
        };
        let actual = coalescer.next_deadline();
        if actual != expected {
            return Err(format!(
                "next_deadline is {} ms, expected {} ms",
                describe_instant(start, actual),
                describe_instant(start, expected)
            ));
        }
        return Ok(());
    }

    if let Some(path) = &step.retry {
        let (Some(attempt), Some(first_seen), Some(expected)) = (step.attempt, step.first_seen, step.scheduled) else {
            return Err("a retry step needs `attempt`, `first_seen` and `scheduled`".into());
        };
        let len_before = coalescer.len();
        let was_pending = coalescer.is_pending(Path::new(path));
        let scheduled = coalescer.retry(Path::new(path), attempt, start + ms(first_seen), now);
        if scheduled != expected {
            return Err(format!("retry returned {scheduled}, expected {expected}"));
        }
        let is_pending = coalescer.is_pending(Path::new(path));
        if scheduled && !is_pending {
            return Err("a scheduled retry must leave the path pending".into());
        }
        if !scheduled && (coalescer.len() != len_before || is_pending != was_pending) {
            return Err("an exhausted retry must schedule nothing".into());
        }
        return Ok(());
    }
    if step.attempt.is_some() || step.first_seen.is_some() || step.scheduled.is_some() {
        return Err("`attempt`, `first_seen` and `scheduled` belong to retry steps".into());
    }

    if step.pending.is_some() || step.idle.is_some() || step.len.is_some() {
        for path in step.pending.iter().flatten() {
            if !coalescer.is_pending(Path::new(path)) {
                return Err(format!("{path:?} should be pending"));
            }
        }
        for path in step.idle.iter().flatten() {
            if coalescer.is_pending(Path::new(path)) {
                return Err(format!("{path:?} should not be pending"));
            }
        }
        if let Some(len) = step.len {
            if coalescer.len() != len {
                return Err(format!("len is {}, expected {len}", coalescer.len()));
            }
        }
        return Ok(());
    }

    if step.clear == Some(true) {
        coalescer.clear();
        Ok(())
    } else {
        Err("`clear` must be true when present".into())
    }
}

fn describe_instant(start: Instant, instant: Option<Instant>) -> String {
    instant.map_or_else(|| "none".to_string(), |instant| instant.duration_since(start).as_millis().to_string())
}

fn describe(start: Instant, list: &[Ready]) -> String {
    if list.is_empty() {
        return "[]".into();
    }
    list.iter()
        .map(|ready| {
            format!(
                "{{ path = {:?}, moved_from = {:?}, first_seen = {}, attempt = {} }}",
                ready.path,
                ready.moved_from,
                describe_instant(start, Some(ready.first_seen)),
                ready.attempt
            )
        })
        .collect::<Vec<_>>()
        .join("\n  ")
}

#[test]
fn cases() {
    let failures: Vec<String> =
        CASES.iter().filter_map(|(name, source)| run_case(source).err().map(|e| format!("{name}: {e}"))).collect();
    assert!(failures.is_empty(), "failing cases:\n{}", failures.join("\n\n"));
}

/// The runner itself must reject broken scenarios; otherwise a case with a
/// wrong expectation could pass silently.
#[test]
fn runner_detects_wrong_expectations() {
    let wrong = r#"
        description = "expects a read that the close has not made ready yet"
        settings = { write_timeout = 1000, delete_grace = 100 }
        steps = [
            { at = 0, path = "a", signal = "modified" },
            { at = 1, take = [{ path = "a", first_seen = 0 }] },
        ]
    "#;
    let error = run_case(wrong).expect_err("a premature read must not match");
    assert!(error.contains("step 2"), "{error}");
    let typo = r#"
        description = "misspells a field"
        settings = { write_timeout = 1000, delete_grace = 100 }
        steps = [{ at = 0, path = "a", signal = "closed", tkae = [] }]
    "#;
    let error = run_case(typo).expect_err("an unknown field must be rejected");
    assert!(error.contains("tkae"), "{error}");
    let vacuous = r#"
        description = "checks nothing"
        settings = { write_timeout = 1000, delete_grace = 100 }
        steps = [{ at = 0, path = "a", signal = "closed" }]
    "#;
    let error = run_case(vacuous).expect_err("a case must check something");
    assert!(error.contains("checks nothing"), "{error}");
}

/// Finds the cases directory on disk. `file!()` is absolute when the module is
/// included by an absolute `#[path]`, and relative to the workspace root
/// otherwise, while tests run from the crate directory; trying both keeps the
/// check working in either build.
fn cases_dir() -> Option<PathBuf> {
    let beside_source = Path::new(file!()).with_file_name("cases");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = [beside_source.clone(), manifest.join("src/coalesce/cases")];
    let from_ancestors = manifest.ancestors().map(|dir| dir.join(&beside_source));
    candidates.into_iter().chain(from_ancestors).find(|dir| dir.join("in_place_write.toml").is_file())
}

#[test]
fn every_case_file_is_listed() {
    let dir = cases_dir().expect("cannot locate coalesce/cases");
    let on_disk: Set<String> = std::fs::read_dir(&dir)
        .expect("cannot read coalesce/cases")
        .map(|entry| entry.expect("cannot read a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .filter_map(|path| Some(path.file_stem()?.to_str()?.to_owned()))
        .collect();
    let listed: Set<String> = CASES.iter().map(|(name, _)| (*name).to_owned()).collect();
    assert_eq!(on_disk, listed, "CASES and {} differ", dir.display());
}

#[test]
fn backoff_default_policy() {
    let backoff = Backoff::default();
    let delays: Vec<Option<u128>> = (0..10).map(|n| backoff.delay(n).map(|d| d.as_millis())).collect();
    assert_eq!(
        delays,
        [5, 10, 20, 40, 80, 160, 320, 500].map(Some).into_iter().chain([None, None]).collect::<Vec<_>>()
    );
}

#[test]
fn backoff_caps_and_saturates() {
    let backoff = Backoff { base: ms(3), factor: 3, max_delay: ms(50), max_attempts: u32::MAX };
    assert_eq!(backoff.delay(0), Some(ms(3)));
    assert_eq!(backoff.delay(2), Some(ms(27)));
    assert_eq!(backoff.delay(3), Some(ms(50)));
    // factor^n overflows u32 here; the delay must cap rather than panic or wrap.
    assert_eq!(backoff.delay(40), Some(ms(50)));
    assert_eq!(backoff.delay(u32::MAX - 1), Some(ms(50)));
    assert_eq!(backoff.delay(u32::MAX), None);
}

#[test]
fn backoff_edge_factors() {
    let constant = Backoff { base: ms(7), factor: 1, max_delay: ms(100), max_attempts: 3 };
    assert_eq!(constant.delay(2), Some(ms(7)));
    assert_eq!(constant.delay(3), None);
    let none_allowed = Backoff { max_attempts: 0, ..constant };
    assert_eq!(none_allowed.delay(0), None);
}

#[test]
fn huge_timeouts_do_not_overflow() {
    let mut coalescer = Coalescer::new(Timing {
        write_timeout: Duration::MAX,
        delete_grace: Duration::MAX,
        quiet: None,
        backoff: Backoff::default(),
        min_interval: Duration::ZERO,
    });
    let now = Instant::now();
    coalescer.observe(Path::new("a"), Signal::Modified, now);
    coalescer.observe(Path::new("b"), Signal::Removed, now);
    let deadline = coalescer.next_deadline().expect("two entries are pending");
    assert!(deadline > now + Duration::from_secs(86_400 * 365));
    assert!(coalescer.take_ready(now + Duration::from_secs(3600)).is_empty());
    coalescer.observe(Path::new("a"), Signal::Closed, now);
    assert_eq!(coalescer.take_ready(now).len(), 1);
    assert_consistent(&coalescer);
}

/// A burst over many files, with next_deadline after every signal as the
/// engine does, must keep the index exact (no stale items piling up) and
/// return every file once, in path order.
#[test]
fn burst_across_ten_thousand_files() {
    let mut coalescer = Coalescer::new(Timing {
        write_timeout: ms(1000),
        delete_grace: ms(100),
        quiet: None,
        backoff: Backoff::default(),
        min_interval: Duration::ZERO,
    });
    let start = Instant::now();
    for round in 0..3u64 {
        for i in 0..10_000u64 {
            let path = PathBuf::from(format!("dir/{i:05}"));
            let now = start + ms(round * 10 + i / 1000);
            coalescer.observe(&path, Signal::Modified, now);
            assert!(coalescer.next_deadline().is_some());
        }
    }
    assert_eq!(coalescer.len(), 10_000);
    assert_consistent(&coalescer);
    // The oldest pending write is file 0's last modify, at 20 ms.
    assert_eq!(coalescer.next_deadline(), Some(start + ms(1020)));
    for i in (0..10_000u64).rev() {
        let path = PathBuf::from(format!("dir/{i:05}"));
        coalescer.observe(&path, Signal::Closed, start + ms(50));
    }
    assert_consistent(&coalescer);
    let ready = coalescer.take_ready(start + ms(50));
    assert_eq!(ready.len(), 10_000);
    assert!(ready.windows(2).all(|pair| pair[0].path < pair[1].path));
    assert!(ready.iter().all(|r| r.attempt == 0 && r.moved_from.is_none()));
    assert_eq!(ready[1234].first_seen, start + ms(1));
    assert_eq!(coalescer.len(), 0);
    assert_eq!(coalescer.next_deadline(), None);
}
