//! Who may use a development server: which `Host` names it answers for.
//!
//! **DNS rebinding** reaches a server on 127.0.0.1 from a web page in the
//! developer's own browser: a page at `http://attacker.example:8000` has its
//! name re-resolved to 127.0.0.1, and its scripts then read the dev
//! server's pages as same-origin. Only the `Host` header tells: it still
//! says `attacker.example`. So a request is answered only if its `Host`
//! names an allowed host ([`Access::check_host`]).

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use crate::error::{Error, Result};

/// The host names a server answers for.
///
/// A **host** is allowed if it is a loopback name (`localhost`, any
/// `127.x.y.z`, `[::1]`), or was added with [`with_host`](Access::with_host)
/// (an exact name or address: no wildcards, and any port). Every request
/// whose `Host` header (or absolute-form target) names another host, or
/// that has none, is refused with [`Refused::Host`]: 421 Misdirected
/// Request.
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
/// # Ok::<(), relive_web::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The hosts added to the loopback ones.
    hosts: BTreeSet<Host>,
    /// Whether any `Host` is answered ([`Access::any_host`]).
    any_host: bool,
}

impl Default for Access {
    /// [`Access::loopback`].
    fn default() -> Access {
        Access::loopback()
    }
}

impl Access {
    /// Loopback hosts only (`localhost`, `127.x.y.z`, `[::1]`).
    pub fn loopback() -> Access {
        Access { hosts: BTreeSet::new(), any_host: false }
    }

    /// Every `Host` is answered: for a server behind a proxy that checks
    /// it.
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

    /// Whether `host` (a `Host` header's value, with or without a port)
    /// names an allowed host.
    pub fn allows_host(&self, host: &str) -> bool {
        self.any_host || Host::of_header(host).is_some_and(|host| self.listed(&host))
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
}

impl Refused {
    /// The status to answer with.
    pub fn status(&self) -> StatusCode {
        match self {
            Refused::Host { .. } => StatusCode::MISDIRECTED_REQUEST,
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
