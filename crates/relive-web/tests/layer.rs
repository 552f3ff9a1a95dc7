//! The `axum` feature on real sockets: an application of its own served on
//! 127.0.0.1:0 twice, with and without `live_reload`, so that every
//! response the layer must leave alone is compared byte for byte with the
//! bare application's; `Live<T>` as state, changed by the real engine; the
//! LiveReload WebSocket through the application's router; and the example
//! app run as a real process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use axum::body::Body;
use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use axum::{Extension, Router};
use futures_util::{StreamExt, stream};

mod common;
use common::{WAIT, connect, handshake, next_json, watched, write};
use relive::{ChangeEvent, Live};
use relive_web::{Assets, LiveReloadExt, LiveReloadLayer, NoInject, ReloadHub, SCRIPT_TAG, Snapshot, Templates};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The layer's cap in these tests.
const MAX_BODY: usize = 64 * 1024;

/// `<html><body><p>compressed</p></body></html>`, by `gzip -n -9`.
const GZIPPED: &[u8] = &[
    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03, 0xb3, 0xc9, 0x28, 0xc9, 0xcd, 0xb1, 0xb3, 0x49, 0xca,
    0x4f, 0xa9, 0xb4, 0xb3, 0x29, 0xb0, 0x4b, 0xce, 0xcf, 0x2d, 0x28, 0x4a, 0x2d, 0x2e, 0x4e, 0x4d, 0xb1, 0xd1, 0x2f,
    0xb0, 0xb3, 0xd1, 0x87, 0x88, 0xeb, 0x83, 0x15, 0x01, 0x00, 0x4a, 0x38, 0xba, 0x58, 0x2b, 0x00, 0x00, 0x00,
];

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Site {
    title: String,
}

#[derive(Clone, FromRef)]
struct AppState {
    site: Live<Site>,
    build: &'static str,
}

/// An application of its own: pages, fragments, JSON, compressed,
/// conditional, big and streamed responses, and pages from a `Live<Site>`.
fn app(state: AppState) -> Router {
    Router::new()
        .route("/page", get(|| async { Html("<html><body><p>hi</p></body></html>") }))
        .route("/fragment", get(|| async { Html("<p>no body here") }))
        .route("/has-script", get(|| async { Html(format!("<body>{SCRIPT_TAG}</body>")) }))
        .route("/explicit-length", get(|| async { ([(header::CONTENT_LENGTH, "20")], Html("<body>twenty</body>\n")) }))
        .route(
            "/latin1",
            get(|| async {
                ([(header::CONTENT_TYPE, "text/html; charset=windows-1252")], b"<body>caf\xe9</body>\xff".to_vec())
            }),
        )
        .route("/json", get(|| async { Json(json!({"html": "<body></body>"})) }))
        .route(
            "/gzip",
            get(|| async {
                ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CONTENT_ENCODING, "gzip")], GZIPPED)
            }),
        )
        .route("/cached", get(cached))
        .route("/big", get(|| async { Html(big_page()) }))
        .route("/streamed", get(|| async { streamed_html(&["<html><bo", "dy><p>streamed</p></bo", "dy></html>"]) }))
        .route("/streamed-big", get(|| async { streamed_html(&[big_page().as_str(), "<p>tail</p></body>"]) }))
        .route("/no-inject", get(endless_page))
        .route("/events", get(endless_events))
        .route("/site", get(site_page))
        .route("/site/snapshot", get(site_snapshot))
        .fallback(|| async { (StatusCode::NOT_FOUND, Html("<body>not found</body>")) })
        .with_state(state)
}

fn big_page() -> String {
    format!("<body>{}</body>", "x".repeat(MAX_BODY))
}

fn streamed_html(chunks: &[&str]) -> Response {
    let chunks: Vec<Result<String, std::io::Error>> = chunks.iter().map(|c| Ok(c.to_string())).collect();
    Html(Body::from_stream(stream::iter(chunks))).into_response()
}

/// A 304 when the client has `"v1"`.
async fn cached(headers: HeaderMap) -> Response {
    let etag = [(header::ETAG, "\"v1\""), (header::CONTENT_TYPE, "text/html; charset=utf-8")];
    if headers.get(header::IF_NONE_MATCH).is_some_and(|v| v == "\"v1\"") {
        (StatusCode::NOT_MODIFIED, etag).into_response()
    } else {
        (etag, "<body>cached</body>").into_response()
    }
}

/// An HTML page that sends its first part and never ends.
async fn endless_page() -> impl IntoResponse {
    let first = stream::iter([Ok::<_, std::io::Error>("<body><p>first</p>")]);
    (Extension(NoInject), Html(Body::from_stream(first.chain(stream::pending()))))
}

