//! Who may use a development server: which `Host` names it answers for,
//! and which `Origin`s may open its live reload streams.
//!
//! Two attacks reach a server on 127.0.0.1 from a web page in the
//! developer's own browser:
//!
//! - **DNS rebinding**: a page at `http://attacker.example:8000` has its
//!   name re-resolved to 127.0.0.1, and its scripts then read the dev
//!   server's pages as same-origin. Only the `Host` header tells: it still
//!   says `attacker.example`. So a request is answered only if its `Host`
//!   names an allowed host ([`Access::check_host`]).
//! - **Cross-site WebSocket**: WebSockets (and `EventSource`) are not bound
//!   by the same-origin policy, so any page can connect to
//!   `ws://127.0.0.1:35729/livereload` and read every alert (which carry
//!   config errors). The browser says who is asking in `Origin`, so the
//!   streams open only for an allowed `Origin` ([`Access::check_origin`]).

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use crate::error::{Error, Result};

/// The URL schemes of the LiveReload browser extensions' own pages
/// (Chromium, Firefox, Safari), whose connections carry them as `Origin`.
const EXTENSION_SCHEMES: [&str; 3] = ["chrome-extension", "moz-extension", "safari-web-extension"];

/// The host names a server answers for, and the origins its live reload
/// streams accept.
///
/// A **host** is allowed if it is a loopback name (`localhost`, any
/// `127.x.y.z`, `[::1]`), or was added with [`with_host`](Access::with_host)
/// (an exact name or address: no wildcards, and any port). Every request
/// whose `Host` header (or absolute-form target) names another host, or
/// that has none, is refused with [`Refused::Host`]: 421 Misdirected
/// Request.
///
/// An **origin** (of a WebSocket at `/livereload` or of the Server-Sent
/// Events at `/livereload/events`) is allowed if the request has no
/// `Origin` header (not a browser page: curl, an editor plugin), if it is
/// `http://` or `https://` on an allowed host (any port: a page served on
/// `127.0.0.1:8000` connects to the LiveReload port `127.0.0.1:35729`) or
/// on the request's own host, or if it is a LiveReload browser extension's
/// own page (`chrome-extension://`, `moz-extension://`,
/// `safari-web-extension://`; see
/// [`with_extension_origins`](Access::with_extension_origins)). Every other
/// one (another site, `null` from a `file://` page or a sandboxed frame) is
/// refused with [`Refused::Origin`]: 403 Forbidden.
///
/// The default is [`Access::loopback`]. [`router`](crate::router) applies
/// a [`ReloadHub`](crate::ReloadHub)'s access (see
/// [`ReloadHub::set_access`](crate::ReloadHub::set_access)) to its routes;
/// an application checks its own routes' hosts with
/// [`check_host`](Access::check_host).
///
/// ```
/// use relive_web::Access;
///
/// let access = Access::loopback().with_host("dev.example")?;
/// assert!(access.allows_host("localhost:8000"));
/// assert!(access.allows_host("127.0.0.1"));
/// assert!(access.allows_host("[::1]:35729"));
/// assert!(access.allows_host("Dev.Example:3000"));
/// assert!(!access.allows_host("attacker.example:8000"));
/// assert!(!access.allows_host("sub.dev.example"));
///
/// let host = Some("127.0.0.1:35729");
/// assert!(access.allows_origin(None, host));
/// assert!(access.allows_origin(Some("http://127.0.0.1:8000"), host));
/// assert!(access.allows_origin(Some("chrome-extension://jnihajbhpnppcggbcgedagnkighmdlei"), host));
/// assert!(!access.allows_origin(Some("https://attacker.example"), host));
/// assert!(!access.allows_origin(Some("null"), host));
/// # Ok::<(), relive_web::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The hosts added to the loopback ones.
    hosts: BTreeSet<Host>,
    /// Whether any `Host` is answered ([`Access::any_host`]).
    any_host: bool,
    /// Whether the extensions' origins are allowed.
    extensions: bool,
}

impl Default for Access {
    /// [`Access::loopback`].
    fn default() -> Access {
        Access::loopback()
    }
}

