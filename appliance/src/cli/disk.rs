//! `godwit disk`: inspect, map, convert and compare VMDK, VHD, VHDX and raw images. Parent
//! chains are followed by themselves (VMDK `parentFileNameHint`, VHD/VHDX parent locators).
//!
//! Exit codes: 0 success (or "identical" for `compare`), 1 `compare` found a difference,
//! 2 an error, printed as `godwit: error: <file>: ...`.

use anyhow::{Context, bail};
use godwit_disk::compare::{Comparison, compare};
use godwit_disk::layer::{Layer, Run};
use godwit_disk::storage::LocalFs;
use godwit_disk::write::{self, MAP_WINDOW, OutputFormat};
use godwit_disk::{BlockSource, Disk, FormatHint, RunState};
use serde_json::{Value, json};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum DiskCommand {
    /// Format, subformat, virtual size, allocation and parent chain.
    Info {
        file: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Input format: `raw` reads the file as raw whatever it contains; default: detect.
        #[arg(short = 'f', long = "format")]
        format: Option<String>,
    },
    /// Allocated extents of the whole chain, like `qemu-img map`.
    Map {
        file: String,
        /// Print JSON (every run, with zero and depth) instead of the data extents as text.
        #[arg(long)]
        json: bool,
        #[arg(short = 'f', long = "format")]
        format: Option<String>,
    },
    /// Convert an image, following its chain, to raw (sparse), vmdk (streamOptimized), vhdx
    /// or vhd.
    Convert {
        src: String,
        dst: String,
        /// Output format: raw, vmdk, vhdx, vhd.
        #[arg(short = 'O', value_name = "FORMAT")]
        output_format: String,
        /// Output options, key=value[,key=value...]: subformat=..., and for vmdk
        /// adapter_type=, hwversion=, compression_level=1-12, cid=HEX.
        #[arg(short = 'o', value_name = "OPTIONS")]
        options: Vec<String>,
        /// Input format: `raw` reads the file as raw whatever it contains (a file no format
        /// claims that holds text, an archive or a qcow2 image is refused otherwise).
        #[arg(short = 'f', long = "format")]
        format: Option<String>,
        /// Print what was read and written to stderr.
        #[arg(long)]
        stats: bool,
        /// JSON lines on stdout: progress events, then a `done` event (not with `-` as output).
        #[arg(long)]
        json: bool,
    },
    /// Compare the contents of two images: exit 0 identical, 1 different, 2 error.
    Compare {
        a: String,
        b: String,
        /// A size difference is a difference (otherwise the longer tail must be zeros).
        #[arg(short = 's', long)]
        strict: bool,
        /// Format of A (`raw` forces raw).
        #[arg(short = 'f')]
        format_a: Option<String>,
        /// Format of B (`raw` forces raw).
        #[arg(short = 'F')]
        format_b: Option<String>,
    },
}

impl DiskCommand {
    /// `disk convert`: whether `--json` was given (its failures are told with a remedy).
    pub fn convert_json(&self) -> Option<bool> {
        match self {
            DiskCommand::Convert { json, .. } => Some(*json),
            _ => None,
        }
    }
}

pub fn run(cmd: DiskCommand) -> anyhow::Result<ExitCode> {
    run_inner(cmd).map_err(flatten)
}

/// A disk error's message already names the file, the offset and the OS error; printed with
/// its source chain (`{:#}`) the OS error would appear twice.
fn flatten(e: anyhow::Error) -> anyhow::Error {
    match e.downcast::<godwit_disk::Error>() {
        Ok(d) => anyhow::Error::msg(d.to_string()),
        Err(e) => e,
    }
}

fn run_inner(cmd: DiskCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DiskCommand::Info { file, json, format } => info(&file, json, format.as_deref()),
        DiskCommand::Map { file, json, format } => map(&file, json, format.as_deref()),
        DiskCommand::Convert {
            src,
            dst,
            output_format,
            options,
            format,
            stats,
            json,
        } => convert(
            &src,
            &dst,
            &output_format,
            &options,
            format.as_deref(),
            (stats, json),
        ),
        DiskCommand::Compare {
            a,
            b,
            strict,
            format_a,
            format_b,
        } => compare_cmd(&a, &b, strict, format_a.as_deref(), format_b.as_deref()),
    }
}

