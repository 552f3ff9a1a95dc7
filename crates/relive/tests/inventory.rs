//! Listing a workspace's configs and loading one without watching.

mod common;

use common::*;
use relive::{ConfigErrorKind, Error};

#[test]
fn configs_lists_bases_overlays_and_schemas_by_name() {
    let t = TestWs::new(&[
        ("config/app.toml", "a = 1\n"),
        ("config/app.production.yaml", "a: 2\n"),
        ("config/app.schema.json", "{}"),
        ("config/db/main.json", "{}"),
        ("config/dup.toml", "x = 1\n"),
        ("config/dup.json", "{}"),
        ("config/.app.toml.swp", "junk"),
        ("config/..2026_01_01/hidden.json", "{}"),
        ("config/README.md", "not a config"),
    ]);
    let configs = t.ws.configs().unwrap();
    let names: Vec<&str> = configs.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["app", "db/main", "dup"]);
    let app = &configs[0];
    assert_eq!(app.base, [t.path("config/app.toml")]);
    assert_eq!(app.overlays["production"], [t.path("config/app.production.yaml")]);
    assert_eq!(app.schema.as_deref(), Some(t.path("config/app.schema.json").as_path()));
    assert_eq!(configs[2].base.len(), 2, "both base files are listed; loading says which is wrong");
    // A nested name loads from its own directory; a name that is only a
    // prefix of another's file (`ap` of `app.toml`) has no files.
    assert_eq!(t.ws.load("db/main").unwrap().files(), [t.path("config/db/main.json")]);
    assert!(matches!(t.ws.load("ap"), Err(Error::Config { .. })));
}

#[test]
fn load_merges_the_overlay_and_locates_errors_found_later() {
    let t = TestWs::new(&[
        ("config/app.toml", "name = \"base\"\nvalue = 1\n[limits]\nmax = 10\n"),
        ("config/app.production.json", "{\n  \"limits\": {\"max\": 99}\n}\n"),
    ]);
    let loaded = t.ws.clone().with_env("production").load("app").unwrap();
    assert_eq!(loaded.value()["limits"]["max"], 99);
    assert_eq!(loaded.files(), [t.path("config/app.toml"), t.path("config/app.production.json")]);

    // A check of the caller's own (a JSON Schema, say) points into the file
    // that set the key.
    let error = loaded.error_at("limits.max", "must be at most 50");
    assert_eq!(error.file(), Some(t.path("config/app.production.json").as_path()));
    assert_eq!((error.line(), error.column()), (Some(2), Some(14)), "{error}");
    let error = loaded.error_at("name", "too short");
    assert_eq!((error.file(), error.line()), (Some(t.path("config/app.toml").as_path()), Some(1)));

    #[derive(Debug, serde::Deserialize)]
    struct Wrong {
        #[allow(dead_code)]
        name: u32,
    }
    let error = loaded.deserialize::<Wrong>().unwrap_err();
    assert_eq!(error.kind(), ConfigErrorKind::Type);
    assert_eq!(error.key(), Some("name"));

    // Without the environment, the overlay is not part of it.
    assert_eq!(t.ws.clone().with_env("").load("app").unwrap().value()["limits"]["max"], 10);
}

#[test]
fn load_reports_syntax_ambiguity_and_absence() {
    let t = TestWs::new(&[("config/bad.yaml", "a: [1, 2\n"), ("config/dup.toml", ""), ("config/dup.json", "{}")]);
    let kind = |name: &str| match t.ws.load(name) {
        Err(Error::Config { error, .. }) => error.kind(),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(kind("bad"), ConfigErrorKind::Syntax);
    assert_eq!(kind("dup"), ConfigErrorKind::Ambiguous);
    assert_eq!(kind("none"), ConfigErrorKind::Missing);
}
