//! DNS checks with hickory-resolver against the configured servers: the server answers,
//! forward (A/AAAA) resolution of every peer name, reverse (PTR) of what it resolved to.
//! Also the name resolution the connect-type checks (TCP, TLS, ICMP, proxy) use.

use crate::plan::Endpoint;
use crate::result::{CheckKind, CheckResult};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// How a name failed to resolve, classified for remediation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveFailure {
    /// The server says the name does not exist.
    NxDomain,
    /// The name exists but has no address records.
    NoRecords,
    /// The server answered with an error code (REFUSED, SERVFAIL, ...).
    ServerError(String),
    /// No answer in time.
    Timeout,
    /// Anything else (I/O error, bad name).
    Other(String),
}

impl ResolveFailure {
    /// Human text.
    pub fn describe(&self) -> String {
        match self {
            Self::NxDomain => "NXDOMAIN (the name does not exist)".into(),
            Self::NoRecords => "no address records (the name exists, without A/AAAA)".into(),
            Self::ServerError(c) => format!("server answered {c}"),
            Self::Timeout => "no answer (timed out)".into(),
            Self::Other(e) => e.clone(),
        }
    }
}

fn classify(e: &NetError) -> ResolveFailure {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(nr))
            if nr.response_code == ResponseCode::NXDomain =>
        {
            ResolveFailure::NxDomain
        }
        NetError::Dns(DnsError::NoRecordsFound(_)) => ResolveFailure::NoRecords,
        NetError::Dns(DnsError::ResponseCode(code)) => {
            ResolveFailure::ServerError(code.to_string())
        }
        NetError::Timeout => ResolveFailure::Timeout,
        NetError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => ResolveFailure::Timeout,
        other => ResolveFailure::Other(other.to_string()),
    }
}

/// A resolver that asks exactly `servers` (no hosts file, no cache), one attempt each.
pub fn resolver_for(servers: &[SocketAddr], timeout: Duration) -> Result<TokioResolver, String> {
    let mut config = ResolverConfig::from_name_servers(Vec::new());
    for s in servers {
        let mut ns = NameServerConfig::udp_and_tcp(s.ip());
        for c in &mut ns.connections {
            c.port = s.port();
        }
        config.add_name_server(ns);
    }
    let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
    let opts = builder.options_mut();
    opts.timeout = timeout;
    opts.attempts = 1;
    opts.cache_size = 0;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.ndots = 0;
    builder.build().map_err(|e| e.to_string())
}

/// Name resolution for the connect-type checks: the configured DNS servers when there are
/// any, else the system resolver (getaddrinfo: /etc/hosts, resolv.conf).
pub struct NameResolver {
    hickory: Option<TokioResolver>,
}

impl NameResolver {
    pub fn new(servers: &[SocketAddr], timeout: Duration) -> Result<Self, String> {
        let hickory = if servers.is_empty() {
            None
        } else {
            Some(resolver_for(servers, timeout)?)
        };
        Ok(Self { hickory })
    }

    /// The system resolver only.
    pub fn system() -> Self {
        Self { hickory: None }
    }

    /// Addresses of `host` (an IP literal resolves to itself).
    pub async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, ResolveFailure> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        match &self.hickory {
            Some(r) => {
                let found = r.lookup_ip(fqdn(host)).await.map_err(|e| classify(&e))?;
                let ips: Vec<IpAddr> = found.iter().collect();
                if ips.is_empty() {
                    Err(ResolveFailure::NoRecords)
                } else {
                    Ok(ips)
                }
            }
            None => {
                let found = tokio::net::lookup_host((host, 0))
                    .await
                    .map_err(|e| ResolveFailure::Other(e.to_string()))?;
                let mut ips: Vec<IpAddr> = found.map(|a| a.ip()).collect();
                ips.dedup();
                if ips.is_empty() {
                    Err(ResolveFailure::NoRecords)
                } else {
                    Ok(ips)
                }
            }
        }
    }
}

