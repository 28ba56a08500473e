//! What to check: endpoints, roles and options. A [`Plan`] is built from ad-hoc values (the
//! CLI flags) and/or from the connector's settings file ([`crate::settings`]).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Why a value could not be used as a target.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("`{input}`: empty host")]
    EmptyHost { input: String },
    #[error("`{input}`: a port is required (HOST:PORT)")]
    MissingPort { input: String },
    #[error("`{input}`: `{port}` is not a port number (1-65535)")]
    BadPort { input: String, port: String },
    #[error("`{input}`: unclosed `[` in an IPv6 address")]
    BadBracket { input: String },
    #[error("`{input}`: `{host}` is not a valid host name or address")]
    BadHost { input: String, host: String },
    #[error("proxy `{input}`: {reason}")]
    BadProxy { input: String, reason: String },
    #[error("fingerprint `{input}`: {reason}")]
    BadFingerprint { input: String, reason: String },
}

/// A host name or IP literal plus a port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// Parse `HOST`, `HOST:PORT`, `[V6]`, `[V6]:PORT` or a bare IPv6 literal; `default_port`
    /// fills a missing port, and `None` makes the port mandatory.
    pub fn parse(input: &str, default_port: Option<u16>) -> Result<Self, TargetError> {
        let s = input.trim();
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, after) = rest
                .split_once(']')
                .ok_or_else(|| TargetError::BadBracket {
                    input: input.to_string(),
                })?;
            match after.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None if after.is_empty() => (h, None),
                None => {
                    return Err(TargetError::BadHost {
                        input: input.to_string(),
                        host: s.to_string(),
                    });
                }
            }
        } else if s.matches(':').count() > 1 {
            (s, None) // a bare IPv6 literal
        } else {
            match s.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        if host.is_empty() {
            return Err(TargetError::EmptyHost {
                input: input.to_string(),
            });
        }
        let valid_host = host.parse::<std::net::IpAddr>().is_ok()
            || host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        if !valid_host {
            return Err(TargetError::BadHost {
                input: input.to_string(),
                host: host.to_string(),
            });
        }
        let port =
            match (port, default_port) {
                (Some(p), _) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                    TargetError::BadPort {
                        input: input.to_string(),
                        port: p.to_string(),
                    }
                })?,
                (None, Some(d)) => d,
                (None, None) => {
                    return Err(TargetError::MissingPort {
                        input: input.to_string(),
                    });
                }
            };
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A SHA-256 certificate fingerprint (of the DER certificate).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Accepts `SHA256:<hex>` or bare hex, with or without colons, in either case.
    pub fn parse(input: &str) -> Result<Self, TargetError> {
        let s = input.trim();
        // The prefix in any case (issue 18: every input accepts any case).
        let s = match s.get(..7) {
            Some(p) if p.eq_ignore_ascii_case("sha256:") => &s[7..],
            _ => s,
        };
        let hex_digits: String = s.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(&hex_digits).map_err(|e| TargetError::BadFingerprint {
            input: input.to_string(),
            reason: e.to_string(),
        })?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| TargetError::BadFingerprint {
                input: input.to_string(),
                reason: format!("{} bytes, SHA-256 has 32", b.len()),
            })?;
        Ok(Self(arr))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One format everywhere (issue 18): `SHA256:AB:CD:…`, as vCenter shows it.
        fmt::Display::fmt(&godwit_trust::Fingerprint(self.0), f)
    }
}

/// An HTTP proxy (`http://[USER@]HOST[:PORT][/]`, default port 3128). A password is not
/// accepted in the URL (it would end up on command lines and in logs).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProxyUrl {
    pub endpoint: Endpoint,
    /// `http://USER@proxy:3128/`: Basic authentication on CONNECT as USER; the password is
    /// attached separately ([`ProxyUrl::with_password`]), never taken from the URL.
    pub auth: Option<ProxyAuth>,
}

