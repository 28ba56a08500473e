//! The vSphere side of `godwit replicate` (and the connection options `godwit inventory`
//! shares): connect with a pinned certificate, run one cycle of [`godwit_vmware::replicate`],
//! hand every disk to the caller's closure, and log out.
//!
//! Exit codes for vSphere errors (see `exit_code`): 3 login rejected, 4 certificate not
//! trusted (unpinned or mismatched), 5 VM or object not found; other errors 2.

use godwit_disk::BlockSource;
use godwit_vmware::replicate::{CycleOptions, CycleReport, DiskAccess, run_cycle_with};
use godwit_vmware::session::{ConnectOptions, Secret, Session, SourceUrl};
use godwit_vmware::trust::{Fingerprint, TrustStore};
use godwit_vmware::{Error as VmwareError, ErrorKind};
use std::ops::Range;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Exit code: the server rejected the user name or password.
pub const EXIT_AUTH: u8 = 3;
/// Exit code: the server certificate is not pinned or does not match the pin.
pub const EXIT_TRUST: u8 = 4;
/// Exit code: the named VM (or another object) does not exist.
pub const EXIT_NOT_FOUND: u8 = 5;

/// How to reach and trust a vSphere source. Secrets come from `GODWIT_PASSWORD` or a file.
#[derive(clap::Args, Clone, Debug)]
pub struct VsphereSourceArgs {
    /// `vsphere://USER@HOST[:PORT]` (also `hyperv://` and `scvmm://` for `godwit inventory`)
    #[arg(long)]
    pub source: String,
    /// SHA-256 fingerprint of the server certificate: `SHA256:AB:CD:...`, hex with or without
    /// colons, any case.
    #[arg(long)]
    pub source_fingerprint: Option<String>,
    /// Known-hosts style file of `HOST[:PORT] SHA256:...` lines (vCenter, ESXi hosts; an SCVMM
    /// server).
    #[arg(long)]
    pub trust_file: Option<PathBuf>,
    /// Read the password from this file (first line); otherwise `GODWIT_PASSWORD`.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
}

fn password(args: &VsphereSourceArgs) -> anyhow::Result<Secret> {
    super::password::source_password(args.password_file.as_deref()).map(Secret::new)
}

/// Connect and log in.
pub fn connect(args: &VsphereSourceArgs) -> anyhow::Result<Session> {
    let url = SourceUrl::parse(&args.source)?;
    let mut trust = match &args.trust_file {
        Some(p) => TrustStore::load(p)?,
        None => TrustStore::new(),
    };
    if let Some(fp) = &args.source_fingerprint {
        let fp =
            Fingerprint::parse(fp).map_err(|e| anyhow::anyhow!("--source-fingerprint: {e}"))?;
        trust.add(
            &godwit_vmware::transport::authority(&url.host, url.port),
            fp,
        );
    }
    let opts = ConnectOptions {
        url,
        password: password(args)?,
        trust,
        max_parallel: godwit_vmware::transport::DEFAULT_MAX_PARALLEL,
        task_timeout: Duration::from_secs(30 * 60),
    };
    Ok(Session::connect(&opts)?)
}

/// The documented exit code for an error from a vSphere command.
pub fn exit_code(e: &anyhow::Error) -> ExitCode {
    match e.downcast_ref::<VmwareError>().map(VmwareError::kind) {
        Some(ErrorKind::Auth) => ExitCode::from(EXIT_AUTH),
        Some(ErrorKind::Trust) => ExitCode::from(EXIT_TRUST),
        Some(ErrorKind::NotFound) => ExitCode::from(EXIT_NOT_FOUND),
        _ => ExitCode::from(2),
    }
}

/// Print an error the way `main` does and return its exit code.
pub fn report_error(e: &anyhow::Error) -> ExitCode {
    eprintln!("godwit: error: {e:#}");
    exit_code(e)
}

/// What `replicate_vsphere` needs besides the connection.
#[derive(Clone, Debug)]
pub struct VsphereCycle {
    pub vm: String,
    /// Directory for the snapshot ledger and the changeId store.
    pub state_dir: PathBuf,
    pub cbt: bool,
    /// `/folder`, NFC, or chosen per datastore (`--disk-access`).
    pub access: DiskAccess,
    /// Quiesce the guest when VMware Tools run (`--no-quiesce` turns it off).
    pub quiesce: bool,
}

/// One replication cycle of a vSphere VM (disks read as `cycle.access` says: `auto` —
/// `/folder`, or the NFC export lease when a disk lives on a datastore `/folder` cannot serve —
/// `folder` or `nfc`): ledger + snapshot, each frozen disk opened (a
/// [`BlockSource`]) and handed to `per_disk` with the changed ranges when CBT allows (`None` =
/// read everything), changeIds recorded, snapshot removed on every path, logout. `--vm` names
/// the VM by name, MoRef or instance UUID.
pub fn replicate_vsphere<F>(
    source: &VsphereSourceArgs,
    cycle: &VsphereCycle,
    mut per_disk: F,
) -> anyhow::Result<CycleReport>
where
    F: FnMut(usize, &dyn BlockSource, Option<&[Range<u64>]>) -> anyhow::Result<()>,
{
    let session = connect(source)?;
    let opts = CycleOptions {
        vm_name: cycle.vm.clone(),
        ledger: cycle.state_dir.join("vsphere-snapshot-ledger.json"),
        change_ids: cycle.state_dir.join("vsphere-change-ids.json"),
        cbt: cycle.cbt,
        quiesce: cycle.quiesce,
        ..CycleOptions::default()
    };
    let mut sink = |n: usize, d: &dyn BlockSource, r: Option<&[Range<u64>]>| {
        per_disk(n, d, r).map_err(Into::into)
    };
    let result = run_cycle_with(&session, &opts, cycle.access, &mut sink);
    if let Err(e) = session.logout() {
        tracing::warn!(error = %e, "logout failed");
    }
    let report = result?;
    for line in report.lines() {
        eprintln!("godwit: {line}");
    }
    Ok(report)
}
