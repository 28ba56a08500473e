//! Typed errors for the operator (issue #18): every job (and export) failure becomes a
//! [`JobError`] — a stable `code`, one readable line saying what happened, one saying what to
//! do, and the raw text as `detail` for support. Pure: [`classify`] maps the text the sources,
//! the staging transport and the disk layer produce (their `Display`, which names hosts,
//! paths and faults) onto the failures an operator can act on; [`readable`] turns anything
//! else into one line without repeated prefixes, endpoint addresses or command-line flags.
//!
//! Exports use the same type through [`classify_export`] (their own faults first, then these).

pub use godwit_webui::backend::JobError;

// --- issue 18, typed export errors (wt-errors) ---
mod export;
pub use export::{cancelled as export_cancelled, classify_export, typed as typed_export};
// issue 18, the command line's remedies (wt-errors)
mod cli;
pub use cli::classify_cli;
// --- end typed export errors ---

/// What to do when nothing more specific is known.
const SUPPORT: &str = "Run the job again; if it fails the same way, download a support bundle \
                       (Logs page) and send it with the job's history.";

fn err(code: &str, message: String, remediation: &str, raw: &str) -> JobError {
    JobError {
        code: code.to_string(),
        message,
        remediation: remediation.to_string(),
        detail: Some(raw.to_string()),
    }
}

/// Map a failure's text onto a typed error. Never fails; unknown text becomes
/// `internal.unexpected` with a readable message.
pub fn classify(raw: &str) -> JobError {
    let l = raw.to_ascii_lowercase();
    let has = |s: &str| l.contains(s);
    // Certificates first: their texts also name hosts and faults.
    if has("not the approved one") || (has("certificate") && has("does not match the pinned")) {
        let who = if has("staging") { "staging" } else { "source" };
        if who == "staging" {
            return err(
                "staging.certificate_mismatch",
                "The staging server presented a certificate other than the pinned one.".into(),
                "If the staging server's certificate was replaced on purpose, enter its new \
                 fingerprint in Settings → Staging; otherwise check which machine answers on \
                 its address.",
                raw,
            );
        }
        return err(
            "source.certificate_changed",
            "The source's certificate is not the one approved for it.".into(),
            "If the certificate was replaced on purpose, remove the source and add it again \
             to approve the new fingerprint; otherwise check which server answers on its \
             address.",
            raw,
        );
    }
    if has("certificate") && (has("not trusted") || has("not pinned")) {
        return err(
            "source.host_certificate_unapproved",
            "A host's certificate has not been approved yet.".into(),
            "Compare the fingerprint in the detail with the host's own, then approve it in \
             Settings → Sources.",
            raw,
        );
    }
    if has("rejected the stored user name or password")
        || has("refused the credentials")
        || has("invalidlogin")
        || has("http 401")
    {
        return err(
            "source.login_refused",
            "The source refused the stored user name or password.".into(),
            "Check the account (not locked or expired, password unchanged) and update the \
             source's credentials in Settings → Sources.",
            raw,
        );
    }
    if has("notauthenticated") || has("session is not authenticated") || has("session expired") {
        return err(
            "vsphere.session_lost",
            "The vCenter session ended during the run (expired, or closed by an administrator)."
                .into(),
            "The run is retried automatically. If it keeps happening, raise the vCenter \
             session timeout or check that nothing closes the connector's sessions.",
            raw,
        );
    }
    if has("encrypted") {
        return err(
            "vsphere.encrypted_disk",
            "The VM has an encrypted disk, which cannot be read through the disk APIs.".into(),
            "Decrypt the VM (VM Storage Policies → remove encryption) or exclude it from \
             replication.",
            raw,
        );
    }
    if (has("capacity") || has("size"))
        && (has("disagree") || has("mismatch") || has("differs") || has("pad or truncate"))
    {
        return err(
            "source.capacity_mismatch",
            "A disk's size differs from what the VM's configuration says.".into(),
            "Consolidate the VM's snapshots (or finish the disk resize) in the hypervisor's \
             console, then run the job again.",
            raw,
        );
    }
    if has("changed while") || has("changed during") || has("disk changed") {
        return err(
            "source.disk_changed",
            "The source disk changed while it was being read.".into(),
            "The run is retried with a new snapshot. If it keeps happening, check that no \
             other backup tool removes or consolidates the connector's snapshots.",
            raw,
        );
    }
    if has("accessdenied") || has("access is denied") || has("access denied") {
        return err(
            "hyperv.access_denied",
            "The Hyper-V host denied the account access.".into(),
            "Add the account to the host's Hyper-V Administrators group (and Remote Management \
             Users for WinRM), then run again.",
            raw,
        );
    }
    if has("quota") || has("maxshellsperuser") || has("maxconcurrentoperations") {
        return err(
            "hyperv.winrm_quota",
            "The Hyper-V host refused another WinRM shell or operation (quota reached).".into(),
            "Wait for other sessions of the account to end, or raise MaxShellsPerUser / \
             MaxConcurrentOperationsPerUser in the host's WinRM configuration.",
            raw,
        );
    }
    if has("push") && (has("unreachable") || has("could not reach") || has("cannot reach")) {
        return err(
            "hyperv.push_url_unreachable",
            "The Hyper-V host could not reach the appliance to push disk data.".into(),
            "Set the push URL in Settings to an address and port the Hyper-V hosts can reach \
             (through NAT or DNS if needed), and allow it in the hosts' firewall.",
            raw,
        );
    }
    if has("no space left") || has("out of space") || has("disk full") || has("enospc") {
        return err(
            "staging.out_of_space",
            "The staging target ran out of space.".into(),
            "Free space on the staging server's store (delete replicas no longer needed) or \
             give it a bigger disk, then run the job again.",
            raw,
        );
    }
    if has("no staging target") {
        return err(
            "staging.not_configured",
            "No staging target is configured.".into(),
            "Set a staging server or S3 bucket in Settings → Staging.",
            raw,
        );
    }
    if (has("staging") || has(":1500"))
        && (has("refused") || has("unreachable") || has("timed out") || has("connection"))
    {
        return err(
            "staging.unreachable",
            "The staging server could not be reached.".into(),
            "Check that the staging server is running and that TCP port 1500 is open from \
             the appliance to it (Checks page); the run is retried automatically.",
            raw,
        );
    }
    if let Some(path) = not_found_path(raw) {
        let on_datastore = path.starts_with('[');
        return if on_datastore {
            err(
                "vsphere.file_not_found",
                format!("The disk file {path} was not found on its datastore."),
                "Check that the VM's disks still exist (the VM may have been moved, or a disk \
                 deleted); refresh the inventory and run the job again.",
                raw,
            )
        } else {
            err(
                "source.not_found",
                format!("{path} was not found on the source."),
                "Check that the VM still exists on the source (it may have been deleted or \
                 unregistered); refresh the inventory, and recreate the job if needed.",
                raw,
            )
        };
    }
    if has("source") && has("no longer exists") {
        return err(
            "job.source_removed",
            "The job's source was removed from the appliance.".into(),
            "Add the source again, or delete this job.",
            raw,
        );
    }
    if has("connection refused") || has("timed out") || has("unreachable") || has("dns error") {
        return err(
            "source.unreachable",
            format!("A server could not be reached: {}.", readable(raw)),
            "Check the network path from the appliance to the server (Checks page); the run is \
             retried automatically.",
            raw,
        );
    }
    err("internal.unexpected", readable(raw), SUPPORT, raw)
}

