//! Metrics go through the `metrics` facade.

mod common;

use common::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// Counts from a snapshot: reloads applied, reload duration samples, events.
/// A snapshot drains what it reports, so callers add snapshots up.
fn counts(snapshotter: &Snapshotter) -> (u64, usize, u64) {
    let mut applied = 0;
    let mut duration_samples = 0;
    let mut events = 0;
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
        match (key.name(), value) {
            ("relive_reloads_total", DebugValue::Counter(n)) if labels.contains(&"result=applied".into()) => {
                applied += n
            }
            ("relive_reload_duration_seconds", DebugValue::Histogram(samples)) => duration_samples += samples.len(),
            ("relive_events_total", DebugValue::Counter(n)) => events += n,
            _ => {}
        }
    }
    (applied, duration_samples, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_and_events_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let mut stream = t.ws.watch_config_changes::<App>("app").await.unwrap();
    t.write("config/app.toml", "not toml at all = = =");
    t.write("config/app.toml", &app_toml("b", 2));
    next_until(&mut stream, |a| a.value == 2).await;

    // The engine records metrics and emits events just after it makes a
    // value live, so they may trail the stream by a moment. The initial load
    // and the fix are two applied reloads; the rejection may or may not be
    // seen, depending on whether the two writes were coalesced.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let (mut applied, mut duration_samples, mut events) = (0, 0, 0);
    loop {
        let (a, d, e) = counts(&snapshotter);
        (applied, duration_samples, events) = (applied + a, duration_samples + d, events + e);
        if applied >= 2 && duration_samples >= 2 && events >= 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "applied = {applied}, duration samples = {duration_samples}, events = {events}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
