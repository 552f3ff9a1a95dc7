//! The burst coalescer: a pure state machine that folds a burst of
//! [`Change`]s into one [`Message`], fed by a clock it never reads.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::{Change, Message};

/// Folds a burst of [`Change`]s into one [`Message`].
///
/// A pure state machine: it never reads the clock, every call takes `now`.
/// A burst opens with a change when none is pending. It closes
/// `first_quiet` after that change if no other came; once a second change
/// came, when no change came for `quiet`; and at the latest `max` after it
/// opened (so a steady stream still gets through). With `leading_css`, a
/// stylesheet change that opens a burst is also sent at once.
///
/// # Latency against bursts
///
/// A burst (a "save all", a `git checkout`, a build writing its output) must
/// give one page reload, not one per file; so a reload waits until changes
/// stop. Every millisecond of that wait is latency for the common case, a
/// single save, and the core engine already folds the events of one file
/// into one change. So the wait is short and grows only when a burst shows
/// itself (the defaults, [`BurstCoalescer::default`]):
///
/// - A change with nothing pending opens a burst that closes 10 ms later.
///   Editors, `git` and build tools write the files of a burst back to back,
///   well within that.
/// - A second change within it proves a burst: from then on the burst closes
///   only after 30 ms without a change, and at the latest 200 ms after it
///   opened, so that a steady stream still gets through.
/// - A stylesheet change with nothing pending is swapped at once (the
///   *leading edge*), before its burst closes. Swapping a stylesheet twice is
///   harmless and keeps the page's state, so if the burst brings more CSS
///   it is swapped again when the burst closes, and if it brings anything
///   else the page reloads then, once.
///
/// The price: two changes more than 10 ms apart are two bursts (two messages),
/// and a CSS save followed by a template save within the window swaps the
/// stylesheet and then reloads. Measured in headless Chromium
/// (`cargo bench -p relive-cli --bench browser`, release, a quiet 2-core
/// machine), a CSS save is in the page's computed style 4 ms after the save
/// at the median (the page linking a stylesheet itself takes 3 ms), and a
/// template save in the new page's DOM after 33 ms (a bare page reload
/// takes 23 ms: the rest is this 10 ms window and the engine). With a
/// plain 30 ms window it was 35 ms for CSS and 56 ms for a template.
#[derive(Debug, Clone)]
pub struct BurstCoalescer {
    first_quiet: Duration,
    quiet: Duration,
    max: Duration,
    leading_css: bool,
    pending: Option<Pending>,
}

#[derive(Debug, Clone)]
struct Pending {
    first: Instant,
    last: Instant,
    /// How many changes the burst has had, the leading one included.
    changes: usize,
    css: BTreeSet<String>,
    /// The first change that needs a page reload.
    full: Option<String>,
}

impl Default for BurstCoalescer {
    /// A burst closes 10 ms after its first change if it stays alone, else
    /// after 30 ms of quiet, at most 200 ms after it opened; stylesheets are
    /// swapped on the leading edge.
    fn default() -> BurstCoalescer {
        BurstCoalescer::new(Duration::from_millis(30), Duration::from_millis(200))
            .with_first_quiet(Duration::from_millis(10))
    }
}

impl BurstCoalescer {
    /// A coalescer whose bursts close after `quiet` without a change, and at
    /// most `max` after they opened; stylesheets are swapped on the leading
    /// edge.
    pub fn new(quiet: Duration, max: Duration) -> BurstCoalescer {
        BurstCoalescer { first_quiet: quiet, quiet, max: max.max(quiet), leading_css: true, pending: None }
    }

    /// A burst that has had one change closes after `first_quiet` (at most
    /// `quiet`) rather than `quiet`: a lone save is sent sooner, and a burst
    /// that shows itself within `first_quiet` still gets the longer wait.
    pub fn with_first_quiet(mut self, first_quiet: Duration) -> BurstCoalescer {
        self.first_quiet = first_quiet.min(self.quiet);
        self
    }

