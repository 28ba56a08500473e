//! NTP check: one SNTP exchange with each server over UDP, reporting clock offset and stratum.
//! Warn above 1 s of offset, fail above 60 s; fail when no server answers (a server that does
//! not answer while another does is a warning).

use crate::dns::{NameResolver, unresolved_remediation};
use crate::ntp_codec::{
    LeapIndicator, NtpMode, NtpPacket, NtpTimestamp, offset_and_delay, parse_ntp_packet,
};
use crate::plan::Endpoint;
use crate::result::{CheckKind, CheckResult, Status};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::UdpSocket;

/// Offsets above this warn.
pub const WARN_OFFSET: Duration = Duration::from_secs(1);
/// Offsets above this fail.
pub const FAIL_OFFSET: Duration = Duration::from_secs(60);

/// Result of one server's exchange.
struct Outcome {
    result: CheckResult,
    answered: bool,
}

/// Check all servers concurrently. When at least one answered, servers that did not answer
/// are downgraded from fail to warn (time sync still works through the others).
pub async fn check_servers(
    servers: &[Endpoint],
    resolver: Arc<NameResolver>,
    using_dns_servers: bool,
    timeout: Duration,
) -> Vec<CheckResult> {
    let mut set = tokio::task::JoinSet::new();
    for (i, s) in servers.iter().cloned().enumerate() {
        let resolver = Arc::clone(&resolver);
        set.spawn(async move {
            (
                i,
                check_one(&s, &resolver, using_dns_servers, timeout).await,
            )
        });
    }
    let mut outcomes: Vec<(usize, Outcome)> = set.join_all().await;
    outcomes.sort_by_key(|(i, _)| *i);
    let any_answered = outcomes.iter().any(|(_, o)| o.answered);
    outcomes
        .into_iter()
        .map(|(_, mut o)| {
            if any_answered && !o.answered && o.result.status == Status::Fail {
                o.result.status = Status::Warn;
                o.result.value.push_str(" (other NTP servers answered)");
            }
            o.result
        })
        .collect()
}

fn no_answer_remediation(server: &Endpoint, what: &str) -> String {
    format!(
        "Allow the connector to send NTP queries to UDP port {} of {} (outbound, connector → \
         time server) so it can keep its clock in sync; {what}. Check that the server runs and \
         that no firewall drops UDP {} on the way. Certificate checks, authentication and \
         snapshot times go wrong when the clock drifts.",
        server.port, server.host, server.port
    )
}

