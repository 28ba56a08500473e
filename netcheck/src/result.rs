//! What a check reports: the serde-serialisable result the CLI prints and the web wizard shows.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The kind of check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckKind {
    /// Clock offset and stratum from an NTP server (UDP 123).
    Ntp,
    /// A DNS server answers at all.
    DnsServer,
    /// Forward resolution of a name (A/AAAA).
    Dns,
    /// Reverse resolution (PTR) of the addresses a name resolved to.
    ReverseDns,
    /// ICMP echo.
    Icmp,
    /// TCP connect.
    Tcp,
    /// TLS handshake and certificate inspection.
    Tls,
    /// HTTP proxy CONNECT tunnel.
    Proxy,
}

impl CheckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ntp => "ntp",
            Self::DnsServer => "dns-server",
            Self::Dns => "dns",
            Self::ReverseDns => "reverse-dns",
            Self::Icmp => "icmp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
            Self::Proxy => "proxy",
        }
    }
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Outcome of one check. Ordered by severity (`Pass < Warn < Fail`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Warn => "warn",
            Self::Fail => "fail",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Milliseconds, as reported in results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Millis(pub u64);

impl Millis {
    pub fn from_duration(d: std::time::Duration) -> Self {
        Self(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// One result row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub check: CheckKind,
    /// What was checked: `HOST:PORT`, a name, or `NAME @ SERVER`.
    pub target: String,
    pub status: Status,
    /// The measured value or what was observed (offset, addresses, TLS details, the error).
    pub value: String,
    /// What a network administrator should do: names the port, the direction and the reason.
    /// `None` when the check passed.
    pub remediation: Option<String>,
    /// Why the connector needs this (e.g. `vCenter vc1.corp`); empty for ad-hoc checks.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub purpose: String,
    /// Wall time the check took.
    pub elapsed_ms: Millis,
    /// Handshake details of TLS and proxy checks that completed a handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::TlsDetails>,
}

impl CheckResult {
    pub fn pass(check: CheckKind, target: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            check,
            target: target.into(),
            status: Status::Pass,
            value: value.into(),
            remediation: None,
            purpose: String::new(),
            elapsed_ms: Millis(0),
            tls: None,
        }
    }

    pub fn warn(
        check: CheckKind,
        target: impl Into<String>,
        value: impl Into<String>,
        remediation: impl Into<String>,
    ) -> Self {
        Self {
            status: Status::Warn,
            remediation: Some(remediation.into()),
            ..Self::pass(check, target, value)
        }
    }

    pub fn fail(
        check: CheckKind,
        target: impl Into<String>,
        value: impl Into<String>,
        remediation: impl Into<String>,
    ) -> Self {
        Self {
            status: Status::Fail,
            remediation: Some(remediation.into()),
            ..Self::pass(check, target, value)
        }
    }
}

/// True when no result failed (warnings do not fail a run).
pub fn all_passed(results: &[CheckResult]) -> bool {
    results.iter().all(|r| r.status != Status::Fail)
}
