//! `relive serve`: a development server for a workspace.
//!
//! It serves `static/` (through `relive_web::static_router`), renders
//! `templates/` for page requests with the workspace's configs as context,
//! injects the live reload client into every HTML response, and mounts the
//! LiveReload endpoints. A template that does not compile is shown in the
//! browser as an overlay (the hub's alert) while the last good templates
//! keep serving.
//!
//! The configs are the context: `config/site.toml` is `site` in templates
//! (`{{ site.title }}`). Each is loaded with `Workspace::load` at start and
//! again when the engine says it has a new value (`ConfigChanged`), and
//! pages are told to reload only after the new context is in place.
//! Templates link static files with `static_url('app.css')`, which gives
//! the fingerprinted URL from the assets' manifest.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use relive::{ChangeEvent, Workspace};
use relive_web::{Assets, Change, ReloadHub, Templates};
use serde_json::{Map, Value};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::broadcast::error::RecvError;

use crate::app;
use crate::cli::ServeArgs;
use crate::exit::{Exit, Failure, Result};
use crate::output;

/// The configs' values by name, swapped whole.
type Context = Arc<ArcSwap<Map<String, Value>>>;

/// What a page request needs.
#[derive(Clone)]
struct Pages {
    templates: Templates,
    context: Context,
}

/// Runs `relive serve` until SIGINT or SIGTERM.
pub async fn run(args: ServeArgs) -> Result<Exit> {
    let ws = app::workspace(args.dir.as_deref(), args.env.env.as_deref())?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(Failure::runtime)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(Failure::runtime)?;

    let assets = Assets::new(&ws).map_err(web_failure)?;
    let urls = assets.clone();
    let templates = Templates::with_setup(&ws, move |env| urls.add_static_url(env)).map_err(web_failure)?;
    let context = Context::default();
    context.store(Arc::new(load_configs(&ws, None)));
    let config = relive::HotReloadConfig {
        history: relive::HistoryConfig { enabled: !args.no_history, ..Default::default() },
        ..Default::default()
    };
    let manager = ws.start_hot_reload_with_config(config).await?;

    let hub = ReloadHub::new();
    hub.follow_templates(&templates);
    hub.follow_assets(&assets);
    follow_configs(&ws, &manager, &context, &hub);

    let addr = SocketAddr::new(args.host, args.port);
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| Failure::runtime(format!("cannot bind {addr}: {e}")))?;
    let local = listener.local_addr().map_err(Failure::runtime)?;
    // The first line of stdout, for people and for tests (`--port 0`).
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "serving http://{}", display_addr(local));
        let _ = stdout.flush();
    }
    if let Some(error) = templates.last_error() {
        output::warn(&format!("{error}"));
    }

    let app = Router::new()
        .fallback(page)
        .with_state(Pages { templates, context })
        .merge(relive_web::router(hub))
        .merge(relive_web::static_router(assets));
    let server = axum::serve(listener, app.into_make_service());
    let result = tokio::select! {
        served = server => served.map(|()| Exit::Ok).map_err(|e| Failure::runtime(format!("server failed: {e}"))),
        _ = sigint.recv() => Ok(Exit::Ok),
        _ = sigterm.recv() => Ok(Exit::Ok),
    };
    manager.shutdown().await?;
    result
}

fn web_failure(e: relive_web::Error) -> Failure {
    Failure::runtime(e.to_string())
}

/// `127.0.0.1:8080`, `[::1]:8080`.
fn display_addr(addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V4(_) => addr.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]:{}", addr.port()),
    }
}

/// Every config's value by name; `only` reloads one config into `base`.
/// A config that does not load now keeps its last value (or is absent).
fn load_configs(ws: &Workspace, only: Option<(&str, &Map<String, Value>)>) -> Map<String, Value> {
    let load = |name: &str| match ws.load(name) {
        Ok(loaded) => Some(loaded.value().clone()),
        Err(e) => {
            output::warn(&e.to_string());
            None
        }
    };
    match only {
        Some((name, base)) => {
            let mut out = base.clone();
            if let Some(value) = load(name) {
                out.insert(name.to_string(), value);
            }
            out
        }
        None => {
            let mut out = Map::new();
            match ws.configs() {
                Ok(configs) => {
                    for config in configs {
                        if let Some(value) = load(&config.name) {
                            out.insert(config.name, value);
                        }
                    }
                }
                Err(e) => output::warn(&e.to_string()),
            }
            out
        }
    }
}

