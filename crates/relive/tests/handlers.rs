//! Handlers by glob and by trait; failures become events and never stop the
//! watcher; a slow handler delays only itself.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use relive::{ChangeEvent, ChangeType, HandlerError, ReloadHandler};
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glob_handlers_get_only_their_files_and_config_events_route_by_file() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1)), ("templates/index.html", "<p>1</p>")]);
    let (tx, mut templates) = mpsc::unbounded_channel();
    // Registered before hot reload starts: kept and attached at start.
    t.ws.register_reload_handler("templates/**/*.html", move |event| {
        tx.send(event).map_err(|e| e.to_string())?;
        Ok(())
    })
    .unwrap();
    let manager = t.ws.start_hot_reload().await.unwrap();
    let (tx, mut configs) = mpsc::unbounded_channel();
    manager
        .register_reload_handler("config/*.toml", move |event| {
            tx.send(event).map_err(|e| e.to_string())?;
            Ok(())
        })
        .unwrap();

    t.write("static/app.css", "body{}");
    t.write("config/app.toml", &app_toml("b", 2));
    t.write("templates/index.html", "<p>2</p>");

    let event = tokio::time::timeout(TIMEOUT, templates.recv()).await.unwrap().unwrap();
    match event {
        ChangeEvent::FileChanged { path, change_type, .. } => {
            assert_eq!(path, t.path("templates/index.html"));
            assert_eq!(change_type, ChangeType::Modified);
        }
        other => panic!("template handler got {other:?}"),
    }
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let event = tokio::time::timeout(TIMEOUT, configs.recv()).await.unwrap().unwrap();
        assert!(event.path().is_none_or(|p| p == t.path("config/app.toml")), "{event:?}");
        kinds.push(event.kind());
    }
    assert_eq!(kinds, ["file_changed", "config_changed", "reload_completed"]);
    assert!(templates.try_recv().is_err(), "the template handler saw only the template");
}

struct Failing;

impl ReloadHandler for Failing {
    fn can_handle(&self, event: &ChangeEvent) -> bool {
        matches!(event, ChangeEvent::FileChanged { .. })
    }

