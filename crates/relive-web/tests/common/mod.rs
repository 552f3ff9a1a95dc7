//! Helpers shared by the integration tests that talk to a live reload
//! server: writing workspace files and the LiveReload WebSocket client side.

#![allow(dead_code)] // each test file uses its own part

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use relive_web::{Assets, BurstCoalescer, PROTOCOL_OFFICIAL_7, ReloadHub, Templates};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// How long a test waits for what it expects.
pub const WAIT: Duration = Duration::from_secs(10);

/// A WebSocket client connection.
pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Writes `text` to `root/name`, creating its directory.
pub fn write(root: &Path, name: &str, text: &str) {
    std::fs::create_dir_all(root.join(name).parent().unwrap()).unwrap();
    std::fs::write(root.join(name), text).unwrap();
}

/// A temp workspace, the real engine watching it, its templates and
/// assets, and a hub following all three (and the configs).
pub struct Watched {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub ws: relive::Workspace,
    pub manager: relive::HotReloadManager,
    pub hub: ReloadHub,
    pub templates: Templates,
    pub assets: Assets,
}

/// A workspace with `files` (name, text), watched. The hub's burst window
/// is wide (150 ms of quiet, where `relive serve` has 10 ms, then 30 ms) so
/// that a busy machine cannot split a burst written in a few milliseconds.
pub async fn watched(files: &[(&str, &str)]) -> Watched {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    for (name, text) in files {
        write(&root, name, text);
    }
    let ws = relive::Workspace::new(&root);
    let templates = Templates::new(&ws).unwrap();
    let assets = Assets::new(&ws).unwrap();
    let manager = ws.start_hot_reload().await.unwrap();
    let hub = ReloadHub::with_coalescer(BurstCoalescer::new(Duration::from_millis(150), Duration::from_secs(1)));
    hub.follow_templates(&templates);
    hub.follow_assets(&assets);
    hub.follow_configs(&manager);
    Watched { dir, root, ws, manager, hub, templates, assets }
}

/// Opens a WebSocket to `/livereload` on `addr`.
pub async fn connect(addr: SocketAddr) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/livereload")).await.unwrap();
    ws
}

/// The next text message as JSON, within [`WAIT`].
pub async fn next_json(ws: &mut Ws) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await.expect("socket open").unwrap() {
                WsMessage::Text(text) => return serde_json::from_str(&text).unwrap(),
                WsMessage::Close(_) => panic!("server closed the socket"),
                _ => {}
            }
        }
    })
    .await
    .expect("a message in time")
}

/// The LiveReload handshake: a `hello` offering `official-7` (and an older
/// protocol, as the browser extensions do), answered with relive's `hello`.
pub async fn handshake(ws: &mut Ws) {
    let hello = json!({"command": "hello", "protocols": ["http://livereload.com/protocols/7", PROTOCOL_OFFICIAL_7]});
    ws.send(WsMessage::Text(hello.to_string().into())).await.unwrap();
    assert_eq!(
        next_json(ws).await,
        json!({"command": "hello", "protocols": [PROTOCOL_OFFICIAL_7], "serverName": "relive"})
    );
}
