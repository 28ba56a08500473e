//! TCP connect check, and the connect step the TLS and proxy checks share.

use crate::dns::{NameResolver, ResolveFailure, unresolved_remediation};
use crate::plan::{Endpoint, Role, Target};
use crate::result::{CheckKind, CheckResult};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Why a TCP connection could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectFailure {
    Unresolved(ResolveFailure),
    /// The peer (or a firewall) answered with a reset.
    Refused(SocketAddr),
    /// No answer at all: dropped on the way.
    TimedOut(SocketAddr),
    /// The local stack or a router says there is no route.
    NoRoute(SocketAddr, String),
    Other(SocketAddr, String),
}

impl ConnectFailure {
    /// Short value text for the result row.
    pub fn value(&self, timeout: Duration) -> String {
        match self {
            Self::Unresolved(f) => format!("name does not resolve: {}", f.describe()),
            Self::Refused(a) => format!("connection refused by {a}"),
            Self::TimedOut(a) => format!("no answer from {a} within {} s", timeout.as_secs_f32()),
            Self::NoRoute(a, e) => format!("no route to {a}: {e}"),
            Self::Other(a, e) => format!("{a}: {e}"),
        }
    }

    /// What to do, naming the port, the direction and the reason.
    pub fn remediation(&self, e: &Endpoint, role: &Role, using_dns_servers: bool) -> String {
        let reason = role.reason();
        let why = if reason.is_empty() {
            String::new()
        } else {
            format!(" {reason}")
        };
        let allow = format!(
            "Allow the connector to initiate TCP connections to port {} of {} (outbound, \
             connector → {}){why}",
            e.port,
            e.host,
            role.peer()
        );
        match self {
            Self::Unresolved(f) => unresolved_remediation(&e.host, f, using_dns_servers),
            Self::Refused(_) => format!(
                "{allow}. The connection was refused: nothing listens on port {} of {}, or a \
                 firewall rejects it. Check that the service runs and listens on that port.",
                e.port, e.host
            ),
            Self::TimedOut(_) => format!(
                "{allow}. No answer came back: a firewall on the way is probably dropping TCP \
                 port {}.",
                e.port
            ),
            Self::NoRoute(a, _) => format!(
                "The connector has no route to {} ({a}): check the appliance's gateway and \
                 routes (network settings). {allow}.",
                e.host
            ),
            Self::Other(_, err) => format!("{allow}. The connection failed: {err}."),
        }
    }
}

/// Resolve and connect, trying each address until one answers or `deadline`.
pub async fn connect(
    e: &Endpoint,
    resolver: &NameResolver,
    deadline: Instant,
) -> Result<(TcpStream, SocketAddr), ConnectFailure> {
    let ips = tokio::time::timeout_at(deadline.into(), resolver.resolve(&e.host))
        .await
        .unwrap_or(Err(ResolveFailure::Timeout))
        .map_err(ConnectFailure::Unresolved)?;
    let mut last = None;
    for ip in ips {
        let addr = SocketAddr::new(ip, e.port);
        match tokio::time::timeout_at(deadline.into(), TcpStream::connect(addr)).await {
            Err(_) => return Err(ConnectFailure::TimedOut(addr)),
            Ok(Ok(s)) => return Ok((s, addr)),
            Ok(Err(err)) => {
                last = Some(match (err.kind(), err.raw_os_error()) {
                    (std::io::ErrorKind::ConnectionRefused, _) => ConnectFailure::Refused(addr),
                    (_, Some(101 | 113)) => ConnectFailure::NoRoute(addr, err.to_string()),
                    (std::io::ErrorKind::TimedOut, _) => ConnectFailure::TimedOut(addr),
                    _ => ConnectFailure::Other(addr, err.to_string()),
                });
            }
        }
    }
    Err(last.unwrap_or(ConnectFailure::Unresolved(ResolveFailure::NoRecords)))
}

/// The TCP connect check.
pub async fn check(
    t: &Target,
    resolver: &NameResolver,
    using_dns_servers: bool,
    timeout: Duration,
) -> CheckResult {
    let start = Instant::now();
    match connect(&t.endpoint, resolver, start + timeout).await {
        Ok((_stream, addr)) => CheckResult::pass(
            CheckKind::Tcp,
            t.endpoint.to_string(),
            format!(
                "connected to {addr} in {:.1} ms",
                start.elapsed().as_secs_f64() * 1e3
            ),
        ),
        Err(f) => CheckResult::fail(
            CheckKind::Tcp,
            t.endpoint.to_string(),
            f.value(timeout),
            f.remediation(&t.endpoint, &t.role, using_dns_servers),
        ),
    }
}