impl Access {
    /// Loopback hosts only (`localhost`, `127.x.y.z`, `[::1]`), and the
    /// LiveReload extensions' origins.
    pub fn loopback() -> Access {
        Access { hosts: BTreeSet::new(), any_host: false, extensions: true }
    }

    /// Every `Host` is answered: for a server behind a proxy that checks
    /// it. Origins are still checked, against the loopback hosts, those
    /// added with [`with_host`](Access::with_host) and the request's own
    /// host; that last one is exactly what DNS rebinding forges, so only
    /// use this where something else checks the host.
    pub fn any_host() -> Access {
        Access { any_host: true, ..Access::loopback() }
    }

    /// Also allows `name`: a host name (`dev.example`, compared without
    /// regard to case), an IPv4 address, or an IPv6 address with or without
    /// brackets. Any port of it is allowed. Refused: a port, wildcards, and
    /// anything else that is not a host name.
    pub fn with_host(mut self, name: &str) -> Result<Access> {
        self.hosts.insert(Host::allowed(name)?);
        Ok(self)
    }

    /// Whether the origins of the LiveReload browser extensions' own pages
    /// are allowed (default: yes).
    pub fn with_extension_origins(mut self, allowed: bool) -> Access {
        self.extensions = allowed;
        self
    }

    /// Whether `host` (a `Host` header's value, with or without a port)
    /// names an allowed host.
    pub fn allows_host(&self, host: &str) -> bool {
        self.any_host || Host::of_header(host).is_some_and(|host| self.listed(&host))
    }

    /// Whether a live reload stream may open for a request with `origin`
    /// (its `Origin` header, `None` without one) and `host` (its `Host`
    /// header).
    pub fn allows_origin(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        let Some((scheme, rest)) = origin.split_once("://") else { return false };
        let scheme = scheme.to_ascii_lowercase();
        if EXTENSION_SCHEMES.contains(&scheme.as_str()) {
            return self.extensions && !rest.is_empty() && !rest.contains(['/', '@']);
        }
        if scheme != "http" && scheme != "https" || rest.contains(['/', '@', '?', '#']) {
            return false;
        }
        let Some(origin_host) = Host::of_header(rest) else { return false };
        self.listed(&origin_host) || host.and_then(Host::of_header).is_some_and(|host| host == origin_host)
    }

    /// Refuses a request whose host is not allowed: its `Host` header, and
    /// the authority of an absolute-form target (`GET http://host/path`)
    /// if it has one, must both name an allowed host, and it must have one
    /// of them.
    pub fn check_host(&self, headers: &HeaderMap, uri: &Uri) -> std::result::Result<(), Refused> {
        if self.any_host {
            return Ok(());
        }
        let header = match headers.get_all(header::HOST).iter().collect::<Vec<_>>()[..] {
            [] => None,
            [one] => Some(one.to_str().ok()),
            // Two Host headers: which one a proxy or the browser meant is anyone's guess.
            _ => Some(None),
        };
        let named = [header, uri.authority().map(|a| Some(a.as_str()))];
        let mut any = false;
        for host in named.into_iter().flatten() {
            any = true;
            if !host.is_some_and(|host| self.allows_host(host)) {
                return Err(self.refused_host());
            }
        }
        match any {
            true => Ok(()),
            false => Err(self.refused_host()),
        }
    }

    /// Refuses a request whose `Origin` is not allowed (see
    /// [`allows_origin`](Access::allows_origin)); several `Origin` headers
    /// are refused.
    pub fn check_origin(&self, headers: &HeaderMap) -> std::result::Result<(), Refused> {
        let origins: Vec<_> = headers.get_all(header::ORIGIN).iter().collect();
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let allowed = match origins[..] {
            [] => true,
            [origin] => origin.to_str().is_ok_and(|origin| self.allows_origin(Some(origin), host)),
            _ => false,
        };
        match allowed {
            true => Ok(()),
            false => Err(Refused::Origin { allowed: self.describe() }),
        }
    }

    fn refused_host(&self) -> Refused {
        Refused::Host { allowed: self.describe() }
    }

    /// Whether `host` is a loopback host or one added.
    fn listed(&self, host: &Host) -> bool {
        match host {
            Host::Ip(ip) => ip.to_canonical().is_loopback() || self.hosts.contains(host),
            Host::Name(name) => name == "localhost" || self.hosts.contains(host),
        }
    }

