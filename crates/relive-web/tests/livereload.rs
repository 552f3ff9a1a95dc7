//! The live reload server on a real socket: the LiveReload official-7
//! handshake over a real WebSocket client, Server-Sent Events over raw TCP,
//! and reloads caused by files changed in a temp workspace and seen by the
//! real relive engine.

mod common;

use common::{WAIT, Ws, connect, handshake, next_json, watched, write};
use futures_util::{SinkExt, StreamExt};
use relive_web::{Assets, PROTOCOL_OFFICIAL_7, ReloadHub, Templates, router};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

struct Server {
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    manager: relive::HotReloadManager,
    hub: ReloadHub,
    _templates: Templates,
    _assets: Assets,
}

/// A workspace with a config, a template and two stylesheets, watched (see
/// [`watched`]), and the live reload routes on 127.0.0.1:0.
async fn serve() -> Server {
    let w = watched(&[
        ("config/site.toml", "title = \"one\"\n"),
        ("templates/index.html", "<h1>{{ title }}</h1>"),
        ("static/app.css", "h1 { color: red }"),
        ("static/other.css", "p {}"),
    ])
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = router(w.hub.clone());
    tokio::spawn(async move { axum::serve(listener, routes).await.unwrap() });
    Server {
        addr,
        _dir: w.dir,
        root: w.root,
        manager: w.manager,
        hub: w.hub,
        _templates: w.templates,
        _assets: w.assets,
    }
}

