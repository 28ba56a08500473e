//! `godwit check`: prerequisite checks (NTP, DNS, ICMP, TCP, TLS, proxy) from the settings file
//! and/or ad-hoc flags. Exit 0 when nothing fails (warnings allowed), 1 when a check fails,
//! 2 on a usage or input error.

use anyhow::Context;
use godwit_netcheck::plan::{Endpoint, ProxyUrl, Target};
use godwit_netcheck::{CheckResult, Plan, Settings, Status, all_passed, run_bound, run_checks};
use serde_json::Value;
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
    // Parsed after clap, so that a refused URL (one carrying a password) is never echoed.
    #[arg(long = "proxy", value_name = "URL")]
    pub proxy: Vec<String>,
    /// Read the proxy password (for a `--proxy http://USER@HOST:PORT`) from this file's first
    /// line; otherwise from `GODWIT_PROXY_PASSWORD`.
    #[arg(long = "proxy-password-file", value_name = "FILE")]
    pub proxy_password_file: Option<PathBuf>,
    /// A vSphere source (`vsphere://USER@HOST[:PORT]`): log in (password from
    /// `GODWIT_PASSWORD` or --password-file, certificate pinned with --source-fingerprint or
    /// --trust-file) and check the vCenter and every ESXi host its inventory knows (TCP 443 and
    /// 902, TLS on 443, DNS, ICMP).
    #[arg(long = "vsphere-source", value_name = "URL")]
    pub vsphere_source: Option<String>,
    /// SHA-256 fingerprint of the --vsphere-source certificate.
    #[arg(
        long = "source-fingerprint",
        value_name = "SHA256:HEX",
        requires = "vsphere_source"
    )]
    pub source_fingerprint: Option<String>,
    /// Known-hosts style trust file (`HOST[:PORT] SHA256:...` lines) for the vCenter and its
    /// ESXi hosts; their TLS checks then also compare the pin.
    #[arg(long = "trust-file", value_name = "FILE", requires = "vsphere_source")]
    pub trust_file: Option<PathBuf>,
    /// The --vsphere-source password file (first line); otherwise `GODWIT_PASSWORD`.
    #[arg(
        long = "password-file",
        value_name = "FILE",
        requires = "vsphere_source"
    )]
    pub password_file: Option<PathBuf>,
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

fn build_plan(args: &CheckArgs) -> anyhow::Result<(Plan, Vec<Value>)> {
    let mut plan = Plan::default();
    let mut privileges = Vec::new();
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
    for url in &args.proxy {
        // The error redacts any password; clap's own "invalid value" message would not.
        plan.proxies
            .push(ProxyUrl::parse(url).map_err(|e| anyhow::anyhow!("--proxy: {e}"))?);
    }
    if plan.proxies.iter().any(|p| p.auth.is_some()) {
        let password = proxy_password(args)?;
        plan.proxies = std::mem::take(&mut plan.proxies)
            .into_iter()
            .map(|p| p.with_password(&password))
            .collect();
    }
    if let Some(url) = &args.vsphere_source {
        privileges = add_vsphere_source(args, url, &mut plan)?;
    }
    plan.options.timeout = args.timeout;
    plan.options.ca_file.clone_from(&args.ca_file);
    Ok((plan, privileges))
}

fn proxy_password(args: &CheckArgs) -> anyhow::Result<String> {
    if let Some(p) = &args.proxy_password_file {
        let s = std::fs::read_to_string(p)
            .with_context(|| format!("reading the proxy password file {}", p.display()))?;
        return Ok(s.lines().next().unwrap_or("").to_string());
    }
    match std::env::var("GODWIT_PROXY_PASSWORD") {
        Ok(p) => Ok(p),
        Err(_) => anyhow::bail!(
            "the proxy URL names a user: give its password in GODWIT_PROXY_PASSWORD or \
             --proxy-password-file FILE"
        ),
    }
}

