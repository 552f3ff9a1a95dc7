//! Metrics go through the `metrics` facade.

mod common;

use common::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

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
    // The initial load and the fix; the rejection may or may not be seen,
    // depending on whether the two writes were coalesced.
    assert!(applied >= 2, "applied = {applied}");
    assert!(duration_samples >= 1);
    assert!(events >= 1);
}
