//! relive-web: templates, static assets and browser live reload for relive
//! workspaces.
//!
//! [`Templates`] is a minijinja environment built from `templates/` and
//! rebuilt when a template changes. The new environment is swapped in whole,
//! and only if every template compiles: a syntax error leaves the last good
//! one serving and is reported with file, line and column.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! std::fs::create_dir(dir.path().join("templates"))?;
//! std::fs::write(dir.path().join("templates/index.html"), "<h1>{{ title }}</h1>")?;
//!
//! let ws = relive::Workspace::new(dir.path());
//! let templates = relive_web::Templates::new(&ws)?;
//! let html = templates.render("index.html", serde_json::json!({ "title": "<hello>" }))?;
//! assert_eq!(html, "<h1>&lt;hello&gt;</h1>");
//!
//! // Once hot reload runs, edits are picked up as they are saved.
//! let manager = ws.start_hot_reload().await?;
//! # manager.shutdown().await?;
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

mod assets;
mod error;
mod templates;

pub use assets::{Asset, AssetChange, Assets, CacheControl, Manifest, STATIC_PREFIX, fingerprint, resolve};
pub use error::{Error, Result, TemplateError};
pub use templates::{TemplateStatus, Templates};
