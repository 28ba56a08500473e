//! The connector's side of a pushed cycle: running `scripts/push-ranges.ps1` on the host for
//! the planned file ranges, in time-bounded commands ([`push_ranges`]), the ingest URL the host
//! is told ([`IngestUrl`]), and the figures ([`PushReport`]). The data of a disk is pushed by a
//! feeder thread while the transfer reads it ([`Feeder`]); the spool budget
//! ([`super::budget`]) keeps the bytes held between the two bounded.

use super::budget::{self, SpoolBudget};
use super::locator::PushLocator;
use super::plan::{PlannedRange, Resume, rest_of};
use super::ranges::RangeSet;
use super::registry::{IngestRegistry, SessionFile, SessionStats};
use crate::client::Shell;
use crate::error::{Error, Result};
use crate::powershell::with_args;
use crate::transport::Transport;
use crate::trust::Fingerprint;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const PUSH_SCRIPT: &str = include_str!("../../scripts/push-ranges.ps1");

/// Bytes per PUT the uploader sends (the endpoint takes up to 8 MiB).
pub const PUSH_CHUNK: u64 = 4 * 1024 * 1024;
/// Ranges per push-ranges.ps1 command (bounds the script's size).
pub const MAX_RANGES_PER_COMMAND: usize = 500;
/// Seconds one push-ranges.ps1 command pushes before it stops and reports where (so no
/// WinRM command comes near the host's 30-minute MaxProcessesPerShell/timeout caps, whatever
/// the link's speed); the next command goes on from there.
pub const PUSH_COMMAND_SECONDS: u64 = 600;
/// Attempts per PUT after errors (the data is read and hashed again each time).
pub const PUSH_RETRIES: u32 = 5;
/// The uploader's exit code when its probe PUT cannot reach the endpoint.
pub const EXIT_UNREACHABLE: i64 = 3;
/// The smallest spool budget a cycle runs with (two PUTs).
pub const MIN_SPOOL_BYTES: u64 = 2 * PUSH_CHUNK;

/// The URL the hosts push to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IngestUrl {
    /// Given (`--ingest-url`, the service's setting): `https://HOST[:PORT]`.
    Fixed(String),
    /// Built per host: the local address of the connector's connection to the host's WinRM
    /// port (the address that host already sees the connector at) and this port.
    LocalAddressOfWinRm { port: u16 },
}

impl IngestUrl {
    /// The URL for the host whose WinRM endpoint is `winrm` (`host:port` or `[v6]:port`).
    pub fn resolve(&self, winrm: &str) -> Result<String> {
        match self {
            IngestUrl::Fixed(u) => Ok(u.clone()),
            IngestUrl::LocalAddressOfWinRm { port } => {
                use std::net::ToSocketAddrs;
                let bad = |detail: String| Error::Protocol {
                    host: winrm.to_string(),
                    what: "ingest URL from the WinRM connection's local address".into(),
                    detail,
                };
                let addr = winrm
                    .to_socket_addrs()
                    .map_err(|e| bad(e.to_string()))?
                    .next()
                    .ok_or_else(|| bad("no address".into()))?;
                let tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(15))
                    .map_err(|e| bad(e.to_string()))?;
                let local = tcp.local_addr().map_err(|e| bad(e.to_string()))?;
                Ok(match local.ip() {
                    std::net::IpAddr::V4(ip) => format!("https://{ip}:{port}"),
                    std::net::IpAddr::V6(ip) => format!("https://[{ip}]:{port}"),
                })
            }
        }
    }
}

/// How a cycle reaches its ingest endpoint.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// The endpoint's sessions (behind `godwit replicate`'s own listener or `godwit serve`'s
    /// HTTPS port).
    pub sessions: Arc<IngestRegistry>,
    /// The endpoint's certificate, which the uploader pins.
    pub pin: Fingerprint,
    /// What the hosts connect to (no path).
    pub url: IngestUrl,
    /// Where pushed bytes are spooled (kept after a failure, so a rerun resumes).
    pub spool_dir: PathBuf,
    /// The transfer's chunk size: changed ranges are widened to it (the transfer reads whole
    /// chunks).
    pub align: u64,
    /// What the spools may hold at once (shared by every cycle of the endpoint).
    pub budget: Arc<SpoolBudget>,
    /// The most the budget may be (`--spool-limit`, the service's setting); a cycle lowers it
    /// to what the spool's file system has free.
    pub spool_limit: u64,
}

