//! `godwit export`: materialise a kept sync of a disk as raw, VMDK (streamOptimized), VHDX or VHD,
//! to a local file (raw is written sparse) or to S3 (a resumable multipart upload). The SHA-256
//! of the raw content is reported and checked against the one recorded at replication.

use anyhow::Context;
use godwit_disk::write::OutputFormat;
use godwit_transfer::export::{ExportReport, IndexSource, check_sha, load_index, write_hashed};
use godwit_transfer::index::SyncId;
use godwit_transfer::replicate::Connect;
use godwit_transfer::target::Target;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use super::progress::{Figures, INTERVAL, Mode, Reporter};
use godwit_disk::progress::{Meter, ProgressFn, Snapshot, watch};

#[derive(clap::Args)]
pub struct ExportArgs {
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
    #[arg(long)]
    vm: String,
    /// Disk number (the order the source lists disks, from 0).
    #[arg(long, default_value_t = 0)]
    disk: u32,
    /// Sync to export (default: the newest).
    #[arg(long)]
    sync: Option<String>,
    /// raw, vmdk (streamOptimized), vhdx (dynamic), vhd (dynamic).
    #[arg(long)]
    format: String,
    /// Output file, or `s3://BUCKET/KEY`.
    #[arg(long)]
    out: String,
    #[arg(long)]
    json: bool,
}

impl ExportArgs {
    /// Whether `--json` was given (its failures are printed as a JSON line too).
    pub fn json(&self) -> bool {
        self.json
    }
}

pub fn run(a: ExportArgs) -> anyhow::Result<ExitCode> {
    let token = super::replicate::read_token(a.token_file.as_ref())?;
    let target = Arc::new(Target::parse_many(
        &a.target,
        a.target_fingerprint.as_deref(),
        token,
    )?);
    let sync = a.sync.as_deref().map(SyncId::parse).transpose()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let reporter = Reporter::new("export", a.json);
    let meter = Arc::new(Meter::pending());
    let watch = (reporter.mode() != Mode::Quiet).then(|| {
        let (r, label) = (reporter.clone(), format!("{} disk {}", a.vm, a.disk));
        let (vm, disk, fmt) = (a.vm.clone(), a.disk, a.format.clone());
        let f: ProgressFn = Arc::new(move |s: &Snapshot| {
            let mut f = Figures::from(s);
            f.extra.insert("vm".into(), vm.clone().into());
            f.extra.insert("disk".into(), disk.into());
            f.extra.insert("format".into(), fmt.clone().into());
            r.update(&label, &f, false);
        });
        watch(meter.clone(), INTERVAL, f)
    });
    let result = export_disk(
        &target,
        &a.vm,
        a.disk,
        sync.as_ref(),
        &a.format,
        &a.out,
        rt.handle(),
        Some(meter),
    );
    drop(watch);
    let last = reporter.finish();
    let report = result?;
    let verified = report.verified;
    if a.json {
        println!(
            "{}",
            reporter.done_json(serde_json::to_value(&report)?, last.as_ref())
        );
    } else {
        println!(
            "exported {} disk {} sync {} as {} to {}: {} bytes, sha256 {} ({})",
            report.vm,
            report.disk,
            report.sync_id,
            report.format,
            report.out,
            report.written_bytes,
            report.raw_sha256,
            if verified {
                "matches the replicated content"
            } else {
                "no recorded hash to check against"
            }
        );
    }
    drop(rt);
    Ok(ExitCode::SUCCESS)
}

/// Export one kept sync (default: the newest) of `vm` disk `disk` from `target` as
/// `format_name` to a file or `s3://BUCKET/KEY`, checking the SHA-256 recorded at
/// replication. Blocking: call from a plain thread; `handle` runs the network side. `meter`
/// gets the data bytes to read (the sync's data chunks) and counts those read.
#[allow(clippy::too_many_arguments)]
pub fn export_disk(
    target: &Arc<Target>,
    vm: &str,
    disk: u32,
    sync: Option<&SyncId>,
    format_name: &str,
    out: &str,
    handle: &tokio::runtime::Handle,
    meter: Option<Arc<Meter>>,
) -> anyhow::Result<ExportReport> {
    let format = OutputFormat::parse(format_name, None)?;
    let (store, index) = handle.block_on(async {
        let store = target.connect().await?;
        let index = load_index(&*store, vm, disk, sync).await?;
        Ok::<_, godwit_transfer::Error>((store, index))
    })?;
    // A staging server going down mid-way: the export goes on through another server of the
    // same store (or the same one once it is back), chunk by chunk.
    let mut src = IndexSource::new(index, store, handle.clone()).with_reconnect(target.clone(), 10);
    if let Some(m) = meter {
        m.set_total(src.data_bytes());
        src = src.with_meter(m);
    }
    let (stats, sha) = if let Some(s3) = out.strip_prefix("s3://") {
        godwit_transfer::s3_export::export_to_s3(&src, format, s3, handle)?
    } else {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .read(true)
            .open(out)
            .with_context(|| format!("creating {out}"))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f.try_clone()?);
        let r = write_hashed(&src, format, &mut w, Some(&f), out)?;
        w.flush().with_context(|| format!("writing {out}"))?;
        // A pipe or a device (`--out /dev/stdout`) has nothing to sync.
        if f.metadata().is_ok_and(|m| m.is_file()) {
            f.sync_all().with_context(|| format!("fsync {out}"))?;
        }
        r
    };
    let verified = check_sha(&src.index, &sha)?;
    Ok(ExportReport {
        vm: vm.to_string(),
        disk,
        sync_id: src.index.sync_id.to_string(),
        format: format_name.to_string(),
        out: out.to_string(),
        disk_size: src.index.disk_size,
        data_bytes: stats.data_bytes,
        written_bytes: stats.written_bytes,
        raw_sha256: sha.iter().map(|b| format!("{b:02x}")).collect(),
        recorded_sha256: src
            .index
            .raw_sha256
            .map(|s| s.iter().map(|b| format!("{b:02x}")).collect()),
        verified,
    })
}
