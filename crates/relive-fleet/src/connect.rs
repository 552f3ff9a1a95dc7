//! How the fleet reaches etcd: the endpoints, TLS (a CA bundle, a client
//! certificate for mutual TLS) and an etcd user, shared by the three
//! builders. The transport is etcd-client's own (rustls); this module only
//! loads the files, refuses settings that would leak, and words etcd's
//! errors so that the endpoint and the certificate or credential problem
//! show.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;

/// Where etcd is and how to prove who we are to it.
#[derive(Clone)]
pub(crate) struct Connection {
    pub(crate) endpoints: Vec<String>,
    ca: Option<PathBuf>,
    identity: Option<(PathBuf, PathBuf)>,
    user: Option<(String, String)>,
    insecure_plaintext: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("Connection")
            .field("endpoints", &self.endpoints)
            .field("ca", &self.ca)
            .field("identity", &self.identity)
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .field("insecure_plaintext", &self.insecure_plaintext)
            .finish()
    }
}

impl Connection {
    pub(crate) fn new(endpoint: String) -> Connection {
        Connection { endpoints: vec![endpoint], ca: None, identity: None, user: None, insecure_plaintext: false }
    }

    pub(crate) fn ca(&mut self, path: PathBuf) {
        self.ca = Some(path);
    }

    pub(crate) fn identity(&mut self, cert: PathBuf, key: PathBuf) {
        self.identity = Some((cert, key));
    }

    pub(crate) fn user(&mut self, name: String, password: String) {
        self.user = Some((name, password));
    }

    pub(crate) fn insecure_plaintext(&mut self, allow: bool) {
        self.insecure_plaintext = allow;
    }

    pub(crate) fn user_name(&self) -> Option<&str> {
        self.user.as_ref().map(|(name, _)| name.as_str())
    }

    /// `message` (etcd's error, in words), with what it likely means for
    /// these settings: an etcd with `--client-cert-auth` closes a TLS
    /// connection that brings no client certificate without saying why.
    pub(crate) fn explain(&self, message: String) -> String {
        let tls = self.endpoints.iter().any(|e| e.starts_with("https://"));
        // The same refusal shows as whichever of these the client meets
        // first, depending on timing: etcd's alert, or the closed
        // connection.
        let closed = ["connection closed", "broken pipe", "connection reset", "BadCertificate", "CertificateRequired"]
            .iter()
            .any(|m| message.contains(m));
        if tls && closed {
            return match &self.identity {
                None => format!(
                    "{message} (no client certificate was given: an etcd that runs with --client-cert-auth \
                     closes such connections)"
                ),
                Some((cert, _)) => format!(
                    "{message} (etcd closes the connection of a client certificate it does not accept: \
                     signed by a CA it does not trust, expired, or not for client authentication; \
                     the certificate is {})",
                    cert.display()
                ),
            };
        }
        if message.contains("UnknownIssuer") {
            let ca = match &self.ca {
                Some(ca) => format!("the CA certificates of {}", ca.display()),
                None => "no CA certificate given".to_string(),
            };
            return format!("{message} (etcd's server certificate is not signed by a CA trusted here: {ca})");
        }
        message
    }

    /// The endpoints, comma separated, for messages.
    pub(crate) fn endpoints_text(&self) -> String {
        self.endpoints.join(",")
    }

    /// etcd-client's options for these settings, the files loaded.
    ///
    /// Refuses TLS settings for an `http://` endpoint (they would be
    /// ignored: the connection would be in clear), and a password for an
    /// `http://` endpoint that is not loopback, unless allowed.
    pub(crate) fn options(&self) -> Result<ConnectOptions, Error> {
        let wants_tls = self.ca.is_some() || self.identity.is_some();
        for endpoint in &self.endpoints {
            let tls = endpoint.starts_with("https://");
            if wants_tls && !tls {
                return Err(Error::NotHttps { endpoint: endpoint.clone() });
            }
            if let Some((user, _)) = &self.user {
                if !tls && !self.insecure_plaintext && !is_loopback(endpoint) {
                    return Err(Error::Plaintext { endpoint: endpoint.clone(), user: user.clone() });
                }
            }
        }
        let mut options = ConnectOptions::new();
        if let Some((name, password)) = &self.user {
            options = options.with_user(name.clone(), password.clone());
        }
        if self.endpoints.iter().all(|e| e.starts_with("https://")) {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.ca {
                tls = tls.ca_certificate(Certificate::from_pem(read_certificates(ca)?));
            }
            if let Some((cert, key)) = &self.identity {
                let pem = read_certificates(cert)?;
                check_validity(cert, &pem)?;
                tls = tls.identity(Identity::from_pem(pem, read_key(key)?));
            }
            options = options.with_tls(tls);
        }
        Ok(options)
    }

