//! Live reload for an application's own axum router (feature `axum`):
//! [`LiveReloadLayer`] puts the client into its HTML responses,
//! [`LiveReloadExt::live_reload`] mounts the endpoints and the layer in one
//! call, and [`Snapshot`] reads a [`Live<T>`](relive::Live) once per request.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::BoxError;
use axum::Router;
use axum::body::Body;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header, request};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use http_body::Frame;
use http_body_util::{BodyExt, BodyStream, StreamBody};
use tower_layer::Layer;
use tower_service::Service;

use crate::reload::{ReloadHub, router};

/// A tower [`Layer`] that adds the live reload client
/// ([`SCRIPT_TAG`](crate::SCRIPT_TAG), by [`inject`](crate::inject)) to the
/// HTML an application serves, and leaves every other response as it was,
/// byte for byte.
///
/// A response gets the script when all of these hold:
///
/// - the layer is [`enabled`](LiveReloadLayer::enabled);
/// - the request is not `HEAD`;
/// - the status is not 1xx, 204, 205, 206 or 304;
/// - `Content-Type` is `text/html` (any parameters), and its charset, if
///   any, is not UTF-16 or UTF-32 (the tag is ASCII, so any ASCII-compatible
///   charset takes it as it is);
/// - there is no `Content-Encoding` (other than `identity`) and no
///   `Content-Range`: relive does not decompress a body to edit it;
/// - `Cache-Control` does not say `no-transform`, and the response has no
///   [`NoInject`] extension;
/// - the body is at most [`max_body`](LiveReloadLayer::max_body) bytes.
///
/// The body is read whole (a known length over the cap is not read at all;
/// a streamed body is held until it ends or passes the cap, and then flows
/// on untouched), the tag goes before the last `</body>` (at the end when
/// there is none; not at all when the page has it already), and
/// `Content-Length` is set to the new length.
#[derive(Debug, Clone)]
pub struct LiveReloadLayer {
    config: Arc<Config>,
}

#[derive(Debug, Clone)]
struct Config {
    enabled: bool,
    max_body: usize,
    hub: Option<ReloadHub>,
}

impl Default for LiveReloadLayer {
    fn default() -> LiveReloadLayer {
        LiveReloadLayer::new()
    }
}

impl LiveReloadLayer {
    /// The cap on the size of a page the layer edits, unless
    /// [`max_body`](LiveReloadLayer::max_body) says otherwise: 4 MiB.
    pub const DEFAULT_MAX_BODY: usize = 4 << 20;

    /// An enabled layer with the default cap.
    pub fn new() -> LiveReloadLayer {
        LiveReloadLayer { config: Arc::new(Config { enabled: true, max_body: Self::DEFAULT_MAX_BODY, hub: None }) }
    }

    /// Whether to inject at all. A disabled layer passes every response
    /// through, and [`LiveReloadExt::live_reload_with`] mounts nothing with
    /// it: pass `cfg!(debug_assertions)` (or an environment variable you
    /// read) to keep live reload out of production.
    pub fn enabled(mut self, enabled: bool) -> LiveReloadLayer {
        Arc::make_mut(&mut self.config).enabled = enabled;
        self
    }

    /// The largest body, in bytes, that the layer reads to inject into.
    /// Larger pages are streamed through untouched.
    pub fn max_body(mut self, bytes: usize) -> LiveReloadLayer {
        Arc::make_mut(&mut self.config).max_body = bytes;
        self
    }

    /// Stamps each page with `hub`'s change count, read before the
    /// application handles the request (see [`inject_at`](crate::inject_at)):
    /// a page that misses a change while it loads is reloaded when its
    /// client connects. [`LiveReloadExt::live_reload_with`] sets it.
    pub fn hub(mut self, hub: ReloadHub) -> LiveReloadLayer {
        Arc::make_mut(&mut self.config).hub = Some(hub);
        self
    }

    /// Whether the layer injects.
    pub fn is_enabled(&self) -> bool {
        self.config.enabled
    }
}

impl<S> Layer<S> for LiveReloadLayer {
    type Service = LiveReload<S>;

    fn layer(&self, inner: S) -> LiveReload<S> {
        LiveReload { inner, config: Arc::clone(&self.config) }
    }
}

/// The service [`LiveReloadLayer`] wraps around an application.
#[derive(Debug, Clone)]
pub struct LiveReload<S> {
    inner: S,
    config: Arc<Config>,
}

/// A response extension that keeps [`LiveReloadLayer`] out of one HTML
/// response, such as a page streamed to the browser as it is produced
/// (which the layer would otherwise hold until it ends or passes the cap).
/// In a handler: `(Extension(NoInject), Html(...))`.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoInject;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for LiveReload<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let head = request.method() == Method::HEAD;
        let config = Arc::clone(&self.config);
        // Read before the page is made: a change after this point is one
        // the page may not show, and its client will say so.
        let changes = config.hub.as_ref().map(ReloadHub::changes);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            if !config.enabled || head || !injectable(&response) {
                return Ok(response.map(Body::new));
            }
            Ok(inject_response(response, config.max_body, changes).await)
        })
    }
}