    /// Whether a stylesheet change that opens a burst is sent at once, as
    /// well as being part of the burst (default: yes).
    pub fn with_leading_css(mut self, leading_css: bool) -> BurstCoalescer {
        self.leading_css = leading_css;
        self
    }

    /// Takes in a change seen at `now`. Returns a message to send now: a
    /// stylesheet swap, when `change` is a stylesheet that opens a burst and
    /// leading CSS is on.
    pub fn push(&mut self, change: &Change, now: Instant) -> Option<Message> {
        match &mut self.pending {
            Some(pending) => {
                pending.changes += 1;
                pending.last = pending.last.max(now);
            }
            None => {
                self.pending = Some(Pending { first: now, last: now, changes: 1, css: BTreeSet::new(), full: None });
                if let (true, Some(url)) = (self.leading_css, change.css()) {
                    // Sent now: the burst collects only what comes after it.
                    return Some(live_css(url.to_string()));
                }
            }
        }
        let pending = self.pending.as_mut().expect("a burst is open");
        match change.css() {
            Some(url) => {
                pending.css.insert(url.to_string());
            }
            None => {
                pending.full.get_or_insert_with(|| change.path());
            }
        }
        None
    }

    /// When the open burst closes, if one is open.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| {
            let quiet = if p.changes > 1 { self.quiet } else { self.first_quiet };
            (p.last + quiet).min(p.first + self.max)
        })
    }

    /// Closes the burst if its deadline is at or before `now`, and returns
    /// its message, if it has one (a burst opened by a stylesheet sent on
    /// the leading edge has none unless more came).
    pub fn poll(&mut self, now: Instant) -> Option<Message> {
        if self.deadline()? > now {
            return None;
        }
        let pending = self.pending.take()?;
        match (pending.full, pending.css.len()) {
            (Some(path), _) => Some(Message::full_reload(path)),
            (None, 0) => None,
            (None, 1) => Some(live_css(pending.css.into_iter().next().expect("one"))),
            (None, _) => Some(live_css("*.css".to_string())),
        }
    }
}

