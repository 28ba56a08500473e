//! # godwit-netcheck
//!
//! Prerequisite checks: NTP, DNS, ICMP, TCP, TLS and proxy reachability, each reported as
//! pass / warn / fail with the measured value and a remediation text that names the port, the
//! direction and the reason. The engine behind `godwit check` and the wizard's checks page.
//!
//! ```no_run
//! # async fn demo() {
//! use godwit_netcheck::{Plan, run_checks, plan::Endpoint};
//! let mut plan = Plan::default();
//! plan.ntp.push(Endpoint::parse("ntp.corp", Some(123)).unwrap());
//! let results = run_checks(&plan).await; // ends within plan.options.timeout + RUN_GRACE
//! println!("{}", serde_json::to_string(&results).unwrap());
//! # }
//! ```
//!
//! Checks run concurrently, each under the per-check timeout; the whole run ends within
//! `timeout + RUN_GRACE` even when every packet is dropped.
//!
//! Pure parsers (fuzz entry points): [`ntp_codec::parse_ntp_packet`],
//! [`icmp_codec::parse_icmp_v4`], [`icmp_codec::parse_icmp_v6`], [`x509::parse_certificate`],
//! [`proxy::parse_connect_response`].

pub mod dns;
pub mod icmp;
pub mod icmp_codec;
pub mod ntp;
pub mod ntp_codec;
pub mod plan;
pub mod proxy;
pub mod result;
pub mod settings;
pub mod tcp;
pub mod tls;
pub mod x509;

pub use plan::{Options, Plan};
pub use result::{CheckKind, CheckResult, Status, all_passed};
pub use settings::Settings;

use dns::NameResolver;
use plan::Role;
use result::Millis;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tls::TlsContext;

/// Time a run may take beyond the per-check timeout (task start-up, result collection).
pub const RUN_GRACE: Duration = Duration::from_secs(1);

/// Upper bound on the wall time of [`run_checks`] for a plan.
pub fn run_bound(plan: &Plan) -> Duration {
    plan.options.timeout + RUN_GRACE
}

type CheckFuture = Pin<Box<dyn Future<Output = Vec<CheckResult>> + Send>>;

/// One unit of concurrent work, with what to report if it overruns.
struct Job {
    kind: CheckKind,
    target: String,
    purpose: String,
    work: CheckFuture,
}

/// Run every check of `plan` concurrently and return the results in plan order
/// (NTP, DNS, ICMP, TCP, TLS, proxy).
pub async fn run_checks(plan: &Plan) -> Vec<CheckResult> {
    let timeout = plan.options.timeout;
    let mut early: Vec<CheckResult> = Vec::new();

    let mut dns_addrs: Vec<SocketAddr> = Vec::new();
    for s in &plan.dns_servers {
        match s.host.parse::<IpAddr>() {
            Ok(ip) => dns_addrs.push(SocketAddr::new(ip, s.port)),
            Err(_) => early.push(CheckResult::fail(
                CheckKind::DnsServer,
                s.to_string(),
                "not an IP address",
                format!("Give the DNS server {} as an IP address.", s.host),
            )),
        }
    }
    let using_dns = !dns_addrs.is_empty();
    let resolver = match NameResolver::new(&dns_addrs, timeout) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            early.push(CheckResult::fail(
                CheckKind::DnsServer,
                "-",
                e,
                "Internal error.",
            ));
            Arc::new(NameResolver::system())
        }
    };
    let tls_ctx = match TlsContext::load(
        plan.options.system_ca_file.as_deref(),
        plan.options.ca_file.as_deref(),
    ) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            early.push(CheckResult::fail(
                CheckKind::Tls,
                "--ca-file",
                e.clone(),
                format!("Fix the CA file: {e}."),
            ));
            match TlsContext::load(None, None) {
                Ok(c) => Arc::new(c),
                Err(_) => return early,
            }
        }
    };

    let jobs = plan_jobs(plan, &resolver, &tls_ctx, using_dns, timeout);
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let count = jobs.len();
    for (i, job) in jobs.into_iter().enumerate() {
        set.spawn(async move {
            let t0 = Instant::now();
            // Inner deadlines are `timeout`; this outer one only catches overruns.
            let limit = timeout + RUN_GRACE / 2;
            let mut rows = match tokio::time::timeout(limit, job.work).await {
                Ok(rows) => rows,
                Err(_) => vec![CheckResult::fail(
                    job.kind,
                    job.target.clone(),
                    format!("no result within {} s", limit.as_secs_f32()),
                    format!(
                        "The {} check of {} did not finish in time: packets to it are probably \
                         dropped; see the other checks of this host.",
                        job.kind, job.target
                    ),
                )],
            };
            let elapsed = Millis::from_duration(t0.elapsed());
            for r in &mut rows {
                if r.purpose.is_empty() {
                    r.purpose.clone_from(&job.purpose);
                }
                if r.elapsed_ms.0 == 0 {
                    r.elapsed_ms = elapsed;
                }
            }
            (i, rows)
        });
    }
    let mut slots: Vec<Option<Vec<CheckResult>>> = vec![None; count];
    let deadline = started + run_bound(plan);
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline.into(), set.join_next()).await {
        if let Ok((i, rows)) = joined {
            slots[i] = Some(rows);
        }
    }
    set.abort_all();
    let mut out = early;
    for rows in slots.into_iter().flatten() {
        out.extend(rows);
    }
    out
}

fn purpose_of(plan: &Plan, host: &str) -> String {
    plan.tcp
        .iter()
        .chain(&plan.tls)
        .find(|t| t.endpoint.host == host && !t.purpose.is_empty())
        .map(|t| t.purpose.clone())
        .unwrap_or_default()
}

