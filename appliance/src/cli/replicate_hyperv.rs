//! The Hyper-V side of `godwit replicate` (and the connection options `godwit inventory`
//! shares): `hyperv://USER@HOST[:PORT]` over WinRM HTTPS with the certificate pinned, one cycle
//! of [`godwit_hyperv::replicate`] (sweep, ledgered `godwit-` checkpoint, every frozen disk read
//! over WinRM and replicated as disk N of `--vm`, checkpoint removed on every path). With
//! Resilient Change Tracking (always asked for; `STATE_DIR/hyperv-rct.json` keeps each VM's last
//! reference point) a cycle after the first hands only the changed ranges to the transfer.
//! With `--ingest-listen ADDR` (and `--ingest-url` when ADDR is a wildcard) the data path is
//! the host push: the connector listens on HTTPS, the host's `push-ranges.ps1` pushes the
//! data ranges with a one-time token and the certificate pinned, and WinRM carries only
//! metadata (`godwit_hyperv::ingest`).
//!
//! `scvmm://` sources ask the VMM server for the VM's host first (`super::replicate_scvmm`),
//! then run the same cycle on that host.
//!
//! Exit codes as for vSphere: 3 credentials refused, 4 certificate not trusted, 5 VM not
//! found; other errors 2.

use super::replicate_vsphere::{EXIT_AUTH, EXIT_NOT_FOUND, EXIT_TRUST};
use anyhow::Context;
use godwit_hyperv::ingest::budget::{DEFAULT_SPOOL_LIMIT, SpoolBudget};
use godwit_hyperv::ingest::{
    IngestConfig, IngestIdentity, IngestServer, IngestUrl, check_ingest_url,
};
use godwit_hyperv::replicate::{CycleExtras, CycleOptions, connect, run_cycle_pushed};
use godwit_hyperv::{Credentials, Error as HypervError, Fingerprint, Source};
use godwit_transfer::replicate::{Range, ReplicateOptions, replicate_disk};
use godwit_transfer::target::Target;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// How to reach and trust a Hyper-V host.
pub struct HypervSourceArgs<'a> {
    pub source: &'a str,
    pub source_fingerprint: Option<&'a str>,
    pub password_file: Option<&'a PathBuf>,
}

/// Parse the source URL, the pin and the password (`--password-file` or `GODWIT_PASSWORD`).
pub fn source_parts(
    a: &HypervSourceArgs<'_>,
) -> anyhow::Result<(Source, Credentials, Option<Fingerprint>)> {
    let src = Source::parse(a.source)?;
    let password = super::password::source_password(a.password_file.map(PathBuf::as_path))?;
    let pin = a
        .source_fingerprint
        .map(Fingerprint::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--source-fingerprint: {e}"))?;
    let creds = Credentials {
        user: src.user.clone(),
        password,
    };
    Ok((src, creds, pin))
}

/// The documented exit code for an error from a Hyper-V command.
pub fn exit_code(e: &anyhow::Error) -> ExitCode {
    match e.downcast_ref::<HypervError>() {
        Some(HypervError::AuthFailed { .. } | HypervError::AccessDenied { .. }) => {
            ExitCode::from(EXIT_AUTH)
        }
        Some(
            HypervError::Unpinned { .. }
            | HypervError::PinMismatch { .. }
            | HypervError::HostUnpinned { .. },
        ) => ExitCode::from(EXIT_TRUST),
        Some(HypervError::NotFound { .. }) => ExitCode::from(EXIT_NOT_FOUND),
        _ => ExitCode::from(2),
    }
}

/// Print an error the way `main` does and return its exit code.
pub fn report_error(e: &anyhow::Error) -> ExitCode {
    eprintln!("godwit: error: {e:#}");
    exit_code(e)
}

/// The host-push data path's options.
#[derive(Default)]
pub struct IngestArgs<'a> {
    /// `--ingest-listen ADDR`: push is the data path when given.
    pub listen: Option<&'a str>,
    /// `--ingest-url URL`: what the host connects to.
    pub url: Option<&'a str>,
    /// `--ingest-cert PEM` and `--ingest-key PEM`.
    pub cert: Option<(&'a PathBuf, &'a PathBuf)>,
    /// `--spool-limit`.
    pub spool_limit: Option<u64>,
}