/// Remediation for a peer whose name did not resolve, used by the connect-type checks.
pub fn unresolved_remediation(host: &str, failure: &ResolveFailure, using_servers: bool) -> String {
    let via = if using_servers {
        "the configured DNS servers"
    } else {
        "the system resolver (/etc/hosts, /etc/resolv.conf)"
    };
    format!(
        "{host} does not resolve via {via}: {}. Add an A/AAAA record for it, or configure DNS \
         servers that serve its zone (the connector queries them on UDP/TCP port 53, outbound).",
        failure.describe()
    )
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// The socket address of a DNS server (its host must be an IP or resolve via the system).
pub async fn server_addr(server: &Endpoint) -> Result<SocketAddr, String> {
    if let Ok(ip) = server.host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, server.port));
    }
    tokio::net::lookup_host((server.host.as_str(), server.port))
        .await
        .map_err(|e| format!("cannot resolve the DNS server's own name: {e}"))?
        .next()
        .ok_or_else(|| "the DNS server's own name has no address".to_string())
}

fn server_unreachable_remediation(server: &Endpoint, what: &str) -> String {
    format!(
        "Allow the connector to send DNS queries to UDP and TCP port {} of {} (outbound, \
         connector → DNS server) for name resolution; {what}. Check that the server runs and \
         that no firewall drops port {} on the way.",
        server.port, server.host, server.port
    )
}

/// Does the server answer at all? Any DNS response counts, even an error code.
pub async fn check_server(server: &Endpoint, timeout: Duration) -> CheckResult {
    let target = server.to_string();
    let addr = match server_addr(server).await {
        Ok(a) => a,
        Err(e) => {
            return CheckResult::fail(
                CheckKind::DnsServer,
                target,
                e.clone(),
                format!("Use an IP address for the DNS server {}: {e}.", server.host),
            );
        }
    };
    let r = match resolver_for(&[addr], timeout) {
        Ok(r) => r,
        Err(e) => return CheckResult::fail(CheckKind::DnsServer, target, e, "Internal error."),
    };
    let answer = tokio::time::timeout(timeout, r.soa_lookup("."))
        .await
        .unwrap_or(Err(NetError::Timeout));
    match answer {
        Ok(_) => CheckResult::pass(CheckKind::DnsServer, target, "answers (root SOA)"),
        Err(e) => match classify(&e) {
            f @ (ResolveFailure::NxDomain
            | ResolveFailure::NoRecords
            | ResolveFailure::ServerError(_)) => CheckResult::pass(
                CheckKind::DnsServer,
                target,
                format!("answers ({})", f.describe()),
            ),
            ResolveFailure::Timeout => CheckResult::fail(
                CheckKind::DnsServer,
                target,
                format!("no answer within {} s", timeout.as_secs_f32()),
                server_unreachable_remediation(server, "no answer came back (packets dropped?)"),
            ),
            ResolveFailure::Other(e) => CheckResult::fail(
                CheckKind::DnsServer,
                target,
                e.clone(),
                server_unreachable_remediation(server, &format!("the query failed: {e}")),
            ),
        },
    }
}

