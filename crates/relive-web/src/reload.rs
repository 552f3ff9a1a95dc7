//! The reload hub: what a change means for browsers, and the LiveReload
//! (`official-7`) and Server-Sent Events endpoints that tell them.
//!
//! Changes come in as [`Change`]s (from [`Templates`], [`Assets`] and the
//! engine's config events, each *after* the new state is live, so a browser
//! that reloads gets it). The [`Coalescer`] folds a burst of them into one
//! [`Message`]: a change to CSS alone is swapped in place (`liveCSS`); any
//! other change reloads the page. Template errors (and whatever else a
//! server wants to show, see [`ReloadHub::alert`]) are pushed at once as an
//! `alert`, and the reload that follows the fix clears it.
//!
//! How long a change waits for the rest of its burst, and why, is on
//! [`Coalescer`].
//!
//! [`router`] serves it all with axum:
//!
//! | route | what |
//! | --- | --- |
//! | `GET /livereload` | WebSocket, LiveReload protocol `official-7`: the browser extensions work |
//! | `GET /livereload/events` | Server-Sent Events carrying the same JSON, for where WebSockets are blocked |
//! | `GET /livereload.js` | the client script (see [`inject`](crate::inject)) |

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{self, WebSocket, WebSocketUpgrade};
use axum::http::{Uri, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, watch};

use crate::assets::Assets;
use crate::templates::Templates;

/// The LiveReload protocol relive speaks.
pub const PROTOCOL_OFFICIAL_7: &str = "http://livereload.com/protocols/official-7";

/// How long a WebSocket client has to say `hello`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A change that browsers should see.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// A static asset changed; `url` is its logical URL (`/static/app.css`).
    /// CSS is swapped in place; anything else reloads the page.
    Asset {
        /// The asset's logical URL.
        url: String,
    },
    /// The templates were rebuilt. `name` is a template or a description.
    Template {
        /// What changed.
        name: String,
    },
    /// A config has a new value.
    Config {
        /// The config's name.
        name: String,
    },
}

impl Change {
    /// The stylesheet URL, if this change can be swapped in place.
    fn css(&self) -> Option<&str> {
        match self {
            Change::Asset { url } if url.to_ascii_lowercase().ends_with(".css") => Some(url),
            _ => None,
        }
    }

    /// The path a full reload names (LiveReload clients only log it).
    fn path(&self) -> String {
        match self {
            Change::Asset { url } => url.clone(),
            Change::Template { name } => format!("templates/{name}"),
            Change::Config { name } => format!("config/{name}"),
        }
    }
}

/// A message to browsers, as LiveReload `official-7` JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "command", rename_all = "lowercase")]
#[non_exhaustive]
pub enum Message {
    /// Reload: swap the stylesheet `path` in place if `live_css`, else
    /// reload the page. A `path` that matches no stylesheet (`*.css`, for
    /// several at once) swaps them all.
    Reload {
        /// What changed.
        path: String,
        /// Whether a CSS swap is enough.
        #[serde(rename = "liveCSS")]
        live_css: bool,
        /// Always false: an image change reloads the page too.
        #[serde(rename = "liveImg")]
        live_img: bool,
    },
    /// Show `message` (relive's client: an overlay; the extensions: an
    /// alert) until the next reload. Sent for a template error, and for
    /// whatever a server shows with [`ReloadHub::alert`].
    Alert {
        /// `templates/<name>:<line>:<column>: <message>`.
        message: String,
    },
}

impl Message {
    /// A full page reload naming `path`.
    pub fn full_reload(path: impl Into<String>) -> Message {
        Message::Reload { path: path.into(), live_css: false, live_img: false }
    }

    /// The JSON text sent over the wire.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("messages serialize")
    }
}