/// Proxy credentials. The password never shows in `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ProxyAuth {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for ProxyAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyAuth {{ user: {:?}, password: *** }}", self.user)
    }
}

impl ProxyUrl {
    pub fn parse(input: &str) -> Result<Self, TargetError> {
        let bad = |reason: &str| TargetError::BadProxy {
            input: redact_url_password(input),
            reason: reason.to_string(),
        };
        let rest = input
            .trim()
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// proxies are supported (CONNECT over plain HTTP)"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((u, _)) if u.contains(':') => {
                return Err(bad(
                    "a password in the proxy URL is not accepted: give http://USER@HOST:PORT and \
                     the password in GODWIT_PROXY_PASSWORD or --proxy-password-file",
                ));
            }
            Some(("", _)) => return Err(bad("empty user name before `@`")),
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let endpoint = Endpoint::parse(hostport, Some(3128)).map_err(|e| bad(&e.to_string()))?;
        Ok(Self {
            endpoint,
            auth: user.map(|u| ProxyAuth {
                user: u.to_string(),
                password: String::new(),
            }),
        })
    }

    /// Attach the password for the URL's user (no effect without a user).
    pub fn with_password(mut self, password: &str) -> Self {
        if let Some(a) = &mut self.auth {
            a.password = password.to_string();
        }
        self
    }
}

/// `http://user:secret@host` → `http://user:***@host` (for error messages).
fn redact_url_password(input: &str) -> String {
    match (input.find("://"), input.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &input[s + 3..at];
            match userinfo.split_once(':') {
                Some((u, _)) => format!("{}{u}:***{}", &input[..s + 3], &input[at..]),
                None => input.to_string(),
            }
        }
        _ => input.to_string(),
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.auth {
            Some(a) => write!(f, "http://{}@{}/", a.user, self.endpoint),
            None => write!(f, "http://{}/", self.endpoint),
        }
    }
}

/// What the connector needs a peer for; gives remediation texts their reason.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum Role {
    /// Given on the command line; no known purpose.
    #[default]
    AdHoc,
    VCenter,
    EsxiHost,
    HyperVHost,
    StagingServer,
    S3Endpoint,
}

impl Role {
    /// Short name of the peer, e.g. `vCenter`.
    pub fn peer(&self) -> &'static str {
        match self {
            Self::AdHoc => "the host",
            Self::VCenter => "vCenter",
            Self::EsxiHost => "ESXi host",
            Self::HyperVHost => "Hyper-V host",
            Self::StagingServer => "staging server",
            Self::S3Endpoint => "S3 endpoint",
        }
    }

    /// Why the connector talks to it (ends without a full stop; empty for ad-hoc).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::AdHoc => "",
            Self::VCenter => "for the vSphere SOAP API (/sdk) and datastore reads (/folder)",
            Self::EsxiHost => "for disk downloads (NFC) and datastore reads from that host",
            Self::HyperVHost => "for WinRM over HTTPS (PowerShell remoting)",
            Self::StagingServer => "for replication data (TLS 1.2+, certificate pinned)",
            Self::S3Endpoint => "for direct-to-bucket replication and exports",
        }
    }
}

/// A peer to reach, with its role and (for TLS) an optional pinned fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub endpoint: Endpoint,
    pub role: Role,
    /// Label such as `vCenter vc1.corp`; empty for ad-hoc targets.
    pub purpose: String,
    pub fingerprint: Option<Fingerprint>,
}

impl Target {
    pub fn adhoc(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            role: Role::AdHoc,
            purpose: String::new(),
            fingerprint: None,
        }
    }
}

/// Options shared by all checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Per-check timeout. The whole run ends within `timeout + RUN_GRACE`.
    pub timeout: Duration,
    /// Extra trusted CA certificates (PEM), besides the system store.
    pub ca_file: Option<PathBuf>,
    /// The system CA bundle; `None` disables it (only `ca_file` and pins are trusted).
    pub system_ca_file: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            ca_file: None,
            system_ca_file: Some(PathBuf::from("/etc/ssl/certs/ca-certificates.crt")),
        }
    }
}

