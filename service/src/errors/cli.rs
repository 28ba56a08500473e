//! The same failures as the command line tells them (issue 18): `godwit replicate`, `export`,
//! `disk convert` and `staging verify` print one "what happened" line and one "what to do"
//! line. The codes are the service's; the remedies name the command's own options (the
//! browser's never do). Pure.

use super::{JobError, classify_export, err};

/// Map a command's failure text onto a typed error whose remedy speaks of the command line.
pub fn classify_cli(raw: &str) -> JobError {
    let l = raw.to_ascii_lowercase();
    let has = |s: &str| l.contains(s);
    if has("does not match the pinned") || has("not the pinned") {
        return err(
            "staging.certificate_mismatch",
            "The staging server presented a certificate other than the one given.".into(),
            "Compare --target-fingerprint with the fingerprint `godwit staging serve` printed \
             when it started (any case, with or without colons); if the server's certificate \
             was replaced on purpose, pass the new one.",
            raw,
        );
    }
    if (has("staging") || has(":1500"))
        && (has("refused") || has("unreachable") || has("timed out") || has("connection"))
        && !has("no space")
    {
        return err(
            "staging.unreachable",
            format!("The staging server {}could not be reached.", named(raw)),
            "Check that `godwit staging serve` runs there and that TCP port 1500 is open from \
             here (`godwit check --tcp HOST:1500`), then run the command again: a replication \
             resumes where it stopped.",
            raw,
        );
    }
    if has("fingerprint") && has("expected sha256:") {
        return err(
            "input.bad_fingerprint",
            "The fingerprint given is not a SHA-256 certificate fingerprint.".into(),
            "Give it as `godwit staging serve` printed it: SHA256: and 32 hex pairs (case, \
             colons and the prefix do not matter).",
            raw,
        );
    }
    if has("no store here") {
        return err(
            "staging.store_not_found",
            "There is no staging store where the command looked.".into(),
            "Give the staging server's data directory (the --data of `godwit staging serve`) \
             or the store's URL with --store.",
            raw,
        );
    }
    if has("is not a disk image") || has("not a disk image") || has("no format claims") {
        return err(
            "input.not_a_disk",
            "The input file is not a disk image this tool reads.".into(),
            "Give a VMDK, VHD, VHDX or raw image; to read any file as a raw disk, add `-f raw`.",
            raw,
        );
    }
    if has("no such file or directory") || has("os error 2)") {
        return err(
            "input.not_found",
            format!("{} does not exist.", file_named(raw)),
            "Check the path (relative paths start in the current directory) and run the \
             command again.",
            raw,
        );
    }
    if has("file exists") || has("os error 17") {
        return err(
            "output.exists",
            "The output file exists already; it is never overwritten.".into(),
            "Choose another output name, or delete the old file first.",
            raw,
        );
    }
    if has("no sync of") {
        return err(
            "export.sync_not_found",
            "The staging target holds no replica of this VM's disk.".into(),
            "Run `godwit replicate` for the VM first, and check --vm, --disk and --target (the \
             VM's name as the source spells it; disks count from 0).",
            raw,
        );
    }
    let typed = classify_export(raw);
    if typed.code == "export.target_full" || typed.code == "staging.out_of_space" {
        return err(
            &typed.code,
            typed.message,
            "Free space where the output or the staging store is written (or choose another \
             place), then run the command again.",
            raw,
        );
    }
    if typed.code == "internal.unexpected" {
        return err(
            "internal.unexpected",
            typed.message,
            "Run the command again with RUST_LOG=debug; if it fails the same way, report the \
             output.",
            raw,
        );
    }
    typed
}

/// The staging server the text names (`staging://HOST:PORT`, or the `HOST:PORT` it begins
/// with), with a trailing space; empty when it names none.
fn named(raw: &str) -> String {
    if let Some(w) = raw
        .split([' ', ',', ';', '(', ')'])
        .map(|w| w.trim_end_matches(':'))
        .find(|w| w.starts_with("staging://"))
    {
        return format!("{w} ");
    }
    let first = raw.split(": ").next().unwrap_or("");
    match first.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty()
                && !host.contains(' ')
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            format!("{first} ")
        }
        _ => String::new(),
    }
}

/// The path a "No such file" error names: the text before its first `": "`, if it looks like
/// one.
fn file_named(raw: &str) -> String {
    let first = raw.split(": ").next().unwrap_or("").trim();
    if !first.is_empty() && !first.contains(' ') {
        first.to_string()
    } else {
        "A file it names".to_string()
    }
}
