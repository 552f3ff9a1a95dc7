//! Helpers shared by the integration tests that talk to a live reload
//! server: writing workspace files and the LiveReload WebSocket client side.

#![allow(dead_code)] // each test file uses its own part

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use relive_web::PROTOCOL_OFFICIAL_7;
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