/// Folds a burst of [`Change`]s into one [`Message`].
///
/// A pure state machine: it never reads the clock, every call takes `now`.
/// A burst opens with a change when none is pending. It closes
/// `first_quiet` after that change if no other came; once a second change
/// came, when no change came for `quiet`; and at the latest `max` after it
/// opened (so a steady stream still gets through). With `leading_css`, a
/// stylesheet change that opens a burst is also sent at once.
///
/// # Latency against bursts
///
/// A burst (a "save all", a `git checkout`, a build writing its output) must
/// give one page reload, not one per file; so a reload waits until changes
/// stop. Every millisecond of that wait is latency for the common case, a
/// single save, and the core engine already folds the events of one file
/// into one change. So the wait is short and grows only when a burst shows
/// itself (the defaults, [`Coalescer::default`]):
///
/// - A change with nothing pending opens a burst that closes 10 ms later.
///   Editors, `git` and build tools write the files of a burst back to back,
///   well within that.
/// - A second change within it proves a burst: from then on the burst closes
///   only after 30 ms without a change, and at the latest 200 ms after it
///   opened, so that a steady stream still gets through.
/// - A stylesheet change with nothing pending is swapped at once (the
///   *leading edge*), before its burst closes. Swapping a stylesheet twice is
///   harmless and keeps the page's state, so if the burst brings more CSS
///   it is swapped again when the burst closes, and if it brings anything
///   else the page reloads then, once.
///
/// The price: two changes more than 10 ms apart are two bursts (two messages),
/// and a CSS save followed by a template save within the window swaps the
/// stylesheet and then reloads. Measured in headless Chromium
/// (`cargo bench -p relive-cli --bench browser`, release, a quiet 2-core
/// machine), a CSS save is in the page's computed style 4 ms after the save
/// at the median (the page linking a stylesheet itself takes 3 ms), and a
/// template save in the new page's DOM after 33 ms (a bare page reload
/// takes 23 ms: the rest is this 10 ms window and the engine). With a
/// plain 30 ms window it was 35 ms for CSS and 56 ms for a template.
#[derive(Debug, Clone)]
pub struct Coalescer {
    first_quiet: Duration,
    quiet: Duration,
    max: Duration,
    leading_css: bool,
    pending: Option<Pending>,
}

#[derive(Debug, Clone)]
struct Pending {
    first: Instant,
    last: Instant,
    /// How many changes the burst has had, the leading one included.
    changes: usize,
    css: BTreeSet<String>,
    /// The first change that needs a page reload.
    full: Option<String>,
}

impl Default for Coalescer {
    /// A burst closes 10 ms after its first change if it stays alone, else
    /// after 30 ms of quiet, at most 200 ms after it opened; stylesheets are
    /// swapped on the leading edge.
    fn default() -> Coalescer {
        Coalescer::new(Duration::from_millis(30), Duration::from_millis(200))
            .with_first_quiet(Duration::from_millis(10))
    }
}

impl Coalescer {
    /// A coalescer whose bursts close after `quiet` without a change, and at
    /// most `max` after they opened; stylesheets are swapped on the leading
    /// edge.
    pub fn new(quiet: Duration, max: Duration) -> Coalescer {
        Coalescer { first_quiet: quiet, quiet, max: max.max(quiet), leading_css: true, pending: None }
    }

    /// A burst that has had one change closes after `first_quiet` (at most
    /// `quiet`) rather than `quiet`: a lone save is sent sooner, and a burst
    /// that shows itself within `first_quiet` still gets the longer wait.
    pub fn with_first_quiet(mut self, first_quiet: Duration) -> Coalescer {
        self.first_quiet = first_quiet.min(self.quiet);
        self
    }

    /// Whether a stylesheet change that opens a burst is sent at once, as
    /// well as being part of the burst (default: yes).
    pub fn with_leading_css(mut self, leading_css: bool) -> Coalescer {
        self.leading_css = leading_css;
        self
    }

