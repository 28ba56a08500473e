//! The job state machine, pure: [`step`] takes a job's record and one [`Event`] and returns
//! the next record and the [`Effect`]s to carry out, in order. No I/O and no clock: the
//! engine's owner task (`engine::owner`) is the only caller; it persists the record *before*
//! carrying out any other effect, so a kill at any point leaves a record that
//! [`Event::Recover`] turns into one that resumes (or stays cancelled).
//!
//! | state | run active | left by |
//! |---|---|---|
//! | `Scheduled` | no | `Start` (due, slot free) → `Snapshotting`; `Cancel` → `Cancelled` |
//! | `RetryWait` | no | `Start` (retry time reached) → `Snapshotting`; `Cancel`; `RunNow` → `Scheduled` |
//! | `Snapshotting` | yes | `Phase` → `Transferring`/`RemovingSnapshot`; `Finished`; `Recover` |
//! | `Transferring` | yes | `Phase` → `RemovingSnapshot`; `Finished`; `Recover` |
//! | `RemovingSnapshot` | yes | `Finished`; `Recover` |
//! | `Completed` | no | `RunNow` → `Scheduled` |
//! | `Failed` | no | `RunNow` → `Scheduled` (failures reset); `Cancel` → `Cancelled` |
//! | `Cancelled` | no | `RunNow` → `Scheduled` |
//!
//! The record's state is the one truth about whether a run is active: `Start` is the only way
//! into the three run states and `Finished`/`Recover` the only ways out, so a record can never
//! say "transferring" with no run behind it (issue #20: `cancel()` used to read the record
//! outside the owner and write it back over a concurrent `finish()`).

use crate::store::JobRecord;
use godwit_webui::backend::{JobState, Schedule, StageTimes};
use view::{DiskRecord, PhaseRecord};

pub mod view;

/// Failed runs in a row before a one-time job is `Failed` (a periodic one waits for its next
/// period instead).
pub const MAX_FAILURES: u32 = 5;
/// Longest retry delay, seconds.
pub const MAX_BACKOFF_SECS: u64 = 3600;

/// What happened to a job. Times are Unix seconds, given by the caller (the step is pure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The owner starts a run: the job is due and a transfer slot is free.
    Start { now: u64 },
    /// The run reached a phase (`Transferring`, `RemovingSnapshot`) at `at`; `message` is its
    /// timeline line.
    Phase {
        state: JobState,
        message: String,
        at: u64,
    },
    /// The run found the VM's disks (label, capacity), in the source's order: the job's disk
    /// list becomes these (each keeping its last replica by index).
    Disks { disks: Vec<(String, u64)> },
    /// Disk `index` was read and sent and its replica committed as `sync_id` at `at`.
    DiskSynced {
        index: u32,
        sync_id: String,
        sha256: Option<String>,
        stages: StageTimes,
        at: u64,
        message: String,
    },
    /// The run found the VM's identity (vSphere MoRef and instance UUID) and follows it by
    /// these from now on.
    Identity {
        moref: String,
        instance_uuid: Option<String>,
        message: String,
    },
    /// A timeline line (a disk replicated, a leftover snapshot removed): the record stays.
    Note { message: String },
    /// The run ended.
    Finished { outcome: Outcome, now: u64 },
    /// The operator cancels the job.
    Cancel,
    /// The operator asks for a run now.
    RunNow { now: u64 },
    /// The service starts: a run that was active when it stopped is over.
    Recover { now: u64 },
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done { disks: usize, bytes_sent: u64 },
    Cancelled,
    Failed { message: String, retry: bool },
}

/// What the engine's runtime does after a step, in this order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Write the new record, with this timeline line if any, in one transaction. Always the
    /// first effect when the record changed; nothing after it happens if it fails.
    Persist { event: Option<String> },
    /// Start the run (a worker thread) for the persisted `Snapshotting` record.
    StartRun,
    /// Tell the active run to stop at its next read (its snapshot is still removed).
    SignalCancel,
    /// Remove the snapshot/checkpoint an idle job still keeps for its retry.
    ClearLedger,
    /// Wake the owner at this time to start the job (next period or retry).
    ArmTimer { at: u64 },
    /// The finished run's progress stays shown at 100 %.
    ProgressComplete,
    /// Log this line (info).
    Log(String),
    /// Log a failed run (warning) with its error code and raw detail, for the log page.
    LogFailure { code: String, detail: String },
}