fn plan_jobs(
    plan: &Plan,
    resolver: &Arc<NameResolver>,
    tls_ctx: &Arc<TlsContext>,
    using_dns: bool,
    timeout: Duration,
) -> Vec<Job> {
    let mut jobs = Vec::new();
    if !plan.ntp.is_empty() {
        let servers = plan.ntp.clone();
        let r = Arc::clone(resolver);
        jobs.push(Job {
            kind: CheckKind::Ntp,
            target: servers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            purpose: String::new(),
            work: Box::pin(
                async move { ntp::check_servers(&servers, r, using_dns, timeout).await },
            ),
        });
    }
    for s in &plan.dns_servers {
        if s.host.parse::<IpAddr>().is_err() {
            continue; // reported early
        }
        let s2 = s.clone();
        jobs.push(Job {
            kind: CheckKind::DnsServer,
            target: s.to_string(),
            purpose: String::new(),
            work: Box::pin(async move { vec![dns::check_server(&s2, timeout).await] }),
        });
    }
    for name in &plan.resolve {
        let servers: Vec<Option<plan::Endpoint>> = if plan.dns_servers.is_empty() {
            vec![None]
        } else {
            plan.dns_servers
                .iter()
                .filter(|s| s.host.parse::<IpAddr>().is_ok())
                .cloned()
                .map(Some)
                .collect()
        };
        for server in servers {
            let n = name.clone();
            let purpose = purpose_of(plan, name);
            let p2 = purpose.clone();
            jobs.push(Job {
                kind: CheckKind::Dns,
                target: format!(
                    "{name} @ {}",
                    server
                        .as_ref()
                        .map_or("system resolver".into(), ToString::to_string)
                ),
                purpose,
                work: Box::pin(
                    async move { dns::check_name(&n, server.as_ref(), &p2, timeout).await },
                ),
            });
        }
    }
    for host in &plan.ping {
        let h = host.clone();
        let r = Arc::clone(resolver);
        jobs.push(Job {
            kind: CheckKind::Icmp,
            target: host.clone(),
            purpose: purpose_of(plan, host),
            work: Box::pin(async move { vec![icmp::check(&h, &r, using_dns, timeout).await] }),
        });
    }
    for t in &plan.tcp {
        let t2 = t.clone();
        let r = Arc::clone(resolver);
        jobs.push(Job {
            kind: CheckKind::Tcp,
            target: t.endpoint.to_string(),
            purpose: t.purpose.clone(),
            work: Box::pin(async move { vec![tcp::check(&t2, &r, using_dns, timeout).await] }),
        });
    }
    for t in &plan.tls {
        let t2 = t.clone();
        let r = Arc::clone(resolver);
        let c = Arc::clone(tls_ctx);
        jobs.push(Job {
            kind: CheckKind::Tls,
            target: t.endpoint.to_string(),
            purpose: t.purpose.clone(),
            work: Box::pin(async move { vec![tls::check(&t2, &c, &r, using_dns, timeout).await] }),
        });
    }
    for p in &plan.proxies {
        let dests: Vec<Option<plan::Target>> = {
            let d: Vec<_> = plan
                .tls
                .iter()
                .filter(|t| matches!(t.role, Role::AdHoc | Role::S3Endpoint))
                .cloned()
                .map(Some)
                .collect();
            if d.is_empty() { vec![None] } else { d }
        };
        for dest in dests {
            let p2 = p.clone();
            let r = Arc::clone(resolver);
            let c = Arc::clone(tls_ctx);
            let purpose = dest.as_ref().map(|d| d.purpose.clone()).unwrap_or_default();
            jobs.push(Job {
                kind: CheckKind::Proxy,
                target: p.to_string(),
                purpose,
                work: Box::pin(async move {
                    vec![proxy::check(&p2, dest.as_ref(), &c, &r, using_dns, timeout).await]
                }),
            });
        }
    }
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;
    use plan::{Endpoint, Target};

    /// Silent peers on loopback: a UDP socket that never answers NTP and a TCP listener whose
    /// connections never speak TLS. The run still ends within its bound, and each check says
    /// what it saw.
    #[tokio::test]
    async fn silent_peers_end_within_the_bound() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut plan = Plan::default();
        plan.options.timeout = Duration::from_millis(400);
        plan.options.system_ca_file = None;
        plan.ntp
            .push(Endpoint::parse(&udp.local_addr().unwrap().to_string(), None).unwrap());
        let stalled = Endpoint::parse(&tcp.local_addr().unwrap().to_string(), None).unwrap();
        plan.tls.push(Target::adhoc(stalled.clone()));
        plan.tcp.push(Target::adhoc(stalled));
        let start = Instant::now();
        let results = run_checks(&plan).await;
        assert!(
            start.elapsed() < run_bound(&plan),
            "took {:?}",
            start.elapsed()
        );
        let by = |k: CheckKind| results.iter().find(|r| r.check == k).unwrap();
        assert_eq!(by(CheckKind::Ntp).status, Status::Fail);
        assert!(
            by(CheckKind::Ntp)
                .remediation
                .as_deref()
                .unwrap()
                .contains("UDP port")
        );
        assert_eq!(by(CheckKind::Tcp).status, Status::Pass);
        let tls = by(CheckKind::Tls);
        assert_eq!(tls.status, Status::Fail);
        assert!(
            tls.remediation
                .as_deref()
                .unwrap()
                .contains("sends no TLS answer"),
            "{tls:?}"
        );
        assert!(!all_passed(&results));
        let json = serde_json::to_value(&results).unwrap();
        assert_eq!(json[0]["status"], "fail");
        assert_eq!(json[0]["check"], "ntp");
    }
}
