//! `relive check`, and the conventions every command follows: help,
//! version, exit codes, completions.

// The harness (tests/common) stops relive with SIGTERM and watches its
// processes with kill(2): Unix's. On Windows the CLI is type-checked in CI.
#![cfg(unix)]

mod common;

use common::Ws;

#[test]
fn check_prints_every_broken_file_at_its_line_and_column() {
    let ws = Ws::new();
    ws.write("config/app.toml", "port = 8080\nname = \"app\"\n");
    ws.write("config/app.production.toml", "port = \"eighty\"\n");
    ws.write("config/broken.toml", "[server]\nport = \n");
    ws.write("config/list.json", "{\n  \"a\": [1, 2,]\n}\n");
    ws.write("config/db/main.yaml", "hosts:\n  - a\n  b: 1\n");
    ws.write(
        "config/app.schema.json",
        r#"{"type": "object", "required": ["name"], "properties": {"port": {"type": "integer"}}}"#,
    );
    let run = ws.run(&["check"]);
    assert_eq!(run.code(), 1, "stderr: {}", run.stderr());
    let lines: Vec<String> = run.stdout().lines().map(str::to_string).collect();
    assert_eq!(
        lines,
        [
            "config/app.production.toml:1:1: \"eighty\" is not of type \"integer\" (at `port`)",
            "config/broken.toml:2:8: string values must be quoted, expected literal string",
            "config/db/main.yaml:3:3: did not find expected '-' indicator, while parsing a block collection at line 2 column 3",
            "config/list.json:2:14: trailing comma",
        ],
        "stdout: {}",
        run.stdout()
    );
    assert!(run.stderr().contains("checked 4 configs (5 files): 4 errors"), "{}", run.stderr());
}

#[test]
fn check_applies_the_schema_to_the_merged_value() {
    let ws = Ws::new();
    ws.write(
        "config/server.schema.json",
        r#"{"type": "object", "required": ["workers"],
            "properties": {"port": {"type": "integer", "maximum": 65535}, "workers": {"type": "integer", "minimum": 1}}}"#,
    );
    ws.write("config/server.yaml", "port: 8080\nworkers: 4\n");
    ws.write("config/server.staging.yaml", "# staging\nport: 70000\nworkers: 0\n");
    let run = ws.run(&["check"]);
    assert_eq!(run.code(), 1, "stderr: {}", run.stderr());
    assert_eq!(
        run.stdout(),
        "config/server.staging.yaml:2:1: 70000 is greater than the maximum of 65535 (at `port`)\n\
         config/server.staging.yaml:3:1: 0 is less than the minimum of 1 (at `workers`)\n"
    );
    // The base alone, as in an environment without overlays, is fine.
    let run = ws.run(&["check", "--env", "dev"]);
    assert_eq!((run.code(), run.stdout().as_str()), (0, ""), "stderr: {}", run.stderr());
}

#[test]
fn a_clean_workspace_passes_and_a_missing_one_is_a_runtime_error() {
    let ws = Ws::new();
    ws.write("config/app.toml", "port = 1\n");
    ws.write("config/db.json", "{\"url\": \"postgres://\"}");
    let run = ws.run(&["check", "--timings"]);
    assert_eq!(run.code(), 0, "{}{}", run.stdout(), run.stderr());
    assert_eq!(run.stdout(), "");
    assert!(run.stderr().contains("no errors") && run.stderr().contains("timings: "), "{}", run.stderr());

    let run = ws.run(&["check", "no/such/dir"]);
    assert_eq!(run.code(), 3);
    assert!(run.stderr().contains("relive: error: no/such/dir: not a directory"), "{}", run.stderr());
}

#[test]
fn a_broken_schema_is_an_error_too() {
    let ws = Ws::new();
    ws.write("config/app.toml", "port = 1\n");
    ws.write("config/app.schema.json", "{\n  \"type\": \"object\",\n}\n");
    let run = ws.run(&["check"]);
    assert_eq!(run.code(), 1);
    assert_eq!(run.stdout(), "config/app.schema.json:3:1: schema is not valid JSON: trailing comma\n");
}

#[test]
fn usage_errors_exit_2_and_help_documents_exit_codes() {
    let ws = Ws::new();
    let run = ws.run(&["check", "--bogus"]);
    assert_eq!(run.code(), 2);
    let run = ws.run(&["watch", "--signal", "HUP"]);
    assert_eq!(run.code(), 2, "--signal needs --exec");
    let run = ws.run(&["watch", "--exec", "true", "--signal", "NOPE"]);
    assert_eq!(run.code(), 2);
    assert!(run.stderr().contains("unknown signal `NOPE`"), "{}", run.stderr());
    let run = ws.run(&["watch", "--webhook", "ftp://example.invalid/"]);
    assert_eq!(run.code(), 2);
    assert!(run.stderr().contains("use http:// or https://"), "{}", run.stderr());

    for command in ["watch", "check", "history", "show", "diff", "rollback", "completions"] {
        let run = ws.run(&[command, "--help"]);
        assert_eq!(run.code(), 0, "{command} --help");
        assert!(run.stdout().contains("Usage: relive"), "{command} --help: {}", run.stdout());
    }
    let help = ws.run(&["--help"]).stdout();
    assert!(help.contains("Exit codes:") && help.contains("3  runtime error"), "{help}");
    let version = ws.run(&["--version"]).stdout();
    assert_eq!(version.trim(), format!("relive {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn completions_for_each_shell() {
    let ws = Ws::new();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let run = ws.run(&["completions", shell]);
        assert_eq!(run.code(), 0);
        assert!(run.stdout().contains("relive"), "{shell}");
    }
}

#[test]
fn no_colour_off_a_terminal() {
    let ws = Ws::new();
    ws.write("config/app.toml", "port = \n");
    let mut cmd = ws.relive(&["check"]);
    cmd.env_remove("NO_COLOR");
    let output = cmd.output().expect("run");
    assert!(!output.stdout.contains(&0x1b) && !output.stderr.contains(&0x1b), "escape codes in piped output");
    let output = ws.relive(&["--color", "always", "check"]).output().expect("run");
    assert!(output.stderr.contains(&0x1b) || output.stdout.contains(&0x1b), "--color always colours");
}

#[test]
fn a_fifo_named_like_a_config_is_skipped_with_a_warning_not_opened() {
    let ws = Ws::new();
    ws.write("config/app.toml", "port = 1\n");
    // macOS has no mkfifoat in rustix: the mkfifo command there.
    #[cfg(target_os = "linux")]
    rustix::fs::mkfifoat(rustix::fs::CWD, ws.path("config/evil.toml"), rustix::fs::Mode::from(0o644)).unwrap();
    #[cfg(not(target_os = "linux"))]
    assert!(std::process::Command::new("mkfifo").arg(ws.path("config/evil.toml")).status().unwrap().success());
    // Bounded by the harness: opening the FIFO would block forever.
    let run = ws.run(&["check"]);
    assert_eq!(run.code(), 0, "{}{}", run.stdout(), run.stderr());
    assert!(run.stderr().contains("not a regular file; skipped"), "{}", run.stderr());
    assert!(run.stderr().contains("evil.toml"), "{}", run.stderr());
}
