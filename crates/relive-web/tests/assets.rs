//! Static assets: every way out of `static/` is refused, with real files
//! and symlinks; the manifest follows content through the real engine.

// Symlinks out of static/ are made here as Unix makes them (Windows needs
// privileges for them).
#![cfg(unix)]

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use relive_web::{Assets, CacheControl, Error, resolve};

/// `<tmp>/secret.txt` outside, and a workspace `<tmp>/ws` whose `static/`
/// has files, a directory, a hidden file and symlinks in and out.
fn layout() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    std::fs::write(t.join("secret.txt"), "secret").unwrap();
    std::fs::create_dir_all(t.join("ws/static/css")).unwrap();
    std::fs::write(t.join("ws/static/app.css"), "body { color: red }").unwrap();
    std::fs::write(t.join("ws/static/css/site.css"), "h1 {}").unwrap();
    std::fs::write(t.join("ws/static/sp ace.txt"), "space").unwrap();
    std::fs::write(t.join("ws/static/.env"), "TOKEN=1").unwrap();
    symlink(t.join("secret.txt"), t.join("ws/static/out.txt")).unwrap();
    symlink("../../secret.txt", t.join("ws/static/rel-out.txt")).unwrap();
    symlink(t, t.join("ws/static/outdir")).unwrap();
    symlink("css/site.css", t.join("ws/static/inside.css")).unwrap();
    symlink(".", t.join("ws/static/loop")).unwrap();
    tmp
}

fn forbidden(root: &Path, request: &str) {
    match resolve(root, request) {
        Err(Error::Forbidden { path, reason }) => assert_eq!(path, request, "{reason}"),
        other => panic!("{request:?} must be forbidden, got {other:?}"),
    }
}

#[test]
fn no_request_escapes_the_static_root() {
    let tmp = layout();
    let root = tmp.path().join("ws/static");
    // The target is really there: a naive join would serve it.
    assert!(root.join("../../secret.txt").is_file());
    for request in [
        "../../secret.txt",
        "css/../../../secret.txt",
        "%2e%2e/%2e%2e/secret.txt",
        "%2E%2E/%2E%2E/secret.txt",
        "%2e%2e%2f%2e%2e%2fsecret.txt",
        "..%2f..%2fsecret.txt",
        "..%2F..%2Fsecret.txt",
        ".%2e/.%2e/secret.txt",
        "css%2f..%2f..%2f..%2fsecret.txt",
        "..\\..\\secret.txt",
        "css\\..\\..\\..\\secret.txt",
        "%5c..%5c..%5csecret.txt",
        "app.css\0.png",
        "app.css%00.png",
        "/etc/passwd",
        "%2fetc%2fpasswd",
        "//etc/passwd",
        "./app.css",
        "css/./site.css",
        "css//site.css",
        ".env",
        "%2eenv",
        "out.txt",
        "rel-out.txt",
        "outdir/secret.txt",
        "app.css%zz",
        "%c0%ae%c0%ae/secret.txt",
    ] {
        forbidden(&root, request);
    }
}

#[test]
fn files_inside_the_root_resolve_to_their_canonical_path() {
    let tmp = layout();
    let root = tmp.path().join("ws/static");
    let real = root.canonicalize().unwrap();
    assert_eq!(resolve(&root, "app.css").unwrap(), real.join("app.css"));
    assert_eq!(resolve(&root, "css/site.css").unwrap(), real.join("css/site.css"));
    assert_eq!(resolve(&root, "css%2Fsite.css").unwrap(), real.join("css/site.css"));
    assert_eq!(resolve(&root, "sp%20ace.txt").unwrap(), real.join("sp ace.txt"));
    // A symlink that stays inside is followed.
    assert_eq!(resolve(&root, "inside.css").unwrap(), real.join("css/site.css"));
    assert_eq!(resolve(&root, "loop/loop/app.css").unwrap(), real.join("app.css"));
    for request in ["missing.css", "css", "css/missing.css", "app.css/x", ""] {
        assert!(matches!(resolve(&root, request), Err(Error::NotFound { .. })), "{request:?}");
    }
    assert!(matches!(resolve(&tmp.path().join("none"), "app.css"), Err(Error::NotFound { .. })));
}

