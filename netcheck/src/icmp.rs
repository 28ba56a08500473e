//! ICMP echo check. Uses a raw ICMP socket (root or CAP_NET_RAW), else an unprivileged
//! datagram ICMP socket (allowed by `net.ipv4.ping_group_range`); when neither is allowed the
//! check says which of the two to set instead of failing obscurely.

use crate::dns::{NameResolver, unresolved_remediation};
use crate::icmp_codec::{
    Echo, Family, IcmpMessage, encode_echo_request, parse_icmp_v4, parse_icmp_v6,
    unreachable_reason,
};
use crate::result::{CheckKind, CheckResult};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// Interval between echo requests while waiting for a reply.
const RESEND_EVERY: Duration = Duration::from_secs(1);

/// The remediation when this process may not send ICMP at all.
pub const NOT_PERMITTED_REMEDIATION: &str = "This process may not send ICMP echo requests. Run \
    the connector as root, or give it CAP_NET_RAW (systemd: AmbientCapabilities=CAP_NET_RAW), \
    or allow unprivileged ICMP sockets for its group: sysctl -w \
    net.ipv4.ping_group_range=\"0 2147483647\" (persist it in /etc/sysctl.d/).";

struct IcmpSocket {
    sock: UdpSocket,
    family: Family,
    /// Raw IPv4 sockets deliver the IP header; datagram sockets and ICMPv6 do not.
    with_ip_header: bool,
    /// Datagram sockets: the kernel rewrites the identifier, so only the sequence is matched.
    kernel_ident: bool,
}

fn open(family: Family) -> Result<IcmpSocket, std::io::Error> {
    let (domain, proto) = match family {
        Family::V4 => (Domain::IPV4, Protocol::ICMPV4),
        Family::V6 => (Domain::IPV6, Protocol::ICMPV6),
    };
    let (socket, raw) = match Socket::new(domain, Type::RAW, Some(proto)) {
        Ok(s) => (s, true),
        Err(raw_err) => match Socket::new(domain, Type::DGRAM, Some(proto)) {
            Ok(s) => (s, false),
            Err(dgram_err) => {
                // Report the more telling of the two (permission beats "not supported").
                return Err(if raw_err.kind() == std::io::ErrorKind::PermissionDenied {
                    raw_err
                } else {
                    dgram_err
                });
            }
        },
    };
    socket.set_nonblocking(true)?;
    let std_sock: std::net::UdpSocket = socket.into();
    Ok(IcmpSocket {
        sock: UdpSocket::from_std(std_sock)?,
        family,
        with_ip_header: raw && family == Family::V4,
        kernel_ident: !raw,
    })
}

