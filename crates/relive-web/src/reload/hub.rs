//! The hub: takes changes in and counts them, times their bursts with a
//! [`BurstCoalescer`] on a task, keeps the standing alerts by source, and
//! broadcasts the messages to every connected browser.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::{broadcast, mpsc, watch};

use super::{BurstCoalescer, Change, Message};
use crate::access::Access;
use crate::assets::Assets;
use crate::templates::Templates;

/// Decides what changes mean for browsers and tells every connected one.
///
/// Clones share one hub. Create it inside a tokio runtime: it runs a task
/// that times bursts.
#[derive(Clone, Debug)]
pub struct ReloadHub {
    inner: Arc<HubInner>,
}

#[derive(Debug)]
struct HubInner {
    changes: mpsc::UnboundedSender<Change>,
    messages: broadcast::Sender<Message>,
    /// The standing alerts, by source.
    alerts: watch::Sender<BTreeMap<String, String>>,
    /// How many changes have been taken in (see [`ReloadHub::changes`]).
    taken: AtomicU64,
    /// Who may use the hub's routes (see [`ReloadHub::set_access`]).
    access: ArcSwap<Access>,
}

impl Default for ReloadHub {
    fn default() -> ReloadHub {
        ReloadHub::new()
    }
}

impl ReloadHub {
    /// A hub with the default burst timing ([`BurstCoalescer::default`]).
    pub fn new() -> ReloadHub {
        ReloadHub::with_coalescer(BurstCoalescer::default())
    }

    /// A hub that times bursts with `coalescer`.
    pub fn with_coalescer(mut coalescer: BurstCoalescer) -> ReloadHub {
        let (changes, mut rx) = mpsc::unbounded_channel::<Change>();
        let (messages, _) = broadcast::channel(64);
        let tx = messages.clone();
        tokio::spawn(async move {
            loop {
                let deadline = coalescer.deadline();
                let sleep = async {
                    match deadline {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    change = rx.recv() => match change {
                        Some(change) => {
                            if let Some(message) = coalescer.push(&change, Instant::now()) {
                                tracing::debug!(message = %message.to_json(), "live reload (leading edge)");
                                let _ = tx.send(message);
                            }
                        }
                        None => break,
                    },
                    () = sleep => {
                        if let Some(message) = coalescer.poll(Instant::now()) {
                            tracing::debug!(message = %message.to_json(), "live reload");
                            let _ = tx.send(message);
                        }
                    }
                }
            }
        });
        ReloadHub {
            inner: Arc::new(HubInner {
                changes,
                messages,
                alerts: watch::Sender::new(BTreeMap::new()),
                taken: AtomicU64::new(0),
                access: ArcSwap::from_pointee(Access::default()),
            }),
        }
    }

    /// Takes in a change; browsers hear of it when its burst ends.
    pub fn notify(&self, change: Change) {
        self.inner.taken.fetch_add(1, Ordering::SeqCst);
        let _ = self.inner.changes.send(change);
    }

    /// How many changes the hub has taken in. Read it *before* rendering a
    /// page and put it in the page with [`inject_at`](crate::inject_at): a
    /// client that connects from a page older than the hub's count is told
    /// to reload at once. Without it, a change made while a page reloads
    /// (after its HTML was rendered, before its client connected) would
    /// reach no browser, and the page would stay stale.
    pub fn changes(&self) -> u64 {
        self.inner.taken.load(Ordering::SeqCst)
    }

    /// Sets who may use the live reload routes of [`router`](crate::router)
    /// mounted with this hub or any of its clones, from their next request:
    /// the hosts they answer for and the origins their streams accept.
    /// The default is [`Access::loopback`]: a server reached under another
    /// name (a LAN address, a name in `/etc/hosts`) must allow it here, or
    /// its pages get no live reload (421 for the script and the streams).
    pub fn set_access(&self, access: Access) {
        self.inner.access.store(Arc::new(access));
    }

    /// Who may use the live reload routes now (see [`set_access`](ReloadHub::set_access)).
    pub fn access(&self) -> Arc<Access> {
        self.inner.access.load_full()
    }

    /// Whether a page stamped with `page` changes has missed some.
    pub(super) fn is_stale(&self, page: Option<u64>) -> bool {
        page.is_some_and(|page| page < self.changes())
    }

    /// Sets the alert of `source` (`templates`, `config/site`, any name) to
    /// `message`, or with `None` withdraws it. Browsers show every standing
    /// alert at once, in the order of their sources: each change is sent to
    /// every browser now (and the standing ones to every browser that
    /// connects), except that withdrawing the last one sends nothing: the
    /// next reload clears the page.
    pub fn alert(&self, source: &str, message: Option<String>) {
        let mut combined = None;
        self.inner.alerts.send_if_modified(|alerts| {
            let changed = match &message {
                Some(message) => alerts.insert(source.to_string(), message.clone()).as_ref() != Some(message),
                None => alerts.remove(source).is_some(),
            };
            if changed {
                combined = combine(alerts);
            }
            changed
        });
        if let Some(message) = combined {
            let _ = self.inner.messages.send(Message::Alert { message });
        }
    }

    /// The standing alerts, as one message, if any stands.
    pub fn current_alert(&self) -> Option<String> {
        combine(&self.inner.alerts.borrow())
    }

    /// Every message from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Message> {
        self.inner.messages.subscribe()
    }