/// Open a disk; `-f raw` forces raw, any other `-f` must match what is detected.
fn open(file: &str, format: Option<&str>) -> anyhow::Result<Disk> {
    let hint = match format {
        Some("raw") => FormatHint::Raw,
        _ => FormatHint::Auto,
    };
    let disk = Disk::open_with(&LocalFs, file, hint)?;
    if let Some(f) = format {
        let got = disk.top().format.name();
        let want = if f == "vpc" { "vhd" } else { f };
        if got != want {
            bail!("{file}: is {got}, not {f}");
        }
    }
    Ok(disk)
}

/// Bytes a layer holds itself (its data runs), walked a window at a time.
fn layer_allocated(layer: &dyn Layer) -> anyhow::Result<u64> {
    let size = layer.info().virtual_size;
    let mut pos = 0;
    let mut n = 0;
    while pos < size {
        let len = (size - pos).min(MAP_WINDOW);
        n += layer
            .map(pos, len)?
            .iter()
            .filter(|r| r.state == RunState::Data)
            .map(|r| r.len)
            .sum::<u64>();
        pos += len;
    }
    Ok(n)
}

fn human(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn info(file: &str, as_json: bool, format: Option<&str>) -> anyhow::Result<ExitCode> {
    let disk = open(file, format)?;
    let top = disk.top();
    let allocated = write::allocated_bytes(&disk)?;
    let mut chain = Vec::new();
    for (depth, layer) in disk.layers().iter().enumerate() {
        let i = layer.info();
        chain.push(json!({
            "depth": depth,
            "file": i.file,
            "format": i.format.name(),
            "subformat": i.subformat,
            "virtual_size": i.virtual_size,
            "allocated_bytes": layer_allocated(layer.as_ref())?,
            "logical_sector_size": i.logical_sector_size,
            "files": i.files,
            "identity": godwit_disk::chain::describe(&i.identity),
            "parent": i.parent.as_ref().map(|p| json!({
                "hints": p.hints,
                "expect": godwit_disk::chain::describe(&p.expect),
            })),
        }));
    }
    let v = json!({
        "file": top.file,
        "format": top.format.name(),
        "subformat": top.subformat,
        "virtual_size": top.virtual_size,
        "allocated_bytes": allocated,
        "chain": chain,
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("image: {}", top.file);
    println!("format: {}", top.format.name());
    println!("subformat: {}", top.subformat);
    println!(
        "virtual size: {} ({} bytes)",
        human(top.virtual_size),
        top.virtual_size
    );
    println!("allocated: {} ({allocated} bytes)", human(allocated));
    println!("chain: {} layer(s)", chain.len());
    for c in &chain {
        let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
        let n = |k: &str| c[k].as_u64().unwrap_or(0);
        println!(
            "  [{}] {}  {} {}  {}  {} allocated  {}",
            n("depth"),
            s("file"),
            s("format"),
            s("subformat"),
            human(n("virtual_size")),
            human(n("allocated_bytes")),
            s("identity"),
        );
        if let Some(p) = c["parent"].as_object() {
            let hints: Vec<&str> = p["hints"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            println!(
                "      parent: {} (expects {})",
                hints.join(", "),
                p["expect"].as_str().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn map(file: &str, as_json: bool, format: Option<&str>) -> anyhow::Result<ExitCode> {
    let disk = open(file, format)?;
    let size = disk.virtual_size();
    let depth_max = disk.layers().len();
    let out = std::io::stdout();
    let mut out = BufWriter::new(out.lock());
    if as_json {
        writeln!(out, "[")?;
    } else {
        writeln!(out, "{:<19} {:<19} {:<5} File", "Offset", "Length", "Depth")?;
    }
    let mut first = true;
    let mut pending: Option<(Run, usize)> = None;
    let mut emit = |out: &mut BufWriter<_>, (r, d): (Run, usize)| -> anyhow::Result<()> {
        let file = disk.layers().get(d).map(|l| l.info().file.as_str());
        if as_json {
            let v = json!({
                "start": r.offset,
                "length": r.len,
                "depth": d,
                "present": d < depth_max,
                "zero": r.state == RunState::Zero,
                "data": r.state == RunState::Data,
                "file": file,
            });
            writeln!(out, "{}{v}", if first { "" } else { "," })?;
            first = false;
        } else if r.state == RunState::Data {
            writeln!(
                out,
                "{:<19} {:<19} {:<5} {}",
                format!("{:#x}", r.offset),
                format!("{:#x}", r.len),
                d,
                file.unwrap_or("-")
            )?;
        }
        Ok(())
    };
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(MAP_WINDOW);
        for (r, d) in disk.resolve(pos, n)? {
            pending = match pending {
                Some((p, pd)) if pd == d && p.state == r.state && p.end() == r.offset => Some((
                    Run {
                        len: p.len + r.len,
                        ..p
                    },
                    pd,
                )),
                Some(p) => {
                    emit(&mut out, p)?;
                    Some((r, d))
                }
                None => Some((r, d)),
            };
        }
        pos += n;
    }
    if let Some(p) = pending {
        emit(&mut out, p)?;
    }
    if as_json {
        writeln!(out, "]")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// A file no disk format claims is read as raw only if it could be a raw disk: text, an
/// archive or an unsupported image format is refused unless `-f raw` says so.
fn refuse_non_disk(disk: &Disk, format: Option<&str>) -> anyhow::Result<()> {
    let top = disk.top();
    if format.is_some() || top.format.name() != "raw" {
        return Ok(());
    }
    use std::io::Read;
    let mut head = Vec::with_capacity(4096);
    let mut f = File::open(&top.file).with_context(|| format!("{}: open", top.file))?;
    (&mut f)
        .take(4096)
        .read_to_end(&mut head)
        .with_context(|| format!("{}: read", top.file))?;
    if let Some(what) = godwit_disk::probe::non_disk_content(&head, top.virtual_size) {
        bail!(
            "{}: not a disk image: no VMDK, VHD or VHDX header, and the content looks like {what}; give -f raw to convert it as a raw disk anyway",
            top.file
        );
    }
    Ok(())
}

fn convert(
    src: &str,
    dst: &str,
    output_format: &str,
    options: &[String],
    format: Option<&str>,
    (stats, json): (bool, bool),
) -> anyhow::Result<ExitCode> {
    use super::progress::{Figures, INTERVAL, Mode, Reporter};
    use godwit_disk::progress::{CountingSource, Meter, ProgressFn, Snapshot, watch};
    use std::sync::Arc;
    if json && dst == "-" {
        bail!(
            "--json writes its events to stdout, which would mix them with the image: give an output file"
        );
    }
    let (fmt, mut opts) = write::parse_output(output_format, options)?;
    let disk = open(src, format)?;
    refuse_non_disk(&disk, format)?;
    for layer in disk.layers() {
        for f in &layer.info().files {
            if same_file(Path::new(f), Path::new(dst)) {
                bail!("{dst}: is part of the source image ({f}); refusing to overwrite it");
            }
        }
    }
    // The extent name written in a stream VMDK's descriptor: the output's own name.
    opts.vmdk.file_name = Path::new(dst)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| n != "-")
        .unwrap_or_else(|| "disk.vmdk".into());
    let started = std::time::Instant::now();
    let reporter = Reporter::new("convert", json);
    let meter = Arc::new(Meter::pending());
    let w = if reporter.mode() == Mode::Quiet {
        None
    } else {
        meter.set_total(write::allocated_bytes(&disk)?);
        let (r, label) = (reporter.clone(), src.to_string());
        let (s2, d2) = (src.to_string(), dst.to_string());
        let f: ProgressFn = Arc::new(move |s: &Snapshot| {
            let mut f = Figures::from(s);
            f.extra.insert("src".into(), s2.clone().into());
            f.extra.insert("dst".into(), d2.clone().into());
            r.update(&label, &f, false);
        });
        Some(watch(meter.clone(), INTERVAL, f))
    };
    let counted = CountingSource::new(&disk, &meter);
    let result = convert_to(&counted, dst, fmt, &opts);
    drop(w);
    let last = reporter.finish();
    let s = result?;
    if json {
        let report = json!({
            "src": src, "dst": dst, "format": output_format,
            "virtual_size": disk.virtual_size(),
            "data_bytes": s.data_bytes, "written_bytes": s.written_bytes,
            "seconds": started.elapsed().as_secs_f64(),
        });
        println!("{}", reporter.done_json(report, last.as_ref()));
    }
    if stats {
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "godwit: read {} of data, wrote {} in {secs:.2} s ({:.0} MB/s of virtual disk)",
            human(s.data_bytes),
            human(s.written_bytes),
            disk.virtual_size() as f64 / 1e6 / secs.max(1e-9)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Write `disk` as `fmt` to `dst` (`-`: stdout); a new file is removed again on failure.
fn convert_to(
    disk: &dyn BlockSource,
    dst: &str,
    fmt: OutputFormat,
    opts: &write::WriteOptions,
) -> anyhow::Result<write::WriteStats> {
    if dst == "-" {
        let out = std::io::stdout();
        let mut out = BufWriter::with_capacity(1 << 20, out.lock());
        write::write_image_with(disk, fmt, opts, &mut out)
            .map_err(anyhow::Error::from)
            .and_then(|s| out.flush().map(|_| s).context("stdout"))
    } else {
        let existed = Path::new(dst).exists();
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(dst)
            .with_context(|| format!("{dst}: cannot create"))?;
        let meta = file.metadata().with_context(|| format!("{dst}: stat"))?;
        let regular = meta.is_file();
        // Only an existing file with content needs truncating (on ext4 a truncate to zero
        // also forces a writeback when the file is closed).
        if regular && meta.len() > 0 {
            file.set_len(0)
                .with_context(|| format!("{dst}: truncate"))?;
        }
        let r = write_to(disk, fmt, opts, file, dst, regular);
        if r.is_err() && regular && !existed {
            let _ = std::fs::remove_file(dst);
        }
        r
    }
}

fn write_to(
    disk: &dyn BlockSource,
    fmt: OutputFormat,
    opts: &write::WriteOptions,
    file: File,
    dst: &str,
    regular: bool,
) -> anyhow::Result<write::WriteStats> {
    if regular {
        // Sparse raw; dynamic VHD/VHDX with all-zero blocks left unallocated.
        let s = write::write_image_to_file(disk, fmt, opts, &file, dst)?;
        if fmt != OutputFormat::Raw {
            file.sync_data().with_context(|| format!("{dst}: sync"))?;
        }
        return Ok(s);
    }
    let mut out = BufWriter::with_capacity(4 << 20, file);
    let s = write::write_image_with(disk, fmt, opts, &mut out)?;
    out.flush().with_context(|| format!("{dst}: write"))?;
    out.get_ref()
        .sync_data()
        .or_else(|e| if regular { Err(e) } else { Ok(()) })
        .with_context(|| format!("{dst}: sync"))?;
    Ok(s)
}

fn compare_cmd(
    a: &str,
    b: &str,
    strict: bool,
    fa: Option<&str>,
    fb: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let da = open(a, fa)?;
    let db = open(b, fb)?;
    let (sa, sb) = (da.virtual_size(), db.virtual_size());
    let result = compare(&da, &db, strict)?;
    // Like qemu-img: the warning comes once the common part has compared equal.
    let common_equal = match result {
        Comparison::Identical => true,
        Comparison::Mismatch(o) => o >= sa.min(sb) / 512 * 512,
        Comparison::SizeMismatch => false,
    };
    if sa != sb && !strict && common_equal {
        println!("Warning: Image size mismatch!");
    }
    match result {
        Comparison::Identical => {
            println!("Images are identical.");
            Ok(ExitCode::SUCCESS)
        }
        Comparison::SizeMismatch => {
            println!("Strict mode: Image size mismatch!");
            Ok(ExitCode::from(1))
        }
        Comparison::Mismatch(o) => {
            println!("Content mismatch at offset {o}!");
            Ok(ExitCode::from(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(64 << 20), "64.0 MiB");
        assert_eq!(human(3 << 29), "1.5 GiB");
    }
}