/// Check an ingest URL (`https://HOST[:PORT]`, no path: the hosts push over HTTPS only) and
/// return it without a trailing `/`. `what` names the option in the error.
pub fn check_ingest_url(url: &str, what: &str) -> Result<String> {
    let u = url.trim_end_matches('/');
    let authority = u.strip_prefix("https://").unwrap_or("");
    let port_ok = |p: &str| p.parse::<u16>().is_ok_and(|p| p > 0);
    let shape_ok = if let Some(rest) = authority.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, tail)) => {
                !h.is_empty() && (tail.is_empty() || tail.strip_prefix(':').is_some_and(port_ok))
            }
            None => false,
        }
    } else {
        match authority.split_once(':') {
            None => !authority.is_empty(),
            Some((h, p)) => !h.is_empty() && port_ok(p),
        }
    };
    let odd = authority.bytes().any(|b| {
        matches!(b, b'/' | b'?' | b'#' | b'@' | b'\\')
            || b.is_ascii_whitespace()
            || b.is_ascii_control()
    });
    if !shape_ok || odd {
        return Err(Error::Usage(format!(
            "{what} {url:?} is not https://HOST[:PORT] (the host pushes over HTTPS only)"
        )));
    }
    Ok(u.to_string())
}

/// What pushing one disk's ranges took.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PushReport {
    /// Bytes the transfer needs from the host's files (data ranges).
    pub needed_bytes: u64,
    /// Of those, already in the spool from an earlier (interrupted) run of this checkpoint.
    pub resumed_bytes: u64,
    /// Bytes the host pushed and the endpoint stored in this run.
    pub pushed_bytes: u64,
    pub pushes: u64,
    /// push-ranges.ps1 commands run.
    pub commands: u64,
    /// Planned but not pushed (read over WinRM instead).
    pub missing_bytes: u64,
    /// Bytes the disk reads took from spools (the rest came over WinRM).
    pub served_from_spool: u64,
    /// Pushes the endpoint answered 503 because the spool was full (the uploader waited).
    pub waits: u64,
    /// The spool budget of the cycle, and the most it held at once.
    pub spool_limit: u64,
    pub peak_spool_bytes: u64,
}

impl PushReport {
    /// Add another round's figures.
    pub fn add(&mut self, r: &PushReport) {
        self.needed_bytes += r.needed_bytes;
        self.resumed_bytes += r.resumed_bytes;
        self.pushed_bytes += r.pushed_bytes;
        self.pushes += r.pushes;
        self.commands += r.commands;
        self.missing_bytes += r.missing_bytes;
        self.served_from_spool += r.served_from_spool;
        self.waits += r.waits;
        self.spool_limit = self.spool_limit.max(r.spool_limit);
        self.peak_spool_bytes = self.peak_spool_bytes.max(r.peak_spool_bytes);
    }
}

/// Stops a running feeder: no new command, and the current session is closed (the
/// uploader's next PUT gets 401 and it stops).
#[derive(Default)]
pub struct Stopper {
    stop: AtomicBool,
    session: Mutex<Option<String>>,
}

impl Stopper {
    pub fn stop(&self, sessions: &IngestRegistry) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(id) = self
            .session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            sessions.close_session(&id);
        }
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// What one uploader command did.
#[derive(Debug, Clone, Default)]
struct CommandOutcome {
    stats: SessionStats,
    next: usize,
    next_offset: u64,
    waits: u64,
}

fn ranges_bytes(rs: &[PlannedRange]) -> u64 {
    rs.iter().map(|r| r.end - r.start).sum()
}

