//! The test double's views: the made-up certificate, a job's progress as time passes, and the
//! inventory every source "has".

use super::{DISK_BYTES, TestBackend, TestJob};
use crate::backend::*;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(super) fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Civil date from days since the epoch (Howard Hinnant's algorithm), UTC.
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl TestBackend {
    /// A made-up view of the generated or the uploaded certificate.
    pub(super) fn certificate_view(uploaded: Option<&str>) -> HttpsCertificateView {
        use sha2::Digest;
        let pem = uploaded.unwrap_or("generated");
        HttpsCertificateView {
            fingerprint: crate::validate::Fingerprint::of_digest(
                &sha2::Sha256::digest(pem.as_bytes()).into(),
            )
            .into_string(),
            subject: if uploaded.is_some() {
                "CN=godwit.example.test".into()
            } else {
                "CN=godwit".into()
            },
            issuer: if uploaded.is_some() {
                "CN=Example Test CA".into()
            } else {
                "CN=godwit".into()
            },
            not_before: "2026-01-01 00:00:00 UTC".into(),
            not_after: "2027-01-01 00:00:00 UTC".into(),
            subject_alt_names: vec!["godwit.example.test".into()],
            chain_length: if uploaded.is_some() { 2 } else { 1 },
            uploaded: uploaded.is_some(),
            // The generated one is near its end (so the page's renewal notice is seen).
            expires_in_days: if uploaded.is_some() { 400 } else { 12 },
            renewal_due: uploaded.is_none(),
            renewal: if uploaded.is_some() {
                "Upload a renewed certificate before 2027-01-01.".into()
            } else {
                "A new certificate is generated automatically from 2026-12-02; its fingerprint \
                 will change."
                    .into()
            },
        }
    }

    pub(super) fn job_view(&self, j: &TestJob) -> JobView {
        let elapsed = j.started.map(|t| t.elapsed());
        let snapshot = Duration::from_millis(300);
        let (state, done) = match elapsed {
            _ if j.cancelled => (JobState::Cancelled, 0),
            None => (JobState::Scheduled, 0),
            Some(e) if e < snapshot => (JobState::Snapshotting, 0),
            Some(e) if e < snapshot + self.job_duration => {
                let ms = (e - snapshot).as_millis();
                let total_ms = self.job_duration.as_millis().max(1);
                let done = u128::from(DISK_BYTES) * ms / total_ms;
                (
                    JobState::Transferring,
                    u64::try_from(done).unwrap_or(DISK_BYTES),
                )
            }
            Some(_) => match j.schedule {
                Schedule::Once => (JobState::Completed, DISK_BYTES),
                Schedule::EveryHours { .. } => (JobState::Scheduled, DISK_BYTES),
            },
        };
        let finished = done == DISK_BYTES;
        let secs = self.job_duration.as_secs().max(1);
        JobView {
            id: j.id.clone(),
            source_id: j.source_id.clone(),
            vm: j.vm.clone(),
            schedule: j.schedule.clone(),
            state,
            progress: j.started.map(|_| Progress {
                bytes_done: done,
                bytes_total: DISK_BYTES,
                throughput_bps: if state == JobState::Transferring {
                    DISK_BYTES / secs
                } else {
                    0
                },
            }),
            runs_completed: u32::from(finished),
            last_error: None,
            next_run: match (&j.schedule, finished) {
                (Schedule::EveryHours { hours }, true) => Some(format!("in {hours} h")),
                _ => None,
            },
            last_sync: finished.then(now_rfc3339),
            source_name: j.source_name.clone(),
            replication: test_replication(state, done, secs, finished),
            // Issue 21: the server of the wizard's staging target.
            staging_target: j.started.map(|_| "192.0.2.20:1500".to_string()),
        }
    }

    pub(super) fn inventory_of(source: &SourceView) -> Vec<VmView> {
        let disk = |i: u32| DiskView {
            index: i,
            label: format!("Hard disk {}", i + 1),
            capacity_bytes: DISK_BYTES,
            backing: "[datastore1] vm/vm.vmdk".into(),
        };
        let vm = |name: &str, folder: &str, disks: Vec<DiskView>| VmView {
            source_id: source.id.clone(),
            name: name.into(),
            power_state: "poweredOn".into(),
            guest_os: "Debian GNU/Linux 12 (64-bit)".into(),
            disks,
            eligible: true,
            reasons: vec![],
            host: Some("esx-01.example".into()),
            source_name: source.name.clone(),
            folder: Some(folder.into()),
        };
        vec![
            vm("web-01", "DC0/vm/Web", vec![disk(0)]),
            VmView {
                guest_os: "Windows Server 2022".into(),
                reasons: vec!["CBT is off: the first run copies every block".into()],
                host: Some("esx-02.example".into()),
                ..vm("db-01", "DC0/vm/Databases", vec![disk(0), disk(1)])
            },
            VmView {
                power_state: "poweredOff".into(),
                guest_os: "Other (32-bit)".into(),
                eligible: false,
                reasons: vec![
                    "physical-mode RDM disk cannot be snapshotted".into(),
                    "hardware version 4 is older than the minimum (7)".into(),
                ],
                host: Some("esx-02.example".into()),
                ..vm("legacy-rdm", "DC0/vm/Legacy", vec![disk(0)])
            },
            vm("web-02", "DC0/vm/Web", vec![disk(0)]),
            vm("web-03", "DC0/vm/Web", vec![disk(0), disk(1)]),
        ]
    }
}

/// Pin a Hyper-V host of an SCVMM source, with the real service's refusals: an unknown source,
/// one that is not SCVMM, an empty or malformed host, a fingerprint that is not
/// `SHA256:` and 64 hex digits.
pub(super) fn approve_host(
    sources: &mut [SourceView],
    id: &str,
    cmd: ApproveHost,
) -> CommandResult<SourceView> {
    let Some(src) = sources.iter_mut().find(|x| x.id == id) else {
        return Err(CommandError::NotFound {
            message: format!("no source {id}"),
        });
    };
    if src.kind != SourceKind::Scvmm {
        return Err(CommandError::Conflict {
            message: format!("source {id} is not an SCVMM source"),
        });
    }
    let mut fields = Vec::new();
    let host = cmd.host.trim().to_ascii_lowercase();
    if host.is_empty() {
        fields.push(FieldError {
            field: "host".into(),
            message: "required: VMM's name for the host or its address".into(),
        });
    } else if host
        .chars()
        .any(|c| c.is_whitespace() || c == '#' || c == '/')
    {
        fields.push(FieldError {
            field: "host".into(),
            message: "a host name or address (`host` or `host:port`)".into(),
        });
    }
    let fp = crate::validate::Fingerprint::try_from(cmd.approved_fingerprint.as_str());
    if let Err(e) = &fp {
        fields.push(FieldError {
            field: "approved_fingerprint".into(),
            message: format!("{e}, as the refused job named it"),
        });
    }
    if !fields.is_empty() {
        return Err(CommandError::Invalid { fields });
    }
    src.host_pins.retain(|p| p.host != host);
    src.host_pins.push(HostPinView {
        host,
        fingerprint: fp
            .map(crate::validate::Fingerprint::into_string)
            .unwrap_or_default(),
    });
    Ok(src.clone())
}

// ---- replication view (issue #18) of the test double: one disk, derived like the service's --

fn test_replication(state: JobState, done: u64, secs: u64, finished: bool) -> ReplicationView {
    let running = matches!(
        state,
        JobState::Snapshotting | JobState::Transferring | JobState::RemovingSnapshot
    );
    let rate = DISK_BYTES / secs.max(1);
    let replication_state = match state {
        JobState::Cancelled => ReplicationState::Cancelled,
        JobState::Completed => ReplicationState::Paused,
        _ if finished => ReplicationState::Continuous,
        _ => ReplicationState::InitialSync,
    };
    let step = |name: &str, ok: bool, now: bool| PhaseView {
        name: name.into(),
        state: if ok {
            "done"
        } else if now {
            "running"
        } else {
            "pending"
        }
        .into(),
        at: ok.then(now_rfc3339),
    };
    let snap = state != JobState::Snapshotting && (running || finished);
    ReplicationView {
        replication_state,
        stalled_reason: None,
        phase: running.then(|| state_phase(state)),
        eta_seconds: (state == JobState::Transferring && rate > 0)
            .then(|| DISK_BYTES.saturating_sub(done) / rate),
        lag_seconds: finished.then_some(0),
        disks: vec![DiskProgress {
            index: 0,
            label: "Hard disk 1".into(),
            capacity_bytes: DISK_BYTES,
            bytes_done: done,
            bytes_total: DISK_BYTES,
            state: if finished {
                "done"
            } else if state == JobState::Transferring {
                "reading"
            } else {
                "pending"
            }
            .into(),
            throughput_bps: if state == JobState::Transferring {
                rate
            } else {
                0
            },
            last_sync: finished.then(|| "sync-test-0".into()),
            sha256: None,
        }],
        phases: if running || finished {
            vec![
                step("snapshot taken", snap, state == JobState::Snapshotting),
                step(
                    "disk 0 read and sent",
                    finished,
                    state == JobState::Transferring,
                ),
                step("snapshot removed", finished, false),
                step("replica committed", finished, false),
            ]
        } else {
            Vec::new()
        },
        error: None,
        stages: None,
    }
}

fn state_phase(state: JobState) -> String {
    match state {
        JobState::Snapshotting => "taking a snapshot".into(),
        JobState::Transferring => "reading disk 1 of 1".into(),
        _ => "removing the snapshot".into(),
    }
}
