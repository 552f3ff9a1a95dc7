//! `relive check`: validates every config the way a running service would
//! load it, and prints each problem as `file:line:col: message`.
//!
//! Each config is loaded once per environment with [`relive::Workspace::load`]: no
//! engine, no watches, no history. The library keeps every rule (file
//! naming, parsing, overlays, ambiguity, and where an error points); the
//! CLI adds JSON Schemas, whose errors [`LoadedConfig::error_at`] locates.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use relive::{ConfigError, LoadedConfig};

use crate::app;
use crate::cli::CheckArgs;
use crate::exit::{Exit, Result};
use crate::inventory;
use crate::output;
use crate::progress;
use crate::schema::Schema;

/// One problem, ordered by file and position for printing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Diagnostic {
    file: Option<PathBuf>,
    line: usize,
    column: usize,
    text: String,
}

impl Diagnostic {
    fn new(name: &str, error: &ConfigError) -> Diagnostic {
        Diagnostic {
            file: error.file().map(PathBuf::from),
            line: error.line().unwrap_or(0),
            column: error.column().unwrap_or(0),
            text: output::config_error(Some(name), error),
        }
    }
}

/// Where the time went.
#[derive(Debug, Default)]
struct Timings {
    inventory: Duration,
    schemas: Duration,
    load: Duration,
    validate: Duration,
    passes: usize,
}

/// Runs `relive check`.
pub fn run(args: CheckArgs) -> Result<Exit> {
    let started = Instant::now();
    let mut timings = Timings::default();
    let ws = app::workspace(args.dir.as_deref(), None)?;
    let env = args.env.clone().or_else(|| ws.env().map(str::to_string));
    let configs = ws.configs()?;
    let files = inventory::files(&configs);
    timings.inventory = started.elapsed();

    let mut found = BTreeSet::new();
    let t = Instant::now();
    let mut schemas = HashMap::new();
    for config in &configs {
        if let Some(path) = &config.schema {
            match Schema::load(path) {
                Ok(schema) => {
                    schemas.insert(config.name.as_str(), schema);
                }
                Err(error) => {
                    found.insert(Diagnostic::new(&config.name, &error));
                }
            }
        }
    }
    timings.schemas = t.elapsed();

    // Each pass loads the configs for one environment. Without an explicit
    // environment, the base files alone are one pass and each environment
    // that has overlays is another, so that CI catches a broken production
    // overlay without being told about production.
    let passes: Vec<(Option<&str>, Vec<&str>)> = match env.as_deref() {
        Some(env) => {
            let names = configs
                .iter()
                .filter(|c| !c.base.is_empty() || c.overlays.contains_key(env))
                .map(|c| c.name.as_str())
                .collect();
            vec![(Some(env), names)]
        }
        None => {
            let base = configs.iter().filter(|c| !c.base.is_empty()).map(|c| c.name.as_str()).collect();
            let mut passes = vec![(None, base)];
            for env in inventory::envs(&configs) {
                let names = configs.iter().filter(|c| c.overlays.contains_key(env)).map(|c| c.name.as_str()).collect();
                passes.push((Some(env), names));
            }
            passes
        }
    };
    let steps: usize = passes.iter().map(|(_, names)| names.len()).sum();
    let bar = progress::bar(files, steps as u64, "checking configs");
    for (env, names) in &passes {
        if names.is_empty() {
            continue;
        }
        timings.passes += 1;
        // No environment is the base files alone, whatever RELIVE_ENV says.
        let pass_ws = ws.clone().with_env(env.unwrap_or_default());
        for &name in names {
            let t = Instant::now();
            let loaded = pass_ws.load(name);
            timings.load += t.elapsed();
            let t = Instant::now();
            match loaded {
                Ok(loaded) => {
                    if let Some(schema) = schemas.get(name) {
                        found.extend(schema_errors(&loaded, schema).iter().map(|e| Diagnostic::new(name, e)));
                    }
                }
                Err(relive::Error::Config { error, .. }) => {
                    found.insert(Diagnostic::new(name, &error));
                }
                Err(e) => return Err(e.into()),
            }
            timings.validate += t.elapsed();
            bar.inc(1);
        }
    }
    bar.finish_and_clear();

    let mut out = anstream::stdout().lock();
    for diagnostic in &found {
        let _ = writeln!(out, "{}", diagnostic.text);
    }
    let _ = out.flush();
    if !args.quiet {
        let configs = configs.len();
        let (good, bad) = (anstyle::AnsiColor::Green.on_default(), anstyle::AnsiColor::Red.on_default().bold());
        let summary = match found.len() {
            0 => format!("checked {configs} configs ({files} files): {good}no errors{good:#}"),
            1 => format!("checked {configs} configs ({files} files): {bad}1 error{bad:#}"),
            n => format!("checked {configs} configs ({files} files): {bad}{n} errors{bad:#}"),
        };
        output::note(&summary);
    }
    if args.timings {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        output::note(&format!(
            "timings: inventory {:.1} ms, schemas {:.1} ms, load, parse and merge {:.1} ms ({} passes), validate {:.1} ms, total {:.1} ms",
            ms(timings.inventory),
            ms(timings.schemas),
            ms(timings.load),
            timings.passes,
            ms(timings.validate),
            ms(started.elapsed()),
        ));
    }
    Ok(if found.is_empty() { Exit::Ok } else { Exit::Invalid })
}

/// The schema errors of a loaded config, each located by the library at the
/// file, line and column that set its key.
fn schema_errors(loaded: &LoadedConfig, schema: &Schema) -> Vec<ConfigError> {
    schema.errors(loaded.value()).into_iter().map(|e| loaded.error_at(&e.key, e.message)).collect()
}