/// Why an event does not apply to the job's current state; nothing changes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("job {id} is already {state:?}")]
    AlreadyOver { id: String, state: JobState },
    #[error("job {id} is running")]
    Running { id: String },
    #[error("job {id} is {state:?}: {event} does not apply")]
    NotApplicable {
        id: String,
        state: JobState,
        event: &'static str,
    },
}

/// The engine's tunables the step needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// First retry delay, seconds; doubles per failure up to [`MAX_BACKOFF_SECS`].
    pub retry_base_secs: u64,
    /// Seconds in an "hour" of a schedule (3600; tests shorten it).
    pub schedule_hour_secs: u64,
}

/// Whether a run is active in this state.
pub fn in_flight(state: JobState) -> bool {
    matches!(
        state,
        JobState::Snapshotting | JobState::Transferring | JobState::RemovingSnapshot
    )
}

/// Whether the owner may start the job at `now` (a free slot aside).
pub fn due(job: &JobRecord, now: u64) -> bool {
    matches!(job.state, JobState::Scheduled | JobState::RetryWait)
        && job.next_run.is_some_and(|n| n <= now)
}

/// An active job (not completed, cancelled or failed) that already replicates the VM of
/// `new` from the same source: by name, or by MoRef when both know it.
pub fn duplicate<'a>(jobs: &'a [JobRecord], new: &JobRecord) -> Option<&'a JobRecord> {
    jobs.iter().find(|j| {
        j.source_id == new.source_id
            && (j.vm == new.vm || (new.vm_moref.is_some() && j.vm_moref == new.vm_moref))
            && !matches!(
                j.state,
                JobState::Completed | JobState::Cancelled | JobState::Failed
            )
    })
}

/// The retry delay after `failures` failed runs in a row.
pub fn backoff(rules: &Rules, failures: u32) -> u64 {
    let base = rules.retry_base_secs.max(1);
    base.saturating_mul(1u64 << failures.saturating_sub(1).min(20))
        .min(MAX_BACKOFF_SECS)
}

fn mib(b: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let m = b as f64 / 1_048_576.0;
    format!("{m:.1} MiB")
}

