//! From file saved to the browser showing the change, through `relive serve`
//! in real headless Chromium.
//!
//! Run with `cargo bench -p relive-cli --bench browser` (a release build of
//! `relive`); `-- N` sets the number of saves of each kind (default 30).
//! It uses the end to end tests' harness (`tests/browser/mod.rs`): a temp
//! workspace, the real binary on 127.0.0.1:0, chromedriver and Chromium.
//!
//! Each save is atomic (a temp file renamed over the old one, as editors
//! do), timed just before the rename. The page's probe records, on the same
//! clock, when the change is in the page (the computed style, or the new
//! page's DOM) and the animation frame after it (on screen). For CSS the
//! page must not reload; for a template it must.
//!
//! Floors, measured in the same run and timed in the page itself: what the
//! browser and the server take for the same change without relive watching
//! anything. For CSS, the page links a new stylesheet itself; for a
//! template, it reloads itself. And the probe's own delay: a DOM change
//! made by a script, observed the same way. The difference between a save
//! and its floor is relive's own cost: noticing the file, swapping it in,
//! and telling the page.

#[path = "../tests/browser/mod.rs"]
mod browser;

use std::time::Duration;

use browser::{BACKGROUND, Browser, Seen, TITLE, Workspace, index, serve, stylesheet};

/// Between saves: every save is its own burst.
const PAUSE: Duration = Duration::from_millis(60);

fn main() {
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(30);
    let load = load_average();
    let ws = Workspace::new();
    ws.write("static/floor.css", &stylesheet((1, 2, 3)));
    let server = serve(&ws);
    let browser = Browser::start();
    browser.open(&server.url);
    // Chromium's first style change, first reload and first swap are slow
    // (code paths being loaded); warm them up before measuring.
    warm_up(&ws, &browser);

    let mut css = Samples::default();
    browser.run("window.__marker = 'no reload'").expect("set the marker");
    for i in 0..n {
        let rgb = (0, (i % 200) as u8 + 1, 250);
        browser.arm(&format!("{BACKGROUND} === 'rgb({}, {}, {})'", rgb.0, rgb.1, rgb.2));
        let saved = ws.write("static/app.css", &stylesheet(rgb));
        css.add(saved, browser.seen("the new background"));
        std::thread::sleep(PAUSE);
    }
    assert_eq!(browser.eval("window.__marker"), "no reload", "a CSS save must not reload the page");

    let mut css_floor = Samples::default();
    for i in 0..n {
        browser.arm(&format!("{BACKGROUND} === 'rgb(1, 2, 3)'"));
        let started = start_in_page(
            &browser,
            &format!(
                "const l = document.createElement('link'); l.rel = 'stylesheet'; l.id = 'floor'; \
                 l.href = '/static/floor.css?n={i}'; document.head.appendChild(l);"
            ),
        );
        css_floor.add(started, browser.seen("the floor stylesheet"));
        browser.run("document.getElementById('floor').remove()").expect("remove the floor stylesheet");
        std::thread::sleep(PAUSE);
    }

    let mut template = Samples::default();
    for i in 0..n {
        let heading = format!("Version {}", i + 2);
        browser.arm(&format!("{TITLE} === '{heading} Demo'"));
        let saved = ws.write("templates/index.html", &index(&heading));
        template.add(saved, browser.seen("the new heading"));
        assert!(browser.eval("window.__marker === undefined") == true, "a template save reloads the page");
        browser.wait_connected();
        std::thread::sleep(PAUSE);
    }

    let mut template_floor = Samples::default();
    let current = format!("Version {} Demo", n + 1);
    for _ in 0..n {
        browser.run("document.getElementById('title').textContent = 'stale'").expect("mark the page");
        browser.arm(&format!("{TITLE} === '{current}'"));
        let started = start_in_page(&browser, "setTimeout(() => location.reload(), 0);");
        template_floor.add(started, browser.seen("the reloaded page"));
        browser.wait_connected();
        std::thread::sleep(PAUSE);
    }

    let mut probe = Samples::default();
    for i in 0..n {
        browser.arm(&format!("{TITLE} === 'probe {i}'"));
        let started = start_in_page(&browser, &format!("document.getElementById('title').textContent = 'probe {i}';"));
        probe.add(started, browser.seen("the probe's own change"));
    }

    println!("relive serve, save → browser, {n} saves each (release build; load average before: {load})");
    println!("{:<44} {:>8} {:>8} {:>8}   on screen (next frame) p50", "", "p50", "p99", "max");
    css.print("CSS save → computed style (no reload)");
    css_floor.print("  floor: the page links a stylesheet itself");
    template.print("template save → new page's DOM");
    template_floor.print("  floor: the page reloads itself");
    probe.print("probe floor: a script's DOM change");
    println!(
        "ratio save/floor at p50: CSS {:.2}, template {:.2}",
        css.p50() / css_floor.p50(),
        template.p50() / template_floor.p50()
    );
    println!("where the time goes, p50 (ms):");
    println!("  CSS       save → message in page {:>6.1}, → style {:>6.1}", css.p50_of(|s| s.message), css.rest());
    println!(
        "  template  save → message in page {:>6.1}, → navigation {:>6.1}, → HTML in {:>6.1}, → DOM {:>6.1}",
        template.p50_of(|s| s.message),
        template.p50_of(|s| s.navigation) - template.p50_of(|s| s.message),
        template.p50_of(|s| s.response) - template.p50_of(|s| s.navigation),
        template.p50() - template.p50_of(|s| s.response),
    );
    println!("load average after: {}", load_average());
}