/// The thing a `... not found` error names (`[LocalDS_0] vm/disk1.vmdk`, `VM "web"`).
fn not_found_path(raw: &str) -> Option<String> {
    let seg = segments(raw.lines().next().unwrap_or(""))
        .into_iter()
        .rev()
        .find(|s| s.ends_with(" not found") || s.ends_with(" was not found"))?;
    let thing = seg
        .trim_end_matches(" not found")
        .trim_end_matches(" was")
        .trim();
    (!thing.is_empty()).then(|| thing.to_string())
}

/// `a: b: c` split on `": "`, with segments that are endpoint addresses (`host:port`, an IP)
/// dropped.
fn segments(raw: &str) -> Vec<&str> {
    raw.split(": ")
        .map(str::trim)
        .filter(|s| !s.is_empty() && !is_endpoint(s))
        .collect()
}

fn is_endpoint(s: &str) -> bool {
    if s.parse::<std::net::IpAddr>().is_ok() || s.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains(' ')
                && host.contains('.')
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// One readable line: endpoint addresses dropped, a prefix that a later part repeats dropped,
/// sentences naming command-line flags dropped, Rust debug braces avoided.
pub fn readable(raw: &str) -> String {
    let first = raw.lines().next().unwrap_or("").trim();
    let segs = segments(first);
    let kept: Vec<&str> = segs
        .iter()
        .enumerate()
        .filter(|(i, s)| !segs[i + 1..].iter().any(|later| later.contains(*s)))
        .map(|(_, s)| *s)
        .collect();
    let joined = kept.join(": ");
    let sentences: Vec<&str> = joined
        .split(". ")
        .filter(|s| !s.contains(" --") && !s.starts_with("--"))
        .collect();
    let mut out = sentences.join(". ");
    if out.is_empty() {
        out = "the run failed".into();
    }
    let mut chars = out.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => out,
    }
}

/// A refused certificate (a pin that does not match, an unapproved one) goes to the log, so
/// the log page shows it among the failures. Other refusals are the form's business.
pub fn log_refusal(what: &str, address: &str, e: &godwit_webui::backend::CommandError) {
    let text = e.to_string();
    let l = text.to_ascii_lowercase();
    if l.contains("certificate") || l.contains("fingerprint") {
        tracing::warn!(
            code = "certificate.refused",
            "{what} {address}: certificate refused: {text}"
        );
    }
}

#[cfg(test)]
mod tests;
