//! What the godwit binary does on the appliance, started by busybox init (see
//! image/scripts/inittab): `godwit system run` mounts the data partition, applies the OVF
//! environment (vApp properties) when a new one is attached, configures the network, NTP and
//! host name, settles A/B update trials, starts `godwit serve` and shows the console banner.
//! `godwit system update BUNDLE` installs a signed bundle into the other slot.

mod banner;
mod boot;
mod host;
pub mod net;
pub mod space;
pub mod update;

use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum SystemCommand {
    /// Bring the appliance up and supervise `godwit serve` (run by init; respawned).
    Run,
    /// Flush and unmount the data partition (init's shutdown action).
    Shutdown,
    /// Verify a signed update bundle, install it into the inactive slot and arm one trial boot.
    Update {
        /// The bundle file (`godwit image bundle`).
        bundle: std::path::PathBuf,
        /// Reboot into the new slot when installed.
        #[arg(long)]
        reboot: bool,
    },
}

pub fn run(c: SystemCommand) -> anyhow::Result<ExitCode> {
    match c {
        SystemCommand::Run => boot::run(),
        SystemCommand::Shutdown => {
            host::sh("sync", &[]);
            host::sh("umount", &["-r", host::DATA]);
            Ok(ExitCode::SUCCESS)
        }
        SystemCommand::Update { bundle, reboot } => update::install(&bundle, reboot),
    }
}
