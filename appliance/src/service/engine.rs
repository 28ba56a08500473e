//! The job engine. One owner task decides which jobs start (due, at most K at once) and writes
//! every run's start and end; each run works in `spawn_blocking` and persists its own phase
//! changes (Snapshotting → Transferring → RemovingSnapshot) before acting on them. Every
//! transition is one redb transaction with its timeline event.
//!
//! After a crash, [`Engine::recover`] puts runs that were in flight back to `Scheduled` (the
//! cycle starts again; the staging store already has the chunks that were sent), and
//! [`Engine::sweep_ledgers`] removes snapshots that the per-job ledgers still record.

use super::sources::{certificate_changed, vsphere_session};
use super::store::{JobRecord, SourceRecord, StagingRecord, Store, StoreResult};
use super::time::{now, rfc3339};
use godwit_disk::{BlockSource, Disk, Run};
use godwit_transfer::replicate::{ProgressFn, ReplicateOptions, replicate_disk};
use godwit_transfer::target::Target;
use godwit_vmware::ErrorKind;
use godwit_vmware::ledger::Ledger;
use godwit_vmware::replicate::{CycleOptions, find_vm, run_cycle};
use godwit_webui::backend::{
    CommandError, JobState, LedgerEntryView, Progress, Schedule, SourceKind, ThroughputSample,
};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Failed runs in a row before a one-time job is `Failed` (a periodic one waits for its next
/// period instead).
pub const MAX_FAILURES: u32 = 5;
/// Longest retry delay.
const MAX_BACKOFF_SECS: u64 = 3600;
/// Throughput samples kept for the chart (one per tick).
const SAMPLES_KEPT: usize = 300;

/// Tunables (`godwit serve` flags).
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// First retry delay; doubles per failure up to an hour.
    pub retry_base: Duration,
    /// Bytes per second per transfer (`None` = unlimited).
    pub bandwidth_limit: Option<u64>,
    /// Chunk size for replication.
    pub chunk_size: u32,
    /// Use vSphere Changed Block Tracking for incremental runs.
    pub cbt: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            retry_base: Duration::from_secs(60),
            bandwidth_limit: None,
            chunk_size: godwit_transfer::chunk::DEFAULT_CHUNK_SIZE,
            cbt: true,
        }
    }
}

struct Running {
    progress: watch::Receiver<Option<Progress>>,
    cancel: Arc<AtomicBool>,
}

pub struct Engine {
    store: Arc<Store>,
    data: PathBuf,
    handle: tokio::runtime::Handle,
    opts: EngineOptions,
    running: Mutex<HashMap<String, Running>>,
    /// Progress of each job's last run, kept after it ends (a finished run shows 100 %).
    last_progress: Mutex<HashMap<String, Progress>>,
    wake: Notify,
    samples: Mutex<VecDeque<ThroughputSample>>,
    bytes_transferred: AtomicU64,
}

/// How a run ended.
enum Outcome {
    Done { disks: usize, bytes_sent: u64 },
    Cancelled,
    Failed { message: String, retry: bool },
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1_048_576.0)
}

impl Engine {
    pub fn new(
        store: Arc<Store>,
        data: PathBuf,
        handle: tokio::runtime::Handle,
        opts: EngineOptions,
    ) -> Arc<Engine> {
        Arc::new(Engine {
            store,
            data,
            handle,
            opts,
            running: Mutex::new(HashMap::new()),
            last_progress: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            samples: Mutex::new(VecDeque::new()),
            bytes_transferred: AtomicU64::new(0),
        })
    }