/// Everything one run checks. Each list entry becomes one or more concurrent checks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// NTP servers (default port 123).
    pub ntp: Vec<Endpoint>,
    /// DNS servers to query (default port 53). Empty: the system resolver is used.
    pub dns_servers: Vec<Endpoint>,
    /// Names to resolve forward (and their addresses in reverse).
    pub resolve: Vec<String>,
    /// Hosts to ping.
    pub ping: Vec<String>,
    /// TCP connects.
    pub tcp: Vec<Target>,
    /// TLS handshakes.
    pub tls: Vec<Target>,
    /// HTTP proxies; each is checked with a CONNECT to every TLS target of role S3 endpoint or
    /// ad-hoc (the peers reached through a proxy), or, when there are none, for reachability.
    pub proxies: Vec<ProxyUrl>,
    pub options: Options,
}

impl Plan {
    /// True when the plan checks nothing.
    pub fn is_empty(&self) -> bool {
        self.ntp.is_empty()
            && self.dns_servers.is_empty()
            && self.resolve.is_empty()
            && self.ping.is_empty()
            && self.tcp.is_empty()
            && self.tls.is_empty()
            && self.proxies.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = |s, d| Endpoint::parse(s, d);
        assert_eq!(e("ntp.lab", Some(123)).unwrap().to_string(), "ntp.lab:123");
        assert_eq!(e("10.0.0.1:1123", Some(123)).unwrap().port, 1123);
        assert_eq!(e("[::1]:53", None).unwrap().host, "::1");
        assert_eq!(e("::1", Some(53)).unwrap().to_string(), "[::1]:53");
        assert!(matches!(e("vc:0", None), Err(TargetError::BadPort { .. })));
        assert!(matches!(
            e("vc", None),
            Err(TargetError::MissingPort { .. })
        ));
        assert!(matches!(e("v c:1", None), Err(TargetError::BadHost { .. })));
        assert!(matches!(
            e(":443", None),
            Err(TargetError::EmptyHost { .. })
        ));
    }

    #[test]
    fn fingerprints() {
        let hex = "ab".repeat(32);
        let a = Fingerprint::parse(&hex).unwrap();
        let colons: Vec<String> = (0..32).map(|_| "AB".to_string()).collect();
        assert_eq!(Fingerprint::parse(&colons.join(":")).unwrap(), a);
        assert_eq!(Fingerprint::parse(&format!("SHA256:{hex}")).unwrap(), a);
        assert_eq!(Fingerprint::parse(&a.to_string()).unwrap(), a);
        assert_eq!(a.to_string(), format!("SHA256:{}", colons.join(":")));
        assert!(Fingerprint::parse("abcd").is_err());
    }

    #[test]
    fn proxies() {
        let p = ProxyUrl::parse("http://proxy.corp:8080/").unwrap();
        assert_eq!(p.endpoint.port, 8080);
        assert_eq!(ProxyUrl::parse("http://proxy").unwrap().endpoint.port, 3128);
        assert!(ProxyUrl::parse("https://proxy").is_err());
        let e = ProxyUrl::parse("http://u:p4ss@proxy")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("GODWIT_PROXY_PASSWORD") && !e.contains("p4ss"),
            "{e}"
        );
        let p = ProxyUrl::parse("http://ops@[::1]:3129")
            .unwrap()
            .with_password("pw");
        assert_eq!(p.to_string(), "http://ops@[::1]:3129/");
        assert_eq!(p.auth.as_ref().unwrap().password, "pw");
        assert!(!format!("{p:?}").contains("pw\""), "{p:?}");
        assert!(ProxyUrl::parse("http://@proxy").is_err());
    }
}
