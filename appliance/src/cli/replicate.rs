//! `godwit replicate`: one replication cycle of a local disk image or block device to a staging
//! server (`staging://HOST:PORT`) or straight to a store (`file:///DIR`, `s3://BUCKET/PREFIX`).
//! The first run is full; later runs send only the chunks the store lacks.
//!
//! `vsphere://USER@HOST[:PORT]` sources go through [`super::replicate_vsphere`]: a ledgered
//! `godwit-` snapshot, every disk of the VM read remotely (disk N = the Nth disk the VM lists),
//! changed ranges from CBT when `--cbt` is given, the snapshot removed on every path.

use anyhow::Context;
use godwit_disk::{BlockSource, Disk, Run, RunState};
use godwit_transfer::replicate::{Progress, ReplicateOptions, replicate_disk};
use godwit_transfer::target::Target;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct ReplicateArgs {
    /// `file:///path/disk.{vmdk,vhd,vhdx,raw}`, `file:///dev/sdX`, `vsphere://USER@HOST[:PORT]`,
    /// `hyperv://USER@HOST[:PORT]` or `scvmm://USER@HOST[:PORT]`.
    #[arg(long)]
    source: String,
    /// vSphere: SHA-256 fingerprint of the source's certificate (`SHA256:...`).
    #[arg(long)]
    source_fingerprint: Option<String>,
    /// vSphere, SCVMM: known-hosts style trust file (`HOST[:PORT] SHA256:...` lines): the
    /// vCenter and ESXi hosts, or the SCVMM server and its Hyper-V hosts.
    #[arg(long)]
    trust_file: Option<PathBuf>,
    /// SCVMM: WinRM HTTPS port of the Hyper-V hosts.
    #[arg(long, default_value_t = godwit_hyperv::inventory::DEFAULT_PORT)]
    host_port: u16,
    /// SCVMM: `HOST USER PASSWORD` lines (mode 0600) for hosts that do not take the SCVMM
    /// credentials (HOST: VMM's host name or its address).
    #[arg(long)]
    host_credentials: Option<PathBuf>,
    /// vSphere: read the password from this file (else `GODWIT_PASSWORD`).
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// vSphere: use Changed Block Tracking for incremental cycles (enabled on the VM if needed).
    #[arg(long)]
    cbt: bool,
    /// vSphere: never quiesce the guest (by default the snapshot is quiesced when VMware Tools
    /// run; a quiesce fault falls back to a crash-consistent snapshot, reported).
    #[arg(long)]
    no_quiesce: bool,
    /// vSphere: how frozen disks are read — `auto` (datastore `/folder` range reads, or the NFC
    /// export lease for vSAN/VVOL/PMEM datastores), `folder` or `nfc`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "folder", "nfc"])]
    disk_access: String,
    /// Directory for the snapshot ledger and CBT changeIds (default `$GODWIT_STATE_DIR` or
    /// `./var/state`).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// VM name the disks are stored under; vSphere: the VM by name, MoRef (`vm-123`) or
    /// instance UUID (an ambiguous name is refused listing each candidate's MoRef and folder).
    #[arg(long)]
    vm: String,
    /// `staging://HOST:1500`, `file:///DIR` or `s3://BUCKET/PREFIX`. Several staging servers
    /// of one store: repeat `--target` or list them (`staging://a:1500,b:1500`); they are
    /// tried in order and a replication resumes on the next when one goes down.
    #[arg(long, required = true)]
    target: Vec<String>,
    /// The staging servers' certificate fingerprints, `SHA256:<hex>` (colons and case ignored;
    /// several separated by commas, when the servers do not share one certificate).
    #[arg(long)]
    target_fingerprint: Option<String>,
    /// File holding the connector token (else the GODWIT_TOKEN variable).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// JSON lines: progress events, then a summary.
    #[arg(long)]
    json: bool,
    /// Chunk size, a power of two from 4K to 8M (e.g. `4M`, `64K`).
    #[arg(long, default_value = "4M")]
    chunk_size: String,
    /// Limit on bytes sent per second (e.g. `50M`).
    #[arg(long)]
    bwlimit: Option<String>,
    /// Connection attempts before giving up on network faults.
    #[arg(long, default_value_t = 10)]
    retries: u32,
    /// Chunks in flight (the server may allow fewer).
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Hyper-V: listen here (e.g. `0.0.0.0:443`) for the host to push the disk data over HTTPS
    /// (the default data path when given; without it the data is read over WinRM).
    #[arg(long)]
    ingest_listen: Option<String>,
    /// Hyper-V: the URL the host pushes to (`https://CONNECTOR[:PORT]`; default
    /// `https://<--ingest-listen>` unless that is a wildcard address).
    #[arg(long)]
    ingest_url: Option<String>,
    /// Hyper-V: PEM certificate (and `--ingest-key`) of the ingest endpoint; default a
    /// self-signed one made for this run. Either way the host pins its SHA-256.
    #[arg(long, requires = "ingest_key")]
    ingest_cert: Option<PathBuf>,
    #[arg(long, requires = "ingest_cert")]
    ingest_key: Option<PathBuf>,
    /// Hyper-V push: the most pushed data held at once before it is stored (e.g. `256M`; less
    /// when the state directory has less free space). Pushes beyond it wait.
    #[arg(long)]
    spool_limit: Option<String>,
    /// Only these byte ranges changed since the previous sync: a file of `OFFSET LENGTH` lines
    /// (what a CBT/RCT-aware source passes to the library). Only the chunks they touch are
    /// read and hashed; the rest is carried over from the previous sync.
    #[arg(long)]
    changed_ranges: Option<PathBuf>,
    /// Also record the SHA-256 of the whole raw disk (export checks it). Hashes every byte of
    /// the virtual disk, holes included; by default only allocated data is hashed (each chunk
    /// is named and checked by its own SHA-256 all the same).
    #[arg(long)]
    raw_sha256: bool,
}