/// Keeps `context` current, and reloads pages once a new config value is
/// in it (rather than `ReloadHub::follow_configs`, which could tell
/// browsers before the context has the value).
fn follow_configs(ws: &Workspace, manager: &relive::HotReloadManager, context: &Context, hub: &ReloadHub) {
    let mut events = manager.subscribe();
    let (ws, context, hub) = (ws.clone(), context.clone(), hub.clone());
    tokio::spawn(async move {
        loop {
            let name = match events.recv().await {
                Ok(ChangeEvent::ConfigChanged { config_name, .. }) => Some(config_name),
                Ok(_) => continue,
                Err(RecvError::Lagged(_)) => None,
                Err(RecvError::Closed) => break,
            };
            let (ws2, current) = (ws.clone(), context.load());
            let name2 = name.clone();
            let loaded = tokio::task::spawn_blocking(move || match &name2 {
                Some(name) => load_configs(&ws2, Some((name, &current))),
                None => load_configs(&ws2, None),
            })
            .await;
            if let Ok(values) = loaded {
                context.store(Arc::new(values));
            }
            hub.notify(Change::Config { name: name.unwrap_or_else(|| "*".to_string()) });
        }
    });
}

/// `/` → `index.html`, `/a/b` → `a/b.html`, rendered with the configs and
/// with the live reload client injected.
async fn page(State(pages): State<Pages>, uri: Uri) -> Response {
    let Some(name) = template_name(uri.path()) else {
        return not_found();
    };
    let env = pages.templates.environment();
    if env.get_template(&name).is_err() {
        return not_found();
    }
    let context = Value::Object((**pages.context.load()).clone());
    match pages.templates.render(&name, context) {
        Ok(html) => ([(header::CACHE_CONTROL, "no-cache")], Html(relive_web::inject(&html))).into_response(),
        Err(e) => {
            // A page that failed to render still reloads when it is fixed.
            let body = format!(
                "<!doctype html><title>template error</title><body><pre>{}</pre></body>",
                escape(&e.to_string())
            );
            (StatusCode::INTERNAL_SERVER_ERROR, Html(relive_web::inject(&body))).into_response()
        }
    }
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Html(relive_web::inject("<!doctype html><title>not found</title><body><p>not found</p></body>")),
    )
        .into_response()
}

/// The template a page path names, or `None` if it names none: only plain
/// segments (no `.`, `..`, hidden names, percent escapes or backslashes).
fn template_name(path: &str) -> Option<String> {
    let trimmed = path.trim_start_matches('/').trim_end_matches('/');
    if trimmed.is_empty() {
        return Some("index.html".to_string());
    }
    let plain = |s: &str| !s.is_empty() && !s.starts_with('.') && !s.contains(['%', '\\', '\0']);
    if !trimmed.split('/').all(plain) {
        return None;
    }
    if path.ends_with('/') {
        return Some(format!("{trimmed}/index.html"));
    }
    Some(if trimmed.ends_with(".html") { trimmed.to_string() } else { format!("{trimmed}.html") })
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_paths_name_templates() {
        assert_eq!(template_name("/").as_deref(), Some("index.html"));
        assert_eq!(template_name("/about").as_deref(), Some("about.html"));
        assert_eq!(template_name("/docs/intro").as_deref(), Some("docs/intro.html"));
        assert_eq!(template_name("/docs/").as_deref(), Some("docs/index.html"));
        assert_eq!(template_name("/x.html").as_deref(), Some("x.html"));
        for bad in ["/../x", "/a/../b", "/.hidden", "/%2e%2e/x", "/a\\b", "/a//b"] {
            assert_eq!(template_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn addresses_print_as_urls() {
        assert_eq!(display_addr("127.0.0.1:80".parse().unwrap()), "127.0.0.1:80");
        assert_eq!(display_addr("[::1]:80".parse().unwrap()), "[::1]:80");
    }
}