/// One transition. On `Err` the record is unchanged and nothing is done.
pub fn step(
    mut job: JobRecord,
    event: Event,
    rules: &Rules,
) -> Result<(JobRecord, Vec<Effect>), Refusal> {
    let not_applicable = |job: &JobRecord, event: &'static str| Refusal::NotApplicable {
        id: job.id.clone(),
        state: job.state,
        event,
    };
    let persist = |line: String| Effect::Persist { event: Some(line) };
    match event {
        Event::Start { now } => {
            if !due(&job, now) {
                return Err(not_applicable(&job, "start"));
            }
            job.state = JobState::Snapshotting;
            job.run_started = Some(now);
            job.cancel_requested = false;
            job.replica.phases.clear();
            job.replica.snapshot_at = None;
            job.replica.stages = None;
            Ok((
                job,
                vec![
                    persist("run started: taking a snapshot".into()),
                    Effect::StartRun,
                ],
            ))
        }
        Event::Phase { state, message, at } => {
            let forward = match job.state {
                JobState::Snapshotting => {
                    matches!(state, JobState::Transferring | JobState::RemovingSnapshot)
                }
                JobState::Transferring => state == JobState::RemovingSnapshot,
                _ => false,
            };
            let same = in_flight(job.state) && state == job.state;
            if !(forward || same) {
                return Err(not_applicable(&job, "phase"));
            }
            if state == JobState::Transferring && job.state == JobState::Snapshotting {
                job.replica.snapshot_at = Some(at);
                push_phase(&mut job, view::SNAPSHOT_TAKEN.into(), at);
            }
            job.state = state;
            Ok((job, vec![persist(message)]))
        }
        Event::Disks { disks } => {
            if !in_flight(job.state) {
                return Err(not_applicable(&job, "disks"));
            }
            let old = std::mem::take(&mut job.replica.disks);
            job.replica.disks = disks
                .into_iter()
                .enumerate()
                .map(|(i, (label, capacity_bytes))| {
                    let index = u32::try_from(i).unwrap_or(u32::MAX);
                    let kept = old.iter().find(|d| d.index == index);
                    DiskRecord {
                        index,
                        label,
                        capacity_bytes,
                        last_sync: kept.and_then(|d| d.last_sync.clone()),
                        sha256: kept.and_then(|d| d.sha256.clone()),
                        synced_at: kept.and_then(|d| d.synced_at),
                    }
                })
                .collect();
            Ok((job, vec![Effect::Persist { event: None }]))
        }
        Event::DiskSynced {
            index,
            sync_id,
            sha256,
            stages,
            at,
            message,
        } => {
            if !in_flight(job.state) {
                return Err(not_applicable(&job, "disk synced"));
            }
            if let Some(d) = job.replica.disks.iter_mut().find(|d| d.index == index) {
                d.last_sync = Some(sync_id);
                d.sha256 = sha256;
                d.synced_at = Some(at);
            } else {
                job.replica.disks.push(DiskRecord {
                    index,
                    label: format!("disk {index}"),
                    capacity_bytes: 0,
                    last_sync: Some(sync_id),
                    sha256,
                    synced_at: Some(at),
                });
                job.replica.disks.sort_by_key(|d| d.index);
            }
            let sum = job.replica.stages.get_or_insert_with(StageTimes::default);
            sum.read_ms = sum.read_ms.saturating_add(stages.read_ms);
            sum.hash_ms = sum.hash_ms.saturating_add(stages.hash_ms);
            sum.compress_ms = sum.compress_ms.saturating_add(stages.compress_ms);
            sum.send_ms = sum.send_ms.saturating_add(stages.send_ms);
            sum.staging_wait_ms = sum.staging_wait_ms.saturating_add(stages.staging_wait_ms);
            sum.wall_ms = sum.wall_ms.saturating_add(stages.wall_ms);
            push_phase(&mut job, view::disk_phase(index), at);
            Ok((job, vec![persist(message)]))
        }
        Event::Identity {
            moref,
            instance_uuid,
            message,
        } => {
            if !in_flight(job.state) {
                return Err(not_applicable(&job, "identity"));
            }
            job.vm_moref = Some(moref);
            job.vm_instance_uuid = instance_uuid;
            Ok((job, vec![persist(message)]))
        }
        Event::Note { message } => Ok((job, vec![persist(message)])),
        Event::Finished { outcome, now } => {
            if !in_flight(job.state) {
                return Err(not_applicable(&job, "finished"));
            }
            Ok(finish(job, outcome, now, rules))
        }
        Event::Cancel => {
            if in_flight(job.state) {
                job.cancel_requested = true;
                return Ok((
                    job,
                    vec![
                        persist("cancel requested; stopping the transfer".into()),
                        Effect::SignalCancel,
                    ],
                ));
            }
            if matches!(job.state, JobState::Completed | JobState::Cancelled) {
                return Err(Refusal::AlreadyOver {
                    id: job.id,
                    state: job.state,
                });
            }
            job.state = JobState::Cancelled;
            job.next_run = None;
            Ok((job, vec![persist("cancelled".into()), Effect::ClearLedger]))
        }
        Event::RunNow { now } => {
            if in_flight(job.state) {
                return Err(Refusal::Running { id: job.id });
            }
            if job.state == JobState::Failed {
                job.failures = 0;
            }
            job.state = JobState::Scheduled;
            job.next_run = Some(now);
            Ok((
                job,
                vec![
                    persist("run requested by the operator".into()),
                    Effect::ArmTimer { at: now },
                ],
            ))
        }
        Event::Recover { now } => {
            if !in_flight(job.state) {
                return Ok((job, Vec::new()));
            }
            let was = view::state_text(job.state);
            job.run_started = None;
            let msg = if job.cancel_requested {
                job.state = JobState::Cancelled;
                job.next_run = None;
                format!(
                    "the service stopped during a run ({was}); the job was being cancelled and stays cancelled"
                )
            } else {
                job.state = JobState::Scheduled;
                job.next_run = Some(now);
                format!("the service stopped during a run ({was}); the run starts again")
            };
            job.cancel_requested = false;
            let mut effects = vec![persist(msg.clone()), Effect::Log(msg)];
            if job.state == JobState::Scheduled {
                effects.push(Effect::ArmTimer { at: now });
            }
            Ok((job, effects))
        }
    }
}

