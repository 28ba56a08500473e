//! The replication view of a job (issue #18), pure: what [`crate::job::step`] keeps about the
//! replica in the job's record ([`ReplicaRecord`]: disks with their last sync and SHA-256, the
//! current run's phases with their times, the last consistent snapshot's time, the typed
//! error, where the time went), and the functions that derive what the API and the pages show
//! from it, the run's live figures ([`Live`]) and the time: the MGN-like lifecycle state, the
//! ETA from the allocated bytes left to read, the lag, the phase checklist, the disk rows.

use crate::store::JobRecord;
use godwit_webui::backend::{
    DiskProgress, JobError, JobState, PhaseView, Progress, ReplicationState, ReplicationView,
    Schedule, StageTimes,
};
use serde::{Deserialize, Serialize};

/// What the job record keeps about its replica (appended to [`JobRecord`], empty for records
/// written before it existed).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicaRecord {
    #[serde(default)]
    pub disks: Vec<DiskRecord>,
    /// The current (or last) run's phases reached, in order.
    #[serde(default)]
    pub phases: Vec<PhaseRecord>,
    /// When the current (or last) run's snapshot was taken.
    #[serde(default)]
    pub snapshot_at: Option<u64>,
    /// When the snapshot of the last consistent replica was taken (the lag counts from it).
    #[serde(default)]
    pub last_consistent: Option<u64>,
    #[serde(default)]
    pub error: Option<JobError>,
    /// Where the current (or last) run's time went, summed over its disks.
    #[serde(default)]
    pub stages: Option<StageTimes>,
}

/// One disk of the VM as the job knows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskRecord {
    pub index: u32,
    pub label: String,
    pub capacity_bytes: u64,
    /// Sync id of the disk's last replica.
    pub last_sync: Option<String>,
    pub sha256: Option<String>,
    pub synced_at: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PhaseRecord {
    pub name: String,
    pub at: u64,
}

/// The live figures of a running transfer (not persisted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Live {
    /// Over all the VM's disks (virtual bytes).
    pub progress: Progress,
    /// The disk being read.
    pub disk: Option<u32>,
    pub disk_done: u64,
    pub disk_total: u64,
    pub disk_rate: u64,
    /// Allocated bytes of the current disk to read, and read (0 when not measured).
    pub read_total: u64,
    pub read_done: u64,
    pub read_rate: u64,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            progress: Progress {
                bytes_done: 0,
                bytes_total: 0,
                throughput_bps: 0,
            },
            disk: None,
            disk_done: 0,
            disk_total: 0,
            disk_rate: 0,
            read_total: 0,
            read_done: 0,
            read_rate: 0,
        }
    }
}

pub const SNAPSHOT_TAKEN: &str = "snapshot taken";
pub const SNAPSHOT_REMOVED: &str = "snapshot removed";
pub const REPLICA_COMMITTED: &str = "replica committed";

/// The checklist name of disk `n` done.
pub fn disk_phase(n: u32) -> String {
    format!("disk {n} read and sent")
}

/// A schedule in words ("every 6 hours"), never its debug form.
pub fn schedule_text(s: &Schedule) -> String {
    match s {
        Schedule::Once => "once".into(),
        Schedule::EveryHours { hours: 1 } => "every hour".into(),
        Schedule::EveryHours { hours } => format!("every {hours} hours"),
    }
}

