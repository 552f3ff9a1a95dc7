//! `relive serve`: a development server for a workspace.
//!
//! It serves `static/` (through `relive_web::static_router`), renders
//! `templates/` for page requests with the workspace's configs as context,
//! injects the live reload client into every HTML response, and mounts the
//! LiveReload endpoints. A template that does not compile is shown in the
//! browser as an overlay (the hub's alert) while the last good templates
//! keep serving. A page whose template fails while rendering (an unknown
//! filter, a missing include, a division by zero) is a 500 whose body the
//! client shows as the same overlay, located at template, line and column;
//! the client is injected there too, so fixing the template reloads it.
//! `--no-inject` leaves the client out of every page, for browsers where
//! the LiveReload extension (or livereload-js in the page) does its job.
//!
//! # The LiveReload extensions
//!
//! The LiveReload browser extensions and livereload-js look for a server
//! on port 35729. Unless `--livereload-port 0`, `relive serve` listens
//! there too (on `--host`), with the LiveReload endpoints only (the
//! WebSocket at `/livereload`, the client at `/livereload.js`), and prints
//! that address on its second line of output. A port in use is reported
//! on stderr and skipped: the pages are still served. livereload-js
//! cannot map `/static/app.css` to the fingerprinted URL a page links, so
//! for a CSS change it re-fetches every stylesheet under the URL it has,
//! whose fingerprint is now superseded: the static router answers that
//! with the current content (see `relive_web::Manifest::superseded`).
//!
//! # Who it answers
//!
//! The pages show every config, secrets included, so they are for the
//! developer's own browser only. The server binds 127.0.0.1 by default,
//! but that alone does not keep out a page of another site that the
//! browser is showing: through DNS rebinding (its name re-resolved to
//! 127.0.0.1) it reads this server's pages as its own, and any page may
//! open a WebSocket to `127.0.0.1:35729`. So, on both ports and every
//! route, a request is answered only if its `Host` names a loopback host
//! (`localhost`, `127.x.y.z`, `[::1]`), the `--host` address, or a name
//! given with `--allow-host` (exact, any port); any other gets a 421 with
//! a plain-text reason. The live reload streams also refuse an `Origin`
//! that is not a page of those hosts (any port: a page of the main port
//! connects to the LiveReload port) or a LiveReload extension's. The
//! checks are `relive_web::Access`: the hub carries it for the streams,
//! and a middleware here applies its Host check to every route. A `--host`
//! that is not loopback is warned about on stderr.
//!
//! The configs are the context: `config/site.toml` is `site` in templates
//! (`{{ site.title }}`). Each is loaded with `Workspace::load` at start and
//! again when the engine says it has a new value (`ConfigChanged`), and
//! pages are told to reload only after the new context is in place.
//! Templates link static files with `static_url('app.css')`, which gives
//! the fingerprinted URL from the assets' manifest.
//!
//! # A config that is wrong or gone
//!
//! The core's rule is that the last good value of a config stays live: a
//! config that stops parsing, or whose files are deleted, keeps its value
//! in a running service (`ValidationFailed`, not a new value). `relive
//! serve` previews what such a service would show, so the context keeps
//! the last good value too. But a dev server must not let the page look
//! as if it matched the files when it does not: while a config is invalid
//! or deleted, every browser shows an overlay that says so (the located
//! error, or that the config's files are gone and its last value is still
//! used), and a warning goes to stderr. The notice goes away, and pages
//! reload, when the config loads again, also when it comes back with the
//! very value it had (the engine reports no new value then, so a change to
//! any config file re-checks the configs with a notice). To drop a deleted
//! config from the context, restart `relive serve`: a fresh start loads
//! only the configs that exist.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use relive::{ChangeEvent, ConfigError, ConfigErrorKind, Workspace};
use relive_web::{Access, Assets, Change, ReloadHub, Templates};
use serde_json::{Map, Value};
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
    hub: ReloadHub,
    /// Whether pages get the live reload client (not `--no-inject`).
    inject: bool,
}

impl Pages {
    /// `html` with the client stamped with `changes`, or without any
    /// client under `--no-inject`.
    fn finish(&self, html: &str, changes: u64) -> String {
        match self.inject {
            true => relive_web::inject_at(html, changes),
            false => html.replace(relive_web::SCRIPT_TAG, ""),
        }
    }
}

