//! The environment layer: `RELIVE__<CONFIG>__<KEY>=value` overrides file
//! values, above the environment's overlay, typed as TOML scalars; an error
//! in a variable names it. Each test runs its body in a child process that
//! has the variables (the environment is the process's).

mod common;

use common::*;
use relive::{ChangeEvent, HotReloadConfig};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Server {
    port: u16,
    host: String,
    tls: Tls,
}

#[derive(Debug, Deserialize)]
struct Tls {
    enabled: bool,
}

const NAME: &str = "variables_override_the_files_and_their_errors_name_them";

#[test]
fn variables_override_the_files_and_their_errors_name_them() {
    if let Some(root) = child_arg(NAME) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let ws = relive::Workspace::new(&root).with_env("prod");
            let manager = ws.start_hot_reload().await.unwrap();
            let mut events = manager.subscribe();
            let mut server = ws.watch_config_changes::<Server>("server").await.unwrap();
            // The variable wins over the base and the prod overlay, and is a
            // number and a bool, not strings.
            assert_eq!(server.current().port, 8080);
            assert!(server.current().tls.enabled);
            assert_eq!(server.current().host, "prod.example", "the overlay still applies under the layer");

            // A file change is merged under the variables.
            std::fs::write(root.join("config/server.toml"), "port = 3\nhost = \"base\"\n[tls]\nenabled = false\n")
                .unwrap();
            let (event, _) = event_until(&mut events, |e| matches!(e, ChangeEvent::FileChanged { .. })).await;
            drop(event);
            // Nothing the service sees changes: the layer still decides.
            assert_eq!(server.current().port, 8080);

            // A config whose variable is of the wrong type: the error names
            // the variable.
            let error = ws.watch_config_changes::<Server>("bad").await.unwrap_err().to_string();
            assert!(
                error.contains("env RELIVE__BAD__PORT: invalid type: string \"x\", expected u16 (at `port`)"),
                "{error}"
            );
            let _ = &mut server;
            manager.shutdown().await.unwrap();
        });

        // Off, the files alone.
        let ws = relive::Workspace::new(&root)
            .with_env("prod")
            .with_config(HotReloadConfig { env_layer: None, ..Default::default() });
        assert_eq!(ws.load("server").unwrap().value()["port"], 2, "the prod overlay, no variable");
        return;
    }
    let t = TestWs::new(&[
        ("config/server.toml", "port = 1\nhost = \"base\"\n[tls]\nenabled = false\n"),
        ("config/server.prod.toml", "host = \"prod.example\"\nport = 2\n"),
        ("config/bad.toml", "port = 1\nhost = \"h\"\n[tls]\nenabled = true\n"),
    ]);
    let out = child(NAME, t.dir.path())
        .env("RELIVE__SERVER__PORT", "8080")
        .env("RELIVE__SERVER__TLS__ENABLED", "true")
        .env("RELIVE__BAD__PORT", "x")
        .output()
        .unwrap();
    assert_child_passed(&out);
}