impl ReplicateArgs {
    /// Whether `--json` was given (its failures are printed as a JSON line too).
    pub fn json(&self) -> bool {
        self.json
    }
}

/// Parse `4M`, `64K`, `1G`, or plain bytes.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: u64 = num.parse().with_context(|| format!("size {s:?}"))?;
    n.checked_mul(mult)
        .with_context(|| format!("size {s:?} overflows"))
}

/// The pairing token: `--token-file` or `GODWIT_TOKEN`.
pub fn read_token(file: Option<&PathBuf>) -> anyhow::Result<Option<String>> {
    if let Some(f) = file {
        let t = std::fs::read_to_string(f)
            .with_context(|| format!("reading the token file {}", f.display()))?;
        return Ok(Some(t.trim().to_string()));
    }
    Ok(std::env::var("GODWIT_TOKEN")
        .ok()
        .map(|t| t.trim().to_string()))
}

/// A block device (or any file read as raw): every byte is data.
struct RawDevice {
    file: std::fs::File,
    size: u64,
    name: String,
}

impl BlockSource for RawDevice {
    fn virtual_size(&self) -> u64 {
        self.size
    }
    fn map(&self, offset: u64, len: u64) -> godwit_disk::Result<Vec<Run>> {
        Ok(vec![Run {
            offset,
            len,
            state: RunState::Data,
        }])
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> godwit_disk::Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| godwit_disk::Error::io(&self.name, "read", e))
    }
}

pub fn open_source(url: &str) -> anyhow::Result<Box<dyn BlockSource>> {
    let path = url
        .strip_prefix("file://")
        .with_context(|| format!("source {url:?}: expected file:///path"))?;
    let md = std::fs::metadata(path).with_context(|| format!("source {path}"))?;
    use std::os::unix::fs::FileTypeExt;
    if md.file_type().is_block_device() {
        use std::io::{Seek, SeekFrom};
        let mut file = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
        let size = file
            .seek(SeekFrom::End(0))
            .with_context(|| format!("size of {path}"))?;
        return Ok(Box::new(RawDevice {
            file,
            size,
            name: path.to_string(),
        }));
    }
    Ok(Box::new(Disk::open(path)?))
}

fn read_ranges(p: &PathBuf) -> anyhow::Result<Vec<godwit_transfer::Range>> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    let mut v = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut it = line.split_whitespace();
        let (Some(o), Some(l), None) = (it.next(), it.next(), it.next()) else {
            anyhow::bail!("{} line {}: expected `OFFSET LENGTH`", p.display(), n + 1);
        };
        v.push(godwit_transfer::Range {
            offset: o
                .parse()
                .with_context(|| format!("{} line {}", p.display(), n + 1))?,
            len: l
                .parse()
                .with_context(|| format!("{} line {}", p.display(), n + 1))?,
        });
    }
    Ok(v)
}

