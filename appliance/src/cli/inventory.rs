//! `godwit inventory`: not built yet.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct InventoryArgs {}

pub fn run(_: InventoryArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`godwit inventory` is not built yet")
}
