//! `--webhook URL`: POSTs every event as JSON, with retries and exponential
//! backoff, like Kubernetes' configmap-reload.
//!
//! Deliveries run on a thread of their own, one at a time and in order,
//! fed through a bounded queue: the event loop only enqueues and never
//! waits. When the endpoint is down long enough for the queue to fill,
//! new events are dropped (and counted) rather than held.

use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::time::Duration;

use crate::backoff::{Backoff, Outcome, outcome};
use crate::output;

/// How many events wait for delivery before new ones are dropped.
const QUEUE: usize = 1024;

/// A webhook's delivery thread.
pub struct Webhook {
    url: String,
    tx: SyncSender<Vec<u8>>,
    thread: std::thread::JoinHandle<()>,
}

/// Checks that `url` is an `http://` (or, with the `tls` feature,
/// `https://`) URL with a host.
pub fn parse_url(url: &str) -> Result<String, String> {
    let uri: ureq::http::Uri = url.parse().map_err(|e| format!("invalid webhook URL `{url}`: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") if cfg!(feature = "tls") => {}
        Some("https") => return Err(format!("`{url}`: this relive was built without the `tls` feature")),
        _ => return Err(format!("invalid webhook URL `{url}`: use http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("invalid webhook URL `{url}`: no host"));
    }
    Ok(url.to_string())
}

impl Webhook {
    /// Starts delivering to `url`.
    pub fn start(url: String, backoff: Backoff, timeout: Duration) -> std::io::Result<Webhook> {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .user_agent(concat!("relive/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let target = url.clone();
        let thread = std::thread::Builder::new().name("relive-webhook".into()).spawn(move || {
            for body in rx {
                deliver(&agent, &target, &body, &backoff);
            }
        })?;
        Ok(Webhook { url, tx, thread })
    }

    /// Stops taking events and gives the queued ones until `deadline` to
    /// be delivered; whatever is left then is dropped.
    pub async fn finish(self, deadline: tokio::time::Instant) {
        let Webhook { url, tx, thread } = self;
        drop(tx);
        while !thread.is_finished() {
            if tokio::time::Instant::now() >= deadline {
                output::warn(&format!("webhook {url}: exiting with events undelivered"));
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Queues one event (a JSON document) without waiting.
    pub fn send(&self, body: Vec<u8>) {
        match self.tx.try_send(body) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                metrics::counter!("relive_webhook_deliveries_total", "result" => "dropped").increment(1);
                output::warn(&format!("webhook {}: queue full, event dropped", self.url));
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// One event, tried until delivered, refused, or out of retries.
fn deliver(agent: &ureq::Agent, url: &str, body: &[u8], backoff: &Backoff) {
    let mut retry = 0;
    loop {
        let failure = match agent.post(url).header("content-type", "application/json").send(body) {
            Ok(response) => {
                let status = response.status().as_u16();
                match outcome(status) {
                    Outcome::Done => {
                        metrics::counter!("relive_webhook_deliveries_total", "result" => "delivered").increment(1);
                        return;
                    }
                    Outcome::GiveUp => {
                        metrics::counter!("relive_webhook_deliveries_total", "result" => "failed").increment(1);
                        output::warn(&format!("webhook {url}: HTTP {status}; not retrying"));
                        return;
                    }
                    Outcome::Retry => format!("HTTP {status}"),
                }
            }
            Err(e) => e.to_string(),
        };
        retry += 1;
        match backoff.delay(retry) {
            Some(delay) => {
                metrics::counter!("relive_webhook_retries_total").increment(1);
                std::thread::sleep(delay);
            }
            None => {
                metrics::counter!("relive_webhook_deliveries_total", "result" => "failed").increment(1);
                output::warn(&format!("webhook {url}: {failure}; giving up after {retry} attempts"));
                return;
            }
        }
    }
}
