//! relive-web: templates, static assets and browser live reload for relive
//! workspaces.
//!
//! - [`Templates`] is a minijinja environment built from `templates/` and
//!   rebuilt when a template changes. The new environment is swapped in
//!   whole, and only if every template compiles: a syntax error leaves the
//!   last good one serving and is reported with file, line and column (as
//!   [`Templates::last_error`], on [`Templates::subscribe`], and as the
//!   core's `ChangeEvent::HandlerFailed`).
//! - [`Assets`] keeps a [`Manifest`] of `static/` that maps logical names
//!   (`app.css`) to fingerprinted ones (`app.3f2a9c1b.css`) by content hash,
//!   so saving the same bytes changes nothing. [`resolve`] and
//!   [`Assets::lookup`] turn a request path into a file and refuse every way
//!   out of `static/` (`..`, encoded `..`, backslashes, NUL, absolute paths,
//!   symlinks that lead out).
//! - [`ReloadHub`] decides what a change means for browsers: a stylesheet
//!   is swapped in place, anything else reloads the page, and a burst is
//!   one message ([`BurstCoalescer`]). [`router`] serves the LiveReload protocol
//!   (`official-7`, WebSocket at `/livereload`, so the browser extensions
//!   work), the same messages as Server-Sent Events at `/livereload/events`,
//!   and the client script at `/livereload.js`, which [`inject`] adds to
//!   HTML.
//! - [`Access`] says which hosts a server answers for and which origins
//!   may open its live reload streams: loopback by default, so that
//!   neither a page of another site reached through DNS rebinding nor a
//!   cross-site WebSocket reads what the server shows (its alerts carry
//!   config errors). [`router`] applies its hub's access
//!   ([`ReloadHub::set_access`]); `relive serve` applies the same hosts to
//!   every route.
//! - [`static_router`] serves [`Assets`] at `/static/...` with the right
//!   caching: fingerprinted names for good, logical names revalidated.
//!
//! Everything follows the workspace's one hot reload engine (through
//! handlers registered by glob), and browsers hear of a change only once
//! the new templates, manifest or config are live.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use relive_web::{Assets, ReloadHub, Templates};
//!
//! let dir = tempfile::tempdir()?;
//! std::fs::create_dir_all(dir.path().join("templates"))?;
//! std::fs::create_dir_all(dir.path().join("static"))?;
//! std::fs::write(dir.path().join("templates/index.html"), "<body><h1>{{ title }}</h1></body>")?;
//! std::fs::write(dir.path().join("static/app.css"), "h1 { color: teal }")?;
//!
//! let ws = relive::Workspace::new(dir.path());
//! let templates = Templates::new(&ws)?;
//! let assets = Assets::new(&ws)?;
//! let manager = ws.start_hot_reload().await?;
//!
//! let html = templates.render("index.html", serde_json::json!({ "title": "<hello>" }))?;
//! assert_eq!(
//!     relive_web::inject(&html),
//!     r#"<body><h1>&lt;hello&gt;</h1><script src="/livereload.js" async></script></body>"#
//! );
//! let css = assets.url("app.css").expect("an asset");
//! assert!(css.starts_with("/static/app.") && css.ends_with(".css") && css.len() == "/static/app.12345678.css".len());
//!
//! let hub = ReloadHub::new();
//! hub.follow_templates(&templates);
//! hub.follow_assets(&assets);
//! hub.follow_configs(&manager);
//! // Mount next to the application's own routes.
//! let app: axum::Router = relive_web::router(hub);
//! # drop(app);
//! # manager.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
#![cfg_attr(feature = "axum", doc = include_str!("layer.md"))]
#![cfg_attr(
    not(feature = "axum"),
    doc = "With the `axum` feature, the crate also has a tower layer that puts the client into an \
           application's own HTML responses, a one-call mount of the endpoints, and a `Live<T>` extractor."
)]
#![deny(missing_docs)]

mod access;
mod assets;
mod client;
mod error;
#[cfg(feature = "axum")]
mod layer;
mod reload;
mod static_files;
mod templates;

pub use access::{Access, Refused};
pub use assets::{Asset, AssetChange, Assets, CacheControl, Manifest, STATIC_PREFIX, fingerprint, resolve};
pub use client::{CLIENT_JS, PAGE_ERROR_ID, SCRIPT_TAG, error_page, inject, inject_at};
pub use error::{Error, Result, TemplateError};
#[cfg(feature = "axum")]
pub use layer::{LiveReload, LiveReloadExt, LiveReloadLayer, NoInject, Snapshot};
#[allow(deprecated)]
pub use reload::Coalescer;
pub use reload::{BurstCoalescer, Change, Message, PROTOCOL_OFFICIAL_7, ReloadHub, router};
pub use static_files::static_router;
pub use templates::{TemplateStatus, Templates};
