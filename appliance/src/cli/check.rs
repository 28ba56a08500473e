//! `godwit check`: not built yet.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct CheckArgs {}

pub fn run(_: CheckArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`godwit check` is not built yet")
}