    /// Where a job keeps its snapshot ledger and CBT changeIds.
    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.data.join("jobs").join(id)
    }

    fn ledger_path(&self, id: &str) -> PathBuf {
        self.job_dir(id).join("vsphere-snapshot-ledger.json")
    }

    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn is_running(&self, id: &str) -> bool {
        lock(&self.running).contains_key(id)
    }

    pub fn running_count(&self) -> usize {
        lock(&self.running).len()
    }

    pub fn bytes_transferred(&self) -> u64 {
        self.bytes_transferred.load(Ordering::Relaxed)
    }

    /// Live progress of a running job, or the last run's final progress.
    pub fn progress(&self, id: &str) -> Option<Progress> {
        if let Some(r) = lock(&self.running).get(id) {
            return r.progress.borrow().clone();
        }
        lock(&self.last_progress).get(id).cloned()
    }

    /// Sum of the running transfers' rates.
    pub fn current_throughput(&self) -> u64 {
        lock(&self.running)
            .values()
            .filter_map(|r| r.progress.borrow().as_ref().map(|p| p.throughput_bps))
            .sum()
    }

    pub fn throughput(&self) -> Vec<ThroughputSample> {
        lock(&self.samples).iter().cloned().collect()
    }

    /// Runs that were in flight when the service stopped start again from the beginning of
    /// their cycle. Returns how many.
    pub fn recover(&self) -> StoreResult<usize> {
        let mut n = 0;
        for mut job in self.store.jobs()? {
            let in_flight = matches!(
                job.state,
                JobState::Snapshotting | JobState::Transferring | JobState::RemovingSnapshot
            );
            if !in_flight {
                continue;
            }
            n += 1;
            let was = job.state;
            job.run_started = None;
            let msg = if job.cancel_requested {
                job.state = JobState::Cancelled;
                job.next_run = None;
                format!(
                    "the service stopped during a run ({was:?}); the job was being cancelled and stays cancelled"
                )
            } else {
                job.state = JobState::Scheduled;
                job.next_run = Some(now());
                format!("the service stopped during a run ({was:?}); the run starts again")
            };
            job.cancel_requested = false;
            tracing::info!(job = %job.id, "{msg}");
            self.store.put_job(&job, Some(&msg))?;
        }
        Ok(n)
    }

    /// Remove the snapshots that any job's ledger still records (leftovers of a crash).
    /// Returns the snapshot names removed.
    pub async fn sweep_ledgers(self: &Arc<Self>) -> Vec<String> {
        let jobs = match self.store.jobs() {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, "ledger sweep: cannot read jobs");
                return Vec::new();
            }
        };
        let settings = self.store.settings().unwrap_or_default();
        let mut removed = Vec::new();
        for job in jobs {
            let path = self.ledger_path(&job.id);
            if !path.exists() {
                continue;
            }
            let Some(src) = settings.source(&job.source_id).cloned() else {
                continue;
            };
            let me = self.clone();
            let r = tokio::task::spawn_blocking(move || me.sweep_one(&job, &src)).await;
            match r {
                Ok(Ok(names)) => removed.extend(names),
                Ok(Err(e)) => tracing::warn!(error = %e, "ledger sweep"),
                Err(e) => tracing::warn!(error = %e, "ledger sweep task"),
            }
        }
        removed
    }

    /// Sweep one job's ledger (blocking).
    fn sweep_one(&self, job: &JobRecord, src: &SourceRecord) -> Result<Vec<String>, String> {
        let path = self.ledger_path(&job.id);
        let mut ledger = Ledger::open(&path).map_err(|e| e.to_string())?;
        if ledger.entries().is_empty() {
            return Ok(Vec::new());
        }
        let s = vsphere_session(src).map_err(|e| format!("job {}: {e}", job.id))?;
        let rep = godwit_vmware::snapshot::sweep(&s, &mut ledger);
        if let Err(e) = s.logout() {
            tracing::warn!(error = %e, "logout failed");
        }
        let rep = rep.map_err(|e| format!("job {}: {e}", job.id))?;
        for name in &rep.removed {
            let msg = format!("removed leftover snapshot {name} (snapshot ledger sweep)");
            if let Ok(Some(j)) = self.store.job(&job.id) {
                let _ = self.store.put_job(&j, Some(&msg));
            }
        }
        if let Some(f) = rep.failed.first() {
            return Err(format!("job {}: snapshot not removed: {f}", job.id));
        }
        Ok(rep.removed)
    }

    /// Before a job is deleted: its ledger must be empty (swept now if not). Blocking.
    pub fn clear_ledger(&self, job: &JobRecord, src: Option<&SourceRecord>) -> Result<(), String> {
        let path = self.ledger_path(&job.id);
        let pending = Ledger::open(&path)
            .map(|l| !l.entries().is_empty())
            .map_err(|e| e.to_string())?;
        if pending {
            let src =
                src.ok_or("its source was removed, so its leftover snapshot cannot be removed")?;
            self.sweep_one(job, src)?;
        }
        Ok(())
    }

    /// Every snapshot the ledgers record (normally none outside a run).
    pub fn ledger_entries(&self) -> Vec<LedgerEntryView> {
        let mut out = Vec::new();
        for job in self.store.jobs().unwrap_or_default() {
            let path = self.ledger_path(&job.id);
            match Ledger::open(&path) {
                Ok(l) => out.extend(l.entries().iter().map(|e| LedgerEntryView {
                    source_id: job.source_id.clone(),
                    vm: e.vm_name.clone(),
                    snapshot_name: e.snapshot_name.clone(),
                    state: if e.snapshot.is_some() {
                        "created".into()
                    } else {
                        "pending".into()
                    },
                    recorded_at: rfc3339(e.created_unix),
                    detail: Some(format!("job {} on {}", job.id, e.host)),
                })),
                Err(e) => out.push(LedgerEntryView {
                    source_id: job.source_id.clone(),
                    vm: job.vm.clone(),
                    snapshot_name: String::new(),
                    state: "remove_failed".into(),
                    recorded_at: rfc3339(now()),
                    detail: Some(format!("ledger unreadable: {e}")),
                }),
            }
        }
        out
    }

    /// Ask a job to stop: a running one stops at its next read (the snapshot is still removed),
    /// an idle one becomes `Cancelled` at once.
    pub fn cancel(&self, id: &str) -> Result<(), CommandError> {
        let mut job = self.job_or_404(id)?;
        if let Some(r) = lock(&self.running).get(id) {
            r.cancel.store(true, Ordering::SeqCst);
            job.cancel_requested = true;
            self.store
                .put_job(&job, Some("cancel requested; stopping the transfer"))?;
            return Ok(());
        }
        if matches!(job.state, JobState::Completed | JobState::Cancelled) {
            return Err(CommandError::Conflict {
                message: format!("job {id} is already {:?}", job.state),
            });
        }
        job.state = JobState::Cancelled;
        job.next_run = None;
        self.store.put_job(&job, Some("cancelled"))?;
        Ok(())
    }

    /// Start a run now (a scheduled, failed, completed or cancelled job).
    pub fn run_now(&self, id: &str) -> Result<(), CommandError> {
        let mut job = self.job_or_404(id)?;
        if self.is_running(id) {
            return Err(CommandError::Conflict {
                message: format!("job {id} is running"),
            });
        }
        if job.state == JobState::Failed {
            job.failures = 0;
        }
        job.state = JobState::Scheduled;
        job.next_run = Some(now());
        self.store
            .put_job(&job, Some("run requested by the operator"))?;
        self.wake();
        Ok(())
    }

    fn job_or_404(&self, id: &str) -> Result<JobRecord, CommandError> {
        self.store.job(id)?.ok_or_else(|| CommandError::NotFound {
            message: format!("job {id}"),
        })
    }

    /// The owner loop: starts due jobs and samples throughput, once a second or when woken.
    pub async fn run_owner(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => self.sample(),
                () = self.wake.notified() => {}
            }
            if let Err(e) = self.start_due() {
                tracing::error!(error = %e, "job engine: cannot start due jobs");
            }
        }
    }

    fn sample(&self) {
        let s = ThroughputSample {
            at: now(),
            bytes_per_second: self.current_throughput(),
        };
        let mut v = lock(&self.samples);
        v.push_back(s);
        while v.len() > SAMPLES_KEPT {
            v.pop_front();
        }
    }

    fn start_due(self: &Arc<Self>) -> StoreResult<()> {
        let settings = self.store.settings()?;
        let k = usize::try_from(settings.max_concurrent()).unwrap_or(usize::MAX);
        let t = now();
        let mut due: Vec<JobRecord> = self
            .store
            .jobs()?
            .into_iter()
            .filter(|j| {
                matches!(j.state, JobState::Scheduled | JobState::RetryWait)
                    && j.next_run.is_some_and(|n| n <= t)
                    && !self.is_running(&j.id)
            })
            .collect();
        due.sort_by_key(|j| j.next_run);
        for job in due {
            if self.running_count() >= k {
                break;
            }
            let src = settings.source(&job.source_id).cloned();
            self.start(job, src, settings.staging.clone())?;
        }
        Ok(())
    }

    fn start(
        self: &Arc<Self>,
        mut job: JobRecord,
        src: Option<SourceRecord>,
        staging: Option<StagingRecord>,
    ) -> StoreResult<()> {
        job.state = JobState::Snapshotting;
        job.run_started = Some(now());
        job.cancel_requested = false;
        self.store
            .put_job(&job, Some("run started: taking a snapshot"))?;
        let (tx, rx) = watch::channel(None);
        let cancel = Arc::new(AtomicBool::new(false));
        lock(&self.running).insert(
            job.id.clone(),
            Running {
                progress: rx,
                cancel: cancel.clone(),
            },
        );
        lock(&self.last_progress).remove(&job.id);
        let me = self.clone();
        let id = job.id.clone();
        tokio::spawn(async move {
            let worker = me.clone();
            let outcome =
                tokio::task::spawn_blocking(move || worker.run(job, src, staging, &tx, &cancel))
                    .await
                    .unwrap_or_else(|e| Outcome::Failed {
                        message: format!("the run stopped unexpectedly: {e}"),
                        retry: true,
                    });
            if let Err(e) = me.finish(&id, outcome) {
                tracing::error!(job = %id, error = %e, "cannot record the end of a run");
                lock(&me.running).remove(&id);
            }
            me.wake();
        });
        Ok(())
    }

    fn finish(&self, id: &str, outcome: Outcome) -> StoreResult<()> {
        let last = lock(&self.running)
            .get(id)
            .and_then(|r| r.progress.borrow().clone());
        let Some(mut job) = self.store.job(id)? else {
            lock(&self.running).remove(id);
            return Ok(());
        };
        let started = job.run_started.take().unwrap_or_else(now);
        let t = now();
        let msg = match outcome {
            Outcome::Done { disks, bytes_sent } => {
                job.runs_completed += 1;
                job.failures = 0;
                job.last_error = None;
                job.last_sync = Some(t);
                if let Some(mut p) = last {
                    p.bytes_done = p.bytes_total;
                    p.throughput_bps = 0;
                    lock(&self.last_progress).insert(id.to_string(), p);
                }
                self.schedule_next(&mut job, started, t);
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
                job.failures += 1;
                job.last_error = Some(message.clone());
                if retry && job.failures < MAX_FAILURES {
                    let delay = self.backoff(job.failures);
                    job.state = JobState::RetryWait;
                    job.next_run = Some(t + delay);
                    format!("run failed: {message}; retry in {delay} s")
                } else if let (true, Schedule::EveryHours { .. }) = (retry, &job.schedule) {
                    self.schedule_next(&mut job, started, t);
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
        tracing::info!(job = %job.id, vm = %job.vm, "{msg}");
        self.store.put_job(&job, Some(&msg))?;
        lock(&self.running).remove(id);
        Ok(())
    }

    fn schedule_next(&self, job: &mut JobRecord, started: u64, t: u64) {
        match job.schedule {
            Schedule::Once => {
                job.state = JobState::Completed;
                job.next_run = None;
            }
            Schedule::EveryHours { hours } => {
                job.state = JobState::Scheduled;
                job.next_run = Some((started + u64::from(hours.max(1)) * 3600).max(t));
            }
        }
    }

    fn backoff(&self, failures: u32) -> u64 {
        let base = self.opts.retry_base.as_secs().max(1);
        base.saturating_mul(1u64 << failures.saturating_sub(1).min(20))
            .min(MAX_BACKOFF_SECS)
    }

    /// One run of a job: a whole vSphere replication cycle (blocking).
    fn run(
        &self,
        mut job: JobRecord,
        src: Option<SourceRecord>,
        staging: Option<StagingRecord>,
        progress: &watch::Sender<Option<Progress>>,
        cancel: &Arc<AtomicBool>,
    ) -> Outcome {
        let fail = |message: String, retry: bool| Outcome::Failed { message, retry };
        let Some(src) = src else {
            return fail(format!("source {} no longer exists", job.source_id), false);
        };
        if src.kind != SourceKind::Vsphere {
            return fail(
                "only vSphere sources can be replicated by the service so far".into(),
                false,
            );
        }
        let target = match staging {
            Some(StagingRecord::Server {
                address,
                fingerprint,
                token,
            }) => match Target::parse(
                &format!("staging://{address}"),
                Some(&fingerprint),
                Some(token),
            ) {
                Ok(t) => t,
                Err(e) => return fail(format!("staging target: {e}"), false),
            },
            Some(StagingRecord::S3 { .. }) => {
                return fail(
                    "replication straight to S3 is not supported by the service yet; configure a staging server".into(),
                    false,
                );
            }
            None => return fail("no staging target is configured".into(), false),
        };
        let session = match vsphere_session(&src) {
            Ok(s) => s,
            Err(e) => return vsphere_failure(&src, &e),
        };
        let result = self.cycle(&mut job, &session, &target, progress, cancel);
        if let Err(e) = session.logout() {
            tracing::warn!(error = %e, "logout failed");
        }
        match result {
            Ok(o) => o,
            Err(_) if cancel.load(Ordering::SeqCst) => Outcome::Cancelled,
            Err(e) => vsphere_failure(&src, &e),
        }
    }

    fn cycle(
        &self,
        job: &mut JobRecord,
        session: &godwit_vmware::session::Session,
        target: &Target,
        progress: &watch::Sender<Option<Progress>>,
        cancel: &Arc<AtomicBool>,
    ) -> godwit_vmware::Result<Outcome> {
        let vm = find_vm(session, &job.vm)?;
        let n_disks = vm.disks.len();
        let total: u64 = vm.disks.iter().map(|d| d.capacity_bytes).sum();
        progress.send_replace(Some(Progress {
            bytes_done: 0,
            bytes_total: total,
            throughput_bps: 0,
        }));
        let dir = self.job_dir(&job.id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| godwit_vmware::Error::Usage(format!("creating {}: {e}", dir.display())))?;
        let opts = CycleOptions {
            vm_name: job.vm.clone(),
            ledger: self.ledger_path(&job.id),
            change_ids: dir.join("vsphere-change-ids.json"),
            cbt: self.opts.cbt,
        };
        let mut done_before = 0u64;
        let mut bytes_sent = 0u64;
        let mut disks = 0usize;
        let store = &self.store;
        let mut sink = |n: usize,
                        disk: &Disk,
                        changed: Option<&[std::ops::Range<u64>]>|
         -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            if n == 0 {
                job.state = JobState::Transferring;
                store.put_job(
                    job,
                    Some(&format!("snapshot taken; transferring {n_disks} disk(s)")),
                )?;
            }
            if cancel.load(Ordering::SeqCst) {
                return Err("cancelled".into());
            }
            let ranges: Option<Vec<godwit_transfer::Range>> =
                changed.map(|r| r.iter().cloned().map(Into::into).collect());
            let base = done_before;
            let tx = progress.clone();
            let pf: ProgressFn = Arc::new(move |p: &godwit_transfer::replicate::Progress| {
                tx.send_replace(Some(Progress {
                    bytes_done: (base + p.bytes_done).min(total),
                    bytes_total: total,
                    throughput_bps: p.rate_bytes_per_sec,
                }));
            });
            let mut metadata = std::collections::BTreeMap::new();
            metadata.insert("job".to_string(), job.id.clone());
            metadata.insert("source".to_string(), job.source_id.clone());
            let ropts = ReplicateOptions {
                chunk_size: self.opts.chunk_size,
                bandwidth_limit: self.opts.bandwidth_limit,
                metadata,
                progress: Some(pf),
                ..ReplicateOptions::default()
            };
            let source = Cancellable {
                inner: disk,
                cancel,
            };
            let disk_no = u32::try_from(n)?;
            let rep = replicate_disk(
                &source,
                ranges.as_deref(),
                target,
                &job.vm,
                disk_no,
                &ropts,
                &self.handle,
            )?;
            done_before += disk.virtual_size();
            bytes_sent += rep.bytes_sent;
            disks += 1;
            self.bytes_transferred
                .fetch_add(rep.bytes_sent, Ordering::Relaxed);
            let mut msg = format!(
                "disk {n} replicated as sync {}: {} read, {} sent ({} chunks new, {} reused, {} carried)",
                rep.sync_id,
                mib(rep.bytes_read),
                mib(rep.bytes_sent),
                rep.chunks_new,
                rep.chunks_reused,
                rep.chunks_carried
            );
            if n + 1 == n_disks {
                job.state = JobState::RemovingSnapshot;
                msg.push_str("; removing the snapshot");
            }
            store.put_job(job, Some(&msg))?;
            Ok(())
        };
        run_cycle(session, &opts, &mut sink)?;
        if disks == 0 {
            // A VM without disks: nothing was transferred, the snapshot is gone.
            job.state = JobState::RemovingSnapshot;
        }
        Ok(Outcome::Done { disks, bytes_sent })
    }
}

/// Turn a vSphere error into a run outcome: certificate and login problems need the operator
/// (no retry); everything else is retried with backoff.
fn vsphere_failure(src: &SourceRecord, e: &godwit_vmware::Error) -> Outcome {
    match e.kind() {
        ErrorKind::Trust => Outcome::Failed {
            message: certificate_changed(src, &e.to_string()),
            retry: false,
        },
        ErrorKind::Auth => Outcome::Failed {
            message: format!(
                "source {} rejected the stored user name or password: {e}",
                src.address
            ),
            retry: false,
        },
        ErrorKind::NotFound => Outcome::Failed {
            message: e.to_string(),
            retry: false,
        },
        _ => Outcome::Failed {
            message: e.to_string(),
            retry: true,
        },
    }
}

/// A disk whose reads fail once the job is cancelled, so a transfer stops promptly.
struct Cancellable<'a> {
    inner: &'a Disk,
    cancel: &'a AtomicBool,
}

impl BlockSource for Cancellable<'_> {
    fn virtual_size(&self) -> u64 {
        self.inner.virtual_size()
    }
    fn map(&self, offset: u64, len: u64) -> godwit_disk::Result<Vec<Run>> {
        self.inner.map(offset, len)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> godwit_disk::Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(godwit_disk::Error::io(
                "replication job",
                "read",
                std::io::Error::new(std::io::ErrorKind::Interrupted, "cancelled by the operator"),
            ));
        }
        self.inner.read_at(offset, buf)
    }
    fn stored(
        &self,
        offset: u64,
        len: u64,
    ) -> godwit_disk::Result<Option<Vec<godwit_disk::layer::Stored>>> {
        self.inner.stored(offset, len)
    }
}