/// The privileges a replication needs (`godwit_vmware::privileges::ALL`), asked with
/// `HasPrivilegeOnEntity` on the root folder (privileges given there propagate to every VM and
/// datastore; a cycle checks the VM and its datastores themselves before its snapshot). One
/// result per privilege, in the shape of the network checks (`check: "privilege"`).
fn privilege_results(session: &godwit_vmware::session::Session) -> anyhow::Result<Vec<Value>> {
    use godwit_vmware::privileges::ALL;
    let root = session.service_content().root_folder.clone();
    let ids: Vec<&str> = ALL.iter().map(|p| p.id).collect();
    let started = std::time::Instant::now();
    let granted = match session.has_privileges(&root, &ids) {
        Ok(g) => g,
        Err(e) => {
            return Ok(vec![serde_json::json!({
                "check": "privilege",
                "target": format!("{} (root folder)", session.endpoint().authority()),
                "status": "warn",
                "value": format!("privileges could not be checked: {e}"),
                "remediation": Value::Null,
                "purpose": "HasPrivilegeOnEntity",
                "elapsed_ms": 0,
            })]);
        }
    };
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let host = session.endpoint().authority();
    Ok(ALL
        .iter()
        .zip(granted)
        .map(|(p, g)| {
            serde_json::json!({
                "check": "privilege",
                "target": format!("{} on {host} (root folder)", p.id),
                "status": if g { "pass" } else { "fail" },
                "value": if g { "granted" } else { "not granted" },
                "remediation": if g { Value::Null } else { Value::String(format!(
                    "give the account's role the privilege {} (needed for {}; {})",
                    p.id, p.needed_for, p.source
                )) },
                "purpose": format!("needed for {}", p.needed_for),
                "elapsed_ms": ms,
            })
        })
        .collect())
}

/// The vCenter (pinned) and every ESXi host of its inventory, as a settings `[[vcenter]]`
/// entry would add them; returns the privilege results.
fn add_vsphere_source(args: &CheckArgs, url: &str, plan: &mut Plan) -> anyhow::Result<Vec<Value>> {
    use godwit_netcheck::settings::VCenterSettings;
    let source = super::replicate_vsphere::VsphereSourceArgs {
        source: url.to_string(),
        source_fingerprint: args.source_fingerprint.clone(),
        trust_file: args.trust_file.clone(),
        password_file: args.password_file.clone(),
    };
    let session = super::replicate_vsphere::connect(&source)?;
    let hosts = session.all_of_kind("HostSystem", &["name"]);
    let privileges = privilege_results(&session);
    if let Err(e) = session.logout() {
        tracing::warn!(error = %e, "logout failed");
    }
    let mut esxi_hosts: Vec<String> = hosts?
        .iter()
        .filter_map(|o| o.prop("name").map(|n| n.text.trim().to_string()))
        .filter(|n| !n.is_empty())
        .collect();
    esxi_hosts.sort();
    esxi_hosts.dedup();
    let ep = session.endpoint();
    let vc_pin = session
        .trust
        .pins_for(&ep.host, ep.port)
        .first()
        .map(ToString::to_string);
    let settings = Settings {
        vcenter: vec![VCenterSettings {
            host: godwit_vmware::transport::authority(&ep.host, ep.port),
            fingerprint: vc_pin,
            esxi_hosts: esxi_hosts.clone(),
        }],
        ..Settings::default()
    };
    settings.extend_plan(plan, std::path::Path::new("--vsphere-source"))?;
    // Pins the trust file gives for ESXi hosts are checked too.
    for t in &mut plan.tls {
        if t.fingerprint.is_none()
            && let Some(fp) = session
                .trust
                .pins_for(&t.endpoint.host, t.endpoint.port)
                .first()
        {
            t.fingerprint = godwit_netcheck::plan::Fingerprint::parse(&fp.to_string()).ok();
        }
    }
    eprintln!(
        "godwit check: {} ESXi host(s) from {}: {}",
        esxi_hosts.len(),
        ep.authority(),
        esxi_hosts.join(", ")
    );
    privileges
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let (plan, privileges) = match build_plan(&args) {
        Ok(p) => p,
        Err(e) if args.vsphere_source.is_some() => {
            return Ok(super::replicate_vsphere::report_error(&e));
        }
        Err(e) => return Err(e),
    };
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
        let mut all: Vec<Value> = results
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?;
        all.extend(privileges.iter().cloned());
        serde_json::to_writer_pretty(&mut out, &all)?;
        writeln!(out)?;
    } else {
        write_table(&mut out, &results, std::io::stdout().is_terminal())?;
        for p in &privileges {
            writeln!(
                out,
                "privilege  {}  {}",
                p["target"].as_str().unwrap_or("?"),
                p["value"].as_str().unwrap_or("?")
            )?;
            if let Some(fix) = p["remediation"].as_str() {
                writeln!(out, "           └─ {fix}")?;
            }
        }
    }
    let privileges_ok = privileges.iter().all(|p| p["status"] != "fail");
    Ok(if all_passed(&results) && privileges_ok {
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