async fn endless_events() -> impl IntoResponse {
    let first = stream::iter([Ok::<_, std::convert::Infallible>(Event::default().data("one"))]);
    Sse::new(first.chain(stream::pending()))
}

/// `Live<Site>` as the state itself, through `FromRef`: one load.
async fn site_page(State(site): State<Live<Site>>) -> Html<String> {
    let site = site.load();
    Html(format!("<html><body><h1>{}</h1></body></html>", site.title))
}

/// The whole state, and the config by the `Snapshot` extractor.
async fn site_snapshot(State(state): State<AppState>, Snapshot(site): Snapshot<Site>) -> Json<Value> {
    Json(json!({"title": site.title, "build": state.build}))
}

struct Server {
    /// The application with `live_reload`.
    addr: SocketAddr,
    /// The same application without it.
    bare: SocketAddr,
    root: PathBuf,
    manager: relive::HotReloadManager,
    hub: ReloadHub,
    _templates: Templates,
    _assets: Assets,
    _dir: tempfile::TempDir,
}

async fn listen(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A workspace with `config/site.toml`, a template and a stylesheet,
/// watched (see [`watched`]), and the application served with and without
/// live reload.
async fn serve() -> Server {
    let w = watched(&[
        ("config/site.toml", "title = \"one\"\n"),
        ("templates/index.html", "<h1>{{ title }}</h1>"),
        ("static/app.css", "h1 { color: red }"),
    ])
    .await;
    let site: Live<Site> = w.ws.config("site").live().await.unwrap();
    let state = AppState { site, build: "test" };
    let addr =
        listen(app(state.clone()).live_reload_with(w.hub.clone(), LiveReloadLayer::new().max_body(MAX_BODY))).await;
    let bare = listen(app(state)).await;
    Server {
        addr,
        bare,
        root: w.root,
        manager: w.manager,
        hub: w.hub,
        _templates: w.templates,
        _assets: w.assets,
        _dir: w.dir,
    }
}

impl Server {
    /// The script tag the layer injects now: stamped with the hub's change
    /// count (see `relive_web::inject_at`).
    fn tag(&self) -> String {
        relive_web::inject_at("", self.hub.changes())
    }
}

/// The start of every script tag the layer injects, stamped or not.
const TAG_START: &str = r#"<script src="/livereload.js""#;

fn tags_in(body: &[u8]) -> usize {
    body.windows(TAG_START.len()).filter(|w| *w == TAG_START.as_bytes()).count()
}

/// An HTTP/1.1 response, read whole from a real socket.
#[derive(PartialEq, Eq)]
struct Reply {
    status: u16,
    /// Lowercase names, in order, without `date`.
    headers: Vec<(String, String)>,
    /// The body as the application sent it (chunked transfer decoded).
    body: Vec<u8>,
}

impl std::fmt::Debug for Reply {
    /// The body as text, cut short: failures stay readable.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = String::from_utf8_lossy(&self.body);
        let shown: String = text.chars().take(200).collect();
        f.debug_struct("Reply")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .field("body", &format_args!("{shown:?}{}", if text.len() > shown.len() { "..." } else { "" }))
            .finish()
    }
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

async fn request(addr: SocketAddr, method: &str, path: &str, extra: &[(&str, &str)]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw)).await.expect("a whole response in time").unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (name, value) = l.split_once(':').unwrap();
            (name.trim().to_ascii_lowercase(), value.trim().to_string())
        })
        .filter(|(name, _)| name != "date")
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(n, v)| n == "transfer-encoding" && v == "chunked") {
        body = dechunk(&body);
    }
    Reply { status, headers, body }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n").expect("a chunk size");
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..line_end]).unwrap().trim(), 16).unwrap();
        raw = &raw[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// The response with the layer, checked to have the script tag once and a
/// `Content-Length` that is the body's.
async fn injected(server: &Server, path: &str) -> Reply {
    let reply = request(server.addr, "GET", path, &[]).await;
    assert_eq!(tags_in(&reply.body), 1, "{reply:?}");
    assert_eq!(reply.header("content-length"), Some(reply.body.len().to_string().as_str()), "{reply:?}");
    assert_eq!(reply.header("transfer-encoding"), None);
    let bare = request(server.bare, "GET", path, &[]).await;
    assert_eq!(reply.status, bare.status);
    reply
}

/// The response with the layer is the bare application's, byte for byte.
async fn untouched(server: &Server, method: &str, path: &str, extra: &[(&str, &str)]) -> Reply {
    let reply = request(server.addr, method, path, extra).await;
    let bare = request(server.bare, method, path, extra).await;
    assert_eq!(reply, bare, "{method} {path} {extra:?}");
    assert_eq!(tags_in(&reply.body), 0);
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_responses_get_the_script_once_before_the_last_body_with_content_length_fixed() {
    let server = serve().await;
    let tag = server.tag();
    let page = injected(&server, "/page").await;
    assert_eq!(page.text(), format!("<html><body><p>hi</p>{tag}</body></html>"));
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));

    let fragment = injected(&server, "/fragment").await;
    assert_eq!(fragment.text(), format!("<p>no body here{tag}"), "at the end without </body>");

    let has = injected(&server, "/has-script").await;
    assert_eq!(has.text(), format!("<body>{tag}</body>"), "a page with the script keeps one");

    let explicit = injected(&server, "/explicit-length").await;
    assert_eq!(explicit.text(), format!("<body>twenty{tag}</body>\n"));

    let latin1 = injected(&server, "/latin1").await;
    let mut expected = b"<body>caf\xe9".to_vec();
    expected.extend_from_slice(tag.as_bytes());
    expected.extend_from_slice(b"</body>\xff");
    assert_eq!(latin1.body, expected, "a windows-1252 page keeps its bytes");

    let streamed = injected(&server, "/streamed").await;
    assert_eq!(streamed.text(), format!("<html><body><p>streamed</p>{tag}</body></html>"));

    let missing = injected(&server, "/no-such-page").await;
    assert_eq!((missing.status, missing.text()), (404, format!("<body>not found{tag}</body>").as_str()));
    server.manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_gzip_head_304_and_bodies_over_the_cap_are_untouched_byte_for_byte() {
    let server = serve().await;
    let json = untouched(&server, "GET", "/json", &[]).await;
    assert_eq!(json.text(), r#"{"html":"<body></body>"}"#);

    let gzip = untouched(&server, "GET", "/gzip", &[]).await;
    assert_eq!(gzip.body, GZIPPED);
    assert_eq!(gzip.header("content-length"), Some(GZIPPED.len().to_string().as_str()));

    let head = untouched(&server, "HEAD", "/page", &[]).await;
    let bare_length = "<html><body><p>hi</p></body></html>".len().to_string();
    assert_eq!(head.header("content-length"), Some(bare_length.as_str()), "HEAD says the bare page's length");
    assert!(head.body.is_empty());

    let not_modified = untouched(&server, "GET", "/cached", &[("If-None-Match", "\"v1\"")]).await;
    assert_eq!((not_modified.status, not_modified.header("etag")), (304, Some("\"v1\"")));
    assert!(not_modified.body.is_empty());
    let fresh = injected(&server, "/cached").await;
    assert_eq!(fresh.header("etag"), Some("\"v1\""));

    let big = untouched(&server, "GET", "/big", &[]).await;
    assert_eq!(big.body.len(), MAX_BODY + "<body></body>".len());
    let streamed_big = untouched(&server, "GET", "/streamed-big", &[]).await;
    assert!(streamed_big.text().ends_with("</body><p>tail</p></body>"), "a streamed body over the cap flows on whole");
    server.manager.shutdown().await.unwrap();
}

/// Sends a GET and reads until `needle` arrives, for responses that never end.
async fn read_until(addr: SocketAddr, path: &str, needle: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
    let mut seen = String::new();
    tokio::time::timeout(WAIT, async {
        while !seen.contains(needle) {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the response ended before {needle:?}: {seen}");
            seen.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{needle:?} in time, through the layer: {seen}"));
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_and_pages_marked_no_inject_stream_through_at_once() {
    let server = serve().await;
    let events = read_until(server.addr, "/events", "data: one").await;
    assert!(events.to_ascii_lowercase().contains("content-type: text/event-stream"), "{events}");
    let page = read_until(server.addr, "/no-inject", "<p>first</p>").await;
    assert!(!page.contains(TAG_START));
    server.manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_change_is_in_the_next_response_through_live_state() {
    let server = serve().await;
    assert!(injected(&server, "/site").await.text().contains("<h1>one</h1>"));
    let snapshot = request(server.addr, "GET", "/site/snapshot", &[]).await;
    assert_eq!(serde_json::from_slice::<Value>(&snapshot.body).unwrap(), json!({"title": "one", "build": "test"}));

    let mut events = server.manager.subscribe();
    write(&server.root, "config/site.toml", "title = \"two\"\n");
    tokio::time::timeout(WAIT, async {
        loop {
            if let ChangeEvent::ConfigChanged { config_name, .. } = events.recv().await.unwrap() {
                if config_name == "site" {
                    return;
                }
            }
        }
    })
    .await
    .expect("the engine applies the change in time");
    // The value is live before the event: the very next responses have it.
    assert!(injected(&server, "/site").await.text().contains("<h1>two</h1>"));
    let snapshot = request(server.addr, "GET", "/site/snapshot", &[]).await;
    assert_eq!(serde_json::from_slice::<Value>(&snapshot.body).unwrap()["title"], json!("two"));
    server.manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_livereload_websocket_works_through_the_apps_router_and_hears_file_changes() {
    let server = serve().await;
    let mut ws = connect(server.addr).await;
    handshake(&mut ws).await;
    write(&server.root, "static/app.css", "h1 { color: blue }");
    assert_eq!(
        next_json(&mut ws).await,
        json!({"command": "reload", "path": "/static/app.css", "liveCSS": true, "liveImg": false})
    );
    write(&server.root, "config/site.toml", "title = \"three\"\n");
    assert_eq!(
        next_json(&mut ws).await,
        json!({"command": "reload", "path": "config/site", "liveCSS": false, "liveImg": false})
    );
    let script = request(server.addr, "GET", "/livereload.js", &[]).await;
    assert_eq!(script.header("content-type"), Some("text/javascript; charset=utf-8"));
    assert_eq!(script.text(), relive_web::CLIENT_JS);
    // The bare application has no live reload routes.
    assert_eq!(request(server.bare, "GET", "/livereload.js", &[]).await.status, 404);
    server.manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_layer_mounts_nothing_and_injects_nothing() {
    let state = AppState { site: Live::new(Site { title: "off".into() }), build: "release" };
    let addr = listen(app(state).live_reload_with(ReloadHub::new(), LiveReloadLayer::new().enabled(false))).await;
    let page = request(addr, "GET", "/page", &[]).await;
    assert_eq!(page.text(), "<html><body><p>hi</p></body></html>");
    assert_eq!(request(addr, "GET", "/livereload.js", &[]).await.status, 404);
}

/// The example app, built by cargo, as a child process that is killed
/// when the test ends.
struct Child(tokio::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

/// `cargo build --example axum_app`, and the path of the binary it made.
fn build_example() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let output = std::process::Command::new(cargo)
        .args(["build", "-p", "relive-web", "--example", "axum_app", "--features", "axum"])
        .arg("--message-format=json")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .expect("cargo runs");
    assert!(output.status.success(), "cargo build --example axum_app failed");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "axum_app")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo names the example's executable")
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_app_serves_its_page_with_the_script_and_follows_its_config() {
    let exe = tokio::task::spawn_blocking(build_example).await.unwrap();
    // A copy of its workspace, so that the run writes nothing into the repository.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/axum_app"), dir.path());
    let mut child = Child(
        tokio::process::Command::new(exe)
            .arg(dir.path())
            .args(["--port", "0"])
            .env_remove("RELIVE_LIVERELOAD")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap(),
    );
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, stdout.next_line()).await.expect("the address in time").unwrap().unwrap();
    let addr: SocketAddr = line.strip_prefix("listening on http://").expect(&line).parse().unwrap();

    let page = request(addr, "GET", "/", &[]).await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<h1 id=\"title\">relive + axum</h1>"), "{}", page.text());
    assert!(page.text().contains("data-relive-changes=\"0\"></script></body>"), "stamped: {}", page.text());
    assert_eq!(page.header("content-length"), Some(page.body.len().to_string().as_str()));
    let api = request(addr, "GET", "/api/config", &[]).await;
    assert_eq!(api.header("content-type"), Some("application/json"));
    assert_eq!(serde_json::from_slice::<Value>(&api.body).unwrap()["title"], json!("relive + axum"));
    let css = request(addr, "GET", "/static/app.css", &[]).await;
    assert!(css.text().contains("h1 {"), "{css:?}");

    let mut ws = connect(addr).await;
    handshake(&mut ws).await;
    let config = dir.path().join("config/app.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace("relive + axum", "edited while running");
    std::fs::write(&config, text).unwrap();
    let reload = next_json(&mut ws).await;
    assert_eq!((&reload["command"], &reload["path"]), (&json!("reload"), &json!("config/app")), "{reload}");
    let page = request(addr, "GET", "/", &[]).await;
    assert!(page.text().contains("<h1 id=\"title\">edited while running</h1>"), "{}", page.text());
    let hello = request(addr, "GET", "/hello/test", &[]).await;
    assert!(hello.text().contains("<title>edited while running</title>"), "{}", hello.text());
}