/// Ping `host` until a reply or `timeout`.
pub async fn check(
    host: &str,
    resolver: &NameResolver,
    using_dns_servers: bool,
    timeout: Duration,
) -> CheckResult {
    let deadline = tokio::time::Instant::now() + timeout;
    let resolved = tokio::time::timeout_at(deadline, resolver.resolve(host))
        .await
        .unwrap_or(Err(crate::dns::ResolveFailure::Timeout));
    let ip = match resolved {
        Ok(ips) => ips[0],
        Err(f) => {
            return CheckResult::fail(
                CheckKind::Icmp,
                host,
                "name does not resolve",
                unresolved_remediation(host, &f, using_dns_servers),
            );
        }
    };
    let target = if host == ip.to_string() {
        host.to_string()
    } else {
        format!("{host} ({ip})")
    };
    let family = if ip.is_ipv4() { Family::V4 } else { Family::V6 };
    let sock = match open(family) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return CheckResult::warn(
                CheckKind::Icmp,
                target,
                format!("ICMP not permitted ({e})"),
                NOT_PERMITTED_REMEDIATION,
            );
        }
        Err(e) => {
            return CheckResult::warn(
                CheckKind::Icmp,
                target,
                format!("cannot open an ICMP socket: {e}"),
                NOT_PERMITTED_REMEDIATION,
            );
        }
    };
    let blocked = |what: &str| {
        format!(
            "Allow ICMP echo requests from the connector to {host} (outbound) and echo replies \
             back (inbound); {what}. The connector uses ICMP only to report reachability: if \
             the TCP checks to {host} pass, this can be accepted."
        )
    };
    match tokio::time::timeout_at(deadline, ping(&sock, ip)).await {
        Ok(Ok(rtt)) => CheckResult::pass(
            CheckKind::Icmp,
            target,
            format!("echo reply in {:.1} ms", rtt.as_secs_f64() * 1e3),
        ),
        Ok(Err(PingError::Unreachable { from, reason })) => CheckResult::fail(
            CheckKind::Icmp,
            target,
            format!("{reason} (reported by {from})"),
            format!(
                "{from} reports {host} as {reason}: check the routes and firewalls between the \
                 connector and {host}."
            ),
        ),
        Ok(Err(PingError::NoRoute(e))) => CheckResult::fail(
            CheckKind::Icmp,
            target,
            format!("no route: {e}"),
            format!(
                "The connector has no route to {ip}: check the appliance's gateway and routes \
                 (network settings) for the network of {host}."
            ),
        ),
        Ok(Err(PingError::Io(e))) => {
            CheckResult::fail(CheckKind::Icmp, target, e.clone(), blocked(&e))
        }
        Err(_) => CheckResult::fail(
            CheckKind::Icmp,
            target,
            format!("no echo reply within {} s", timeout.as_secs_f32()),
            blocked("no reply came back (dropped on the way?)"),
        ),
    }
}

#[derive(Debug)]
enum PingError {
    Unreachable { from: IpAddr, reason: &'static str },
    NoRoute(String),
    Io(String),
}

fn send_error(e: std::io::Error) -> PingError {
    // ENETUNREACH / EHOSTUNREACH from the local stack.
    match e.raw_os_error() {
        Some(101 | 113) => PingError::NoRoute(e.to_string()),
        _ => PingError::Io(e.to_string()),
    }
}

async fn ping(s: &IcmpSocket, ip: IpAddr) -> Result<Duration, PingError> {
    let ident = u16::try_from(std::process::id() & 0xFFFF).unwrap_or(0) ^ 0x6777;
    let dest = SocketAddr::new(ip, 0);
    let start = Instant::now();
    let mut seq: u16 = 0;
    let mut buf = vec![0u8; 2048];
    let mut next_send = Instant::now();
    loop {
        if Instant::now() >= next_send {
            seq = seq.wrapping_add(1);
            let echo = Echo {
                ident,
                seq,
                payload: b"godwit netcheck".to_vec(),
            };
            s.sock
                .send_to(&encode_echo_request(s.family, &echo), dest)
                .await
                .map_err(send_error)?;
            next_send = Instant::now() + RESEND_EVERY;
        }
        let wait = next_send.saturating_duration_since(Instant::now());
        let Ok(received) = tokio::time::timeout(wait, s.sock.recv_from(&mut buf)).await else {
            continue; // time to resend
        };
        let (n, from) = received.map_err(send_error)?;
        let parsed = match s.family {
            Family::V4 => parse_icmp_v4(&buf[..n], s.with_ip_header),
            Family::V6 => parse_icmp_v6(&buf[..n]),
        };
        let ours = |e: &Echo| (s.kernel_ident || e.ident == ident) && e.seq <= seq && e.seq > 0;
        match parsed {
            Ok(IcmpMessage::EchoReply(e)) if from.ip() == ip && ours(&e) => {
                return Ok(start.elapsed());
            }
            Ok(IcmpMessage::Unreachable {
                code,
                quoted: Some(q),
                quoted_destination,
            }) if ours(&q) && quoted_destination.is_none_or(|d| d == ip) => {
                return Err(PingError::Unreachable {
                    from: from.ip(),
                    reason: unreachable_reason(s.family, code),
                });
            }
            _ => {} // someone else's traffic (raw sockets see every ICMP message)
        }
    }
}
