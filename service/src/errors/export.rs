//! Export failures (issue 18): the export run's own faults first (its destination full or not
//! writable, no replica to read, a checksum that disagrees with replication, a cancel), then
//! whatever the job classifier knows (the staging server unreachable or its certificate
//! changed, ...). Pure, like [`super::classify`].

use super::{JobError, classify, err};

/// Map an export failure's text onto a typed error. Never fails.
pub fn classify_export(raw: &str) -> JobError {
    let l = raw.to_ascii_lowercase();
    let has = |s: &str| l.contains(s);
    if l.trim_end().ends_with("cancelled") || l == "cancelled" {
        return cancelled(raw);
    }
    if has("data partition is full") || has("no space left") || has("os error 28") {
        return err(
            "export.target_full",
            "The appliance's data partition has no room for this export.".into(),
            "Delete exports that are no longer needed (Exports page) or give the appliance a \
             bigger data disk, then start the export again.",
            raw,
        );
    }
    if has("entitytoolarge") || has("quotaexceeded") || has("bucket quota") {
        return err(
            "export.target_full",
            "The S3 bucket refused the export: it is over its quota or the object is too large."
                .into(),
            "Free space in the bucket or raise its quota, then start the export again.",
            raw,
        );
    }
    let on_s3 = has("s3") || has("bucket");
    if has("read-only file system") || has("os error 30") {
        return err(
            "export.target_unwritable",
            "The exports folder is on a read-only file system.".into(),
            "Remount the appliance's data partition read-write (a read-only remount usually \
             follows a disk error: check the appliance's disk), then start the export again.",
            raw,
        );
    }
    if has("permission denied") || has("os error 13") {
        return err(
            "export.target_unwritable",
            "The service may not write into the exports folder.".into(),
            "Give the service's account write access to its exports folder (it must own it), \
             then start the export again.",
            raw,
        );
    }
    if on_s3 && (has("accessdenied") || has("access denied") || has("forbidden")) {
        return err(
            "export.target_unwritable",
            "The S3 bucket refused to store the export (access denied).".into(),
            "Allow the credentials to write objects in the bucket (s3:PutObject and the \
             multipart upload actions), then start the export again.",
            raw,
        );
    }
    if on_s3 && (has("nosuchbucket") || has("bucket does not exist")) {
        return err(
            "export.target_unwritable",
            "The S3 bucket named in the destination does not exist.".into(),
            "Create the bucket, or correct the bucket in the destination, then start the \
             export again.",
            raw,
        );
    }
    if has("no sync of") {
        return err(
            "export.sync_not_found",
            "The staging target holds no replica of this disk.".into(),
            "Run the job to completion first, check the disk number, and check that the \
             staging setting names the server or bucket that holds the job's replicas.",
            raw,
        );
    }
    if has("integrity check failed") && has("replication recorded") {
        return err(
            "export.checksum_mismatch",
            "The replica read back does not hash to what replication recorded; the export \
             was discarded."
                .into(),
            "Run the job again to make a new replica, then export again. If it happens again, \
             check the staging server's disk and send a support bundle (Logs page).",
            raw,
        );
    }
    classify(raw)
}

/// An export the operator cancelled.
pub fn cancelled(raw: &str) -> JobError {
    err(
        "export.cancelled",
        "The export was cancelled before it finished; nothing of it was kept.".into(),
        "Start the export again if it is still needed.",
        raw,
    )
}

/// A record written before exports had typed errors (`code: ""`, the text as `detail`), typed
/// now; a typed one as it is.
pub fn typed(e: JobError) -> JobError {
    if !e.code.is_empty() {
        return e;
    }
    classify_export(e.detail.as_deref().unwrap_or(&e.message))
}
