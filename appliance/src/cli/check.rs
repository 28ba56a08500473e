//! `godwit check`: prerequisite checks (NTP, DNS, ICMP, TCP, TLS, proxy) from the settings file
//! and/or ad-hoc flags. Exit 0 when nothing fails (warnings allowed), 1 when a check fails,
//! 2 on a usage or input error.

use anyhow::Context;
use godwit_netcheck::plan::{Endpoint, ProxyUrl, Target};
use godwit_netcheck::{CheckResult, Plan, Settings, Status, all_passed, run_bound, run_checks};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args)]
#[command(after_help = "\
Every check runs concurrently under the per-check timeout (--timeout, default 5 s); the whole \
run ends within TIMEOUT + 1 s even when every packet is dropped.

Exit status: 0 nothing failed (warnings allowed), 1 at least one check failed, 2 usage or \
input error.")]
pub struct CheckArgs {
    /// Settings file (TOML; see docs/checks.md): NTP/DNS servers, proxy, vCenters (and their
    /// ESXi hosts), Hyper-V hosts, staging server, S3 endpoint.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print a JSON array of results instead of a table.
    #[arg(long)]
    pub json: bool,
    /// NTP server to query (UDP, default port 123).
    #[arg(long = "ntp", value_name = "HOST[:PORT]", value_parser = parse_ntp)]
    pub ntp: Vec<Endpoint>,
    /// DNS server to query (IP address, default port 53). Names are then resolved only there.
    #[arg(long = "dns-server", value_name = "IP[:PORT]", value_parser = parse_dns_server)]
    pub dns_servers: Vec<Endpoint>,
    /// Name to resolve forward (A/AAAA) and, from its address, in reverse (PTR).
    #[arg(long = "resolve", value_name = "NAME")]
    pub resolve: Vec<String>,
    /// Host to send ICMP echo requests to.
    #[arg(long = "ping", value_name = "HOST")]
    pub ping: Vec<String>,
    /// TCP connect.
    #[arg(long = "tcp", value_name = "HOST:PORT", value_parser = parse_host_port)]
    pub tcp: Vec<Endpoint>,
    /// TLS handshake and certificate inspection.
    #[arg(long = "tls", value_name = "HOST:PORT", value_parser = parse_host_port)]
    pub tls: Vec<Endpoint>,
    /// HTTP proxy: CONNECT through it to every --tls target.
    #[arg(long = "proxy", value_name = "URL", value_parser = parse_proxy)]
    pub proxy: Vec<ProxyUrl>,
    /// Extra CA certificates (PEM) to trust for the TLS checks, besides the system store.
    #[arg(long = "ca-file", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Per-check timeout in seconds (0.1 to 60).
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = parse_timeout)]
    pub timeout: Duration,
}

fn parse_ntp(s: &str) -> Result<Endpoint, String> {
    Endpoint::parse(s, Some(123)).map_err(|e| e.to_string())
}

fn parse_dns_server(s: &str) -> Result<Endpoint, String> {
    let e = Endpoint::parse(s, Some(53)).map_err(|e| e.to_string())?;
    if e.host.parse::<std::net::IpAddr>().is_err() {
        return Err(format!("`{s}`: a DNS server must be an IP address"));
    }
    Ok(e)
}

fn parse_host_port(s: &str) -> Result<Endpoint, String> {
    Endpoint::parse(s, None).map_err(|e| e.to_string())
}

fn parse_proxy(s: &str) -> Result<ProxyUrl, String> {
    ProxyUrl::parse(s).map_err(|e| e.to_string())
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(0.1..=60.0).contains(&secs) {
        return Err(format!(
            "`{s}`: the timeout must be between 0.1 and 60 seconds"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn build_plan(args: &CheckArgs) -> anyhow::Result<Plan> {
    let mut plan = Plan::default();
    if let Some(path) = &args.config {
        let settings = Settings::load(path)?;
        settings.extend_plan(&mut plan, path)?;
        for (i, s) in plan.dns_servers.iter().enumerate() {
            if s.host.parse::<std::net::IpAddr>().is_err() {
                anyhow::bail!(
                    "{}: network.dns_servers[{i}]: `{}` must be an IP address",
                    path.display(),
                    s.host
                );
            }
        }
    }
    plan.ntp.extend(args.ntp.iter().cloned());
    plan.dns_servers.extend(args.dns_servers.iter().cloned());
    plan.resolve.extend(args.resolve.iter().cloned());
    plan.ping.extend(args.ping.iter().cloned());
    plan.tcp.extend(args.tcp.iter().cloned().map(Target::adhoc));
    plan.tls.extend(args.tls.iter().cloned().map(Target::adhoc));
    plan.proxies.extend(args.proxy.iter().cloned());
    plan.options.timeout = args.timeout;
    plan.options.ca_file.clone_from(&args.ca_file);
    Ok(plan)
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let plan = build_plan(&args)?;
    if plan.is_empty() {
        eprintln!(
            "godwit check: nothing to check: give --config FILE or at least one of --ntp, \
             --dns-server, --resolve, --ping, --tcp, --tls, --proxy"
        );
        return Ok(ExitCode::from(2));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let started = std::time::Instant::now();
    let results = runtime.block_on(run_checks(&plan));
    // Do not wait for anything left behind (e.g. a resolver's background task).
    runtime.shutdown_timeout(Duration::from_millis(100));
    tracing::debug!(
        "checks took {:?} (bound {:?})",
        started.elapsed(),
        run_bound(&plan)
    );
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &results)?;
        writeln!(out)?;
    } else {
        write_table(&mut out, &results, std::io::stdout().is_terminal())?;
    }
    Ok(if all_passed(&results) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn write_table(out: &mut impl Write, results: &[CheckResult], color: bool) -> std::io::Result<()> {
    let w_check = results
        .iter()
        .map(|r| r.check.as_str().len())
        .max()
        .unwrap_or(5)
        .max(5);
    let w_target = results
        .iter()
        .map(|r| r.target.chars().count())
        .max()
        .unwrap_or(6)
        .clamp(6, 48);
    writeln!(
        out,
        "{:<w_check$}  {:<w_target$}  {:<6}  VALUE",
        "CHECK", "TARGET", "STATUS"
    )?;
    for r in results {
        let status = match (color, r.status) {
            (true, Status::Pass) => "\x1b[32mpass\x1b[0m  ".to_string(),
            (true, Status::Warn) => "\x1b[33mwarn\x1b[0m  ".to_string(),
            (true, Status::Fail) => "\x1b[31mfail\x1b[0m  ".to_string(),
            (false, s) => format!("{:<6}", s.as_str()),
        };
        writeln!(
            out,
            "{:<w_check$}  {:<w_target$}  {status}  {}",
            r.check.as_str(),
            r.target,
            r.value
        )?;
        if let Some(fix) = &r.remediation {
            writeln!(out, "{:w_check$}  └─ {fix}", "")?;
        }
    }
    let fails = results.iter().filter(|r| r.status == Status::Fail).count();
    let warns = results.iter().filter(|r| r.status == Status::Warn).count();
    writeln!(
        out,
        "{} checks: {} passed, {warns} warned, {fails} failed",
        results.len(),
        results.len() - fails - warns
    )
}
