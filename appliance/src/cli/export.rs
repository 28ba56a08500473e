//! `godwit export`: not built yet.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ExportArgs {}

pub fn run(_: ExportArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`godwit export` is not built yet")
}