/// Run one push-ranges.ps1 command for `batch` (in order) and say where it stopped.
fn run_command<T: Transport + Send + Sync + 'static>(
    shell: &Shell<'_, T>,
    host: &str,
    cfg: &IngestConfig,
    url: &str,
    locator: &PushLocator<T>,
    batch: &[PlannedRange],
    stopper: &Stopper,
) -> Result<CommandOutcome> {
    const SCRIPT: &str = "push-ranges.ps1";
    let mut ids: Vec<&str> = Vec::new();
    let mut asked: Vec<RangeSet> = Vec::new();
    let mut flat: Vec<u64> = Vec::with_capacity(batch.len() * 3);
    for r in batch {
        let id = match ids.iter().position(|f| *f == r.file) {
            Some(i) => i,
            None => {
                ids.push(&r.file);
                asked.push(RangeSet::new());
                ids.len() - 1
            }
        };
        asked[id].insert(r.start, r.end);
        flat.extend([id as u64, r.start, r.end - r.start]);
    }
    let mut session_files = Vec::with_capacity(ids.len());
    for (name, asked) in ids.iter().zip(asked) {
        let spool = locator.spool(name).ok_or_else(|| {
            Error::Usage(format!(
                "{host}: {name} was not opened through the push locator"
            ))
        })?;
        session_files.push(SessionFile { asked, spool });
    }
    let ticket = cfg.sessions.open_session(session_files);
    *stopper.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(ticket.id.clone());
    let args = serde_json::json!({
        "Url": format!("{}/ingest/v1/{}", url.trim_end_matches('/'), ticket.id),
        "Token": ticket.token,
        "Pin": hex::encode(cfg.pin.0),
        "Chunk": PUSH_CHUNK,
        "Retries": PUSH_RETRIES,
        "Seconds": PUSH_COMMAND_SECONDS,
        "Files": ids.iter().enumerate().map(|(id, path)| serde_json::json!({"Id": id, "Path": path})).collect::<Vec<_>>(),
        "Ranges": flat,
    });
    let ran = shell.run_ps(&with_args(PUSH_SCRIPT, &args));
    stopper
        .session
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let stats = cfg.sessions.close_session(&ticket.id).unwrap_or_default();
    let o = ran?;
    let message = || {
        crate::clixml::decode_stderr(&o.stderr)
            .unwrap_or_else(|e| e.to_string())
            .trim()
            .to_string()
    };
    if o.exit_code == EXIT_UNREACHABLE {
        let port = url
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .unwrap_or(443);
        return Err(Error::IngestUnreachable {
            host: host.to_string(),
            url: url.to_string(),
            port,
            detail: message(),
        });
    }
    if o.exit_code != 0 {
        return Err(Error::Script {
            host: host.to_string(),
            script: SCRIPT.into(),
            exit_code: o.exit_code,
            message: message(),
        });
    }
    let bad = |detail: String| Error::BadOutput {
        host: host.to_string(),
        script: SCRIPT.into(),
        detail,
    };
    let text = String::from_utf8_lossy(&o.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim_start_matches('\u{feff}').trim())
        .map_err(|e| bad(e.to_string()))?;
    let field = |n: &str| {
        v.get(n)
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| bad(format!("no {n} in {v}")))
    };
    let next = usize::try_from(field("Next")?).map_err(|e| bad(e.to_string()))?;
    if next > batch.len() {
        return Err(bad(format!(
            "Next {next} is past the {} ranges",
            batch.len()
        )));
    }
    tracing::info!(host, pushes = stats.pushes, bytes = stats.bytes, uploader = %v, "host pushed ranges");
    Ok(CommandOutcome {
        stats,
        next,
        next_offset: field("NextOffset")?,
        waits: field("Waits").unwrap_or(0),
    })
}

/// Push `plan` (in order) in time-bounded commands until it is done or `stopper` says stop.
/// Each command is preceded by a check that the spool's file system has room.
pub fn push_ranges<T: Transport + Send + Sync + 'static>(
    shell: &Shell<'_, T>,
    host: &str,
    cfg: &IngestConfig,
    url: &str,
    locator: &PushLocator<T>,
    plan: Vec<PlannedRange>,
    stopper: &Stopper,
) -> Result<PushReport> {
    let mut report = PushReport::default();
    let mut rest = plan;
    while !rest.is_empty() && !stopper.stopped() {
        let n = rest.len().min(MAX_RANGES_PER_COMMAND);
        let batch: Vec<PlannedRange> = rest.drain(..n).collect();
        let room = cfg.budget.limit().saturating_sub(cfg.budget.used());
        let needed = ranges_bytes(&batch).min(room).clamp(1, PUSH_CHUNK);
        let free = budget::free_space(&cfg.spool_dir).unwrap_or(u64::MAX);
        if free < needed + budget::FREE_SPACE_RESERVE / 2 {
            return Err(Error::NoSpace(budget::NoSpace {
                dir: cfg.spool_dir.display().to_string(),
                needed: needed + budget::FREE_SPACE_RESERVE / 2,
                free,
            }));
        }
        let out = run_command(shell, host, cfg, url, locator, &batch, stopper)?;
        report.commands += 1;
        report.pushed_bytes += out.stats.bytes;
        report.pushes += out.stats.pushes;
        report.waits += out.waits;
        let at = Resume {
            next: out.next,
            offset: out.next_offset,
        };
        let mut left = rest_of(&batch, at);
        if !left.is_empty() && ranges_bytes(&left) == ranges_bytes(&batch) && !stopper.stopped() {
            return Err(Error::Protocol {
                host: host.to_string(),
                what: "push-ranges.ps1".into(),
                detail: format!(
                    "the host pushed nothing in {PUSH_COMMAND_SECONDS} s ({} pushes waited for room in the connector's spool of {} bytes)",
                    out.waits,
                    cfg.budget.limit()
                ),
            });
        }
        left.append(&mut rest);
        rest = left;
    }
    Ok(report)
}