async fn check_one(
    server: &Endpoint,
    resolver: &NameResolver,
    using_dns_servers: bool,
    timeout: Duration,
) -> Outcome {
    let target = server.to_string();
    let fail = |value: String, remediation: String| Outcome {
        result: CheckResult::fail(CheckKind::Ntp, target.clone(), value, remediation),
        answered: false,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let resolved = tokio::time::timeout_at(deadline, resolver.resolve(&server.host))
        .await
        .unwrap_or(Err(crate::dns::ResolveFailure::Timeout));
    let ip = match resolved {
        Ok(ips) => ips[0],
        Err(f) => {
            return fail(
                "name does not resolve".into(),
                unresolved_remediation(&server.host, &f, using_dns_servers),
            );
        }
    };
    let addr = SocketAddr::new(ip, server.port);
    match exchange(
        addr,
        deadline.saturating_duration_since(tokio::time::Instant::now()),
    )
    .await
    {
        Ok(reply) => Outcome {
            result: judge(server, &reply),
            answered: true,
        },
        Err(ExchangeError::Timeout) => fail(
            format!("no answer within {} s", timeout.as_secs_f32()),
            no_answer_remediation(server, "no answer came back (packets dropped?)"),
        ),
        Err(ExchangeError::Refused) => fail(
            "port unreachable (ICMP)".into(),
            no_answer_remediation(
                server,
                "the host answered that nothing listens on that port",
            ),
        ),
        Err(ExchangeError::NoRoute(e)) => fail(
            format!("no route: {e}"),
            format!(
                "The connector has no route to {} ({ip}): check the appliance's gateway and \
                 routes (network settings). {}",
                server.host,
                no_answer_remediation(server, "the local network stack has no route")
            ),
        ),
        Err(ExchangeError::Io(e)) => fail(e.clone(), no_answer_remediation(server, &e)),
    }
}

/// What one exchange measured.
#[derive(Debug)]
pub struct NtpReply {
    pub packet: NtpPacket,
    /// Server clock minus ours, nanoseconds.
    pub offset_ns: i128,
    pub delay_ns: i128,
}

#[derive(Debug)]
enum ExchangeError {
    Timeout,
    Refused,
    NoRoute(String),
    Io(String),
}

async fn exchange(addr: SocketAddr, timeout: Duration) -> Result<NtpReply, ExchangeError> {
    let io = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            ExchangeError::Refused
        } else if matches!(e.raw_os_error(), Some(101 | 113)) {
            ExchangeError::NoRoute(e.to_string())
        } else {
            ExchangeError::Io(e.to_string())
        }
    };
    let local: IpAddr = match addr {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let work = async {
        let sock = UdpSocket::bind((local, 0)).await.map_err(io)?;
        sock.connect(addr).await.map_err(io)?;
        let t1 = NtpTimestamp::from_system_time(SystemTime::now());
        sock.send(&NtpPacket::client_request(t1).encode())
            .await
            .map_err(io)?;
        let mut buf = [0u8; 512];
        loop {
            let n = sock.recv(&mut buf).await.map_err(io)?;
            let t4 = NtpTimestamp::from_system_time(SystemTime::now());
            let Ok(packet) = parse_ntp_packet(&buf[..n]) else {
                continue; // not NTP: keep waiting for the real answer
            };
            // A reply must echo our transmit time; anything else is stale or spoofed.
            if packet.mode != NtpMode::Server || packet.origin_ts != t1 {
                continue;
            }
            let (offset_ns, delay_ns) =
                offset_and_delay(t1, packet.receive_ts, packet.transmit_ts, t4);
            return Ok(NtpReply {
                packet,
                offset_ns,
                delay_ns,
            });
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(ExchangeError::Timeout))
}

/// Seconds with a sign and millisecond precision, e.g. `+120.004 s`.
fn seconds(ns: i128) -> String {
    let sign = if ns < 0 { '-' } else { '+' };
    let abs = ns.unsigned_abs();
    format!(
        "{sign}{}.{:03} s",
        abs / 1_000_000_000,
        (abs % 1_000_000_000) / 1_000_000
    )
}

/// Status of an answered exchange.
fn judge(server: &Endpoint, r: &NtpReply) -> CheckResult {
    let target = server.to_string();
    let p = &r.packet;
    if let Some(code) = p.kiss_code() {
        return CheckResult::fail(
            CheckKind::Ntp,
            target,
            format!("kiss-o'-death {code}"),
            format!(
                "{} refuses to serve time to the connector (kiss code {code}): allow the \
                 connector's address in the server's access rules (e.g. chrony `allow`), or use \
                 another time server.",
                server.host
            ),
        );
    }
    if p.leap == LeapIndicator::Unsynchronized || p.stratum >= 16 {
        return CheckResult::fail(
            CheckKind::Ntp,
            target,
            format!("server unsynchronised (stratum {}, leap alarm)", p.stratum),
            format!(
                "{} answers on UDP {} but its own clock is not synchronised: give it a working \
                 upstream time source, or point the connector at another NTP server.",
                server.host, server.port
            ),
        );
    }
    let value = format!(
        "offset {}, stratum {}, delay {:.1} ms",
        seconds(r.offset_ns),
        p.stratum,
        r.delay_ns as f64 / 1e6
    );
    let abs = r.offset_ns.unsigned_abs();
    let direction = if r.offset_ns > 0 {
        "behind"
    } else {
        "ahead of"
    };
    let fix = |limit: &str| {
        format!(
            "The connector's clock is {} {direction} {} ({limit}). Let the appliance \
             synchronise its clock from this server (NTP, UDP port {} outbound) and check \
             the hypervisor's time sync setting: TLS certificate validity, WinRM/NTLM \
             authentication and snapshot times depend on a correct clock.",
            seconds(r.offset_ns).trim_start_matches(['+', '-']),
            server.host,
            server.port
        )
    };
    if abs > FAIL_OFFSET.as_nanos() {
        CheckResult::fail(CheckKind::Ntp, target, value, fix("more than 60 s"))
    } else if abs > WARN_OFFSET.as_nanos() {
        CheckResult::warn(CheckKind::Ntp, target, value, fix("more than 1 s"))
    } else {
        CheckResult::pass(CheckKind::Ntp, target, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_format() {
        assert_eq!(seconds(120_004_000_000), "+120.004 s");
        assert_eq!(seconds(-1_500_000_000), "-1.500 s");
        assert_eq!(seconds(0), "+0.000 s");
    }

    #[tokio::test]
    async fn silent_server_times_out_within_bound() {
        // A bound UDP socket that never answers.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        let start = std::time::Instant::now();
        let r = exchange(addr, Duration::from_millis(300)).await;
        assert!(matches!(r, Err(ExchangeError::Timeout)), "{r:?}");
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