    async fn handle_change(&self, event: ChangeEvent) -> Result<(), HandlerError> {
        let path = event.path().unwrap().to_string_lossy().to_string();
        if path.ends_with("panic.html") {
            panic!("boom on {path}");
        }
        Err(format!("cannot handle {path}").into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_errors_and_panics_become_events_and_the_watcher_goes_on() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    manager.register_handler(Failing).unwrap();
    let mut stream = t.ws.watch_config_changes::<App>("app").await.unwrap();

    t.write("templates/error.html", "x");
    let (event, _) = event_until(&mut events, |e| matches!(e, ChangeEvent::HandlerFailed { .. })).await;
    let ChangeEvent::HandlerFailed { handler, error, .. } = event else { unreachable!() };
    assert!(handler.ends_with("Failing"), "{handler}");
    assert!(error.contains("cannot handle") && error.contains("error.html"), "{error}");

    t.write("templates/panic.html", "x");
    let (event, _) = event_until(&mut events, |e| matches!(e, ChangeEvent::HandlerFailed { .. })).await;
    let ChangeEvent::HandlerFailed { error, .. } = event else { unreachable!() };
    assert!(error.contains("panicked") && error.contains("boom"), "{error}");

    // The handler survives its panic, and so does the watcher.
    t.write("templates/error2.html", "x");
    let (event, _) = event_until(&mut events, |e| matches!(e, ChangeEvent::HandlerFailed { .. })).await;
    assert!(format!("{event:?}").contains("error2.html"));
    t.write("config/app.toml", &app_toml("after", 2));
    assert_eq!(next(&mut stream).await.value, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handler_does_not_delay_other_subscribers() {
    let t = TestWs::new(&[("config/app.toml", &app_toml("a", 1))]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(release_rx);
    let slow_calls = Arc::new(AtomicUsize::new(0));
    let calls = Arc::clone(&slow_calls);
    // Blocks until released: as stuck as a handler can be.
    manager
        .register_reload_handler("config/**", move |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            let _ = release_rx.lock().unwrap().recv_timeout(Duration::from_secs(30));
            Ok(())
        })
        .unwrap();
    let (tx, mut fast) = mpsc::unbounded_channel();
    manager
        .register_reload_handler("config/**", move |event| {
            tx.send(event).map_err(|e| e.to_string())?;
            Ok(())
        })
        .unwrap();
    let mut stream = t.ws.watch_config_changes::<App>("app").await.unwrap();

    for i in 2..=4 {
        t.write("config/app.toml", &app_toml("a", i));
        assert_eq!(next_until(&mut stream, |v| v.value == i).await.0.value, i);
        loop {
            let event = tokio::time::timeout(TIMEOUT, fast.recv()).await.unwrap().unwrap();
            if matches!(&event, ChangeEvent::ConfigChanged { new_value, .. } if new_value["value"] == i) {
                break;
            }
        }
    }
    assert_eq!(slow_calls.load(Ordering::SeqCst), 1, "the slow handler is still on its first event");
    drop(release_tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_glob_handler_runs_and_a_removed_handler_gets_nothing_more() {
    let t = TestWs::new(&[("templates/a.html", "1")]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let (tx, mut seen) = mpsc::unbounded_channel();
    let id = manager
        .register_handler_for(
            "templates/**/*.html",
            relive::handler_fn(move |event: ChangeEvent| {
                let tx = tx.clone();
                async move {
                    // Awaits inside the handler: it is async all the way.
                    tokio::task::yield_now().await;
                    tx.send(event).map_err(|e| e.to_string())?;
                    Ok(())
                }
            }),
        )
        .unwrap();
    let mut events = manager.subscribe();

    t.write("static/app.css", "x");
    t.write("templates/a.html", "2");
    let event = tokio::time::timeout(TIMEOUT, seen.recv()).await.unwrap().unwrap();
    assert!(is_file_event(&event, &t.path("templates/a.html")), "{event:?}");
    match &event {
        ChangeEvent::FileChanged { hash, .. } => {
            assert_eq!(*hash, Some(xxhash_rust::xxh3::xxh3_64(b"2")), "the event carries the content hash")
        }
        other => panic!("{other:?}"),
    }

    assert!(manager.remove_handler(id), "the handler was registered");
    assert!(!manager.remove_handler(id), "and is gone");
    t.write("templates/a.html", "3");
    // The engine has routed this change once the broadcast sees it; the
    // removed handler's queue is closed by then.
    event_until(&mut events, |e| is_file_event(e, &t.path("templates/a.html"))).await;
    assert!(
        tokio::time::timeout(TIMEOUT, seen.recv()).await.unwrap().is_none(),
        "a removed handler's task ends without seeing another event"
    );
}

struct Located;

impl ReloadHandler for Located {
    async fn handle_change(&self, event: ChangeEvent) -> Result<(), HandlerError> {
        let path = event.path().unwrap().to_path_buf();
        Err(Box::new(
            relive::ConfigError::new(relive::ConfigErrorKind::Syntax, "unknown filter")
                .with_file(path)
                .with_position(3, 7),
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_error_keeps_its_file_line_and_column_as_structure() {
    let t = TestWs::new(&[]);
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    manager.register_handler_for("templates/*", Located).unwrap();
    t.write("templates/page.html", "{{ x | nope }}");
    let (event, _) = event_until(&mut events, |e| matches!(e, ChangeEvent::HandlerFailed { .. })).await;
    let ChangeEvent::HandlerFailed { located: Some(at), .. } = event else { panic!("no location in {event:?}") };
    assert_eq!(at.file(), Some(t.path("templates/page.html").as_path()));
    assert_eq!((at.line(), at.column()), (Some(3), Some(7)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_removed_before_the_engine_starts_never_runs() {
    let t = TestWs::new(&[]);
    let (tx, mut seen) = mpsc::unbounded_channel();
    let id =
        t.ws.register_reload_handler("templates/*", move |event| {
            tx.send(event).map_err(|e| e.to_string())?;
            Ok(())
        })
        .unwrap();
    assert!(t.ws.remove_handler(id));
    let manager = t.ws.start_hot_reload().await.unwrap();
    let mut events = manager.subscribe();
    t.write("templates/a.html", "1");
    event_until(&mut events, |e| is_file_event(e, &t.path("templates/a.html"))).await;
    assert!(
        tokio::time::timeout(TIMEOUT, seen.recv()).await.unwrap().is_none(),
        "the removed handler was dropped, never attached"
    );
}
