//! The client script's behaviour, run in Node.js against a stub DOM
//! (`tests/js/client_harness.js`): CSS swapped in place without a reload,
//! other reloads, the error overlay, the handshake, backoff and the SSE
//! fallback. The real-browser tests come with `relive serve`.

use std::process::Command;

#[test]
fn the_client_script_behaves_in_a_stub_browser() {
    let dir = tempfile::tempdir().unwrap();
    let client = dir.path().join("livereload.js");
    std::fs::write(&client, relive_web::CLIENT_JS).unwrap();
    let harness = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js/client_harness.js");
    let output = Command::new("node")
        .arg(harness)
        .arg(&client)
        .output()
        .expect("Node.js (`node`) runs the client script's tests; install Debian's nodejs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "client script checks failed:\n{stdout}\n{stderr}");
    assert_eq!(stdout.trim(), "client ok");
}