    /// Reloads pages when `templates` are rebuilt, and alerts while they
    /// have an error. Runs until the templates or the hub are dropped.
    pub fn follow_templates(&self, templates: &Templates) {
        let weak = Arc::downgrade(&self.inner);
        let mut status = templates.subscribe();
        let alert_of = |s: &crate::templates::TemplateStatus| s.error.as_ref().map(crate::client::alert_text);
        // An error that stands already is shown to the browsers that connect.
        let mut generation = {
            let s = status.borrow_and_update();
            self.alert(TEMPLATES_ALERT, alert_of(&s));
            s.generation
        };
        tokio::spawn(async move {
            while status.changed().await.is_ok() {
                let Some(hub) = upgrade(&weak) else { break };
                let (alert, new_generation) = {
                    let s = status.borrow_and_update();
                    (alert_of(&s), s.generation)
                };
                hub.alert(TEMPLATES_ALERT, alert);
                if new_generation != generation {
                    generation = new_generation;
                    hub.notify(Change::Template { name: "*".to_string() });
                }
            }
        });
    }

    /// Swaps stylesheets and reloads pages when `assets` change (after the
    /// manifest has the change). Runs until the assets or the hub are dropped.
    pub fn follow_assets(&self, assets: &Assets) {
        let weak = Arc::downgrade(&self.inner);
        let mut changes = assets.subscribe();
        tokio::spawn(async move {
            loop {
                let change = changes.recv().await;
                let Some(hub) = upgrade(&weak) else { break };
                match change {
                    Ok(change) => hub.notify(Change::Asset { url: change.url() }),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        hub.notify(Change::Asset { url: "*".to_string() });
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }

    /// Reloads pages when a config gets a new value. Runs until the engine
    /// stops or the hub is dropped.
    pub fn follow_configs(&self, manager: &relive::HotReloadManager) {
        let weak = Arc::downgrade(&self.inner);
        let mut events = manager.subscribe();
        tokio::spawn(async move {
            loop {
                let event = events.recv().await;
                let Some(hub) = upgrade(&weak) else { break };
                match event {
                    Ok(relive::ChangeEvent::ConfigChanged { config_name, .. }) => {
                        hub.notify(Change::Config { name: config_name });
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => hub.notify(Change::Config { name: "*".to_string() }),
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }
}

/// The source of the templates' alert (see [`ReloadHub::alert`]).
const TEMPLATES_ALERT: &str = "templates";

/// Every standing alert, one paragraph each.
fn combine(alerts: &BTreeMap<String, String>) -> Option<String> {
    (!alerts.is_empty()).then(|| alerts.values().map(String::as_str).collect::<Vec<_>>().join("\n\n"))
}

fn upgrade(weak: &Weak<HubInner>) -> Option<ReloadHub> {
    weak.upgrade().map(|inner| ReloadHub { inner })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn alerts_from_several_sources_are_shown_together_until_withdrawn() {
        let hub = ReloadHub::new();
        let mut rx = hub.subscribe();
        let alert = |m: &str| Message::Alert { message: m.to_string() };
        hub.alert("templates", Some("T".into()));
        assert_eq!(rx.try_recv().ok(), Some(alert("T")));
        hub.alert("config/site", Some("C".into()));
        assert_eq!(rx.try_recv().ok(), Some(alert("C\n\nT")), "every standing alert, by source");
        hub.alert("config/site", Some("C".into()));
        assert!(rx.try_recv().is_err(), "the same alert again sends nothing");
        assert_eq!(hub.current_alert().as_deref(), Some("C\n\nT"));
        hub.alert("templates", None);
        assert_eq!(rx.try_recv().ok(), Some(alert("C")), "what still stands replaces it");
        hub.alert("templates", None);
        hub.alert("config/site", None);
        assert!(rx.try_recv().is_err(), "the last one withdrawn: the next reload clears the page");
        assert_eq!(hub.current_alert(), None);
    }
}