fn live_css(path: String) -> Message {
    Message::Reload { path, live_css: true, live_img: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn css(url: &str) -> Change {
        Change::Asset { url: url.to_string() }
    }

    fn live_css(path: &str) -> Message {
        Message::Reload { path: path.to_string(), live_css: true, live_img: false }
    }

    fn template(name: &str) -> Change {
        Change::Template { name: name.to_string() }
    }

    #[test]
    fn a_lone_css_save_is_swapped_at_once_and_its_burst_closes_with_nothing_more() {
        let t0 = Instant::now();
        let mut c = BurstCoalescer::default();
        assert_eq!(c.deadline(), None);
        assert_eq!(c.poll(t0), None);
        assert_eq!(c.push(&css("/static/app.css"), t0), Some(live_css("/static/app.css")));
        assert_eq!(c.deadline(), Some(t0 + ms(10)));
        assert_eq!(c.poll(t0 + ms(10)), None, "already sent");
        assert_eq!(c.deadline(), None);
    }

    #[test]
    fn without_leading_css_a_stylesheet_waits_for_its_burst() {
        let t0 = Instant::now();
        let mut c = BurstCoalescer::new(ms(30), ms(200)).with_leading_css(false);
        assert_eq!(c.push(&css("/static/app.css"), t0), None);
        assert_eq!(c.deadline(), Some(t0 + ms(30)));
        assert_eq!(c.poll(t0 + ms(29)), None);
        assert_eq!(c.poll(t0 + ms(30)), Some(live_css("/static/app.css")));
        assert_eq!(c.poll(t0 + ms(60)), None, "one message per burst");
    }

    #[test]
    fn a_lone_template_save_reloads_after_the_first_quiet() {
        let t0 = Instant::now();
        let mut c = BurstCoalescer::default();
        assert_eq!(c.push(&template("index.html"), t0), None);
        assert_eq!(c.poll(t0 + ms(9)), None);
        assert_eq!(c.poll(t0 + ms(10)), Some(Message::full_reload("templates/index.html")));
        assert_eq!(c.deadline(), None);
    }

    #[test]
    fn a_burst_is_one_reload_and_waits_the_longer_quiet_once_it_shows() {
        let t0 = Instant::now();
        let mut c = BurstCoalescer::default();
        assert_eq!(c.push(&template("index.html"), t0), None);
        assert_eq!(c.push(&css("/static/app.css"), t0 + ms(5)), None, "no leading edge inside a burst");
        assert_eq!(c.push(&Change::Config { name: "site".into() }, t0 + ms(14)), None);
        assert_eq!(c.push(&css("/static/app.css"), t0 + ms(40)), None);
        assert_eq!(c.poll(t0 + ms(69)), None, "the 30 ms quiet restarts with each change");
        assert_eq!(c.poll(t0 + ms(70)), Some(Message::full_reload("templates/index.html")));
        assert_eq!(c.poll(t0 + ms(500)), None);
    }

    #[test]
    fn a_burst_opened_by_css_swaps_it_at_once_then_reloads_once() {
        let t0 = Instant::now();
        let mut c = BurstCoalescer::default();
        assert_eq!(c.push(&css("/static/app.css"), t0), Some(live_css("/static/app.css")));
        assert_eq!(c.push(&template("index.html"), t0 + ms(3)), None);
        assert_eq!(c.push(&css("/static/app.css"), t0 + ms(4)), None);
        assert_eq!(c.poll(t0 + ms(33)), None);
        assert_eq!(c.poll(t0 + ms(34)), Some(Message::full_reload("templates/index.html")));
        assert_eq!(c.poll(t0 + ms(500)), None);
    }

    #[test]
    fn several_stylesheets_are_one_swap_of_all() {
        let t0 = Instant::now();
        let mut c = BurstCoalescer::new(ms(30), ms(200)).with_leading_css(false);
        c.push(&css("/static/a.css"), t0);
        c.push(&css("/static/B.CSS"), t0 + ms(1));
        assert_eq!(c.poll(t0 + ms(31)), Some(live_css("*.css")));

        // With the leading edge: the first now, the rest when the burst closes.
        let mut c = BurstCoalescer::default();
        assert_eq!(c.push(&css("/static/a.css"), t0), Some(live_css("/static/a.css")));
        c.push(&css("/static/b.css"), t0 + ms(1));
        c.push(&css("/static/c.css"), t0 + ms(2));
        assert_eq!(c.poll(t0 + ms(32)), Some(live_css("*.css")));
    }

    #[test]
    fn other_assets_reload_the_page() {
        let t0 = Instant::now();
        let mut c = BurstCoalescer::default();
        assert_eq!(c.push(&css("/static/img/logo.png"), t0), None);
        c.push(&css("/static/app.css"), t0);
        assert_eq!(c.poll(t0 + ms(30)), Some(Message::full_reload("/static/img/logo.png")));
    }

    #[test]
    fn the_first_quiet_is_never_longer_than_the_quiet() {
        let t0 = Instant::now();
        let mut c = BurstCoalescer::new(ms(5), ms(200)).with_first_quiet(ms(50));
        c.push(&template("a.html"), t0);
        assert_eq!(c.deadline(), Some(t0 + ms(5)));
    }

    #[test]
    fn a_steady_stream_still_gets_a_message_at_the_ceiling() {
        let t0 = Instant::now();
        let mut c = BurstCoalescer::new(ms(30), ms(100));
        let mut now = t0;
        let mut sent = Vec::new();
        for _ in 0..20 {
            sent.extend(c.push(&template("a.html"), now));
            now += ms(10);
            sent.extend(c.poll(now));
        }
        // 200 ms of changes every 10 ms: one message per 100 ms ceiling.
        assert_eq!(sent, vec![Message::full_reload("templates/a.html"); 2]);
    }
}