fn human(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20))
}

pub fn run(a: ReplicateArgs) -> anyhow::Result<ExitCode> {
    let token = read_token(a.token_file.as_ref())?;
    let target = Target::parse_many(&a.target, a.target_fingerprint.as_deref(), token)?;
    let changed = a.changed_ranges.as_ref().map(read_ranges).transpose()?;
    let chunk_size = u32::try_from(parse_size(&a.chunk_size)?).context("chunk size")?;
    let reporter = super::progress::Reporter::new("replicate", a.json);
    super::progress::set_replicate(reporter.clone());
    let vm = a.vm.clone();
    let progress: godwit_transfer::replicate::ProgressFn = Arc::new(move |p: &Progress| {
        reporter.update(&format!("{vm} disk {}", p.disk), &figures(&vm, p), false)
    });
    let mut metadata = std::collections::BTreeMap::new();
    metadata.insert("source".to_string(), a.source.clone());
    let opts = ReplicateOptions {
        chunk_size,
        window: a.window,
        max_attempts: a.retries.max(1),
        bandwidth_limit: a.bwlimit.as_deref().map(parse_size).transpose()?,
        metadata,
        progress: Some(progress),
        measure_allocation: true,
        raw_sha256: a.raw_sha256,
        ..ReplicateOptions::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let handle = rt.handle().clone();
    let scvmm = a.source.starts_with("scvmm://");
    anyhow::ensure!(
        a.source.starts_with("hyperv://")
            || scvmm
            || (a.ingest_listen.is_none()
                && a.ingest_url.is_none()
                && a.ingest_cert.is_none()
                && a.spool_limit.is_none()),
        "--ingest-listen, --ingest-url, --ingest-cert and --spool-limit are for hyperv:// sources (and scvmm://)"
    );
    anyhow::ensure!(
        scvmm
            || (a.host_credentials.is_none()
                && a.host_port == godwit_hyperv::inventory::DEFAULT_PORT),
        "--host-port and --host-credentials are for scvmm:// sources"
    );
    if a.source.starts_with("vsphere://") {
        return run_vsphere(&a, &target, &opts, &handle);
    }
    if a.source.starts_with("hyperv://") || scvmm {
        anyhow::ensure!(
            a.changed_ranges.is_none(),
            "--changed-ranges is not for hyperv:// or scvmm:// sources (they take their changes from Resilient Change Tracking, always on; --cbt is accepted and changes nothing)"
        );
        use super::replicate_hyperv::{HypervReplicate, HypervSourceArgs};
        let h = HypervReplicate {
            source: HypervSourceArgs {
                source: &a.source,
                source_fingerprint: a.source_fingerprint.as_deref(),
                password_file: a.password_file.as_ref(),
            },
            vm: &a.vm,
            state_dir: a.state_dir.as_ref(),
            json: a.json,
            ingest: super::replicate_hyperv::IngestArgs {
                listen: a.ingest_listen.as_deref(),
                url: a.ingest_url.as_deref(),
                cert: a.ingest_cert.as_ref().zip(a.ingest_key.as_ref()),
                spool_limit: a
                    .spool_limit
                    .as_deref()
                    .map(parse_size)
                    .transpose()
                    .context("--spool-limit")?,
            },
            scvmm: scvmm.then_some(super::replicate_scvmm::ScvmmArgs {
                trust_file: a.trust_file.as_ref(),
                host_port: a.host_port,
                host_credentials: a.host_credentials.as_ref(),
            }),
        };
        return super::replicate_hyperv::run(&h, &target, &opts, &handle);
    }
    let source = open_source(&a.source)?;
    let report = replicate_disk(
        source.as_ref(),
        changed.as_deref(),
        &target,
        &a.vm,
        0,
        &opts,
        &handle,
    )?;
    print_report(&report, a.json)?;
    drop(rt);
    Ok(ExitCode::SUCCESS)
}

/// The figures of a replication's progress: allocated bytes read of those to read.
fn figures(vm: &str, p: &Progress) -> super::progress::Figures {
    let mut f = super::progress::Figures {
        bytes_done: p.read_done,
        bytes_total: p.read_total,
        rate_bytes_per_sec: p.read_rate_bytes_per_sec,
        eta_secs: p.eta_secs,
        extra: serde_json::Map::new(),
    };
    for (k, v) in [
        ("vm", serde_json::Value::from(vm)),
        ("disk", p.disk.into()),
        ("disk_size", p.disk_size.into()),
        ("disk_bytes_done", p.bytes_done.into()),
        ("bytes_sent", p.bytes_sent.into()),
        ("bytes_skipped", p.bytes_skipped.into()),
        ("attempt", p.attempt.into()),
    ] {
        f.extra.insert(k.into(), v);
    }
    f
}

pub(super) fn print_report(
    report: &godwit_transfer::replicate::ReplicateReport,
    json: bool,
) -> anyhow::Result<()> {
    let last = super::progress::replicate().and_then(|r| r.finish());
    if json {
        let v = serde_json::to_value(report)?;
        let v = match super::progress::replicate() {
            Some(r) => r.done_json(v, last.as_ref()),
            None => {
                let mut v = v;
                v["event"] = "done".into();
                v
            }
        };
        println!("{v}");
    } else {
        println!(
            "replicated {} disk {} as sync {}: {} chunks ({} new, {} reused, {} zero, {} carried), read {}, hashed {}, sent {} in {:.1} s{}",
            report.vm,
            report.disk,
            report.sync_id,
            report.chunks_total,
            report.chunks_new,
            report.chunks_reused,
            report.chunks_zero,
            report.chunks_carried,
            human(report.bytes_read),
            human(report.bytes_hashed),
            human(report.bytes_sent),
            report.seconds,
            report
                .raw_sha256
                .as_ref()
                .map_or(String::new(), |s| format!(", sha256 {s}"))
        );
    }
    if report.bytes_unchanged > 0 && report.chunks_carried == 0 {
        eprintln!(
            "godwit: {} of the {} read and hashed again had not changed since sync {} ({:.1} s of worker time); a source that knows its changed ranges (--changed-ranges, CBT, RCT) reads only those",
            human(report.bytes_unchanged),
            human(report.bytes_read),
            report.parent.as_deref().unwrap_or("-"),
            report.seconds_unchanged,
        );
    }
    Ok(())
}

/// One vSphere cycle: every disk of the VM replicated as disk N of `--vm`.
fn run_vsphere(
    a: &ReplicateArgs,
    target: &Target,
    opts: &ReplicateOptions,
    handle: &tokio::runtime::Handle,
) -> anyhow::Result<ExitCode> {
    use super::replicate_vsphere::{VsphereCycle, VsphereSourceArgs, replicate_vsphere};
    anyhow::ensure!(
        a.changed_ranges.is_none(),
        "--changed-ranges is for file:// sources; vSphere sources take their changes from CBT (--cbt)"
    );
    let source = VsphereSourceArgs {
        source: a.source.clone(),
        source_fingerprint: a.source_fingerprint.clone(),
        trust_file: a.trust_file.clone(),
        password_file: a.password_file.clone(),
    };
    let state_dir = a
        .state_dir
        .clone()
        .or_else(|| std::env::var_os("GODWIT_STATE_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("var/state"));
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
    let cycle = VsphereCycle {
        vm: a.vm.clone(),
        state_dir,
        cbt: a.cbt,
        access: godwit_vmware::replicate::DiskAccess::parse(&a.disk_access)
            .context("--disk-access")?,
        quiesce: !a.no_quiesce,
    };
    let mut reports = Vec::new();
    let result = replicate_vsphere(&source, &cycle, |n, disk, changed| {
        let ranges: Option<Vec<godwit_transfer::Range>> =
            changed.map(|r| r.iter().cloned().map(Into::into).collect());
        let disk_no = u32::try_from(n).context("disk number")?;
        let report = replicate_disk(
            disk,
            ranges.as_deref(),
            target,
            &a.vm,
            disk_no,
            opts,
            handle,
        )?;
        print_report(&report, a.json)?;
        reports.push(report);
        Ok(())
    });
    match result {
        Ok(cycle) => {
            if !a.json {
                println!(
                    "vSphere cycle of {}: {} disk(s), snapshot {} removed, {} read from the datastore",
                    cycle.vm,
                    reports.len(),
                    cycle.snapshot,
                    human(cycle.bytes_read)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(super::replicate_vsphere::report_error(&e)),
    }
}
