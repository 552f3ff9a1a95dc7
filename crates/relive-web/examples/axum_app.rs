//! An axum application of its own with relive's live reload added: a page
//! rendered from a template with a `Live<AppConfig>`, a JSON endpoint, a
//! page built in code, static files, and the live reload layer and
//! endpoints mounted by one call.
//!
//! ```text
//! cargo run -p relive-web --example axum_app --features axum -- [DIR] [--port P]
//! ```
//!
//! `DIR` is a relive workspace with `config/app.toml`, `templates/index.html`
//! and `static/app.css` (default: `examples/axum_app` next to this file).
//! The app binds 127.0.0.1:3000 (`--port 0` or `PORT=0` for any free port)
//! and prints `listening on http://ADDR` once it accepts connections. Open
//! that page and edit the workspace's files: the page follows.
//!
//! Live reload is on in debug builds only, and `RELIVE_LIVERELOAD=0` turns
//! it off there too: then the app serves the same pages without the
//! script and without the `/livereload` endpoints.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::extract::{FromRef, Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use axum::{Router, serve};
use relive::Live;
use relive_web::{Assets, LiveReloadExt, LiveReloadLayer, ReloadHub, Snapshot, Templates, static_router};
use serde::{Deserialize, Serialize};

/// `config/app.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AppConfig {
    title: String,
    greeting: String,
    #[serde(default)]
    notes: Vec<String>,
}

/// The router's state. Handlers take the whole of it or, through
/// `FromRef`, just the part they need (`State<Live<AppConfig>>`).
#[derive(Clone, FromRef)]
struct AppState {
    config: Live<AppConfig>,
    templates: Templates,
}

/// `/`: the template, rendered with one snapshot of the config.
async fn index(State(state): State<AppState>) -> Response {
    let config = state.config.load_full();
    let context = serde_json::json!({ "config": &*config, "visitor": "visitor" });
    match state.templates.render("index.html", context) {
        Ok(html) => Html(html).into_response(),
        // The layer injects into error pages too, so fixing the template
        // reloads this one.
        Err(e) => {
            (StatusCode::INTERNAL_SERVER_ERROR, Html(format!("<pre>{}</pre>", escape(&e.to_string())))).into_response()
        }
    }
}

/// `/api/config`: JSON, which the layer leaves alone.
async fn api_config(State(config): State<Live<AppConfig>>) -> Json<AppConfig> {
    Json(AppConfig::clone(&config.load()))
}

/// `/hello/{name}`: HTML built in code, from the config snapshot taken
/// when the request was extracted.
async fn hello(Snapshot(config): Snapshot<AppConfig>, Path(name): Path<String>) -> Html<String> {
    Html(format!(
        "<!doctype html><title>{}</title><body><p class=\"greeting\">{}, {}!</p></body>",
        escape(&config.title),
        escape(&config.greeting),
        escape(&name)
    ))
}

async fn not_found() -> (StatusCode, Html<&'static str>) {
    (StatusCode::NOT_FOUND, Html("<!doctype html><title>not found</title><body><p>not found</p></body>"))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

struct Args {
    dir: PathBuf,
    port: u16,
}

fn parse_args() -> Result<Args, String> {
    let mut dir = None;
    let mut port = std::env::var("PORT").ok();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => port = Some(args.next().ok_or("--port needs a value")?),
            "-h" | "--help" => {
                return Err("usage: axum_app [DIR] [--port P]   (PORT in the environment works too)".to_string());
            }
            _ if dir.is_none() && !arg.starts_with('-') => dir = Some(PathBuf::from(arg)),
            _ => return Err(format!("unexpected argument {arg:?}; usage: axum_app [DIR] [--port P]")),
        }
    }
    let port = match port {
        Some(port) => port.parse().map_err(|_| format!("invalid port {port:?}: give a number from 0 to 65535"))?,
        None => 3000,
    };
    let dir = dir.unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/axum_app")));
    Ok(Args { dir, port })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args().map_err(|e| -> Box<dyn std::error::Error> { e.into() })?;
    let ws = relive::Workspace::new(&args.dir);
    let assets = Assets::new(&ws)?;
    let templates = {
        let assets = assets.clone();
        Templates::with_setup(&ws, move |env| assets.add_static_url(env))?
    };
    let config: Live<AppConfig> = ws
        .config::<AppConfig>("app")
        .validate(|c: &AppConfig| {
            if c.title.trim().is_empty() {
                Err(relive::ValidationError::at("title", "must not be empty"))
            } else {
                Ok(())
            }
        })
        .live()
        .await?;
    let manager = ws.start_hot_reload().await?;

    let hub = ReloadHub::new();
    hub.follow_templates(&templates);
    hub.follow_assets(&assets);
    hub.follow_configs(&manager);

    let live_reload = cfg!(debug_assertions) && std::env::var_os("RELIVE_LIVERELOAD").is_none_or(|v| v != "0");
    let app = Router::new()
        .route("/", get(index))
        .route("/api/config", get(api_config))
        .route("/hello/{name}", get(hello))
        .fallback(not_found)
        .with_state(AppState { config, templates })
        .merge(static_router(assets))
        // The two lines that add live reload: the hub above, and this.
        .live_reload_with(hub, LiveReloadLayer::new().enabled(live_reload));

    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], args.port))).await?;
    println!("listening on http://{}", listener.local_addr()?);
    if !live_reload {
        println!("live reload is off");
    }
    serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    manager.shutdown().await?;
    Ok(())
}