/// What `godwit replicate` passes for a `hyperv://` source.
pub struct HypervReplicate<'a> {
    pub source: HypervSourceArgs<'a>,
    pub vm: &'a str,
    pub state_dir: Option<&'a PathBuf>,
    pub json: bool,
    pub ingest: IngestArgs<'a>,
    /// Set for `scvmm://` sources: how to reach the VM's host.
    pub scvmm: Option<super::replicate_scvmm::ScvmmArgs<'a>>,
}

/// Start the ingest endpoint of `--ingest-listen` (if given) for a cycle; the server runs
/// until dropped.
fn start_ingest(
    a: &IngestArgs<'_>,
    state_dir: &std::path::Path,
    align: u64,
    json: bool,
) -> anyhow::Result<Option<(IngestServer, IngestConfig)>> {
    let Some(listen) = a.listen else {
        anyhow::ensure!(
            a.url.is_none() && a.cert.is_none() && a.spool_limit.is_none(),
            "--ingest-url, --ingest-cert and --spool-limit need --ingest-listen ADDR (the address the connector listens on for the host's pushes)"
        );
        return Ok(None);
    };
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("--ingest-listen {listen:?} is not IP:PORT"))?;
    let given_url = a
        .url
        .map(|u| check_ingest_url(u, "--ingest-url"))
        .transpose()?;
    let spool_limit = a.spool_limit.unwrap_or(DEFAULT_SPOOL_LIMIT);
    anyhow::ensure!(
        spool_limit >= godwit_hyperv::ingest::push::MIN_SPOOL_BYTES,
        "--spool-limit {spool_limit} is less than {} bytes (two pushes)",
        godwit_hyperv::ingest::push::MIN_SPOOL_BYTES
    );
    let identity = match a.cert {
        Some((cert, key)) => IngestIdentity::from_pem_files(cert, key)?,
        None => {
            let mut names = Vec::new();
            if let Some(url) = &given_url {
                let authority = &url["https://".len()..];
                let host = match authority.rsplit_once(':') {
                    Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
                    _ => authority,
                };
                names.push(host.trim_matches(['[', ']']).to_string());
            }
            if !addr.ip().is_unspecified() {
                names.push(addr.ip().to_string());
            }
            IngestIdentity::generate(&names)?
        }
    };
    let server = IngestServer::start(addr, identity)?;
    // Without --ingest-url: the address the host's WinRM connection comes from, with the
    // port actually bound (port 0 picks one).
    let url = match given_url {
        Some(u) => IngestUrl::Fixed(u),
        None => IngestUrl::LocalAddressOfWinRm {
            port: server.local_addr().port(),
        },
    };
    let shown = match &url {
        IngestUrl::Fixed(u) => u.clone(),
        IngestUrl::LocalAddressOfWinRm { port } => {
            format!("https://<this connector's address as the host sees it>:{port}")
        }
    };
    if json {
        println!(
            "{}",
            serde_json::json!({"event": "ingest", "listen": server.local_addr().to_string(), "url": shown,
                "fingerprint": server.fingerprint().to_string(), "spool_limit": spool_limit})
        );
    } else {
        eprintln!(
            "ingest endpoint on {} for host pushes to {shown}, certificate {}, spool limit {spool_limit} bytes",
            server.local_addr(),
            server.fingerprint()
        );
    }
    let cfg = IngestConfig {
        sessions: server.registry(),
        pin: server.fingerprint(),
        url,
        spool_dir: state_dir.join("hyperv-spool"),
        align,
        budget: std::sync::Arc::new(SpoolBudget::new(spool_limit)),
        spool_limit,
    };
    Ok(Some((server, cfg)))
}

/// One Hyper-V cycle: every disk of the VM replicated as disk N of `--vm`.
pub fn run(
    a: &HypervReplicate<'_>,
    target: &Target,
    opts: &ReplicateOptions,
    handle: &tokio::runtime::Handle,
) -> anyhow::Result<ExitCode> {
    match cycle(a, target, opts, handle) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => Ok(report_error(&e)),
    }
}