fn finish(mut job: JobRecord, outcome: Outcome, t: u64, rules: &Rules) -> (JobRecord, Vec<Effect>) {
    let started = job.run_started.take().unwrap_or(t);
    let mut effects = Vec::new();
    let msg = match outcome {
        Outcome::Done { disks, bytes_sent } => {
            job.runs_completed = job.runs_completed.saturating_add(1);
            job.failures = 0;
            job.last_error = None;
            job.last_sync = Some(t);
            job.replica.error = None;
            job.replica.last_consistent = job.replica.snapshot_at.or(Some(started));
            push_phase(&mut job, view::SNAPSHOT_REMOVED.into(), t);
            push_phase(&mut job, view::REPLICA_COMMITTED.into(), t);
            effects.push(Effect::ProgressComplete);
            schedule_next(&mut job, started, t, rules);
            format!(
                "run completed: {disks} disk(s), {} sent, snapshot removed",
                mib(bytes_sent)
            )
        }
        Outcome::Cancelled => {
            job.state = JobState::Cancelled;
            job.next_run = None;
            "cancelled during the run; the snapshot was removed".to_string()
        }
        Outcome::Failed { message, retry } => {
            job.failures = job.failures.saturating_add(1);
            job.last_error = Some(message.clone());
            let typed = crate::errors::classify(&message);
            effects.push(Effect::LogFailure {
                code: typed.code.clone(),
                detail: message.clone(),
            });
            // The timeline says it readably; the raw text stays in `last_error`, the error's
            // detail and the log.
            let message = format!("{} [{}]", typed.message, typed.code);
            job.replica.error = Some(typed);
            if retry && job.failures < MAX_FAILURES {
                let delay = backoff(rules, job.failures);
                job.state = JobState::RetryWait;
                job.next_run = Some(t.saturating_add(delay));
                format!("run failed: {message}; retry in {delay} s")
            } else if let (true, Schedule::EveryHours { .. }) = (retry, &job.schedule) {
                schedule_next(&mut job, started, t, rules);
                format!(
                    "run failed: {message}; {MAX_FAILURES} failures in a row, waiting for the next period"
                )
            } else {
                job.state = JobState::Failed;
                job.next_run = None;
                format!("run failed: {message}")
            }
        }
    };
    if job.cancel_requested && job.state != JobState::Cancelled {
        job.state = JobState::Cancelled;
        job.next_run = None;
    }
    job.cancel_requested = false;
    let mut out = vec![Effect::Persist {
        event: Some(msg.clone()),
    }];
    out.append(&mut effects);
    if let Some(at) = job.next_run {
        out.push(Effect::ArmTimer { at });
    }
    out.push(Effect::Log(msg));
    (job, out)
}

/// Record that the run reached phase `name` (once per run).
fn push_phase(job: &mut JobRecord, name: String, at: u64) {
    if !job.replica.phases.iter().any(|p| p.name == name) {
        job.replica.phases.push(PhaseRecord { name, at });
    }
}

fn schedule_next(job: &mut JobRecord, started: u64, t: u64, rules: &Rules) {
    match job.schedule {
        Schedule::Once => {
            job.state = JobState::Completed;
            job.next_run = None;
        }
        Schedule::EveryHours { hours } => {
            job.state = JobState::Scheduled;
            let period = u64::from(hours.max(1)).saturating_mul(rules.schedule_hour_secs);
            job.next_run = Some(started.saturating_add(period).max(t));
        }
    }
}

#[cfg(test)]
mod tests;
