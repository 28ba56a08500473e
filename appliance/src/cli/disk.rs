//! `godwit disk`: not built yet.

use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum DiskCommand {
    /// Format, subformat, virtual size, allocation and parent chain.
    Info { file: String },
}

pub fn run(_: DiskCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`godwit disk` is not built yet")
}
