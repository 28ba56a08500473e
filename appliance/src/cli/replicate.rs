//! `godwit replicate`: not built yet.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ReplicateArgs {}

pub fn run(_: ReplicateArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`godwit replicate` is not built yet")
}
