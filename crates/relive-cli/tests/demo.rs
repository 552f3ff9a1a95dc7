//! The README's first command, `relive serve examples/demo`, on a temp copy
//! of the demo workspace: the page is built from its configs and templates,
//! styled by its stylesheet, and an edit reaches the next request.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(20);

/// `relive serve`, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            if entry.file_name() != "data" {
                copy_dir(&entry.path(), &target);
            }
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A GET over a plain socket; the status and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

#[test]
fn the_demo_serves_a_page_built_from_its_configs_templates_and_stylesheet() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo");
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&demo, dir.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_relive"))
        .args(["serve", dir.path().to_str().unwrap(), "--port", "0", "--livereload-port", "0", "--no-history"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn relive serve");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let _server = Server(child);
    let addr: SocketAddr = first.trim().strip_prefix("serving http://").expect(&first).parse().unwrap();

    let (status, page) = get(addr, "/");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<h1 id=\"title\">relive demo</h1>"), "site.toml's title: {page}");
    assert!(page.contains("config/server.toml says: "), "{page}");
    assert!(page.contains("/livereload.js"), "the live reload client is injected: {page}");
    let css = page.split("href=\"").map(|s| s.split('"').next().unwrap()).find(|h| h.ends_with(".css")).expect(&page);
    assert!(css.starts_with("/static/app.") && css != "/static/app.css", "fingerprinted: {css}");
    let (status, body) = get(addr, css);
    assert_eq!(status, 200);
    assert_eq!(body, std::fs::read_to_string(dir.path().join("static/app.css")).unwrap());

    // An edit is in the next page once the server has it.
    let site = dir.path().join("config/site.toml");
    let edited = std::fs::read_to_string(&site).unwrap().replace("title = \"relive demo\"", "title = \"edited\"");
    std::fs::write(&site, edited).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while !get(addr, "/").1.contains("<h1 id=\"title\">edited</h1>") {
        assert!(Instant::now() < deadline, "the edit did not reach the page within {TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
