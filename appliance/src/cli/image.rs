//! `godwit image`: build the appliance (OVA + VHDX + SHA256SUMS), sign update bundles, write
//! OVF environment documents (for testing vApp properties without vSphere).

use anyhow::Context;
use godwit_image::build::{self, Options};
use godwit_image::{bundle, ovfenv};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum ImageCommand {
    /// Build godwit.ova, godwit.vhdx and SHA256SUMS into DIR (rootless; Debian packages only).
    Build(BuildArgs),
    /// Sign a slot's kernel and initramfs as an update bundle.
    Bundle(BundleArgs),
    /// Write an OVF environment document (ovf-env.xml) with the given vApp properties.
    Ovfenv {
        /// KEY=VALUE, repeatable (e.g. godwit.hostname=mig-01).
        #[arg(long = "set")]
        set: Vec<String>,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(clap::Args)]
pub struct BuildArgs {
    #[arg(long)]
    out: PathBuf,
    /// The godwit binary to ship (default: this one). `make image` passes a static release build.
    #[arg(long)]
    godwit_bin: Option<PathBuf>,
    /// Version shown on the console and in the OVF (default: this binary's).
    #[arg(long)]
    version: Option<String>,
    /// Cache for downloaded Debian packages (default: ~/.cache/godwit-image).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Update-signing key (Ed25519 PKCS#8), created when missing (default: CACHE/update-signing.pk8).
    #[arg(long)]
    signing_key: Option<PathBuf>,
    /// Firmware the OVF asks vSphere for: bios, efi, efi-secureboot (the image boots on all).
    #[arg(long, default_value = "bios")]
    firmware: String,
    /// Virtual size of the disk in GiB (thin: the data partition grows to fill it at boot).
    #[arg(long, default_value_t = godwit_image::build::DEFAULT_DISK_BYTES >> 30)]
    disk_gib: u64,
    /// Fixed timestamp for every file in the image.
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 1_700_000_000)]
    source_date_epoch: u64,
}

#[derive(clap::Args)]
pub struct BundleArgs {
    /// Signing key (Ed25519 PKCS#8, as `image build` creates it).
    #[arg(long)]
    key: PathBuf,
    #[arg(long)]
    vmlinuz: PathBuf,
    #[arg(long)]
    initrd: PathBuf,
    #[arg(long)]
    version: String,
    #[arg(long)]
    out: PathBuf,
}

fn default_cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("godwit-image")
}

pub fn run(c: ImageCommand) -> anyhow::Result<ExitCode> {
    match c {
        ImageCommand::Build(a) => {
            let cache = a.cache.unwrap_or_else(default_cache);
            let godwit_bin = match a.godwit_bin {
                Some(p) => p,
                None => std::env::current_exe().context("locating this binary")?,
            };
            let opts = Options {
                out: a.out,
                godwit_bin,
                version: a
                    .version
                    .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string()),
                signing_key: a
                    .signing_key
                    .unwrap_or_else(|| cache.join("update-signing.pk8")),
                cache,
                source_date_epoch: a.source_date_epoch,
                firmware: a.firmware.parse()?,
                disk_bytes: a.disk_gib.saturating_mul(1 << 30),
            };
            let out = build::build(&opts)?;
            for p in [&out.ova, &out.vhdx, &out.sums] {
                let size = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
                println!("{}  {size} bytes", p.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Bundle(a) => {
            let key =
                std::fs::read(&a.key).with_context(|| format!("reading {}", a.key.display()))?;
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(&a.out)
                    .with_context(|| format!("creating {}", a.out.display()))?,
            );
            let h = bundle::write(
                &mut f,
                &key,
                &a.version,
                &[
                    ("vmlinuz", a.vmlinuz.as_path()),
                    ("initrd.img", a.initrd.as_path()),
                ],
            )?;
            std::io::Write::flush(&mut f)?;
            println!(
                "{}: bundle {} with {} files",
                a.out.display(),
                h.version,
                h.files.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Ovfenv { set, out } => {
            let mut props = BTreeMap::new();
            for kv in set {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--set {kv:?} is not KEY=VALUE"))?;
                props.insert(k.to_string(), v.to_string());
            }
            std::fs::write(&out, ovfenv::encode(&props))
                .with_context(|| format!("writing {}", out.display()))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