    /// Takes in a change seen at `now`. Returns a message to send now: a
    /// stylesheet swap, when `change` is a stylesheet that opens a burst and
    /// leading CSS is on.
    pub fn push(&mut self, change: &Change, now: Instant) -> Option<Message> {
        match &mut self.pending {
            Some(pending) => {
                pending.changes += 1;
                pending.last = pending.last.max(now);
            }
            None => {
                self.pending = Some(Pending { first: now, last: now, changes: 1, css: BTreeSet::new(), full: None });
                if let (true, Some(url)) = (self.leading_css, change.css()) {
                    // Sent now: the burst collects only what comes after it.
                    return Some(live_css(url.to_string()));
                }
            }
        }
        let pending = self.pending.as_mut().expect("a burst is open");
        match change.css() {
            Some(url) => {
                pending.css.insert(url.to_string());
            }
            None => {
                pending.full.get_or_insert_with(|| change.path());
            }
        }
        None
    }

    /// When the open burst closes, if one is open.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| {
            let quiet = if p.changes > 1 { self.quiet } else { self.first_quiet };
            (p.last + quiet).min(p.first + self.max)
        })
    }

    /// Closes the burst if its deadline is at or before `now`, and returns
    /// its message, if it has one (a burst opened by a stylesheet sent on
    /// the leading edge has none unless more came).
    pub fn poll(&mut self, now: Instant) -> Option<Message> {
        if self.deadline()? > now {
            return None;
        }
        let pending = self.pending.take()?;
        match (pending.full, pending.css.len()) {
            (Some(path), _) => Some(Message::full_reload(path)),
            (None, 0) => None,
            (None, 1) => Some(live_css(pending.css.into_iter().next().expect("one"))),
            (None, _) => Some(live_css("*.css".to_string())),
        }
    }
}

fn live_css(path: String) -> Message {
    Message::Reload { path, live_css: true, live_img: false }
}

/// Decides what changes mean for browsers and tells every connected one.
///
/// Clones share one hub. Create it inside a tokio runtime: it runs a task
/// that times bursts.
#[derive(Clone, Debug)]
pub struct ReloadHub {
    inner: Arc<HubInner>,
}

#[derive(Debug)]
struct HubInner {
    changes: mpsc::UnboundedSender<Change>,
    messages: broadcast::Sender<Message>,
    /// The standing alerts, by source.
    alerts: watch::Sender<BTreeMap<String, String>>,
    /// How many changes have been taken in (see [`ReloadHub::changes`]).
    taken: AtomicU64,
}

impl Default for ReloadHub {
    fn default() -> ReloadHub {
        ReloadHub::new()
    }
}

impl ReloadHub {
    /// A hub with the default burst timing ([`Coalescer::default`]).
    pub fn new() -> ReloadHub {
        ReloadHub::with_coalescer(Coalescer::default())
    }

