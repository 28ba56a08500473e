//! The Hyper-V side of `godwit replicate` (and the connection options `godwit inventory`
//! shares): `hyperv://USER@HOST[:PORT]` over WinRM HTTPS with the certificate pinned, one cycle
//! of [`godwit_hyperv::replicate`] (sweep, ledgered `godwit-` checkpoint, every frozen disk read
//! over WinRM and replicated as disk N of `--vm`, checkpoint removed on every path). With
//! Resilient Change Tracking (always asked for; `STATE_DIR/hyperv-rct.json` keeps each VM's last
//! reference point) a cycle after the first hands only the changed ranges to the transfer.
//!
//! Exit codes as for vSphere: 3 credentials refused, 4 certificate not trusted, 5 VM not
//! found; other errors 2.

use super::replicate_vsphere::{EXIT_AUTH, EXIT_NOT_FOUND, EXIT_TRUST};
use anyhow::Context;
use godwit_hyperv::replicate::{CycleExtras, CycleOptions, connect, run_cycle_with};
use godwit_hyperv::{Credentials, Error as HypervError, Fingerprint, Source};
use godwit_transfer::replicate::{Range, ReplicateOptions, replicate_disk};
use godwit_transfer::target::Target;
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
    let password = match a.password_file {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("reading password file {}", p.display()))?
            .lines()
            .next()
            .unwrap_or("")
            .to_string(),
        None => std::env::var("GODWIT_PASSWORD").unwrap_or_default(),
    };
    anyhow::ensure!(
        !password.is_empty(),
        "no password: set GODWIT_PASSWORD or pass --password-file FILE"
    );
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
        Some(HypervError::AuthFailed { .. }) => ExitCode::from(EXIT_AUTH),
        Some(HypervError::Unpinned { .. } | HypervError::PinMismatch { .. }) => {
            ExitCode::from(EXIT_TRUST)
        }
        Some(HypervError::NotFound { .. }) => ExitCode::from(EXIT_NOT_FOUND),
        _ => ExitCode::from(2),
    }
}

/// Print an error the way `main` does and return its exit code.
pub fn report_error(e: &anyhow::Error) -> ExitCode {
    eprintln!("godwit: error: {e:#}");
    exit_code(e)
}

/// What `godwit replicate` passes for a `hyperv://` source.
pub struct HypervReplicate<'a> {
    pub source: HypervSourceArgs<'a>,
    pub vm: &'a str,
    pub state_dir: Option<&'a PathBuf>,
    pub json: bool,
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
    let (src, creds, pin) = source_parts(&a.source)?;
    let state_dir = a
        .state_dir
        .cloned()
        .or_else(|| std::env::var_os("GODWIT_STATE_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("var/state"));
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
    let client = connect(&src, &creds, pin)?;
    let copts = CycleOptions {
        vm_name: a.vm.to_string(),
        ledger: state_dir.join("hyperv-checkpoint-ledger.json"),
    };
    let extras = CycleExtras {
        rct_state: Some(state_dir.join("hyperv-rct.json")),
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
    let report = run_cycle_with(&client, &copts, &extras, &mut sink)?;
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["event"] = "hyperv-cycle".into();
        println!("{v}");
    } else {
        let rct: Vec<String> = report
            .changes
            .iter()
            .map(|c| match (c.ranges, c.changed_bytes) {
                (Some(r), Some(b)) => format!("disk {}: {r} changed range(s), {b} bytes", c.disk),
                _ => format!("disk {}: read in full", c.disk),
            })
            .collect();
        println!(
            "Hyper-V cycle of {}: {disks} disk(s) ({}), checkpoint {} ({}) {}, {} bytes read over WinRM in {} commands{}",
            report.vm,
            rct.join("; "),
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
