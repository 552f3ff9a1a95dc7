//! The transport: the axum routes that carry the hub's messages to
//! browsers (the LiveReload `official-7` WebSocket, Server-Sent Events) and
//! serve the client script.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{self, WebSocket, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Uri, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{Stream, StreamExt};
use tokio::sync::broadcast;

use super::{Message, ReloadHub};

/// The LiveReload protocol relive speaks.
pub const PROTOCOL_OFFICIAL_7: &str = "http://livereload.com/protocols/official-7";

/// How long a WebSocket client has to say `hello`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The live reload routes, to merge into an application's router:
/// `/livereload` (WebSocket), `/livereload/events` (SSE) and
/// `/livereload.js`.
///
/// They answer only for the hosts, and their streams open only for the
/// origins, that the hub's [`Access`](crate::Access) allows (by default,
/// loopback: see [`ReloadHub::set_access`]). Another host is answered 421,
/// another origin 403, each with a plain-text body that says why.
pub fn router(hub: ReloadHub) -> Router {
    Router::new()
        .route("/livereload", get(websocket))
        .route("/livereload/events", get(events))
        .route("/livereload.js", get(script))
        .route_layer(middleware::from_fn_with_state(hub.clone(), check_host))
        .with_state(hub)
}

/// Answers a request only if its host is allowed (DNS rebinding: see
/// [`Access`](crate::Access)).
async fn check_host(State(hub): State<ReloadHub>, request: Request, next: Next) -> Response {
    match hub.access().check_host(request.headers(), request.uri()) {
        Ok(()) => next.run(request).await,
        Err(refused) => refused.into_response(),
    }
}

/// Revalidated on every page load (`no-cache`), so an `ETag` makes that a
/// 304: every reload fetches the page, and its client connects sooner.
async fn script(headers: HeaderMap) -> Response {
    static ETAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let etag =
        ETAG.get_or_init(|| format!("\"{:016x}\"", xxhash_rust::xxh3::xxh3_64(crate::client::CLIENT_JS.as_bytes())));
    let cache = [(header::CACHE_CONTROL, "no-cache"), (header::ETAG, etag.as_str())];
    let matches = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == etag || tag.trim() == "*");
    if matches {
        return (axum::http::StatusCode::NOT_MODIFIED, cache).into_response();
    }
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], cache, crate::client::CLIENT_JS).into_response()
}

/// A page of another site may open a WebSocket to any server (no
/// same-origin policy there): the `Origin` says whose page it is.
async fn websocket(State(hub): State<ReloadHub>, headers: HeaderMap, upgrade: WebSocketUpgrade) -> Response {
    if let Err(refused) = hub.access().check_origin(&headers) {
        return refused.into_response();
    }
    upgrade.on_upgrade(move |socket| serve_socket(hub, socket))
}

/// A client's `hello`.
#[derive(Debug, PartialEq, Eq)]
struct Hello {
    /// Whether it offers `official-7`.
    official_7: bool,
    /// relive's client: the hub's change count when its page was rendered.
    page_changes: Option<u64>,
}

/// The `hello` in `text`; `None` if it is not a `hello` at all.
fn parse_hello(text: &str) -> Option<Hello> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    if value.get("command")?.as_str()? != "hello" {
        return None;
    }
    let protocols = value.get("protocols").and_then(|p| p.as_array());
    Some(Hello {
        official_7: protocols.is_some_and(|p| p.iter().any(|p| p.as_str() == Some(PROTOCOL_OFFICIAL_7))),
        page_changes: value.get("reliveChanges").and_then(|n| n.as_u64()),
    })
}

async fn serve_socket(hub: ReloadHub, mut socket: WebSocket) {
    // Subscribed before the handshake, so nothing after it is missed.
    let mut messages = hub.subscribe();
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        while let Some(Ok(incoming)) = socket.recv().await {
            match incoming {
                ws::Message::Text(text) => match parse_hello(&text) {
                    Some(hello) => return Some(hello),
                    None => continue,
                },
                ws::Message::Close(_) => return None,
                _ => continue,
            }
        }
        None
    })
    .await;
    let page_changes = match handshake {
        Ok(Some(Hello { official_7: true, page_changes })) => page_changes,
        _ => {
            let _ = socket.send(ws::Message::Close(None)).await;
            return;
        }
    };
    let hello = serde_json::json!({
        "command": "hello",
        "protocols": [PROTOCOL_OFFICIAL_7],
        "serverName": "relive",
    });
    if socket.send(ws::Message::Text(hello.to_string().into())).await.is_err() {
        return;
    }
    // A page that missed changes while it loaded reloads (and then hears
    // of any standing alert); else it is shown the standing alert.
    let first = match hub.is_stale(page_changes) {
        true => Some(Message::full_reload("*")),
        false => hub.current_alert().map(|message| Message::Alert { message }),
    };
    if let Some(first) = first {
        if socket.send(ws::Message::Text(first.to_json().into())).await.is_err() {
            return;
        }
    }
    loop {
        tokio::select! {
            incoming = socket.recv() => match incoming {
                // `info` and `url` (and anything else) tell us nothing we use.
                Some(Ok(ws::Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            message = messages.recv() => {
                let message = match message {
                    Ok(message) => message,
                    // Missed some: a full reload covers whatever they were.
                    Err(broadcast::error::RecvError::Lagged(_)) => Message::full_reload("*"),
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                if socket.send(ws::Message::Text(message.to_json().into())).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// `?changes=N`: as `reliveChanges` in a WebSocket `hello`.
async fn events(State(hub): State<ReloadHub>, headers: HeaderMap, uri: Uri) -> Response {
    if let Err(refused) = hub.access().check_origin(&headers) {
        return refused.into_response();
    }
    stream(hub, uri).into_response()
}

fn stream(hub: ReloadHub, uri: Uri) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let messages = hub.subscribe();
    let page_changes = uri
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("changes="))
        .and_then(|n| n.parse().ok());
    let standing = match hub.is_stale(page_changes) {
        true => Some(Message::full_reload("*")),
        false => hub.current_alert().map(|message| Message::Alert { message }),
    };
    let live = futures_util::stream::unfold(messages, |mut messages| async move {
        let message = match messages.recv().await {
            Ok(message) => message,
            Err(broadcast::error::RecvError::Lagged(_)) => Message::full_reload("*"),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((message, messages))
    });
    let stream = futures_util::stream::iter(standing).chain(live).map(|m| Ok(Event::default().data(m.to_json())));
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_must_offer_official_7_and_may_say_how_old_its_page_is() {
        let hello = |official_7, page_changes| Some(Hello { official_7, page_changes });
        let ok = format!(r#"{{"command":"hello","protocols":["{PROTOCOL_OFFICIAL_7}"]}}"#);
        assert_eq!(parse_hello(&ok), hello(true, None));
        let stamped = format!(r#"{{"command":"hello","protocols":["{PROTOCOL_OFFICIAL_7}"],"reliveChanges":7}}"#);
        assert_eq!(parse_hello(&stamped), hello(true, Some(7)));
        assert_eq!(parse_hello(r#"{"command":"hello","protocols":["x"]}"#), hello(false, None));
        assert_eq!(parse_hello(r#"{"command":"hello"}"#), hello(false, None));
        assert_eq!(parse_hello(r#"{"command":"info","plugins":{}}"#), None);
        assert_eq!(parse_hello("not json"), None);
    }
}
