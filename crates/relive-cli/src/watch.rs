//! `relive watch`: runs the hot reload pipeline on a workspace and reports
//! every event to stdout, webhooks and the program run by `--exec`.
//!
//! Every config is subscribed as a `serde_json::Value` with its JSON Schema
//! (if it has one) as a validator. So a change that breaks the schema is a
//! `validation_failed` event, like a syntax error, and never reaches
//! `--exec` or the webhooks as `config_changed`.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use relive::{ChangeEvent, ConfigStream, HotReloadConfig, Polling, ValidationError, WatcherMode, Workspace};
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;

use crate::app;
use crate::backoff::Backoff;
use crate::cli::{PollingArg, WatchArgs};
use crate::exec::{self, Supervisor};
use crate::exit::{Exit, Failure, Result};
use crate::inventory;
use crate::output;
use crate::platform::{Shutdown, Stop};
use crate::progress;
use crate::schema::Schema;
use crate::telemetry;
use crate::webhook::Webhook;

/// A config's schema, replaced when its file changes.
type SchemaSlot = Arc<RwLock<Option<Schema>>>;

/// The configs subscribed so far, kept alive for as long as relive runs.
struct Subscriptions {
    ws: Workspace,
    names: HashSet<String>,
    streams: Vec<ConfigStream<Value>>,
    schemas: Vec<(std::path::PathBuf, SchemaSlot)>,
}

impl Subscriptions {
    /// Subscribes config `name`, validated by `config/<name>.schema.json`
    /// if there is one. A config that is broken now is reported (as a
    /// `validation_failed` event) and applied once it is fixed.
    async fn add(&mut self, name: &str) -> Result<()> {
        if !self.names.insert(name.to_string()) {
            return Ok(());
        }
        let path = self.ws.config_dir().join(format!("{name}.schema.json"));
        let slot: SchemaSlot = Arc::new(RwLock::new(load_schema(&path)));
        self.schemas.push((path, Arc::clone(&slot)));
        let stream = self
            .ws
            .config::<Value>(name)
            .validate(move |value: &Value| -> std::result::Result<(), ValidationError> {
                let schema = slot.read().unwrap_or_else(|e| e.into_inner()).clone();
                match schema {
                    Some(schema) => schema.validator()(value),
                    None => Ok(()),
                }
            })
            .default_value(Value::Null)
            .watch()
            .await?;
        self.streams.push(stream);
        Ok(())
    }

    /// Reloads the schema at `path` if a subscribed config uses it.
    fn schema_changed(&self, path: &std::path::Path) {
        for (schema_path, slot) in &self.schemas {
            if schema_path == path {
                *slot.write().unwrap_or_else(|e| e.into_inner()) = load_schema(path);
            }
        }
    }
}

/// The schema at `path`; a broken one is reported and not used.
fn load_schema(path: &std::path::Path) -> Option<Schema> {
    if !path.is_file() {
        return None;
    }
    match Schema::load(path) {
        Ok(schema) => Some(schema),
        Err(error) => {
            output::warn(&format!("{}; the config is not checked against it", output::config_error(None, &error)));
            None
        }
    }
}

/// Runs `relive watch` until SIGINT or SIGTERM (Ctrl-C or Ctrl-Break on
/// Windows).
pub async fn run(args: WatchArgs) -> Result<Exit> {
    let ws = app::workspace(args.dir.as_deref(), args.env.env.as_deref())?;
    // The recorder must be in place before the engine records anything.
    if let Some(addr) = args.metrics_addr {
        telemetry::serve(addr).map_err(Failure::runtime)?;
    }
    let mut shutdown = Shutdown::listen().map_err(Failure::runtime)?;

    let configs = ws.configs()?;
    let files = inventory::files(&configs);
    let spinner = progress::spinner(files, format!("loading {files} config files"));
    // The workspace's settings (relive.toml), with the command line's.
    let base = ws.settings()?;
    let config = HotReloadConfig {
        polling: match args.polling {
            PollingArg::Auto => Polling::Auto,
            PollingArg::Always => Polling::Always,
            PollingArg::Never => Polling::Never,
        },
        history: relive::HistoryConfig { enabled: !args.no_history, ..base.history.clone() },
        ..base
    };
    let manager = ws.start_hot_reload_with_config(config).await?;
    let mut events = manager.subscribe();
    let mut subscriptions =
        Subscriptions { ws: ws.clone(), names: HashSet::new(), streams: Vec::new(), schemas: Vec::new() };
    for config in &configs {
        let has_env_overlay = ws.env().is_some_and(|env| config.overlays.contains_key(env));
        if !config.base.is_empty() || has_env_overlay {
            subscriptions.add(&config.name).await?;
        }
    }
    spinner.finish_and_clear();
    let mode = match manager.watcher_mode() {
        WatcherMode::Events { watches } => format!("inotify, {watches} directories"),
        WatcherMode::Portable { api, watches } => format!("{api} through notify, {watches} directory trees"),
        WatcherMode::Polling { reason, interval } => {
            format!("polling every {} ms: {reason}", interval.as_millis())
        }
        other => format!("{other:?}"),
    };
    output::note(&format!(
        "watching {} ({} configs{}; {mode})",
        ws.root().display(),
        subscriptions.names.len(),
        ws.env().map(|e| format!(", env {e}")).unwrap_or_default()
    ));

    let backoff = Backoff {
        initial: Duration::from_millis(args.webhook_backoff_ms),
        max: Duration::from_secs(30),
        retries: args.webhook_retries,
    };
    let webhooks = args
        .webhook
        .iter()
        .map(|url| Webhook::start(url.clone(), backoff, Duration::from_millis(args.webhook_timeout_ms)))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| Failure::runtime(format!("cannot start webhook delivery: {e}")))?;
    let supervisor = args.exec.clone().map(|command| {
        Supervisor::start(exec::Options {
            command,
            signal: args.signal,
            grace: Duration::from_millis(args.grace_ms),
            workspace: ws.root().to_path_buf(),
            env: ws.env().map(str::to_string),
        })
    });

    let (stop, result) = loop {
        tokio::select! {
            received = events.recv() => match received {
                Ok(event) => {
                    let as_json = (args.json || !webhooks.is_empty()).then(|| output::event_json(&event));
                    output::print_event(&event, if args.json { &as_json } else { &None });
                    if let Some(json) = &as_json {
                        for webhook in &webhooks {
                            webhook.send(json.to_string().into_bytes());
                        }
                    }
                    match &event {
                        ChangeEvent::ConfigChanged { config_name, .. } => {
                            metrics::counter!("relive_versions_applied_total", "config" => config_name.clone()).increment(1);
                            // A config created after start is subscribed now,
                            // so that its schema applies to its next change.
                            if let Err(e) = subscriptions.add(config_name).await {
                                output::warn(&e.message);
                            }
                            if let Some(supervisor) = &supervisor {
                                supervisor.changed(config_name);
                            }
                        }
                        ChangeEvent::FileChanged { path, .. } => subscriptions.schema_changed(path),
                        _ => {}
                    }
                }
                Err(RecvError::Lagged(n)) => output::warn(&format!("output fell behind; {n} events skipped")),
                Err(RecvError::Closed) => break (Stop::Terminate, Err(Failure::runtime("the hot reload engine stopped"))),
            },
            stop = shutdown.recv() => break (stop, Ok(Exit::Ok)),
        }
    };
    if let Some(supervisor) = supervisor {
        supervisor.stop(stop).await;
    }
    drop(subscriptions);
    manager.shutdown().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    for webhook in webhooks {
        webhook.finish(deadline).await;
    }
    result
}