/// Changes style, content and the page once each, unmeasured.
fn warm_up(ws: &Workspace, browser: &Browser) {
    browser.arm(&format!("{BACKGROUND} === 'rgb(0, 0, 1)'"));
    ws.write("static/app.css", &stylesheet((0, 0, 1)));
    browser.seen("the warm-up background");
    browser.arm(&format!("{TITLE} === 'Version 1 Warm'"));
    ws.write("config/site.toml", "title = \"Warm\"\n");
    browser.seen("the warm-up title");
    browser.wait_connected();
    browser.arm(&format!("{TITLE} === 'Version 1 Demo'"));
    ws.write("config/site.toml", "title = \"Demo\"\n");
    browser.seen("the warm-up title");
    browser.wait_connected();
    std::thread::sleep(PAUSE);
}

/// Runs `action` in the page, after taking its start time there; returns it.
fn start_in_page(browser: &Browser, action: &str) -> f64 {
    let started = browser.run(&format!("const t = Date.now(); {action} return t;")).expect("run in the page");
    started.as_f64().expect("a start time")
}

#[derive(Default)]
struct Samples {
    /// (start, what was seen when), in epoch ms.
    all: Vec<(f64, Seen)>,
}

impl Samples {
    fn add(&mut self, start: f64, seen: Seen) {
        self.all.push((start, seen));
    }

    fn sorted(&self, f: impl Fn(f64, &Seen) -> Option<f64>) -> Vec<f64> {
        let mut v: Vec<f64> = self.all.iter().filter_map(|(start, seen)| f(*start, seen)).collect();
        v.sort_by(f64::total_cmp);
        v
    }

    fn p50(&self) -> f64 {
        percentile(&self.sorted(|start, s| Some(s.at - start)), 0.5)
    }

    fn p50_of(&self, f: impl Fn(&Seen) -> Option<f64>) -> f64 {
        percentile(&self.sorted(|start, s| f(s).map(|t| t - start)), 0.5)
    }

    /// From the message to the change, p50.
    fn rest(&self) -> f64 {
        percentile(&self.sorted(|_, s| s.message.map(|m| s.at - m)), 0.5)
    }

    fn print(&self, label: &str) {
        let v = self.sorted(|start, s| Some(s.at - start));
        let frame = self.sorted(|start, s| Some(s.frame - start));
        println!(
            "{label:<44} {:>5.1} ms {:>5.1} ms {:>5.1} ms   {:>5.1} ms",
            percentile(&v, 0.5),
            percentile(&v, 0.99),
            v.last().copied().unwrap_or(f64::NAN),
            percentile(&frame, 0.5)
        );
    }
}

/// The nearest-rank percentile of sorted `v`.
fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = (p * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_string())
}
