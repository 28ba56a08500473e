//! Secrets a command reads: the first line of a `--…-password-file`, otherwise an environment
//! variable; never a command-line value (it would show in `ps` and shell history).

use anyhow::Context;
use std::path::Path;

/// The source password: `--password-file` (first line), otherwise `GODWIT_PASSWORD`. Empty is
/// refused either way.
pub fn source_password(file: Option<&Path>) -> anyhow::Result<String> {
    let password = match file {
        Some(p) => {
            let line = std::fs::read_to_string(p)
                .with_context(|| format!("reading password file {}", p.display()))?
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            anyhow::ensure!(!line.is_empty(), "password file {} is empty", p.display());
            line
        }
        None => std::env::var("GODWIT_PASSWORD").unwrap_or_default(),
    };
    anyhow::ensure!(
        !password.is_empty(),
        "no password: set GODWIT_PASSWORD or pass --password-file FILE"
    );
    Ok(password)
}
