//! The libraries' log events on stderr, and `--metrics-addr`: a
//! Prometheus endpoint for the library's metrics and the command's own.

use std::fmt::Write as _;
use std::net::SocketAddr;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{EnvFilter, Layer};

use crate::output;

/// The variables that choose which log events are shown, first found wins.
const LOG_VARS: [&str; 2] = ["RELIVE_LOG", "RUST_LOG"];

/// Library warnings the commands already report in their own words (as an
/// event, a located error, an agent line): shown only when RELIVE_LOG or
/// RUST_LOG asks for them, so that by default each thing is said once.
const REPORTED: &[&str] = &[
    // `validation_failed` events; `relive serve`'s config notes.
    "config rejected; keeping the last good value",
    // `handler_failed` events.
    "reload handler failed",
    // `relive serve`: `templates/NAME:LINE:COL: message`.
    "template error; the last good templates stay live",
    // `relive fleet agent`: `rejected`, `disconnected`, `re-reading`, and
    // its start line.
    "rejected a version from etcd",
    "etcd connection lost; reconnecting",
    "watch revision compacted; re-reading",
    "etcd unreachable at boot; starting from the local cache",
];

/// Shows the libraries' `tracing` events on stderr as `relive: warning:
/// message (key=value, ...)`, never on stdout (where `--json` writes).
///
/// RELIVE_LOG, else RUST_LOG, is a filter in `EnvFilter`'s syntax (`error`,
/// `debug`, `warn,relive_fleet=debug`). Without either, warnings and errors
/// are shown, except those in [`REPORTED`].
pub fn init_logs() {
    let mut hide_reported = true;
    let mut filter = EnvFilter::new("warn");
    if let Some((var, value)) = LOG_VARS.iter().find_map(|var| Some((var, std::env::var(var).ok()?))) {
        match EnvFilter::builder().parse(&value) {
            Ok(parsed) => {
                filter = parsed;
                hide_reported = false;
            }
            Err(e) => output::warn(&format!(
                "{var}: `{}` is not a log filter ({}); showing warnings",
                output::escape_controls(&value),
                output::escape_controls(&e.to_string())
            )),
        }
    }
    let subscriber = tracing_subscriber::registry().with(filter).with(Stderr { hide_reported });
    // Only fails if a subscriber is already set: then that one stays.
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// Writes each event as one line on stderr.
struct Stderr {
    hide_reported: bool,
}

impl<S: tracing::Subscriber> Layer<S> for Stderr {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        if self.hide_reported && REPORTED.contains(&fields.message.as_str()) {
            return;
        }
        let mut text = fields.message;
        if !fields.rest.is_empty() {
            text.push_str(" (");
            text.push_str(&fields.rest.join(", "));
            text.push(')');
        }
        // Field values come from files, etcd and the network.
        let text = output::escape_controls(&text);
        match *event.metadata().level() {
            tracing::Level::ERROR => output::error(&text),
            tracing::Level::WARN => output::warn(&text),
            level => output::note(&format!("{}: {text}", level.as_str().to_ascii_lowercase())),
        }
    }
}

/// An event's message and its other fields as `key=value`.
#[derive(Default)]
struct Fields {
    message: String,
    rest: Vec<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            name => self.rest.push(format!("{name}={value}")),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            name => self.rest.push(format!("{name}={value:?}")),
        }
    }
}

/// Buckets for reload durations, in seconds: from 50 µs to 5 s.
const DURATION_BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// Serves metrics at `http://addr/metrics` (any path answers) from a task
/// of the current runtime. Must run before the engine starts, so that the
/// library records into it.
pub fn serve(addr: SocketAddr) -> Result<(), String> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Full("relive_reload_duration_seconds".into()), DURATION_BUCKETS)
        .map_err(|e| e.to_string())?
        .install()
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    describe();
    Ok(())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!("relive_reloads_total", "Config reloads, by config and result (applied or rejected)");
    describe_histogram!(
        "relive_reload_duration_seconds",
        metrics::Unit::Seconds,
        "From the first filesystem event of a change to the new value being live"
    );
    describe_counter!("relive_events_total", "Events emitted, by kind");
    describe_counter!("relive_rescans_total", "Watcher rescans, by reason");
    describe_counter!("relive_polling_fallbacks_total", "Times the watcher fell back to polling");
    describe_gauge!("relive_watches", "Directories watched with inotify");
    describe_counter!("relive_versions_applied_total", "Config versions applied, by config");
    describe_counter!("relive_child_restarts_total", "Restarts of the --exec program");
    describe_counter!("relive_child_signals_total", "Signals sent to the --exec program");
    describe_counter!("relive_webhook_deliveries_total", "Webhook deliveries, by result");
    describe_counter!("relive_webhook_retries_total", "Webhook delivery retries");
}
