//! `godwit staging`: not built yet.

use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum StagingCommand {
    /// Serve the staging store on TCP 1500.
    Serve,
}

pub fn run(_: StagingCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`godwit staging` is not built yet")
}