    /// A hub that times bursts with `coalescer`.
    pub fn with_coalescer(mut coalescer: Coalescer) -> ReloadHub {
        let (changes, mut rx) = mpsc::unbounded_channel::<Change>();
        let (messages, _) = broadcast::channel(64);
        let tx = messages.clone();
        tokio::spawn(async move {
            loop {
                let deadline = coalescer.deadline();
                let sleep = async {
                    match deadline {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    change = rx.recv() => match change {
                        Some(change) => {
                            if let Some(message) = coalescer.push(&change, Instant::now()) {
                                tracing::debug!(message = %message.to_json(), "live reload (leading edge)");
                                let _ = tx.send(message);
                            }
                        }
                        None => break,
                    },
                    () = sleep => {
                        if let Some(message) = coalescer.poll(Instant::now()) {
                            tracing::debug!(message = %message.to_json(), "live reload");
                            let _ = tx.send(message);
                        }
                    }
                }
            }
        });
        ReloadHub {
            inner: Arc::new(HubInner {
                changes,
                messages,
                alerts: watch::Sender::new(BTreeMap::new()),
                taken: AtomicU64::new(0),
            }),
        }
    }

    /// Takes in a change; browsers hear of it when its burst ends.
    pub fn notify(&self, change: Change) {
        self.inner.taken.fetch_add(1, Ordering::SeqCst);
        let _ = self.inner.changes.send(change);
    }

    /// How many changes the hub has taken in. Read it *before* rendering a
    /// page and put it in the page with [`inject_at`](crate::inject_at): a
    /// client that connects from a page older than the hub's count is told
    /// to reload at once. Without it, a change made while a page reloads
    /// (after its HTML was rendered, before its client connected) would
    /// reach no browser, and the page would stay stale.
    pub fn changes(&self) -> u64 {
        self.inner.taken.load(Ordering::SeqCst)
    }

    /// Whether a page stamped with `page` changes has missed some.
    fn is_stale(&self, page: Option<u64>) -> bool {
        page.is_some_and(|page| page < self.changes())
    }

    /// Sets the alert of `source` (`templates`, `config/site`, any name) to
    /// `message`, or with `None` withdraws it. Browsers show every standing
    /// alert at once, in the order of their sources: each change is sent to
    /// every browser now (and the standing ones to every browser that
    /// connects), except that withdrawing the last one sends nothing: the
    /// next reload clears the page.
    pub fn alert(&self, source: &str, message: Option<String>) {
        let mut combined = None;
        self.inner.alerts.send_if_modified(|alerts| {
            let changed = match &message {
                Some(message) => alerts.insert(source.to_string(), message.clone()).as_ref() != Some(message),
                None => alerts.remove(source).is_some(),
            };
            if changed {
                combined = combine(alerts);
            }
            changed
        });
        if let Some(message) = combined {
            let _ = self.inner.messages.send(Message::Alert { message });
        }
    }

    /// The standing alerts, as one message, if any stands.
    pub fn current_alert(&self) -> Option<String> {
        combine(&self.inner.alerts.borrow())
    }

    /// Every message from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Message> {
        self.inner.messages.subscribe()
    }

    /// Reloads pages when `templates` are rebuilt, and alerts while they
    /// have an error. Runs until the templates or the hub are dropped.
    pub fn follow_templates(&self, templates: &Templates) {
        let weak = Arc::downgrade(&self.inner);
        let mut status = templates.subscribe();
        let alert_of = |s: &crate::templates::TemplateStatus| s.error.as_ref().map(crate::client::alert_text);
        // An error that stands already is shown to the browsers that connect.
        let mut generation = {
            let s = status.borrow_and_update();
            self.alert(TEMPLATES_ALERT, alert_of(&s));
            s.generation
        };
        tokio::spawn(async move {
            while status.changed().await.is_ok() {
                let Some(hub) = upgrade(&weak) else { break };
                let (alert, new_generation) = {
                    let s = status.borrow_and_update();
                    (alert_of(&s), s.generation)
                };
                hub.alert(TEMPLATES_ALERT, alert);
                if new_generation != generation {
                    generation = new_generation;
                    hub.notify(Change::Template { name: "*".to_string() });
                }
            }
        });
    }

