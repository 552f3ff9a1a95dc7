//! The reload hub: what a change means for browsers, and the LiveReload
//! (`official-7`) and Server-Sent Events endpoints that tell them.
//!
//! Changes come in as [`Change`]s (from [`Templates`](crate::Templates),
//! [`Assets`](crate::Assets) and the engine's config events, each *after*
//! the new state is live, so a browser that reloads gets it). The
//! [`BurstCoalescer`] folds a burst of them into one [`Message`]: a change to CSS
//! alone is swapped in place (`liveCSS`); any other change reloads the page.
//! Template errors (and whatever else a server wants to show, see
//! [`ReloadHub::alert`]) are pushed at once as an `alert`, and the reload
//! that follows the fix clears it.
//!
//! Three rooms, each in its file:
//!
//! - `coalesce.rs`: the [`BurstCoalescer`], a pure state machine with an
//!   injected clock. How long a change waits for the rest of its burst, and
//!   why, is on it.
//! - `hub.rs`: the [`ReloadHub`], which takes changes in (counting them),
//!   runs the coalescer on a task, keeps the standing alerts, and
//!   broadcasts the messages.
//! - `transport.rs`: [`router`], which serves it all with axum:
//!
//! | route | what |
//! | --- | --- |
//! | `GET /livereload` | WebSocket, LiveReload protocol `official-7`: the browser extensions work |
//! | `GET /livereload/events` | Server-Sent Events carrying the same JSON, for where WebSockets are blocked |
//! | `GET /livereload.js` | the client script (see [`inject`](crate::inject)) |

use serde::Serialize;

mod coalesce;
mod hub;
mod transport;

pub use coalesce::BurstCoalescer;

/// The old name of [`BurstCoalescer`].
#[deprecated(note = "renamed BurstCoalescer: relive's core has a coalescer of its own (when a file is ready to read)")]
pub type Coalescer = BurstCoalescer;
pub use hub::ReloadHub;
pub use transport::{PROTOCOL_OFFICIAL_7, router};

/// A change that browsers should see.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// A static asset changed; `url` is its logical URL (`/static/app.css`).
    /// CSS is swapped in place; anything else reloads the page.
    Asset {
        /// The asset's logical URL.
        url: String,
    },
    /// The templates were rebuilt. `name` is a template or a description.
    Template {
        /// What changed.
        name: String,
    },
    /// A config has a new value.
    Config {
        /// The config's name.
        name: String,
    },
}

impl Change {
    /// The stylesheet URL, if this change can be swapped in place.
    fn css(&self) -> Option<&str> {
        match self {
            Change::Asset { url } if url.to_ascii_lowercase().ends_with(".css") => Some(url),
            _ => None,
        }
    }

    /// The path a full reload names (LiveReload clients only log it).
    fn path(&self) -> String {
        match self {
            Change::Asset { url } => url.clone(),
            Change::Template { name } => format!("templates/{name}"),
            Change::Config { name } => format!("config/{name}"),
        }
    }
}

/// A message to browsers, as LiveReload `official-7` JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "command", rename_all = "lowercase")]
#[non_exhaustive]
pub enum Message {
    /// Reload: swap the stylesheet `path` in place if `live_css`, else
    /// reload the page. A `path` that matches no stylesheet (`*.css`, for
    /// several at once) swaps them all.
    Reload {
        /// What changed.
        path: String,
        /// Whether a CSS swap is enough.
        #[serde(rename = "liveCSS")]
        live_css: bool,
        /// Always false: an image change reloads the page too.
        #[serde(rename = "liveImg")]
        live_img: bool,
    },
    /// Show `message` (relive's client: an overlay; the extensions: an
    /// alert) until the next reload. Sent for a template error, and for
    /// whatever a server shows with [`ReloadHub::alert`].
    Alert {
        /// `templates/<name>:<line>:<column>: <message>`.
        message: String,
    },
}

impl Message {
    /// A full page reload naming `path`.
    pub fn full_reload(path: impl Into<String>) -> Message {
        Message::Reload { path: path.into(), live_css: false, live_img: false }
    }

    /// The JSON text sent over the wire.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("messages serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live_css(path: &str) -> Message {
        Message::Reload { path: path.to_string(), live_css: true, live_img: false }
    }

    #[test]
    fn messages_are_livereload_json() {
        assert_eq!(
            live_css("/static/app.css").to_json(),
            r#"{"command":"reload","path":"/static/app.css","liveCSS":true,"liveImg":false}"#
        );
        assert_eq!(Message::Alert { message: "x".into() }.to_json(), r#"{"command":"alert","message":"x"}"#);
    }
}