/// A job state in words, for timeline lines.
pub fn state_text(s: JobState) -> &'static str {
    match s {
        JobState::Scheduled => "scheduled",
        JobState::Snapshotting => "taking a snapshot",
        JobState::Transferring => "transferring",
        JobState::RemovingSnapshot => "removing the snapshot",
        JobState::RetryWait => "waiting to retry",
        JobState::Completed => "completed",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

/// The lifecycle state and, when stalled, why.
pub fn replication_state(job: &JobRecord) -> (ReplicationState, Option<String>) {
    let replica = job.replica.last_consistent.is_some() || job.last_sync.is_some();
    let reason = || {
        job.replica
            .error
            .as_ref()
            .map(|e| e.message.clone())
            .or_else(|| job.last_error.clone())
    };
    let state = match job.state {
        JobState::Cancelled => ReplicationState::Cancelled,
        JobState::Failed | JobState::RetryWait => ReplicationState::Stalled,
        _ if job.failures > 0 && !crate::job::in_flight(job.state) => ReplicationState::Stalled,
        JobState::Snapshotting | JobState::Transferring | JobState::RemovingSnapshot => {
            if replica {
                ReplicationState::Backlog
            } else {
                ReplicationState::InitialSync
            }
        }
        JobState::Completed => ReplicationState::Paused,
        JobState::Scheduled if replica => ReplicationState::Continuous,
        JobState::Scheduled => ReplicationState::InitialSync,
    };
    let why = (state == ReplicationState::Stalled).then(reason).flatten();
    (state, why)
}

/// Seconds since the last consistent replica's snapshot.
pub fn lag_seconds(job: &JobRecord, now: u64) -> Option<u64> {
    job.replica
        .last_consistent
        .or(job.last_sync)
        .map(|t| now.saturating_sub(t))
}

/// Seconds left in the running sync: the current disk's allocated bytes left to read, plus the
/// disks after it (counted at the current disk's allocated share of its size, or whole when
/// nothing is measured yet), at the read rate. `None` while nothing is measured.
pub fn eta_seconds(disks: &[DiskRecord], live: &Live) -> Option<u64> {
    let current = live.disk?;
    let (left_now, share) = if live.read_total > 0 {
        (
            live.read_total.saturating_sub(live.read_done),
            Some((live.read_total, live.disk_total.max(1))),
        )
    } else {
        (live.disk_total.saturating_sub(live.disk_done), None)
    };
    let later: u64 = disks
        .iter()
        .filter(|d| d.index > current)
        .map(|d| d.capacity_bytes)
        .sum();
    let later = match share {
        Some((alloc, size)) => {
            let v = u128::from(later) * u128::from(alloc.min(size)) / u128::from(size);
            u64::try_from(v).unwrap_or(u64::MAX)
        }
        None => later,
    };
    let rate = if live.read_total > 0 && live.read_rate > 0 {
        live.read_rate
    } else {
        live.disk_rate
    };
    if rate == 0 {
        return None;
    }
    Some(left_now.saturating_add(later).div_ceil(rate))
}

/// The run's phase in words, while a run is active.
pub fn phase_text(job: &JobRecord, live: Option<&Live>) -> Option<String> {
    let n = job.replica.disks.len();
    match job.state {
        JobState::Snapshotting => Some("taking a snapshot".into()),
        JobState::Transferring => Some(match live.and_then(|l| l.disk) {
            Some(d) if n > 0 => format!("reading disk {} of {n}", d.saturating_add(1)),
            Some(d) => format!("reading disk {}", d.saturating_add(1)),
            None => "transferring".into(),
        }),
        JobState::RemovingSnapshot => Some("removing the snapshot".into()),
        _ => None,
    }
}

/// The current (or last) run's checklist: snapshot taken → each disk read and sent → snapshot
/// removed → replica committed, with the time each was reached. Empty before the first run.
pub fn checklist(job: &JobRecord, rfc3339: impl Fn(u64) -> String) -> Vec<PhaseView> {
    let phases = &job.replica.phases;
    let running = crate::job::in_flight(job.state);
    if phases.is_empty() && !running {
        return Vec::new();
    }
    let n = u32::try_from(job.replica.disks.len().max(1)).unwrap_or(u32::MAX);
    let mut names = vec![SNAPSHOT_TAKEN.to_string()];
    names.extend((0..n).map(disk_phase));
    names.push(SNAPSHOT_REMOVED.into());
    names.push(REPLICA_COMMITTED.into());
    let failed = matches!(job.state, JobState::Failed | JobState::RetryWait)
        || (job.state == JobState::Scheduled && job.failures > 0);
    let cancelled = job.state == JobState::Cancelled;
    let mut first_open = true;
    names
        .into_iter()
        .map(|name| {
            let at = phases.iter().find(|p| p.name == name).map(|p| p.at);
            let state = match at {
                Some(_) => "done",
                None if first_open => {
                    first_open = false;
                    if running {
                        "running"
                    } else if failed {
                        "failed"
                    } else if cancelled {
                        "cancelled"
                    } else {
                        "pending"
                    }
                }
                None => "pending",
            };
            PhaseView {
                name,
                state: state.into(),
                at: at.map(&rfc3339),
            }
        })
        .collect()
}

/// One row per disk: the run's progress on it (live while running) and its last replica.
pub fn disk_rows(job: &JobRecord, live: Option<&Live>) -> Vec<DiskProgress> {
    let running = crate::job::in_flight(job.state);
    job.replica
        .disks
        .iter()
        .map(|d| {
            let sent = job
                .replica
                .phases
                .iter()
                .any(|p| p.name == disk_phase(d.index));
            let current = running && live.and_then(|l| l.disk) == Some(d.index) && !sent;
            let (done, total, rate, state) = if sent {
                (d.capacity_bytes, d.capacity_bytes, 0, "done")
            } else if current {
                let l = live.cloned().unwrap_or_default();
                (
                    l.disk_done,
                    l.disk_total.max(l.disk_done),
                    l.disk_rate,
                    "reading",
                )
            } else if running {
                (0, d.capacity_bytes, 0, "pending")
            } else if matches!(job.state, JobState::Failed | JobState::RetryWait)
                && !job.replica.phases.is_empty()
            {
                (0, d.capacity_bytes, 0, "failed")
            } else {
                (0, d.capacity_bytes, 0, "idle")
            };
            DiskProgress {
                index: d.index,
                label: d.label.clone(),
                capacity_bytes: d.capacity_bytes,
                bytes_done: done,
                bytes_total: total,
                state: state.into(),
                throughput_bps: rate,
                last_sync: d.last_sync.clone(),
                sha256: d.sha256.clone(),
            }
        })
        .collect()
}

/// Everything of the view, at `now`.
pub fn view(
    job: &JobRecord,
    live: Option<&Live>,
    now: u64,
    rfc3339: impl Fn(u64) -> String,
) -> ReplicationView {
    let (replication_state, stalled_reason) = replication_state(job);
    let running = crate::job::in_flight(job.state);
    ReplicationView {
        replication_state,
        stalled_reason,
        phase: phase_text(job, live),
        eta_seconds: if running {
            live.and_then(|l| eta_seconds(&job.replica.disks, l))
        } else {
            None
        },
        lag_seconds: lag_seconds(job, now),
        disks: disk_rows(job, live),
        phases: checklist(job, rfc3339),
        error: job.replica.error.clone(),
        stages: job.replica.stages.clone(),
    }
}

#[cfg(test)]
mod tests;
