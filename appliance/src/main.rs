//! `godwit`: the one binary. Parses the command line and hands each subcommand to its module
//! in `cli/`. Exit codes: 0 success; 1 a negative answer (images differ, a check failed);
//! 2 an error (bad usage, bad input, I/O). Subcommands may document more specific codes.

mod cli;
mod system;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// glibc's malloc raises its mmap threshold each time a large block is freed (up to 32 MiB);
/// after that the 4 MiB chunk buffers of a transfer come from per-thread heaps and stay there.
/// `godwit serve` measured 200-240 MiB RSS during a replication that way (design goal: 128
/// MiB) and 64 MiB with the threshold fixed at 1 MiB, so that large buffers live in their own
/// mappings and go back to the system when freed (tests/bench/service.sh prints the figure).
/// glibc takes the setting only from the environment at start (mallopt would need unsafe
/// code), so the process re-executes itself once with it set. mimalloc was measured too:
/// 230 MiB as is, 120-150 MiB with an immediate purge. The price is page faults on every fresh
/// buffer: the transfer bench ran at 347 MiB/s with it and 395-407 MiB/s without (client and
/// server then peak at 77/94 MiB, within the goal), so only the service and the appliance's
/// init take it; `replicate`, `export` and `staging serve` keep glibc's default.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn fix_malloc_mmap_threshold() {
    use std::os::unix::process::CommandExt;
    const VAR: &str = "MALLOC_MMAP_THRESHOLD_";
    if std::env::var_os(VAR).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(VAR, "1048576")
        .exec();
    // Only a failed exec returns: go on with glibc's defaults.
    eprintln!("godwit: could not re-execute with {VAR} set ({err}); going on without it");
}

#[derive(Parser)]
#[command(name = "godwit", version, about = "Godwit migration connector", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect, map, convert and compare VMDK, VHD, VHDX and raw images.
    #[command(subcommand)]
    Disk(cli::disk::DiskCommand),
    /// Run the staging (replication) server.
    #[command(subcommand)]
    Staging(cli::staging::StagingCommand),
    /// One replication cycle of a VM's disks to a staging target (full first, then incremental).
    Replicate(cli::replicate::ReplicateArgs),
    /// Export a replicated disk as an importable image.
    Export(cli::export::ExportArgs),
    /// Prerequisite checks: NTP, DNS, ICMP, TCP and TLS reachability.
    Check(cli::check::CheckArgs),
    /// List the VMs and disks at a source, with eligibility.
    Inventory(cli::inventory::InventoryArgs),
    /// Build the appliance image (OVA, VHDX), sign update bundles.
    #[command(subcommand)]
    Image(cli::image::ImageCommand),
    /// On the appliance: bring the system up, apply updates (run by its init).
    #[command(subcommand, hide = true)]
    System(system::SystemCommand),
    /// The connector service: HTTPS web UI and REST API, settings store, job engine.
    Serve(cli::serve::ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if matches!(cli.command, Command::Serve(_) | Command::System(_)) {
        fix_malloc_mmap_threshold();
    }
    // `serve` installs its own logging (stderr, log file, in-memory ring).
    if !matches!(cli.command, Command::Serve(_)) {
        cli::init_logging();
    }
    // issue 18: these commands tell a failure as what happened and what to do.
    let remedied = match &cli.command {
        Command::Replicate(a) => Some(a.json()),
        Command::Export(a) => Some(a.json()),
        Command::Disk(c) => c.convert_json(),
        Command::Staging(c) => c.verify_json(),
        _ => None,
    };
    let result = match cli.command {
        Command::Disk(c) => cli::disk::run(c),
        Command::Staging(c) => cli::staging::run(c),
        Command::Replicate(a) => cli::replicate::run(a),
        Command::Export(a) => cli::export::run(a),
        Command::Check(a) => cli::check::run(a),
        Command::Inventory(a) => cli::inventory::run(a),
        Command::Image(c) => cli::image::run(c),
        Command::System(c) => system::run(c),
        Command::Serve(a) => cli::serve::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            match remedied {
                Some(json) => cli::remedy::report(&e, json),
                None => eprintln!("godwit: error: {e:#}"),
            }
            ExitCode::from(2)
        }
    }
}