#[test]
fn the_manifest_fingerprints_by_content_and_maps_back() {
    let tmp = layout();
    let root = tmp.path().join("ws/static");
    let assets = Assets::from_dir(&root).unwrap();
    let manifest = assets.manifest();
    let names: Vec<&str> = manifest.iter().map(|(l, _)| l).collect();
    // Hidden files and links out are not assets; the loop is walked once.
    assert_eq!(names, ["app.css", "css/site.css", "inside.css", "sp ace.txt"]);
    let hash = xxhash_rust::xxh3::xxh3_64(b"body { color: red }");
    let fingerprinted = format!("app.{}.css", &format!("{hash:016x}")[..8]);
    assert_eq!(manifest.get("app.css"), Some(fingerprinted.as_str()));
    assert_eq!(assets.url("app.css"), Some(format!("/static/{fingerprinted}")));
    assert_eq!(assets.url("nope.css"), None);

    let by_fingerprint = assets.lookup(&fingerprinted).unwrap();
    assert_eq!(by_fingerprint.logical, "app.css");
    assert_eq!(by_fingerprint.cache, CacheControl::Immutable);
    assert_eq!(by_fingerprint.path, root.canonicalize().unwrap().join("app.css"));
    assert_eq!(by_fingerprint.cache.header_value(), "public, max-age=31536000, immutable");
    let logical = assets.lookup("app.css").unwrap();
    assert_eq!((logical.path, logical.cache), (by_fingerprint.path, CacheControl::NoCache));
    assert!(matches!(assets.lookup("../../secret.txt"), Err(Error::Forbidden { .. })));
    assert!(matches!(assets.lookup("out.txt"), Err(Error::Forbidden { .. })));

    // The same bytes change nothing and say nothing.
    let mut changes = assets.subscribe();
    std::fs::write(root.join("app.css"), "body { color: red }").unwrap();
    assert_eq!(assets.update(&root.join("app.css")).unwrap(), None);
    assert!(changes.try_recv().is_err());
    // New bytes: a new fingerprint, and the old one no longer maps.
    std::fs::write(root.join("app.css"), "body { color: blue }").unwrap();
    let change = assets.update(Path::new("app.css")).unwrap().expect("a change");
    assert_eq!(change, changes.try_recv().unwrap());
    assert_eq!(change.url(), "/static/app.css");
    let new = change.fingerprinted.unwrap();
    assert_ne!(new, fingerprinted);
    assert_eq!(assets.manifest().get("app.css"), Some(new.as_str()));
    assert_eq!(assets.manifest().logical(&fingerprinted), None);
    assert_eq!(assets.lookup(&new).unwrap().cache, CacheControl::Immutable);
    // The old fingerprint still answers, with the file as it is now, never
    // cached for good: livereload-js re-fetches the URL the page links.
    let superseded = assets.lookup(&fingerprinted).unwrap();
    assert_eq!(superseded.logical, "app.css");
    assert_eq!(superseded.cache, CacheControl::NoCache);
    assert_eq!(std::fs::read_to_string(&superseded.path).unwrap(), "body { color: blue }");
    // Gone: no entry, and no fingerprint of it answers.
    std::fs::remove_file(root.join("app.css")).unwrap();
    let gone = assets.update(&root.join("app.css")).unwrap().expect("a change");
    assert_eq!(gone.fingerprinted, None);
    assert_eq!(assets.manifest().get("app.css"), None);
    assert!(matches!(assets.lookup(&fingerprinted), Err(Error::NotFound { .. })));
    assert!(matches!(assets.lookup(&new), Err(Error::NotFound { .. })));
    // A path outside the root is not an asset.
    assert_eq!(assets.update(&tmp.path().join("secret.txt")).unwrap(), None);
}

#[test]
fn a_superseded_fingerprint_goes_through_every_check_of_resolve() {
    let tmp = layout();
    let root = tmp.path().join("ws/static");
    let assets = Assets::from_dir(&root).unwrap();
    let site = assets.manifest().get("css/site.css").unwrap().to_string();
    // Links out are not assets, so no fingerprint of them answers.
    for request in ["out.d3d9000b.txt", "rel-out.d3d9000b.txt", "outdir/secret.d3d9000b.txt"] {
        assert!(assets.lookup(request).is_err(), "{request}");
    }
    // The request itself is checked before any mapping.
    for request in ["css/../css/site.d3d9000b.css", "css%2f..%2fcss%2fsite.d3d9000b.css", ".site.d3d9000b.css"] {
        assert!(matches!(assets.lookup(request), Err(Error::Forbidden { .. })), "{request}");
    }
    assert_eq!(assets.lookup("css%2Fsite.d3d9000b.css").unwrap().logical, "css/site.css");
    // A manifest that has not seen the file turn into a link out yet: the
    // file it maps to is checked again.
    std::fs::remove_file(root.join("css/site.css")).unwrap();
    symlink(tmp.path().join("secret.txt"), root.join("css/site.css")).unwrap();
    assert!(matches!(assets.lookup("css/site.d3d9000b.css"), Err(Error::Forbidden { .. })));
    assert!(matches!(assets.lookup(&site), Err(Error::Forbidden { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_keeps_the_manifest_current_and_ignores_same_byte_saves() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("static")).unwrap();
    let css = tmp.path().join("static/app.css");
    std::fs::write(&css, "a {}").unwrap();
    let ws = relive::Workspace::new(tmp.path());
    let assets = Assets::new(&ws).unwrap();
    let manager = ws.start_hot_reload().await.unwrap();
    let mut changes = assets.subscribe();
    let before = assets.url("app.css").unwrap();

    // Same bytes, then a new file: the first change told is the new file.
    std::fs::write(&css, "a {}").unwrap();
    std::fs::write(tmp.path().join("static/app.js"), "1").unwrap();
    let mut changes_seen = vec![next(&mut changes).await];
    assert_eq!(changes_seen[0].logical, "app.js");
    assert_eq!(assets.url("app.css").unwrap(), before);

    std::fs::write(&css, "a { color: red }").unwrap();
    changes_seen.push(next(&mut changes).await);
    assert_eq!(changes_seen[1].logical, "app.css");
    let after = assets.url("app.css").unwrap();
    assert_ne!(after, before);
    assert_eq!(Some(after.trim_start_matches("/static/")), changes_seen[1].fingerprinted.as_deref());
    manager.shutdown().await.unwrap();
}

async fn next(changes: &mut tokio::sync::broadcast::Receiver<relive_web::AssetChange>) -> relive_web::AssetChange {
    tokio::time::timeout(Duration::from_secs(10), changes.recv()).await.expect("a change in time").unwrap()
}