    /// Who writes through this connection, as etcd knows them: the etcd
    /// user, else the client certificate's subject (etcd takes its common
    /// name as the user), else nobody (an etcd without authentication).
    pub(crate) fn principal(&self) -> Result<Option<String>, Error> {
        if let Some((name, _)) = &self.user {
            return Ok(Some(name.clone()));
        }
        let Some((cert, _)) = &self.identity else { return Ok(None) };
        let pem = read_certificates(cert)?;
        let der = CertificateDer::pem_slice_iter(&pem)
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| Error::Certificate { path: cert.clone(), message: "no PEM certificate in it".into() })?;
        let subject = subject(&der).ok_or_else(|| Error::Certificate {
            path: cert.clone(),
            message: "cannot read the certificate's subject".into(),
        })?;
        Ok(Some(subject))
    }
}

/// Whether `endpoint` (`http://127.0.0.1:2379`, `localhost:2379`) is on
/// this machine, where a password in clear crosses no network.
fn is_loopback(endpoint: &str) -> bool {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.rsplit_once(':').map_or(authority, |(host, _)| host),
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The PEM certificates of `path`, checked to hold at least one.
fn read_certificates(path: &Path) -> Result<Vec<u8>, Error> {
    let pem = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let mut found = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|e| Error::Certificate {
            path: path.to_path_buf(),
            message: format!("not a PEM certificate: {e}"),
        })?;
        found += 1;
    }
    if found == 0 {
        return Err(Error::Certificate { path: path.to_path_buf(), message: "no PEM certificate in it".into() });
    }
    Ok(pem)
}

/// Refuses a client certificate outside its validity period: etcd would
/// close the connection without saying why.
fn check_validity(path: &Path, pem: &[u8]) -> Result<(), Error> {
    let Some(Ok(der)) = CertificateDer::pem_slice_iter(pem).next() else { return Ok(()) };
    let Some((not_before, not_after)) = validity(&der) else { return Ok(()) };
    let now = std::time::SystemTime::now();
    let at = |t: std::time::SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    if now > not_after {
        let message = format!("the client certificate expired at {}", at(not_after));
        return Err(Error::Certificate { path: path.to_path_buf(), message });
    }
    if now < not_before {
        let message = format!("the client certificate is not valid before {}", at(not_before));
        return Err(Error::Certificate { path: path.to_path_buf(), message });
    }
    Ok(())
}

/// The PEM private key of `path`, checked to be one. Its bytes are never
/// part of a message.
fn read_key(path: &Path) -> Result<Vec<u8>, Error> {
    let pem = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|_| Error::Certificate { path: path.to_path_buf(), message: "no PEM private key in it".into() })?;
    Ok(pem)
}

/// The subject of a DER certificate as `CN=alice,O=ops` (common name,
/// organization and organizational unit, in the certificate's order).
///
/// A walk down the fixed start of an X.509 certificate: Certificate →
/// TBSCertificate → [0] version, serial, signature algorithm, issuer,
/// validity → subject. Bounded by the certificate's own lengths; anything
/// unexpected gives `None`.
fn subject(der: &[u8]) -> Option<String> {
    let (_validity, rest) = tlv(after_issuer(der)?, 0x30)?;
    let (mut name, _) = tlv(rest, 0x30)?;
    let mut parts = Vec::new();
    while !name.is_empty() {
        let (mut set, next) = tlv(name, 0x31)?;
        name = next;
        while !set.is_empty() {
            let (attribute, next) = tlv(set, 0x30)?;
            set = next;
            let (oid, value) = tlv(attribute, 0x06)?;
            let label = match oid {
                [0x55, 0x04, 0x03] => "CN",
                [0x55, 0x04, 0x0a] => "O",
                [0x55, 0x04, 0x0b] => "OU",
                _ => continue,
            };
            // A string of any of the directory string types.
            let (text, _) = tlv(value, *value.first()?)?;
            let text: String = String::from_utf8_lossy(text).chars().filter(|c| !c.is_control()).collect();
            parts.push(format!("{label}={text}"));
        }
    }
    (!parts.is_empty()).then(|| parts.join(","))
}

/// A DER certificate's TBSCertificate from its validity on (validity,
/// subject, ...): past the fixed start of Certificate → TBSCertificate →
/// [0] version, serial, signature algorithm, issuer.
fn after_issuer(der: &[u8]) -> Option<&[u8]> {
    let (cert, _) = tlv(der, 0x30)?;
    let (tbs, _) = tlv(cert, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest, 0xa0)?.1;
    }
    let (_serial, rest) = tlv(rest, 0x02)?;
    let (_algorithm, rest) = tlv(rest, 0x30)?;
    let (_issuer, rest) = tlv(rest, 0x30)?;
    Some(rest)
}

