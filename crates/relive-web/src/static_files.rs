//! Serving `static/` over HTTP: [`static_router`].

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::assets::{Assets, STATIC_PREFIX};
use crate::error::Error;

/// A router that serves `assets` at `/static/...`: fingerprinted names
/// (`/static/app.3f2a9c1b.css`) cached for good, logical names revalidated,
/// superseded fingerprints (the file changed since the page linked it)
/// answered with the current content, revalidated,
/// every way out of the static root refused (403) as [`resolve`](crate::resolve)
/// refuses it, and anything that names no file a 404.
///
/// The request path is taken from the URI as it came, still
/// percent-encoded, so that it is decoded exactly once (by the resolver).
pub fn static_router(assets: Assets) -> Router {
    Router::new().route("/static/{*path}", get(serve_static)).with_state(assets)
}

async fn serve_static(State(assets): State<Assets>, uri: Uri) -> Response {
    let Some(request_path) = uri.path().strip_prefix(STATIC_PREFIX) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let asset = match assets.lookup(request_path) {
        Ok(asset) => asset,
        Err(Error::Forbidden { .. }) => return (StatusCode::FORBIDDEN, "forbidden\n").into_response(),
        Err(_) => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
    };
    let path = asset.path.clone();
    let read = tokio::task::spawn_blocking(move || std::fs::read(path)).await;
    match read {
        Ok(Ok(bytes)) => (
            [(header::CONTENT_TYPE, content_type(&asset.logical)), (header::CACHE_CONTROL, asset.cache.header_value())],
            bytes,
        )
            .into_response(),
        // Removed between the lookup and the read.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            (StatusCode::NOT_FOUND, "not found\n").into_response()
        }
        Ok(Err(e)) => {
            tracing::warn!(file = %asset.path.display(), error = %e, "cannot read a static file");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

impl Assets {
    /// Adds `static_url(name)` to `env`: the URL to link static file `name`
    /// by, fingerprinted from the current manifest
    /// (`/static/app.3f2a9c1b.css`), or the plain `/static/<name>` for a
    /// file the manifest does not have. Call it from
    /// [`Templates::with_setup`](crate::Templates::with_setup); a page
    /// rendered after an asset changed links its new fingerprint.
    pub fn add_static_url(&self, env: &mut minijinja::Environment<'static>) {
        let assets = self.clone();
        env.add_function("static_url", move |name: String| {
            let url = assets.url(&name).unwrap_or_else(|| format!("{STATIC_PREFIX}{name}"));
            // A URL, not text: HTML-escaping its `/` would only make it unreadable.
            minijinja::Value::from_safe_string(url)
        });
    }
}

/// The `Content-Type` for a file name, by its extension.
pub(crate) fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, ext)| ext.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "html" | "htm" => "text/html; charset=utf-8",
        "json" | "map" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_by_extension() {
        assert_eq!(content_type("css/app.3f2a9c1b.CSS"), "text/css; charset=utf-8");
        assert_eq!(content_type("logo.svg"), "image/svg+xml");
        assert_eq!(content_type("LICENSE"), "application/octet-stream");
    }
}
