//! Templates driven by the real relive engine in a temp workspace.

use std::time::Duration;

use relive::ChangeEvent;
use relive_web::{TemplateStatus, Templates};
use serde_json::json;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(10);

async fn wait_for(rx: &mut watch::Receiver<TemplateStatus>, what: &str, f: impl Fn(&TemplateStatus) -> bool) {
    tokio::time::timeout(WAIT, rx.wait_for(|s| f(s)))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .expect("templates alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_swaps_edited_templates_in_and_reports_syntax_errors_as_events() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("templates/pages")).unwrap();
    let page = dir.path().join("templates/pages/index.html");
    std::fs::write(&page, "<h1>{{ title }}</h1>").unwrap();
    let ws = relive::Workspace::new(dir.path());
    let templates = Templates::new(&ws).unwrap();
    let manager = ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    let mut status = templates.subscribe();
    assert_eq!(templates.render("pages/index.html", json!({"title": "one"})).unwrap(), "<h1>one</h1>");

    std::fs::write(&page, "<h2>{{ title }}</h2>").unwrap();
    wait_for(&mut status, "the edit", |s| s.generation == 2).await;
    assert_eq!(templates.render("pages/index.html", json!({"title": "two"})).unwrap(), "<h2>two</h2>");

    std::fs::write(&page, "<h2>\n{{ title </h2>").unwrap();
    wait_for(&mut status, "the syntax error", |s| s.error.is_some()).await;
    let error = templates.last_error().unwrap();
    assert_eq!((error.file.as_path(), error.line), (page.as_path(), 2), "{error}");
    assert_eq!(templates.render("pages/index.html", json!({"title": "still"})).unwrap(), "<h2>still</h2>");
    let reported = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(ChangeEvent::HandlerFailed { error, .. }) = events.recv().await {
                return error;
            }
        }
    })
    .await
    .expect("the error is reported as an event");
    assert_eq!(reported, error.to_string());

    std::fs::write(&page, "<h3>{{ title }}</h3>").unwrap();
    wait_for(&mut status, "the fix", |s| s.error.is_none()).await;
    assert_eq!(templates.status().generation, 3);
    assert_eq!(templates.render("pages/index.html", json!({"title": "3"})).unwrap(), "<h3>3</h3>");
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_whose_templates_start_broken_still_starts_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("templates")).unwrap();
    std::fs::write(dir.path().join("templates/a.html"), "{% if %}").unwrap();
    let ws = relive::Workspace::new(dir.path());
    let templates = Templates::new(&ws).unwrap();
    assert_eq!(templates.status().generation, 0);
    assert_eq!(templates.last_error().map(|e| e.line), Some(1));
    let manager = ws.start_hot_reload().await.unwrap();
    let mut status = templates.subscribe();
    std::fs::write(dir.path().join("templates/a.html"), "ok").unwrap();
    wait_for(&mut status, "the fix", |s| s.generation == 1 && s.error.is_none()).await;
    assert_eq!(templates.render("a.html", json!({})).unwrap(), "ok");
    manager.shutdown().await.unwrap();
}
