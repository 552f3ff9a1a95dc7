//! `--metrics-addr`: a Prometheus endpoint for the library's metrics and
//! the command's own.

use std::net::SocketAddr;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

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