/// The handshake of a page stamped with `changes` (see `relive_web::inject_at`).
async fn stamped_handshake(ws: &mut Ws, changes: u64) {
    let hello = json!({"command": "hello", "protocols": [PROTOCOL_OFFICIAL_7], "reliveChanges": changes});
    ws.send(WsMessage::Text(hello.to_string().into())).await.unwrap();
    assert_eq!(next_json(ws).await["serverName"], json!("relive"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_clients_get_official_7_reloads_for_real_file_changes() {
    let server = serve().await;
    let mut ws = connect(server.addr).await;
    handshake(&mut ws).await;
    // What the browser extensions send after the handshake is ignored.
    ws.send(WsMessage::Text(json!({"command": "info", "plugins": {}, "url": "http://x/"}).to_string().into()))
        .await
        .unwrap();
    ws.send(WsMessage::Text(json!({"command": "url", "url": "http://x/"}).to_string().into())).await.unwrap();

    // CSS: swapped in place.
    write(&server.root, "static/app.css", "h1 { color: blue }");
    assert_eq!(
        next_json(&mut ws).await,
        json!({"command": "reload", "path": "/static/app.css", "liveCSS": true, "liveImg": false})
    );

    // A template: a page reload, after the new templates are live.
    write(&server.root, "templates/index.html", "<h2>{{ title }}</h2>");
    let reload = next_json(&mut ws).await;
    assert_eq!((&reload["command"], &reload["liveCSS"]), (&json!("reload"), &json!(false)), "{reload}");

    // A config: a page reload.
    write(&server.root, "config/site.toml", "title = \"two\"\n");
    let reload = next_json(&mut ws).await;
    assert_eq!(
        (&reload["command"], &reload["path"], &reload["liveCSS"]),
        (&json!("reload"), &json!("config/site"), &json!(false))
    );

    // A burst of two stylesheets and a template: one page reload, and the
    // next message is about the change made after it. A stylesheet that
    // opens the burst may be swapped first (the leading edge), never more.
    write(&server.root, "static/app.css", "h1 { color: green }");
    write(&server.root, "static/other.css", "p { margin: 0 }");
    write(&server.root, "templates/index.html", "<h3>{{ title }}</h3>");
    let mut reload = next_json(&mut ws).await;
    if reload["liveCSS"] == json!(true) {
        assert!(["/static/app.css", "/static/other.css"].contains(&reload["path"].as_str().unwrap()), "{reload}");
        reload = next_json(&mut ws).await;
    }
    assert_eq!((&reload["command"], &reload["liveCSS"]), (&json!("reload"), &json!(false)), "{reload}");
    write(&server.root, "static/other.css", "p { margin: 1px }");
    assert_eq!(next_json(&mut ws).await["path"], json!("/static/other.css"));

    // Saving the same bytes says nothing: the next message is the next real change.
    write(&server.root, "static/app.css", "h1 { color: green }");
    write(&server.root, "templates/index.html", "<h3>{{ title }}</h3>");
    write(&server.root, "static/other.css", "p { margin: 2px }");
    assert_eq!(
        next_json(&mut ws).await,
        json!({"command": "reload", "path": "/static/other.css", "liveCSS": true, "liveImg": false})
    );
    server.manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_error_is_an_alert_until_the_fix_reloads_the_page() {
    let server = serve().await;
    let mut ws = connect(server.addr).await;
    handshake(&mut ws).await;

    write(&server.root, "templates/index.html", "<h1>\n  {{ title </h1>");
    let alert = next_json(&mut ws).await;
    assert_eq!(alert["command"], json!("alert"), "{alert}");
    let message = alert["message"].as_str().unwrap();
    assert!(message.starts_with("templates/index.html:2:"), "{message}");
    assert!(message.contains("syntax error"), "{message}");

    // A browser that connects while the error stands is told at once.
    let mut late = connect(server.addr).await;
    handshake(&mut late).await;
    assert_eq!(next_json(&mut late).await, alert);

    // The fix: a page reload, which clears the overlay; no alert stands.
    write(&server.root, "templates/index.html", "<h1>{{ title }}</h1>");
    for ws in [&mut ws, &mut late] {
        let reload = next_json(ws).await;
        assert_eq!((&reload["command"], &reload["liveCSS"]), (&json!("reload"), &json!(false)), "{reload}");
    }
    let mut after = connect(server.addr).await;
    handshake(&mut after).await;
    write(&server.root, "static/app.css", "h1 { color: teal }");
    assert_eq!(next_json(&mut after).await["path"], json!("/static/app.css"), "no alert before the next change");
    server.manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_official_7_is_closed_and_messages_before_hello_are_ignored() {
    let server = serve().await;
    let mut ws = connect(server.addr).await;
    ws.send(WsMessage::Text(json!({"command": "info"}).to_string().into())).await.unwrap();
    ws.send(WsMessage::Text(
        json!({"command": "hello", "protocols": ["http://livereload.com/protocols/6"]}).to_string().into(),
    ))
    .await
    .unwrap();
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => return,
                Some(Ok(WsMessage::Text(t))) => panic!("no message for a client without official-7: {t}"),
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server closes the socket");
    server.manager.shutdown().await.unwrap();
}

/// Reads an SSE response over raw TCP until `count` `data:` lines came.
async fn sse_data(stream: &mut TcpStream, buffer: &mut String, count: usize) -> Vec<Value> {
    tokio::time::timeout(WAIT, async {
        loop {
            let data: Vec<Value> = buffer
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .map(|d| serde_json::from_str(d).unwrap())
                .collect();
            if data.len() >= count {
                return data;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the event stream ended");
            buffer.push_str(std::str::from_utf8(&chunk[..n]).unwrap());
        }
    })
    .await
    .expect("events in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_carry_the_same_messages() {
    let server = serve().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /livereload/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = String::new();
    // The headers: the handler has subscribed by the time they are sent.
    tokio::time::timeout(WAIT, async {
        while !buffer.contains("\r\n\r\n") {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "no response");
            buffer.push_str(std::str::from_utf8(&chunk[..n]).unwrap());
        }
    })
    .await
    .expect("headers in time");
    assert!(buffer.starts_with("HTTP/1.1 200"), "{buffer}");
    assert!(buffer.to_ascii_lowercase().contains("content-type: text/event-stream"), "{buffer}");

    write(&server.root, "static/app.css", "h1 { color: purple }");
    let data = sse_data(&mut stream, &mut buffer, 1).await;
    assert_eq!(data[0], json!({"command": "reload", "path": "/static/app.css", "liveCSS": true, "liveImg": false}));
    write(&server.root, "templates/index.html", "{% if %}");
    let data = sse_data(&mut stream, &mut buffer, 2).await;
    assert_eq!(data[1]["command"], json!("alert"), "{}", data[1]);
    server.manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_script_is_served_as_javascript() {
    let server = serve().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"GET /livereload.js HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut response)).await.unwrap().unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/javascript"), "{head}");
    assert!(head.contains("cache-control: no-cache"), "{head}");
    assert_eq!(body, relive_web::CLIENT_JS);

    // Revalidated on every page load: its ETag makes that a 304 without a body.
    let etag = head.lines().find_map(|l| l.strip_prefix("etag: ")).expect("an etag").to_string();
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET /livereload.js HTTP/1.1\r\nHost: 127.0.0.1\r\nIf-None-Match: \"x\", {etag}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut response)).await.unwrap().unwrap();
    assert!(response.starts_with("HTTP/1.1 304"), "{response}");
    assert!(response.ends_with("\r\n\r\n"), "no body: {response}");
    server.manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_missed_changes_while_it_loaded_is_reloaded_when_it_connects() {
    let server = serve().await;
    let mut watching = connect(server.addr).await;
    handshake(&mut watching).await;
    // A page is rendered now; then a change happens before its client connects.
    let rendered = server.hub.changes();
    write(&server.root, "static/app.css", "h1 { color: olive }");
    assert_eq!(next_json(&mut watching).await["path"], json!("/static/app.css"));
    assert!(server.hub.changes() > rendered);

    let mut stale = connect(server.addr).await;
    stamped_handshake(&mut stale, rendered).await;
    assert_eq!(
        next_json(&mut stale).await,
        json!({"command": "reload", "path": "*", "liveCSS": false, "liveImg": false})
    );

    // The same over Server-Sent Events.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = format!("GET /livereload/events?changes={rendered} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buffer = String::new();
    let data = sse_data(&mut stream, &mut buffer, 1).await;
    assert_eq!(data[0], json!({"command": "reload", "path": "*", "liveCSS": false, "liveImg": false}));

    // A page that saw every change is not reloaded: its next message is the next change.
    let mut current = connect(server.addr).await;
    stamped_handshake(&mut current, server.hub.changes()).await;
    write(&server.root, "static/other.css", "p { margin: 3px }");
    assert_eq!(next_json(&mut current).await["path"], json!("/static/other.css"));
    server.manager.shutdown().await.unwrap();
}

/// Sends `request` (ending in `Connection: close` or `Upgrade, close`) and
/// reads the response's head and what came with it.
async fn raw(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(WAIT, async {
        loop {
            let n = stream.read(&mut chunk).await.unwrap();
            bytes.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&bytes);
            if n == 0 || (text.starts_with("HTTP/1.1 101") && text.contains("\r\n\r\n")) {
                break;
            }
        }
    })
    .await
    .expect("a response in time");
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Opens a WebSocket to `/livereload` with `Origin: origin`; the refusal's
/// status if it is refused.
async fn connect_from(addr: std::net::SocketAddr, origin: &str) -> Result<Ws, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}/livereload").into_client_request().unwrap();
    request.headers_mut().insert("origin", origin.parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("{origin}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routes_answer_only_allowed_hosts_and_open_streams_only_to_allowed_origins() {
    let server = serve().await;
    let get = |host: &str, origin: &str, path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{origin}Connection: close\r\n\r\n")
    };
    // Another host (DNS rebinding): 421 and why, on every route.
    for path in ["/livereload.js", "/livereload/events", "/livereload"] {
        let response = raw(server.addr, &get("attacker.example", "", path)).await;
        assert!(response.starts_with("HTTP/1.1 421"), "{path}: {response}");
        assert!(response.contains("the Host header does not name this server"), "{path}: {response}");
    }
    let events = |origin: &str| {
        get("127.0.0.1", &format!("Origin: {origin}\r\nAccept: text/event-stream\r\n"), "/livereload/events")
    };
    let refused = raw(server.addr, &events("http://attacker.example")).await;
    assert!(refused.starts_with("HTTP/1.1 403") && refused.contains("cross-origin request refused"), "{refused}");

    // Another site's page: 403; the server's own and the extensions': the protocol.
    assert_eq!(connect_from(server.addr, "http://attacker.example").await.err(), Some(403));
    for origin in
        ["http://localhost:8000", "http://127.0.0.1:3000", "chrome-extension://jnihajbhpnppcggbcgedagnkighmdlei"]
    {
        let mut ws = connect_from(server.addr, origin).await.unwrap_or_else(|s| panic!("{origin}: {s}"));
        handshake(&mut ws).await;
    }

    // Set on the hub, for every router mounted with it, from the next request.
    server
        .hub
        .set_access(relive_web::Access::loopback().with_host("dev.example").unwrap().with_extension_origins(false));
    let allowed = raw(server.addr, &get("dev.example:3000", "", "/livereload.js")).await;
    assert!(allowed.starts_with("HTTP/1.1 200"), "{allowed}");
    let mut ws = connect_from(server.addr, "http://dev.example:3000").await.expect("an allowed name's page");
    handshake(&mut ws).await;
    assert_eq!(connect_from(server.addr, "chrome-extension://jnihajbhpnppcggbcgedagnkighmdlei").await.err(), Some(403));
    server.manager.shutdown().await.unwrap();
}
