//! The browser side: the client script, and putting it into pages.

use crate::error::TemplateError;

/// The client script served at `/livereload.js`: LiveReload `official-7`
/// over a WebSocket at `/livereload`, Server-Sent Events at
/// `/livereload/events` where WebSockets fail. It swaps stylesheets in
/// place on a `liveCSS` reload, reloads the page on any other, shows an
/// overlay on an `alert` until the next reload, and reconnects with backoff.
pub const CLIENT_JS: &str = include_str!("client.js");

/// The tag [`inject`] adds.
pub const SCRIPT_TAG: &str = r#"<script src="/livereload.js" async></script>"#;

/// `html` with [`SCRIPT_TAG`] before its last `</body>` (matched in any
/// case), or at the end if it has none. HTML that has the tag already is
/// returned as it is.
pub fn inject(html: &str) -> String {
    if html.contains(SCRIPT_TAG) {
        return html.to_string();
    }
    insert_before_body_end(html, SCRIPT_TAG)
}

/// Like [`inject`], with the tag stamped with `changes`, what
/// [`ReloadHub::changes`](crate::ReloadHub::changes) said *before* the page
/// was rendered: `<script src="/livereload.js" async
/// data-relive-changes="12"></script>`. The client sends the stamp when it
/// connects, and the hub tells a page that missed changes while it loaded
/// to reload. HTML that has [`SCRIPT_TAG`] (as [`error_page`] does) gets
/// its last one stamped.
pub fn inject_at(html: &str, changes: u64) -> String {
    let tag = format!(r#"<script src="/livereload.js" async data-relive-changes="{changes}"></script>"#);
    match html.rfind(SCRIPT_TAG) {
        Some(at) => format!("{}{tag}{}", &html[..at], &html[at + SCRIPT_TAG.len()..]),
        None => insert_before_body_end(html, &tag),
    }
}

/// `html` with `tag` before its last `</body>` (in any case), or at the end.
fn insert_before_body_end(html: &str, tag: &str) -> String {
    let at = rfind_ascii_case_insensitive(html, "</body>").unwrap_or(html.len());
    let mut out = String::with_capacity(html.len() + tag.len());
    out.push_str(&html[..at]);
    out.push_str(tag);
    out.push_str(&html[at..]);
    out
}

/// The id of the element in which [`error_page`] puts its error; the
/// client shows its text as the overlay.
pub const PAGE_ERROR_ID: &str = "relive-page-error";

/// A page for a template that failed to render: the error, located, shown
/// by the client as the same overlay as a syntax error (and as plain text
/// without JavaScript), with the client injected so that the fix reloads
/// the page. Serve it with status 500.
pub fn error_page(error: &TemplateError) -> String {
    inject(&format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>template error</title></head>\n\
         <body><pre id=\"{PAGE_ERROR_ID}\">{}</pre></body></html>\n",
        escape_html(&alert_text(error))
    ))
}

/// A template error as browsers are shown it:
/// `templates/<name>:<line>:<column>: <message>`.
pub(crate) fn alert_text(error: &TemplateError) -> String {
    format!("templates/{}:{}:{}: {}", error.name, error.line, error.column, error.message)
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn rfind_ascii_case_insensitive(haystack: &str, needle: &str) -> Option<usize> {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    (0..=h.len().checked_sub(n.len())?).rev().find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inject_puts_the_script_before_the_closing_body() {
        assert_eq!(
            inject("<html><body><p>hi</p></body></html>"),
            format!("<html><body><p>hi</p>{SCRIPT_TAG}</body></html>")
        );
    }

    #[test]
    fn inject_matches_the_last_body_in_any_case() {
        let html = "<BODY><pre>&lt;/body&gt; </body> in text</pre></Body >\n</BODY>\n";
        assert_eq!(
            inject(html),
            format!("<BODY><pre>&lt;/body&gt; </body> in text</pre></Body >\n{SCRIPT_TAG}</BODY>\n")
        );
    }

    #[test]
    fn inject_appends_when_there_is_no_body() {
        assert_eq!(inject("<p>fragment"), format!("<p>fragment{SCRIPT_TAG}"));
        assert_eq!(inject(""), SCRIPT_TAG);
        assert_eq!(inject("é</bod"), format!("é</bod{SCRIPT_TAG}"));
    }

    #[test]
    fn inject_is_idempotent() {
        let once = inject("<body></body>");
        assert_eq!(inject(&once), once);
    }

    #[test]
    fn inject_at_stamps_the_tag_with_the_change_count() {
        let stamped = r#"<script src="/livereload.js" async data-relive-changes="12"></script>"#;
        assert_eq!(inject_at("<body><p>x</p></BODY>", 12), format!("<body><p>x</p>{stamped}</BODY>"));
        assert_eq!(inject_at(&inject("<body></body>"), 12), format!("<body>{stamped}</body>"));
        assert!(CLIENT_JS.contains("data-relive-changes") && CLIENT_JS.contains("reliveChanges"));
    }

    #[test]
    fn an_error_page_carries_the_located_error_escaped_and_the_client() {
        let error = TemplateError {
            name: "a/b.html".into(),
            file: "/ws/templates/a/b.html".into(),
            line: 3,
            column: 7,
            message: "invalid operation: <script> & \"x\"".into(),
        };
        let page = error_page(&error);
        let expected = format!(
            "<pre id=\"{PAGE_ERROR_ID}\">templates/a/b.html:3:7: invalid operation: &lt;script&gt; &amp; &quot;x&quot;</pre>"
        );
        assert!(page.contains(&expected), "{page}");
        assert!(page.contains(&format!("{SCRIPT_TAG}</body>")), "{page}");
        assert!(!page.contains("<script>"), "{page}");
        assert!(CLIENT_JS.contains(&format!("\"{PAGE_ERROR_ID}\"")), "the client looks for the error");
    }

    #[test]
    fn the_client_speaks_official_7_and_knows_every_endpoint() {
        for needle in [
            "http://livereload.com/protocols/official-7",
            "\"/livereload\"",
            "\"/livereload/events\"",
            "EventSource",
            "liveCSS",
            "location.reload()",
            "\"alert\"",
        ] {
            assert!(CLIENT_JS.contains(needle), "{needle}");
        }
    }
}