/// The validity period of a DER certificate: not before, not after.
fn validity(der: &[u8]) -> Option<(std::time::SystemTime, std::time::SystemTime)> {
    let (validity, _) = tlv(after_issuer(der)?, 0x30)?;
    let (not_before, rest) = time(validity)?;
    let (not_after, _) = time(rest)?;
    Some((not_before, not_after))
}

/// An X.509 time (UTCTime `YYMMDDHHMMSSZ` or GeneralizedTime
/// `YYYYMMDDHHMMSSZ`) at the start of `der`, and what follows it.
fn time(der: &[u8]) -> Option<(std::time::SystemTime, &[u8])> {
    let tag = *der.first()?;
    let (text, rest) = tlv(der, tag)?;
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let (year, digits) = match tag {
        0x17 if text.len() == 12 => {
            let yy: i64 = text[..2].parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &text[2..])
        }
        0x18 if text.len() == 14 => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let field = |i: usize| digits.get(i..i + 2)?.parse::<i64>().ok();
    let (month, day, hour, minute, second) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    // Days from 1970-01-01 to the date (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    let time = if secs >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64)
    } else {
        std::time::UNIX_EPOCH - std::time::Duration::from_secs(secs.unsigned_abs())
    };
    Some((time, rest))
}

/// One DER element of tag `tag` at the start of `der`: its contents and
/// what follows it.
fn tlv(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = der.split_first()?;
    if first != tag {
        return None;
    }
    let (&len, mut rest) = rest.split_first()?;
    let len = if len < 0x80 {
        usize::from(len)
    } else {
        let n = usize::from(len & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        rest = &rest[n..];
        len
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// etcd's error in words: the gRPC status's message, or a transport error
/// with its causes (where the certificate problem is:
/// "invalid peer certificate: UnknownIssuer").
pub(crate) fn describe(error: &etcd_client::Error) -> String {
    use etcd_client::Error as E;
    let (mut text, mut source): (String, Option<&(dyn std::error::Error + 'static)>) = match error {
        E::GRpcStatus(status) => {
            let message = status.message();
            let text = match status.code() {
                tonic::Code::PermissionDenied => format!("permission denied: {message}"),
                tonic::Code::Unauthenticated => format!("not authenticated: {message}"),
                _ if message.contains("authentication failed") => format!("the credentials were refused: {message}"),
                _ => message.to_string(),
            };
            (text, std::error::Error::source(status))
        }
        E::TransportError(e) => (e.to_string(), std::error::Error::source(e)),
        other => (other.to_string(), None),
    };
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_endpoints_are_told_apart() {
        for e in [
            "http://127.0.0.1:2379",
            "http://localhost:2379",
            "http://[::1]:2379",
            "127.0.0.2:2379",
            "http://LOCALHOST",
        ] {
            assert!(is_loopback(e), "{e}");
        }
        for e in
            ["http://10.0.0.1:2379", "http://etcd-1:2379", "http://[2001:db8::1]:2379", "http://127.0.0.1.evil:2379"]
        {
            assert!(!is_loopback(e), "{e}");
        }
    }

    #[test]
    fn a_password_over_plaintext_to_another_machine_is_refused_unless_allowed() {
        let mut c = Connection::new("http://10.0.0.1:2379".into());
        c.user("alice".into(), "s3cret".into());
        let e = c.options().unwrap_err();
        assert!(matches!(e, Error::Plaintext { .. }), "{e}");
        assert!(e.to_string().contains("http://10.0.0.1:2379") && !e.to_string().contains("s3cret"), "{e}");
        c.insecure_plaintext(true);
        assert!(c.options().is_ok());
        let mut local = Connection::new("http://127.0.0.1:2379".into());
        local.user("alice".into(), "s3cret".into());
        assert!(local.options().is_ok());
        assert!(!format!("{local:?}").contains("s3cret"));
    }

    #[test]
    fn x509_times_are_read() {
        let at = |der: &[u8]| time(der).unwrap().0.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(at(b"\x17\x0d261201031200Z"), 1_796_094_720);
        assert_eq!(at(b"\x18\x0f20000229235959Z"), 951_868_799);
        assert_eq!(at(b"\x17\x0d700101000000Z"), 0);
        assert!(time(b"\x17\x0c26120103120Z").is_none());
    }

    #[test]
    fn tls_settings_for_an_http_endpoint_are_refused() {
        let mut c = Connection::new("http://127.0.0.1:2379".into());
        c.ca("/nonexistent/ca.crt".into());
        assert!(matches!(c.options().unwrap_err(), Error::NotHttps { .. }));
    }
}