fn cycle(
    a: &HypervReplicate<'_>,
    target: &Target,
    opts: &ReplicateOptions,
    handle: &tokio::runtime::Handle,
) -> anyhow::Result<()> {
    // The URL and password are checked before anything starts (SCVMM: the VMM server's).
    let (src, creds, pin) = source_parts(&a.source)?;
    let state_dir = a
        .state_dir
        .cloned()
        .or_else(|| std::env::var_os("GODWIT_STATE_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("var/state"));
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
    let ingest = start_ingest(&a.ingest, &state_dir, u64::from(opts.chunk_size), a.json)?;
    let copts = CycleOptions {
        vm_name: a.vm.to_string(),
        ledger: state_dir.join("hyperv-checkpoint-ledger.json"),
    };
    let client = match &a.scvmm {
        Some(s) => {
            super::replicate_scvmm::connect_vm_host(&a.source, s, a.vm, &copts.ledger, a.json)?
        }
        None => connect(&src, &creds, pin)?,
    };
    // A cycle that fails for a transient reason keeps its checkpoint (ledgered as an
    // unfinished attempt): running the same command again resumes it and its spool; a later
    // run on this host removes it once it is older than a day.
    let keep = |e: &HypervError| e.is_transient();
    let extras = CycleExtras {
        rct_state: Some(state_dir.join("hyperv-rct.json")),
        keep_failed: Some(&keep),
    };
    let mut disks = 0usize;
    let mut sink = |n: usize,
                    disk: &godwit_disk::Disk,
                    _d: &godwit_hyperv::checkpoint::FrozenDisk,
                    changed: Option<&[std::ops::Range<u64>]>| {
        let disk_no = u32::try_from(n)?;
        let changed: Option<Vec<Range>> =
            changed.map(|r| r.iter().cloned().map(Range::from).collect());
        let report = replicate_disk(
            disk,
            changed.as_deref(),
            target,
            a.vm,
            disk_no,
            opts,
            handle,
        )?;
        super::replicate::print_report(&report, a.json)?;
        disks += 1;
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    };
    let cfg = ingest.as_ref().map(|(_, c)| c);
    let report = run_cycle_pushed(&client, &copts, &extras, cfg, &mut sink).inspect_err(|e| {
        if e.is_transient() {
            eprintln!(
                "godwit: the checkpoint of VM {:?} is kept on the host for the retry: run the same command again to resume (a run on this host removes it after {} hours)",
                a.vm,
                godwit_hyperv::ledger::RESUME_WINDOW_SECS / 3600
            );
        }
    })?;
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["event"] = "hyperv-cycle".into();
        println!("{v}");
    } else {
        let rct: Vec<String> = report
            .changes
            .iter()
            .map(|c| match (c.ranges, c.changed_bytes, &c.full_reread) {
                (Some(r), Some(b), _) => {
                    format!("disk {}: {r} changed range(s), {b} bytes", c.disk)
                }
                (_, _, Some(why)) => format!(
                    "disk {}: FULL RE-READ: Resilient Change Tracking failed ({why})",
                    c.disk
                ),
                _ => format!("disk {}: read in full", c.disk),
            })
            .collect();
        let pushed = report.push.as_ref().map_or(String::new(), |p| {
            format!(
                ", {} bytes pushed by the host in {} pushes ({} resumed from the spool; spool peak {} of {} bytes)",
                p.pushed_bytes, p.pushes, p.resumed_bytes, p.peak_spool_bytes, p.spool_limit
            )
        });
        println!(
            "Hyper-V cycle of {}: {disks} disk(s) ({}), {} {} ({}) {}, {} bytes read over WinRM in {} commands{pushed}{}",
            report.vm,
            rct.join("; "),
            if report.resumed_checkpoint {
                "resumed kept checkpoint"
            } else {
                "recovery checkpoint"
            },
            report.checkpoint,
            report.checkpoint_type,
            match &report.reference_point {
                Some(rp) => format!("now RCT reference point {rp}"),
                None => "removed".to_string(),
            },
            report.bytes_read,
            report.read_commands,
            if report.swept.is_empty() {
                String::new()
            } else {
                format!("; swept leftover {}", report.swept.join(", "))
            }
        );
    }
    Ok(())
}