/// The host's pushes of one disk's data, run while the transfer reads it: readers wait for
/// ranges still to come (through the locator's plans), fail with the feeder's error.
pub struct Feeder<'a, T: Transport + Send + Sync + 'static> {
    pub client: &'a Arc<crate::client::WinRm<T>>,
    pub host: &'a str,
    pub cfg: &'a IngestConfig,
    pub url: &'a str,
    pub locator: &'a PushLocator<T>,
}

impl<T: Transport + Send + Sync + 'static> Feeder<'_, T> {
    /// Plan `plan` in the locator (waited for, released once read), then push it on a shell of
    /// its own; returns the figures. Meant to run on its own thread during the transfer.
    pub fn run(&self, plan: Vec<PlannedRange>, stopper: &Stopper) -> Result<PushReport> {
        let status = self.locator.status().clone();
        let result = (|| {
            if plan.is_empty() {
                return Ok(PushReport::default());
            }
            let shell = self.client.open_shell()?;
            let r = push_ranges(
                &shell,
                self.host,
                self.cfg,
                self.url,
                self.locator,
                plan,
                stopper,
            );
            let closed = shell.close();
            let r = r?;
            closed?;
            Ok(r)
        })();
        // Whatever was not pushed is read over WinRM from now on (or the readers fail).
        for spool in self.locator.spools() {
            if let Some((_, p)) = self.locator.entry(&spool.name) {
                p.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(0, u64::MAX);
            }
        }
        status.finish(result.as_ref().err().map(ToString::to_string));
        result
    }

    /// Record `plan` in the locator's file plans (before the transfer starts reading).
    pub fn announce(&self, plan: &[PlannedRange]) {
        self.locator.status().start();
        for r in plan {
            if let Some((_, p)) = self.locator.entry(&r.file) {
                p.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(r.start, r.end);
                p.release_on_read
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(r.start, r.end);
            }
        }
    }
}

/// The held ranges of the files `plan` names.
pub fn held(
    plan: &[PlannedRange],
    locator: &PushLocator<impl Transport + Send + Sync + 'static>,
) -> BTreeMap<String, RangeSet> {
    let mut out = BTreeMap::new();
    for r in plan {
        if !out.contains_key(&r.file)
            && let Some(s) = locator.spool(&r.file)
        {
            out.insert(r.file.clone(), s.received());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_urls_are_https_host_and_port_only() {
        for (u, want) in [
            ("https://10.0.0.5", "https://10.0.0.5"),
            (
                "https://godwit.example:8443/",
                "https://godwit.example:8443",
            ),
            ("https://[fd00::5]:443", "https://[fd00::5]:443"),
            ("https://[fd00::5]", "https://[fd00::5]"),
        ] {
            assert_eq!(check_ingest_url(u, "--ingest-url").unwrap(), want);
        }
        for bad in [
            "http://10.0.0.5",
            "https://",
            "https://h/x",
            "https://h:0",
            "https://h:99999",
            "https://h:",
            "https://u@h",
            "https://h?x",
            "https://fd00::5",
            "10.0.0.5:443",
        ] {
            let e = check_ingest_url(bad, "--ingest-url")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("--ingest-url") && e.contains("not https://HOST[:PORT]"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn the_url_from_the_winrm_connection_is_its_local_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap().to_string();
        let u = IngestUrl::LocalAddressOfWinRm { port: 8443 };
        assert_eq!(u.resolve(&a).unwrap(), "https://127.0.0.1:8443");
        let f = IngestUrl::Fixed("https://x:1".into());
        assert_eq!(f.resolve("nowhere:1").unwrap(), "https://x:1");
        drop(l);
        assert!(u.resolve(&a).is_err());
    }
}