/// Whether `response`'s headers, status and extensions allow injecting
/// (everything in [`LiveReloadLayer`]'s list but the method and the size).
fn injectable<B>(response: &Response<B>) -> bool {
    let status = response.status();
    if status.is_informational()
        || matches!(
            status,
            StatusCode::NO_CONTENT | StatusCode::RESET_CONTENT | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED
        )
    {
        return false;
    }
    let headers = response.headers();
    is_html(headers)
        && headers.get_all(header::CONTENT_ENCODING).iter().all(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"))
        && !headers.contains_key(header::CONTENT_RANGE)
        && !headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|d| d.trim().eq_ignore_ascii_case("no-transform"))))
        && response.extensions().get::<NoInject>().is_none()
}

/// `Content-Type: text/html` in a charset that ASCII bytes can go into.
fn is_html(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mut parts = content_type.split(';');
    if !parts.next().is_some_and(|essence| essence.trim().eq_ignore_ascii_case("text/html")) {
        return false;
    }
    !parts.filter_map(|p| p.split_once('=')).any(|(name, value)| {
        let value = value.trim().trim_matches('"').to_ascii_lowercase();
        name.trim().eq_ignore_ascii_case("charset") && (value.starts_with("utf-16") || value.starts_with("utf-32"))
    })
}

async fn inject_response<B>(response: Response<B>, max_body: usize, changes: Option<u64>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = response.into_parts();
    if body.size_hint().lower() > max_body as u64 {
        return Response::from_parts(parts, Body::new(body));
    }
    match read_up_to(Body::new(body), max_body).await {
        Read::Whole(html) => {
            let html = inject_bytes(&html, changes);
            parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(html.len()));
            Response::from_parts(parts, Body::from(html))
        }
        Read::Partial(body) => Response::from_parts(parts, body),
    }
}

enum Read {
    /// The whole body, at most the cap.
    Whole(Bytes),
    /// A body that passed the cap, carried trailers or failed: what was read
    /// followed by the rest, as the application sent it.
    Partial(Body),
}

async fn read_up_to(mut body: Body, max_body: usize) -> Read {
    let mut read: Vec<Frame<Bytes>> = Vec::new();
    let mut len = 0usize;
    let tail: Result<Body, BoxError> = loop {
        match body.frame().await {
            None => {
                let mut whole = BytesMut::with_capacity(len);
                for frame in read {
                    whole.extend_from_slice(frame.data_ref().expect("only data frames are kept"));
                }
                return Read::Whole(whole.freeze());
            }
            Some(Ok(frame)) => {
                let (data, trailers) = (frame.is_data(), frame.is_trailers());
                if data {
                    len += frame.data_ref().map_or(0, Bytes::len);
                }
                read.push(frame);
                if trailers || len > max_body {
                    break Ok(body);
                }
            }
            Some(Err(error)) => break Err(error.into()),
        }
    };
    let head = futures_util::stream::iter(read.into_iter().map(Ok::<_, BoxError>));
    let body = match tail {
        Ok(rest) => Body::new(StreamBody::new(head.chain(BodyStream::new(rest).map(|f| f.map_err(BoxError::from))))),
        Err(error) => Body::new(StreamBody::new(head.chain(futures_util::stream::iter([Err(error)])))),
    };
    Read::Partial(body)
}

/// [`inject`](crate::inject) (or [`inject_at`](crate::inject_at) with a
/// change count) on bytes. UTF-8 goes straight in; anything
/// else (an ASCII-compatible charset such as `windows-1252`) is read as
/// Latin-1, which maps every byte to one char and back, so only the ASCII
/// tag is added and no other byte changes.
fn inject_bytes(html: &[u8], changes: Option<u64>) -> Bytes {
    let inject = |text: &str| match changes {
        Some(n) => crate::inject_at(text, n),
        None => crate::inject(text),
    };
    match std::str::from_utf8(html) {
        Ok(text) => Bytes::from(inject(text)),
        Err(_) => {
            let text: String = html.iter().map(|&b| char::from(b)).collect();
            let injected = inject(&text);
            Bytes::from(
                injected.chars().map(|c| u8::try_from(c).expect("latin-1 chars are bytes")).collect::<Vec<u8>>(),
            )
        }
    }
}

