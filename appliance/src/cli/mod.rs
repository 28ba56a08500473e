//! One module per subcommand. Each exposes its clap arguments and
//! `run(args) -> anyhow::Result<ExitCode>`.

pub mod check;
pub mod disk;
pub mod export;
pub mod image;
pub mod inventory;
mod password;
pub mod progress;
pub mod remedy;
pub mod replicate;
pub mod replicate_hyperv;
pub mod replicate_scvmm;
pub mod replicate_vsphere;
pub mod serve;
pub mod staging;
mod staging_list;

/// Logs go to stderr; `GODWIT_LOG` (e.g. `debug`, `godwit_transfer=trace`) sets the filter.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GODWIT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
