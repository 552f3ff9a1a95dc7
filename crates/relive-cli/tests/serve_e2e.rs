//! `relive serve` end to end, in real headless Chromium: the real binary on
//! 127.0.0.1:0 against a temp workspace, driven over WebDriver (the harness
//! is `tests/browser/mod.rs`, shared with `benches/browser.rs`). Every wait
//! polls with a deadline; the server, chromedriver and the browser are
//! stopped when dropped.

mod browser;

use browser::{BACKGROUND, Browser, OVERLAY_SHOWN, TITLE, Workspace, index, serve, stylesheet};
use serde_json::json;

#[test]
fn a_css_edit_restyles_the_page_without_a_reload() {
    let ws = Workspace::new();
    let server = serve(&ws);
    let browser = Browser::start();
    browser.open(&server.url);
    assert_eq!(browser.eval(BACKGROUND), json!("rgb(255, 0, 0)"));
    browser.run("window.__marker = 42").expect("set the marker");

    browser.arm(&format!("{BACKGROUND} === 'rgb(0, 0, 255)'"));
    let saved = ws.write("static/app.css", &stylesheet((0, 0, 255)));
    let seen = browser.seen("the new background");
    eprintln!("css: save to computed style in {:.0} ms", seen.at - saved);
    assert_eq!(browser.eval("window.__marker"), json!(42), "the page must not reload for a CSS change");
}

#[test]
fn a_template_edit_reloads_the_page_with_the_new_content() {
    let ws = Workspace::new();
    let server = serve(&ws);
    let browser = Browser::start();
    browser.open(&server.url);
    assert_eq!(browser.eval(TITLE), json!("Version 1 Demo"));
    browser.run("window.__marker = 42").expect("set the marker");

    browser.arm(&format!("{TITLE} === 'Version 2 Demo'"));
    let saved = ws.write("templates/index.html", &index("Version 2"));
    let seen = browser.seen("the new heading");
    eprintln!("template: save to new content in {:.0} ms", seen.at - saved);
    assert_eq!(browser.eval("window.__marker === undefined"), json!(true), "a template change reloads the page");

    // A config is context: its change reloads the page too.
    browser.wait_connected();
    ws.write("config/site.toml", "title = \"Configured\"\n");
    browser.wait_for("the new config value", &format!("return {TITLE} === 'Version 2 Configured'"));
}

#[test]
fn a_template_syntax_error_shows_the_overlay_until_it_is_fixed() {
    let ws = Workspace::new();
    let server = serve(&ws);
    let browser = Browser::start();
    browser.open(&server.url);

    ws.write("templates/index.html", "{% extends 'base.html' %}{% block content %}{% if %}{% endblock %}\n");
    browser.wait_for("the error overlay", &format!("return {OVERLAY_SHOWN}"));
    let text = browser.eval("document.getElementById('relive-error-overlay').textContent");
    let text = text.as_str().expect("overlay text");
    assert!(text.contains("templates/index.html:1:") && text.contains("syntax error"), "{text}");
    // The last good templates keep serving underneath.
    assert_eq!(browser.eval(TITLE), json!("Version 1 Demo"));

    ws.write("templates/index.html", &index("Fixed"));
    browser.wait_for(
        "the fixed page without the overlay",
        &format!("return !({OVERLAY_SHOWN}) && {TITLE} === 'Fixed Demo'"),
    );
}