    /// `localhost, 127.0.0.1 (any 127.x.y.z), [::1], dev.example`.
    fn describe(&self) -> String {
        let mut text = "localhost, 127.0.0.1 (any 127.x.y.z), [::1]".to_string();
        for host in self.hosts.iter().filter(|host| !Access::loopback().listed(host)) {
            text.push_str(&format!(", {host}"));
        }
        text
    }
}

/// A host as the `Host` header names it, without its port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Host {
    /// An address (an IPv6 one without its brackets).
    Ip(IpAddr),
    /// A name, in lowercase.
    Name(String),
}

impl Host {
    /// The host of a `Host` header's value: `name`, `name:port`,
    /// `1.2.3.4[:port]`, `[v6][:port]`; `None` if malformed.
    fn of_header(value: &str) -> Option<Host> {
        let (host, port) = match value.strip_prefix('[') {
            Some(rest) => {
                let (v6, after) = rest.split_once(']')?;
                let port = match after {
                    "" => None,
                    _ => Some(after.strip_prefix(':')?),
                };
                return port_ok(port).then_some(Host::Ip(IpAddr::V6(v6.parse::<Ipv6Addr>().ok()?)));
            }
            None => match value.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (value, None),
            },
        };
        if !port_ok(port) {
            return None;
        }
        Host::name(host)
    }

    /// A host given to allow: a name or an address (IPv6 with or without
    /// brackets), no port.
    fn allowed(text: &str) -> Result<Host> {
        let invalid = |reason| Error::InvalidHost { name: text.to_string(), reason };
        if text.contains('*') {
            return Err(invalid("wildcards are not supported: name each host"));
        }
        if let Ok(ip) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text).parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        if text.contains(':') {
            return Err(invalid("give the name without a port: every port of it is allowed"));
        }
        Host::name(text).ok_or_else(|| invalid("not a host name (letters, digits, `-`, `_` and `.`)"))
    }

    /// `text` as a host: an IPv4 address, or a name of letters, digits,
    /// `-`, `_` and dots.
    fn name(text: &str) -> Option<Host> {
        if let Ok(ip) = text.parse::<std::net::Ipv4Addr>() {
            return Some(Host::Ip(IpAddr::V4(ip)));
        }
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        (!text.is_empty() && text.chars().all(plain)).then(|| Host::Name(text.to_ascii_lowercase()))
    }
}

/// Whether a `Host` header's port, if any, is one.
fn port_ok(port: Option<&str>) -> bool {
    port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// A request refused by an [`Access`]; as a response, a short plain-text
/// body that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refused {
    /// The request's `Host` is missing, malformed or not allowed: 421
    /// Misdirected Request.
    Host {
        /// The allowed hosts, for people.
        allowed: String,
    },
    /// The request's `Origin` is not allowed: 403 Forbidden.
    Origin {
        /// The allowed hosts, for people.
        allowed: String,
    },
}

impl Refused {
    /// The status to answer with.
    pub fn status(&self) -> StatusCode {
        match self {
            Refused::Host { .. } => StatusCode::MISDIRECTED_REQUEST,
            Refused::Origin { .. } => StatusCode::FORBIDDEN,
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Host { allowed } => write!(
                f,
                "misdirected request: the Host header does not name this server, which answers only for {allowed}"
            ),
            Refused::Origin { allowed } => write!(
                f,
                "cross-origin request refused: live reload streams are open to pages of {allowed}, to the \
                 LiveReload browser extensions and to clients that send no Origin"
            ),
        }
    }
}