/// Runs `relive serve` until SIGINT or SIGTERM.
pub async fn run(args: ServeArgs) -> Result<Exit> {
    let ws = app::workspace(args.dir.as_deref(), args.env.env.as_deref())?;
    let mut shutdown = crate::platform::Shutdown::listen().map_err(Failure::runtime)?;
    let access = access(&args)?;

    let assets = Assets::new(&ws).map_err(web_failure)?;
    let urls = assets.clone();
    let templates = Templates::with_setup(&ws, move |env| urls.add_static_url(env)).map_err(web_failure)?;
    let context = Context::default();
    let (values, failed) = load_all(&ws, &Map::new());
    context.store(Arc::new(values));
    // The workspace's settings (relive.toml), with the command line's.
    let base = ws.settings()?;
    let config = relive::HotReloadConfig {
        history: relive::HistoryConfig { enabled: !args.no_history, ..base.history.clone() },
        ..base
    };
    let manager = ws.start_hot_reload_with_config(config).await?;

    let hub = ReloadHub::new();
    hub.set_access(access.clone());
    hub.follow_templates(&templates);
    hub.follow_assets(&assets);
    follow_configs(&ws, &manager, &context, &hub, failed);

    if !args.host.to_canonical().is_loopback() {
        output::warn(&format!(
            "--host {}: not a loopback address, so every config (secrets included), template and static file of \
             this workspace is readable from the network",
            args.host
        ));
    }
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
    let livereload = match args.livereload_port {
        0 => None,
        port => livereload_listener(SocketAddr::new(args.host, port)).await,
    };
    follow_template_errors(&templates);

    // Every route on both ports answers only for the allowed hosts.
    let guard = axum::middleware::from_fn_with_state(Arc::new(access), refuse_other_hosts);
    let app = Router::new()
        .fallback(page)
        .with_state(Pages { templates, context, hub: hub.clone(), inject: !args.no_inject })
        .merge(relive_web::router(hub.clone()))
        .merge(relive_web::static_router(assets))
        .layer(guard.clone());
    let server = axum::serve(listener, app.into_make_service());
    // The extensions' port: the LiveReload endpoints, nothing of the workspace.
    let extensions = async move {
        let app = relive_web::router(hub).fallback(|| async { StatusCode::NOT_FOUND }).layer(guard);
        match livereload {
            Some(listener) => axum::serve(listener, app.into_make_service()).await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        served = server => served.map(|()| Exit::Ok).map_err(|e| Failure::runtime(format!("server failed: {e}"))),
        served = extensions => {
            served.map(|()| Exit::Ok).map_err(|e| Failure::runtime(format!("the LiveReload port's server failed: {e}")))
        }
        _ = shutdown.recv() => Ok(Exit::Ok),
    };
    manager.shutdown().await?;
    result
}

/// The hosts the server answers for (loopback names, the `--host`
/// address, `--allow-host` names), and the origins its live reload
/// streams accept (pages of those hosts, the LiveReload extensions).
fn access(args: &ServeArgs) -> Result<Access> {
    let mut access = Access::loopback().with_host(&args.host.to_string()).map_err(web_failure)?;
    for name in &args.allow_host {
        // Checked by clap already (`cli::parse_allow_host`).
        access = access.with_host(name).map_err(|e| Failure { exit: Exit::Usage, message: e.to_string() })?;
    }
    Ok(access)
}

/// Answers only requests for an allowed host: a page of another site that
/// reaches this server through DNS rebinding (its name re-resolved to
/// 127.0.0.1) still names its own host in `Host`, and gets a 421 that says
/// why, never a page.
async fn refuse_other_hosts(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    match access.check_host(request.headers(), request.uri()) {
        Ok(()) => next.run(request).await,
        Err(refused) => {
            let text = format!("relive serve: {refused}; allow another name with --allow-host NAME\n");
            (refused.status(), [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
        }
    }
}

/// Binds the LiveReload extensions' port and prints its address on the
/// second line of stdout; a port that cannot be bound is a note on stderr
/// and `None`.
async fn livereload_listener(addr: SocketAddr) -> Option<tokio::net::TcpListener> {
    let bound = tokio::net::TcpListener::bind(addr).await.and_then(|l| Ok((l.local_addr()?, l)));
    match bound {
        Ok((local, listener)) => {
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            let _ =
                writeln!(stdout, "livereload http://{} (for the LiveReload browser extensions)", display_addr(local));
            let _ = stdout.flush();
            Some(listener)
        }
        Err(e) => {
            output::note(&format!(
                "not listening on {} for the LiveReload browser extensions: {e}; pages still reload through \
                 relive's own client (choose another port with --livereload-port P, or 0 to say no)",
                display_addr(addr)
            ));
            None
        }
    }
}

/// Warns on stderr each time the templates turn to an error (at start
/// too), located as `templates/NAME:LINE:COL: message`, and notes when they
/// compile again. The browsers are told by the hub.
fn follow_template_errors(templates: &Templates) {
    let mut status = templates.subscribe();
    let mut shown = status.borrow_and_update().error.clone();
    if let Some(error) = &shown {
        output::warn(&template_error_text(error));
    }
    tokio::spawn(async move {
        while status.changed().await.is_ok() {
            let error = status.borrow_and_update().error.clone();
            match (&shown, &error) {
                (_, Some(now)) if shown.as_ref() != Some(now) => output::warn(&template_error_text(now)),
                (Some(_), None) => output::note("templates: they compile again; pages are rendered with them"),
                _ => {}
            }
            shown = error;
        }
    });
}

/// `templates/index.html:3:14: message`.
fn template_error_text(error: &relive_web::TemplateError) -> String {
    format!("templates/{}:{}:{}: {}", error.name, error.line, error.column, error.message)
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

/// The configs' values and the errors of those that did not load.
type Loaded = (Map<String, Value>, Vec<(String, ConfigError)>);

/// Every config's value by name: `base` with each config that loads now
/// put in (see [`load_some`]).
fn load_all(ws: &Workspace, base: &Map<String, Value>) -> Loaded {
    let names = match ws.configs() {
        Ok(configs) => configs.into_iter().map(|c| c.name).collect(),
        Err(e) => {
            output::warn(&e.to_string());
            Vec::new()
        }
    };
    load_some(ws, names, base)
}

/// `base` with configs `names` loaded now. A config that does not load
/// keeps its value in `base`, if any; those are returned with their errors.
fn load_some(ws: &Workspace, names: Vec<String>, base: &Map<String, Value>) -> Loaded {
    let mut out = base.clone();
    let mut failed = Vec::new();
    for name in names {
        match load(ws, &name) {
            Ok(value) => {
                out.insert(name, value);
            }
            Err(error) => failed.push((name, error)),
        }
    }
    (out, failed)
}

/// Config `name`'s value now.
fn load(ws: &Workspace, name: &str) -> std::result::Result<Value, ConfigError> {
    match ws.load(name) {
        Ok(loaded) => Ok(loaded.value().clone()),
        Err(relive::Error::Config { error, .. }) => Err(*error),
        Err(e) => Err(ConfigError::new(ConfigErrorKind::Io, e.to_string())),
    }
}

/// The source of config `name`'s alert in the hub.
fn alert_source(name: &str) -> String {
    format!("config/{name}")
}

/// What browsers and stderr are told while config `name` is `error`;
/// `had_value` if the pages still use a last good value.
fn config_notice(name: &str, error: &ConfigError, had_value: bool) -> String {
    match (error.kind(), had_value) {
        (ConfigErrorKind::Missing, _) => format!(
            "config `{name}`: its files are gone; pages keep its last value until it is back \
             (restart relive serve to drop it)"
        ),
        (_, true) => {
            format!("{}\npages keep the last good value of config `{name}`", output::config_error(Some(name), error))
        }
        (_, false) => {
            format!("{}\npages are rendered without config `{name}`", output::config_error(Some(name), error))
        }
    }
}

/// Warns on stderr and in every browser that config `name` is `error`.
fn show_notice(hub: &ReloadHub, noticed: &mut BTreeSet<String>, name: &str, error: &ConfigError, had_value: bool) {
    let text = config_notice(name, error, had_value);
    output::warn(&text);
    hub.alert(&alert_source(name), Some(text));
    noticed.insert(name.to_string());
}

/// Keeps `context` current, and reloads pages once a new config value is
/// in it (rather than `ReloadHub::follow_configs`, which could tell
/// browsers before the context has the value). Shows a notice in the
/// browsers while a config is invalid or deleted (see the module docs);
/// `failed` are the configs that did not load at start.
fn follow_configs(
    ws: &Workspace,
    manager: &relive::HotReloadManager,
    context: &Context,
    hub: &ReloadHub,
    failed: Vec<(String, ConfigError)>,
) {
    let mut events = manager.subscribe();
    let (ws, context, hub) = (ws.clone(), context.clone(), hub.clone());
    let config_dir = ws.config_dir();
    tokio::spawn(async move {
        // The configs whose notice stands.
        let mut noticed = BTreeSet::new();
        for (name, error) in &failed {
            show_notice(&hub, &mut noticed, name, error, false);
        }
        loop {
            // Which configs to load again; `None`: all of them.
            let names: Option<Vec<String>> = match events.recv().await {
                Ok(ChangeEvent::ConfigChanged { config_name, .. }) => Some(vec![config_name]),
                Ok(ChangeEvent::ValidationFailed { config_name, error }) => {
                    let had = context.load().contains_key(&config_name);
                    show_notice(&hub, &mut noticed, &config_name, &error, had);
                    continue;
                }
                // Maybe one with a notice is back as it was: no new value,
                // so no `ConfigChanged`; look.
                Ok(ChangeEvent::FileChanged { path, .. }) if path.starts_with(&config_dir) && !noticed.is_empty() => {
                    Some(noticed.iter().cloned().collect())
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(_)) => None,
                Err(RecvError::Closed) => break,
            };
            let (ws2, current) = (ws.clone(), context.load_full());
            let loaded = tokio::task::spawn_blocking(move || match names {
                Some(names) => load_some(&ws2, names, &current),
                None => load_all(&ws2, &current),
            })
            .await;
            let Ok((values, failed)) = loaded else { continue };
            let changed: Vec<String> = values
                .iter()
                .filter(|(name, value)| context.load().get(*name) != Some(*value) || noticed.contains(*name))
                .map(|(name, _)| name.clone())
                .filter(|name| !failed.iter().any(|(f, _)| f == name))
                .collect();
            context.store(Arc::new(values));
            for name in &changed {
                if noticed.remove(name) {
                    hub.alert(&alert_source(name), None);
                }
                hub.notify(Change::Config { name: name.clone() });
            }
        }
    });
}

/// `/` → `index.html`, `/a/b` → `a/b.html`, rendered with the configs and
/// with the live reload client injected, stamped with the hub's change
/// count from before the render (so a page that misses a change while it
/// loads is reloaded when its client connects).
async fn page(State(pages): State<Pages>, uri: Uri) -> Response {
    let Some(name) = template_name(uri.path()) else {
        return not_found(&pages);
    };
    let env = pages.templates.environment();
    if env.get_template(&name).is_err() {
        return not_found(&pages);
    }
    let changes = pages.hub.changes();
    let context = Value::Object((**pages.context.load()).clone());
    let no_cache = [(header::CACHE_CONTROL, "no-cache")];
    match pages.templates.render(&name, context) {
        Ok(html) => (no_cache, Html(pages.finish(&html, changes))).into_response(),
        // The overlay, and the client to reload the page when it is fixed.
        Err(relive_web::Error::Template(e)) => {
            output::warn(&e.to_string());
            let page = pages.finish(&relive_web::error_page(&e), changes);
            (StatusCode::INTERNAL_SERVER_ERROR, no_cache, Html(page)).into_response()
        }
        Err(e) => {
            output::warn(&e.to_string());
            let body = format!("<!doctype html><title>error</title><body><pre>{}</pre></body>", escape(&e.to_string()));
            (StatusCode::INTERNAL_SERVER_ERROR, no_cache, Html(pages.finish(&body, changes))).into_response()
        }
    }
}

fn not_found(pages: &Pages) -> Response {
    let page = "<!doctype html><title>not found</title><body><p>not found</p></body>";
    (StatusCode::NOT_FOUND, Html(pages.finish(page, pages.hub.changes()))).into_response()
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