    /// Swaps stylesheets and reloads pages when `assets` change (after the
    /// manifest has the change). Runs until the assets or the hub are dropped.
    pub fn follow_assets(&self, assets: &Assets) {
        let weak = Arc::downgrade(&self.inner);
        let mut changes = assets.subscribe();
        tokio::spawn(async move {
            loop {
                let change = changes.recv().await;
                let Some(hub) = upgrade(&weak) else { break };
                match change {
                    Ok(change) => hub.notify(Change::Asset { url: change.url() }),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        hub.notify(Change::Asset { url: "*".to_string() });
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }

    /// Reloads pages when a config gets a new value. Runs until the engine
    /// stops or the hub is dropped.
    pub fn follow_configs(&self, manager: &relive::HotReloadManager) {
        let weak = Arc::downgrade(&self.inner);
        let mut events = manager.subscribe();
        tokio::spawn(async move {
            loop {
                let event = events.recv().await;
                let Some(hub) = upgrade(&weak) else { break };
                match event {
                    Ok(relive::ChangeEvent::ConfigChanged { config_name, .. }) => {
                        hub.notify(Change::Config { name: config_name });
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => hub.notify(Change::Config { name: "*".to_string() }),
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }
}

/// The source of the templates' alert (see [`ReloadHub::alert`]).
const TEMPLATES_ALERT: &str = "templates";

/// Every standing alert, one paragraph each.
fn combine(alerts: &BTreeMap<String, String>) -> Option<String> {
    (!alerts.is_empty()).then(|| alerts.values().map(String::as_str).collect::<Vec<_>>().join("\n\n"))
}

fn upgrade(weak: &Weak<HubInner>) -> Option<ReloadHub> {
    weak.upgrade().map(|inner| ReloadHub { inner })
}

/// The live reload routes, to merge into an application's router:
/// `/livereload` (WebSocket), `/livereload/events` (SSE) and
/// `/livereload.js`.
pub fn router(hub: ReloadHub) -> Router {
    Router::new()
        .route("/livereload", get(websocket))
        .route("/livereload/events", get(events))
        .route("/livereload.js", get(script))
        .with_state(hub)
}

/// Revalidated on every page load (`no-cache`), so an `ETag` makes that a
/// 304: every reload fetches the page, and its client connects sooner.
async fn script(headers: axum::http::HeaderMap) -> Response {
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

async fn websocket(State(hub): State<ReloadHub>, upgrade: WebSocketUpgrade) -> Response {
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
async fn events(State(hub): State<ReloadHub>, uri: Uri) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
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

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn css(url: &str) -> Change {
        Change::Asset { url: url.to_string() }
    }

    fn live_css(path: &str) -> Message {
        Message::Reload { path: path.to_string(), live_css: true, live_img: false }
    }

    #[test]
    fn messages_are_livereload_json() {
        assert_eq!(
            live_css("/static/app.css").to_json(),
            r#"{"command":"reload","path":"/static/app.css","liveCSS":true,"liveImg":false}"#
        );
        assert_eq!(Message::Alert { message: "x".into() }.to_json(), r#"{"command":"alert","message":"x"}"#);
    }

    fn template(name: &str) -> Change {
        Change::Template { name: name.to_string() }
    }

    #[test]
    fn a_lone_css_save_is_swapped_at_once_and_its_burst_closes_with_nothing_more() {
        let t0 = Instant::now();
        let mut c = Coalescer::default();
        assert_eq!(c.deadline(), None);
        assert_eq!(c.poll(t0), None);
        assert_eq!(c.push(&css("/static/app.css"), t0), Some(live_css("/static/app.css")));
        assert_eq!(c.deadline(), Some(t0 + ms(10)));
        assert_eq!(c.poll(t0 + ms(10)), None, "already sent");
        assert_eq!(c.deadline(), None);
    }

    #[test]
    fn without_leading_css_a_stylesheet_waits_for_its_burst() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(ms(30), ms(200)).with_leading_css(false);
        assert_eq!(c.push(&css("/static/app.css"), t0), None);
        assert_eq!(c.deadline(), Some(t0 + ms(30)));
        assert_eq!(c.poll(t0 + ms(29)), None);
        assert_eq!(c.poll(t0 + ms(30)), Some(live_css("/static/app.css")));
        assert_eq!(c.poll(t0 + ms(60)), None, "one message per burst");
    }

    #[test]
    fn a_lone_template_save_reloads_after_the_first_quiet() {
        let t0 = Instant::now();
        let mut c = Coalescer::default();
        assert_eq!(c.push(&template("index.html"), t0), None);
        assert_eq!(c.poll(t0 + ms(9)), None);
        assert_eq!(c.poll(t0 + ms(10)), Some(Message::full_reload("templates/index.html")));
        assert_eq!(c.deadline(), None);
    }

    #[test]
    fn a_burst_is_one_reload_and_waits_the_longer_quiet_once_it_shows() {
        let t0 = Instant::now();
        let mut c = Coalescer::default();
        assert_eq!(c.push(&template("index.html"), t0), None);
        assert_eq!(c.push(&css("/static/app.css"), t0 + ms(5)), None, "no leading edge inside a burst");
        assert_eq!(c.push(&Change::Config { name: "site".into() }, t0 + ms(14)), None);
        assert_eq!(c.push(&css("/static/app.css"), t0 + ms(40)), None);
        assert_eq!(c.poll(t0 + ms(69)), None, "the 30 ms quiet restarts with each change");
        assert_eq!(c.poll(t0 + ms(70)), Some(Message::full_reload("templates/index.html")));
        assert_eq!(c.poll(t0 + ms(500)), None);
    }

    #[test]
    fn a_burst_opened_by_css_swaps_it_at_once_then_reloads_once() {
        let t0 = Instant::now();
        let mut c = Coalescer::default();
        assert_eq!(c.push(&css("/static/app.css"), t0), Some(live_css("/static/app.css")));
        assert_eq!(c.push(&template("index.html"), t0 + ms(3)), None);
        assert_eq!(c.push(&css("/static/app.css"), t0 + ms(4)), None);
        assert_eq!(c.poll(t0 + ms(33)), None);
        assert_eq!(c.poll(t0 + ms(34)), Some(Message::full_reload("templates/index.html")));
        assert_eq!(c.poll(t0 + ms(500)), None);
    }

    #[test]
    fn several_stylesheets_are_one_swap_of_all() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(ms(30), ms(200)).with_leading_css(false);
        c.push(&css("/static/a.css"), t0);
        c.push(&css("/static/B.CSS"), t0 + ms(1));
        assert_eq!(c.poll(t0 + ms(31)), Some(live_css("*.css")));

        // With the leading edge: the first now, the rest when the burst closes.
        let mut c = Coalescer::default();
        assert_eq!(c.push(&css("/static/a.css"), t0), Some(live_css("/static/a.css")));
        c.push(&css("/static/b.css"), t0 + ms(1));
        c.push(&css("/static/c.css"), t0 + ms(2));
        assert_eq!(c.poll(t0 + ms(32)), Some(live_css("*.css")));
    }

    #[test]
    fn other_assets_reload_the_page() {
        let t0 = Instant::now();
        let mut c = Coalescer::default();
        assert_eq!(c.push(&css("/static/img/logo.png"), t0), None);
        c.push(&css("/static/app.css"), t0);
        assert_eq!(c.poll(t0 + ms(30)), Some(Message::full_reload("/static/img/logo.png")));
    }

    #[test]
    fn the_first_quiet_is_never_longer_than_the_quiet() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(ms(5), ms(200)).with_first_quiet(ms(50));
        c.push(&template("a.html"), t0);
        assert_eq!(c.deadline(), Some(t0 + ms(5)));
    }

    #[test]
    fn a_steady_stream_still_gets_a_message_at_the_ceiling() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(ms(30), ms(100));
        let mut now = t0;
        let mut sent = Vec::new();
        for _ in 0..20 {
            sent.extend(c.push(&template("a.html"), now));
            now += ms(10);
            sent.extend(c.poll(now));
        }
        // 200 ms of changes every 10 ms: one message per 100 ms ceiling.
        assert_eq!(sent, vec![Message::full_reload("templates/a.html"); 2]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn alerts_from_several_sources_are_shown_together_until_withdrawn() {
        let hub = ReloadHub::new();
        let mut rx = hub.subscribe();
        let alert = |m: &str| Message::Alert { message: m.to_string() };
        hub.alert("templates", Some("T".into()));
        assert_eq!(rx.try_recv().ok(), Some(alert("T")));
        hub.alert("config/site", Some("C".into()));
        assert_eq!(rx.try_recv().ok(), Some(alert("C\n\nT")), "every standing alert, by source");
        hub.alert("config/site", Some("C".into()));
        assert!(rx.try_recv().is_err(), "the same alert again sends nothing");
        assert_eq!(hub.current_alert().as_deref(), Some("C\n\nT"));
        hub.alert("templates", None);
        assert_eq!(rx.try_recv().ok(), Some(alert("C")), "what still stands replaces it");
        hub.alert("templates", None);
        hub.alert("config/site", None);
        assert!(rx.try_recv().is_err(), "the last one withdrawn: the next reload clears the page");
        assert_eq!(hub.current_alert(), None);
    }

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