impl std::error::Error for Refused {}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let headers = [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ];
        (self.status(), headers, format!("{self}\n")).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_headers_are_parsed_with_or_without_a_port() {
        let ip = |s: &str| Some(Host::Ip(s.parse().unwrap()));
        let name = |s: &str| Some(Host::Name(s.to_string()));
        assert_eq!(Host::of_header("127.0.0.1:8000"), ip("127.0.0.1"));
        assert_eq!(Host::of_header("127.0.0.1"), ip("127.0.0.1"));
        assert_eq!(Host::of_header("[::1]:35729"), ip("::1"));
        assert_eq!(Host::of_header("[0:0:0:0:0:0:0:1]"), ip("::1"));
        assert_eq!(Host::of_header("LocalHost:80"), name("localhost"));
        for bad in ["", ":80", "::1", "[::1", "[::1]x", "a:b", "a:", "a:123456", "a b", "a@b", "a/b", "[x]"] {
            assert_eq!(Host::of_header(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn hosts_to_allow_are_exact_names_or_addresses_without_a_port() {
        assert_eq!(Host::allowed("::1").unwrap(), Host::allowed("[::1]").unwrap());
        assert_eq!(Host::allowed("Dev.Example").unwrap(), Host::Name("dev.example".into()));
        for bad in ["*.example", "dev.example:8000", "", "a b", "http://dev.example"] {
            assert!(Host::allowed(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn loopback_hosts_are_allowed_and_others_only_when_added() {
        let access = Access::loopback();
        for ok in ["localhost", "localhost:1", "127.0.0.1:8000", "127.3.2.1", "[::1]:9", "[::ffff:127.0.0.1]"] {
            assert!(access.allows_host(ok), "{ok}");
        }
        for bad in ["attacker.example", "localhost.attacker.example", "127.0.0.1.nip.io", "10.0.0.1", "0.0.0.0"] {
            assert!(!access.allows_host(bad), "{bad}");
        }
        let access = access.with_host("10.0.0.1").unwrap().with_host("dev.example").unwrap();
        assert!(access.allows_host("10.0.0.1:8000") && access.allows_host("DEV.example"));
        assert!(!access.allows_host("a.dev.example"));
        assert!(Access::any_host().allows_host("attacker.example"));
    }

    #[test]
    fn origins_of_allowed_hosts_the_request_host_and_the_extensions_are_allowed() {
        let access = Access::loopback();
        let host = Some("127.0.0.1:35729");
        for ok in [
            "http://127.0.0.1:8000",
            "https://localhost",
            "HTTP://[::1]:3000",
            "chrome-extension://jnihajbhpnppcggbcgedagnkighmdlei",
            "moz-extension://0b8fa3f6-1c4a-4b7e-9d36-2e4f6a8b1c9d",
            "safari-web-extension://ABC",
        ] {
            assert!(access.allows_origin(Some(ok), host), "{ok}");
        }
        for bad in [
            "http://attacker.example",
            "http://127.0.0.1.attacker.example",
            "http://127.0.0.1@attacker.example",
            "http://127.0.0.1:8000/path",
            "null",
            "file://",
            "ws://127.0.0.1:8000",
            "chrome-extension://",
            "",
        ] {
            assert!(!access.allows_origin(Some(bad), host), "{bad}");
        }
        assert!(!access.clone().with_extension_origins(false).allows_origin(Some("chrome-extension://x"), host));
        // The request's own host: only where any Host is answered does that matter.
        let any = Access::any_host();
        assert!(any.allows_origin(Some("http://box.lan:8000"), Some("box.lan:35729")));
        assert!(!any.allows_origin(Some("http://attacker.example"), Some("box.lan:35729")));
    }

    #[test]
    fn a_request_needs_one_allowed_host() {
        let access = Access::loopback();
        let headers = |hosts: &[&str]| {
            let mut map = HeaderMap::new();
            for h in hosts {
                map.append(header::HOST, h.parse().unwrap());
            }
            map
        };
        let path: Uri = "/".parse().unwrap();
        assert_eq!(access.check_host(&headers(&["127.0.0.1:1"]), &path), Ok(()));
        assert!(access.check_host(&headers(&[]), &path).is_err(), "no host at all");
        assert!(access.check_host(&headers(&["127.0.0.1", "attacker.example"]), &path).is_err());
        let absolute: Uri = "http://attacker.example/".parse().unwrap();
        assert!(access.check_host(&headers(&["127.0.0.1"]), &absolute).is_err(), "the target's authority counts");
        assert_eq!(access.check_host(&headers(&[]), &"http://localhost:1/".parse().unwrap()), Ok(()));
        let refused = access.check_host(&headers(&["attacker.example"]), &path).unwrap_err();
        assert_eq!(refused.status(), StatusCode::MISDIRECTED_REQUEST);
    }
}