/// Adds live reload to an application's [`Router`] in one call.
pub trait LiveReloadExt {
    /// Mounts the live reload endpoints ([`router(hub)`](crate::router):
    /// `/livereload`, `/livereload/events`, `/livereload.js`) and wraps every
    /// route, these and the application's own (its fallback included), in a
    /// [`LiveReloadLayer::new`].
    ///
    /// Call it last, after the application's routes, layers and
    /// `with_state`: routes added afterwards are not wrapped. It panics, as
    /// [`Router::merge`] does, if the application has a route of the same
    /// path.
    fn live_reload(self, hub: ReloadHub) -> Self;

    /// Like [`live_reload`](LiveReloadExt::live_reload) with `layer`; a
    /// disabled `layer` mounts nothing and returns the router as it was.
    fn live_reload_with(self, hub: ReloadHub, layer: LiveReloadLayer) -> Self;
}

impl LiveReloadExt for Router {
    fn live_reload(self, hub: ReloadHub) -> Router {
        self.live_reload_with(hub, LiveReloadLayer::new())
    }

    fn live_reload_with(self, hub: ReloadHub, layer: LiveReloadLayer) -> Router {
        if !layer.is_enabled() {
            return self;
        }
        self.merge(router(hub.clone())).layer(layer.hub(hub))
    }
}

/// The current value of a [`Live<T>`](relive::Live) in the router's state,
/// loaded once when the request is extracted: a handler sees one snapshot
/// throughout, however many times it reads it, and the next request sees a
/// config that changed in between.
///
/// Works with `Live<T>` as the state itself or as a field of a state struct
/// with `#[derive(FromRef)]`. Dereferences to `T`.
#[derive(Debug, Clone)]
pub struct Snapshot<T>(pub Arc<T>);

impl<T> std::ops::Deref for Snapshot<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<S, T> FromRequestParts<S> for Snapshot<T>
where
    relive::Live<T>: FromRef<S>,
    S: Send + Sync,
    T: Send + Sync + 'static,
{
    type Rejection = Infallible;

    async fn from_request_parts(_parts: &mut request::Parts, state: &S) -> Result<Snapshot<T>, Infallible> {
        Ok(Snapshot(relive::Live::<T>::from_ref(state).load_full()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(headers: &[(&str, &str)]) -> Response<()> {
        let mut response = Response::new(());
        for (name, value) in headers {
            response.headers_mut().append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        response
    }

    #[test]
    fn html_in_an_ascii_compatible_charset_is_injectable() {
        for content_type in
            ["text/html", "TEXT/HTML; charset=UTF-8", "text/html;charset=\"windows-1252\"", " text/html "]
        {
            assert!(injectable(&response(&[("content-type", content_type)])), "{content_type}");
        }
        assert!(injectable(&response(&[("content-type", "text/html"), ("content-encoding", "identity")])));
    }

    #[test]
    fn everything_else_is_left_alone() {
        for headers in [
            &[][..],
            &[("content-type", "application/json")],
            &[("content-type", "text/plain")],
            &[("content-type", "application/xhtml+xml")],
            &[("content-type", "text/event-stream")],
            &[("content-type", "text/html; charset=utf-16le")],
            &[("content-type", "text/html; charset=UTF-32")],
            &[("content-type", "text/html"), ("content-encoding", "gzip")],
            &[("content-type", "text/html"), ("content-encoding", "identity"), ("content-encoding", "br")],
            &[("content-type", "text/html"), ("content-range", "bytes 0-9/100")],
            &[("content-type", "text/html"), ("cache-control", "max-age=60, No-Transform")],
        ] {
            assert!(!injectable(&response(headers)), "{headers:?}");
        }
        for status in [StatusCode::SWITCHING_PROTOCOLS, StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED] {
            let mut r = response(&[("content-type", "text/html")]);
            *r.status_mut() = status;
            assert!(!injectable(&r), "{status}");
        }
        let mut r = response(&[("content-type", "text/html")]);
        r.extensions_mut().insert(NoInject);
        assert!(!injectable(&r));
    }

    #[test]
    fn error_pages_get_the_script() {
        let mut r = response(&[("content-type", "text/html")]);
        *r.status_mut() = StatusCode::NOT_FOUND;
        assert!(injectable(&r));
    }

    #[test]
    fn bytes_that_are_not_utf8_get_the_tag_and_keep_every_other_byte() {
        let latin1 = b"<p>caf\xe9</p></BODY>\xff";
        let mut expected = b"<p>caf\xe9</p>".to_vec();
        expected.extend_from_slice(crate::SCRIPT_TAG.as_bytes());
        expected.extend_from_slice(b"</BODY>\xff");
        assert_eq!(inject_bytes(latin1, None), expected);
        assert_eq!(inject_bytes("<body>é</body>".as_bytes(), None), crate::inject("<body>é</body>"));
        assert_eq!(inject_bytes("<body>é</body>".as_bytes(), Some(7)), crate::inject_at("<body>é</body>", 7));
    }
}