/// Forward resolution of `name` on one server (`None`: the system resolver), followed by a
/// reverse lookup of the first address. Returns the forward result and, when it passed,
/// the reverse one.
pub async fn check_name(
    name: &str,
    server: Option<&Endpoint>,
    purpose: &str,
    timeout: Duration,
) -> Vec<CheckResult> {
    let deadline = tokio::time::Instant::now() + timeout;
    let at = server.map_or_else(|| "system resolver".to_string(), ToString::to_string);
    let target = format!("{name} @ {at}");
    let why = if purpose.is_empty() {
        String::new()
    } else {
        format!(" The connector needs it to reach the {purpose}.")
    };
    let resolver = match server {
        None => NameResolver { hickory: None },
        Some(s) => match server_addr(s).await {
            Ok(addr) => match resolver_for(&[addr], timeout) {
                Ok(r) => NameResolver { hickory: Some(r) },
                Err(e) => {
                    return vec![CheckResult::fail(
                        CheckKind::Dns,
                        target,
                        e,
                        "Internal error.",
                    )];
                }
            },
            Err(e) => {
                return vec![CheckResult::fail(
                    CheckKind::Dns,
                    target,
                    e.clone(),
                    format!("Use an IP address for the DNS server: {e}."),
                )];
            }
        },
    };
    let resolved = tokio::time::timeout_at(deadline, resolver.resolve(name))
        .await
        .unwrap_or(Err(ResolveFailure::Timeout));
    let ips = match resolved {
        Ok(ips) => ips,
        Err(f) => {
            let remediation = match (&f, server) {
                (ResolveFailure::NxDomain, Some(s)) => format!(
                    "Add an A (or AAAA) record for {name} in DNS: {} answers that the name does \
                     not exist (NXDOMAIN).{why}",
                    s.host
                ),
                (ResolveFailure::NoRecords, Some(s)) => format!(
                    "Add an A (or AAAA) record for {name}: {} knows the name but returns no \
                     address.{why}",
                    s.host
                ),
                (ResolveFailure::ServerError(code), Some(s)) => format!(
                    "{} refuses or fails to resolve {name} ({code}): allow recursive queries \
                     from the connector's address, or configure a DNS server that serves this \
                     zone.{why}",
                    s.host
                ),
                (ResolveFailure::Timeout, Some(s)) => server_unreachable_remediation(
                    s,
                    &format!("no answer came back within {} s", timeout.as_secs_f32()),
                ),
                (_, Some(s)) => server_unreachable_remediation(s, &f.describe()),
                (_, None) => unresolved_remediation(name, &f, false),
            };
            return vec![CheckResult::fail(
                CheckKind::Dns,
                target,
                f.describe(),
                remediation,
            )];
        }
    };
    let shown: Vec<String> = ips.iter().map(ToString::to_string).collect();
    let forward = CheckResult::pass(CheckKind::Dns, target, shown.join(", "));
    let reverse = match &resolver.hickory {
        Some(r) => tokio::time::timeout_at(deadline, reverse(r, ips[0], &at, name))
            .await
            .unwrap_or_else(|_| {
                CheckResult::warn(
                    CheckKind::ReverseDns,
                    format!("{} @ {at}", ips[0]),
                    "no answer in time",
                    format!(
                        "The PTR query for {} got no answer within the check's time.",
                        ips[0]
                    ),
                )
            }),
        None => return vec![forward],
    };
    vec![forward, reverse]
}

async fn reverse(r: &TokioResolver, ip: IpAddr, at: &str, name: &str) -> CheckResult {
    let target = format!("{ip} @ {at}");
    let fix = |what: &str| {
        format!(
            "Add a PTR record for {ip} ({what}) so logs, support bundles and peers that check \
             reverse DNS show {name}; the connector works without it."
        )
    };
    match r.reverse_lookup(ip).await {
        Ok(lookup) => {
            let names: Vec<String> = lookup
                .answers()
                .iter()
                .filter_map(|rec| match &rec.data {
                    RData::PTR(p) => Some(p.to_string()),
                    _ => None,
                })
                .collect();
            if names.is_empty() {
                return CheckResult::warn(
                    CheckKind::ReverseDns,
                    target,
                    "no PTR record",
                    fix("none found"),
                );
            }
            let matches = names.iter().any(|n| {
                n.trim_end_matches('.')
                    .eq_ignore_ascii_case(name.trim_end_matches('.'))
            });
            if matches {
                CheckResult::pass(CheckKind::ReverseDns, target, names.join(", "))
            } else {
                CheckResult::warn(
                    CheckKind::ReverseDns,
                    target,
                    format!("{} (not {name})", names.join(", ")),
                    fix("it names another host"),
                )
            }
        }
        Err(e) => {
            let f = classify(&e);
            CheckResult::warn(
                CheckKind::ReverseDns,
                target,
                f.describe(),
                fix("none found"),
            )
        }
    }
}
