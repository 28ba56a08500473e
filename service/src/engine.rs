//! The job engine: the pure state machine of [`crate::job`] run by one owner task
//! ([`owner`]), which alone writes job records. Handlers send it commands (cancel, run now,
//! create, delete) and wait for its answer; each run works in `spawn_blocking` and reports its
//! phases (Snapshotting → Transferring → RemovingSnapshot), timeline lines and end to it as
//! events, waiting until each is persisted before it acts on it. Every transition is one redb
//! transaction with its timeline event.
//!
//! At start, [`Engine::recover`] puts runs that were active when the service stopped back to
//! `Scheduled` (the cycle starts again; the staging store already has the chunks that were
//! sent), [`Engine::sweep_ledgers`] removes snapshots that the per-job ledgers still record,
//! and only then [`Engine::begin`] lets due jobs start.

mod jobrun;
mod owner;
mod run_hyperv;
mod run_vsphere;

use crate::job::view::Live;
use crate::job::{self, Event, Outcome};
use crate::store::{JobRecord, SourceRecord, StagingRecord, Store};
use crate::time::now;
use godwit_webui::backend::{
    CommandError, LedgerEntryView, Progress, SourceKind, ThroughputSample,
};
use jobrun::RunCtx;
use owner::Cmd;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

pub use crate::job::MAX_FAILURES;

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

/// A run in progress: its live progress and its cancel flag. Inserted and removed by the
/// owner only.
struct Running {
    progress: watch::Receiver<Option<Live>>,
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
    samples: Mutex<VecDeque<ThroughputSample>>,
    /// Per job (issue #18): its recent throughput samples, kept while it runs and after.
    job_samples: Mutex<HashMap<String, VecDeque<ThroughputSample>>>,
    bytes_transferred: AtomicU64,
    /// The host-push ingest on the service's HTTPS port (Hyper-V jobs use it once set).
    ingest: std::sync::OnceLock<Arc<crate::ingest::ServiceIngest>>,
    /// Bytes Hyper-V runs read from hosts over WinRM (metadata, and data not pushed).
    winrm_read_bytes: AtomicU64,
    /// Staging servers' states and who uses which (issue 21).
    fleet: Arc<crate::staging_target::Fleet>,
    /// The owner's mailbox.
    tx: mpsc::UnboundedSender<Cmd>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Cmd>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn mib(b: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let m = b as f64 / 1_048_576.0;
    format!("{m:.1} MiB")
}

fn gone() -> CommandError {
    CommandError::Internal {
        message: "the job engine has stopped".into(),
    }
}

impl Engine {
    pub fn new(
        store: Arc<Store>,
        data: PathBuf,
        handle: tokio::runtime::Handle,
        opts: EngineOptions,
    ) -> Arc<Engine> {
        let (tx, rx) = mpsc::unbounded_channel();
        Arc::new(Engine {
            store,
            data,
            handle,
            opts,
            running: Mutex::new(HashMap::new()),
            last_progress: Mutex::new(HashMap::new()),
            samples: Mutex::new(VecDeque::new()),
            job_samples: Mutex::new(HashMap::new()),
            bytes_transferred: AtomicU64::new(0),
            ingest: std::sync::OnceLock::new(),
            winrm_read_bytes: AtomicU64::new(0),
            fleet: Arc::default(),
            tx,
            rx: Mutex::new(Some(rx)),
        })
    }

    /// Staging servers' states and who uses which (issue 21).
    pub fn fleet(&self) -> &Arc<crate::staging_target::Fleet> {
        &self.fleet
    }

    fn rules(&self) -> job::Rules {
        job::Rules {
            retry_base_secs: self.opts.retry_base.as_secs(),
            schedule_hour_secs: self.opts.schedule_hour_secs,
        }
    }

    fn send(&self, cmd: Cmd) {
        // Only fails once the owner is gone (the runtime is shutting down).
        let _ = self.tx.send(cmd);
    }

    /// Start the owner task (once). Due jobs start only after [`Engine::begin`].
    pub fn spawn_owner(self: &Arc<Self>) {
        if let Some(rx) = lock(&self.rx).take() {
            self.handle.spawn(owner::run(self.clone(), rx));
        }
    }

    /// Let the owner start due jobs (after recovery and the ledger sweep).
    pub fn begin(&self) {
        self.send(Cmd::Begin);
    }

    /// Ask the owner to look for due jobs now.
    pub fn wake(&self) {
        self.send(Cmd::Wake);
    }

    /// Step a job with an event through the owner and wait until it is persisted.
    async fn event(&self, id: &str, event: Event) -> Result<(), CommandError> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Event {
            id: id.to_string(),
            event,
            reply: Some(tx),
        });
        rx.await.map_err(|_| gone())?
    }

    /// The same from a blocking thread (a run, a ledger sweep).
    fn event_blocking(&self, id: &str, event: Event) -> Result<(), CommandError> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Event {
            id: id.to_string(),
            event,
            reply: Some(tx),
        });
        rx.blocking_recv().map_err(|_| gone())?
    }

    /// Where a job keeps its snapshot ledger and CBT changeIds.
    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.data.join("jobs").join(id)
    }

    pub fn is_running(&self, id: &str) -> bool {
        lock(&self.running).contains_key(id)
    }

    pub fn running_count(&self) -> usize {
        lock(&self.running).len()
    }

    /// Hyper-V runs from now on have the hosts push disk data to `ingest`.
    pub fn set_ingest(&self, ingest: Arc<crate::ingest::ServiceIngest>) {
        let _ = self.ingest.set(ingest);
    }

    pub fn ingest(&self) -> Option<&Arc<crate::ingest::ServiceIngest>> {
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
            return r.progress.borrow().as_ref().map(|l| l.progress.clone());
        }
        lock(&self.last_progress).get(id).cloned()
    }

    /// The live figures of a running job's transfer (per disk, allocation-aware).
    pub fn live(&self, id: &str) -> Option<Live> {
        lock(&self.running)
            .get(id)
            .and_then(|r| r.progress.borrow().clone())
    }

    /// Sum of the running transfers' rates.
    pub fn current_throughput(&self) -> u64 {
        lock(&self.running)
            .values()
            .filter_map(|r| {
                r.progress
                    .borrow()
                    .as_ref()
                    .map(|l| l.progress.throughput_bps)
            })
            .sum()
    }

    /// Recent throughput samples of one job (empty when it has not run since the start).
    pub fn job_throughput(&self, id: &str) -> Vec<ThroughputSample> {
        lock(&self.job_samples)
            .get(id)
            .map(|v| v.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Forget a deleted job's samples.
    pub(crate) fn forget_samples(&self, id: &str) {
        lock(&self.job_samples).remove(id);
    }

    pub fn throughput(&self) -> Vec<ThroughputSample> {
        lock(&self.samples).iter().cloned().collect()
    }

    fn sample(&self) {
        let at = now();
        let per_job: Vec<(String, u64)> = lock(&self.running)
            .iter()
            .map(|(id, r)| {
                let bps = r
                    .progress
                    .borrow()
                    .as_ref()
                    .map_or(0, |l| l.progress.throughput_bps);
                (id.clone(), bps)
            })
            .collect();
        {
            let mut m = lock(&self.job_samples);
            for (id, bps) in per_job {
                let v = m.entry(id).or_default();
                v.push_back(ThroughputSample {
                    at,
                    bytes_per_second: bps,
                });
                while v.len() > SAMPLES_KEPT {
                    v.pop_front();
                }
            }
        }
        let s = ThroughputSample {
            at,
            bytes_per_second: self.current_throughput(),
        };
        let mut v = lock(&self.samples);
        v.push_back(s);
        while v.len() > SAMPLES_KEPT {
            v.pop_front();
        }
    }

    /// Runs that were active when the service stopped start again from the beginning of
    /// their cycle (or stay cancelled). Returns how many. Needs the owner running.
    pub async fn recover(&self) -> usize {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Recover { reply: tx });
        rx.await.unwrap_or(0)
    }

    /// Store a new job (refused when an active job already replicates the VM).
    pub async fn create(&self, job: JobRecord, message: String) -> Result<JobRecord, CommandError> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Create {
            job: Box::new(job),
            message,
            reply: tx,
        });
        rx.await.map_err(|_| gone())?
    }

    /// Ask a job to stop: a running one stops at its next read (the snapshot is still removed),
    /// an idle one becomes `Cancelled` at once and loses a checkpoint kept for its retry.
    pub async fn cancel(&self, id: &str) -> Result<(), CommandError> {
        self.event(id, Event::Cancel).await
    }

    /// Start a run now (a scheduled, failed, completed or cancelled job).
    pub async fn run_now(&self, id: &str) -> Result<(), CommandError> {
        self.event(id, Event::RunNow { now: now() }).await
    }

    /// Delete a job that is not running: its ledger cleared first (a leftover snapshot
    /// removed), then `remove_files` (its directory), then its record. The job cannot start
    /// meanwhile.
    pub async fn delete(
        self: &Arc<Self>,
        id: &str,
        src: impl FnOnce(&JobRecord) -> Option<SourceRecord>,
    ) -> Result<(), CommandError> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Hold {
            id: id.to_string(),
            reply: tx,
        });
        let job = rx.await.map_err(|_| gone())??;
        let src = src(&job);
        let me = self.clone();
        let r = tokio::task::spawn_blocking(move || {
            me.clear_ledger(&job, src.as_ref())
                .map_err(|e| CommandError::Conflict {
                    message: format!("job {} still has a snapshot recorded: {e}", job.id),
                })?;
            let dir = me.job_dir(&job.id);
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| CommandError::Internal {
                    message: format!("removing {}: {e}", dir.display()),
                })?;
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|e| {
            Err(CommandError::Internal {
                message: format!("background task failed: {e}"),
            })
        });
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Release {
            id: id.to_string(),
            delete: r.is_ok(),
            reply: Some(tx),
        });
        r?;
        rx.await.map_err(|_| gone())?
    }

    /// Remove the snapshots and checkpoints that any job's ledger still records (leftovers
    /// of a crash). Returns the names removed. Needs the owner running.
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
            let message = if keep_resumable {
                format!("removed leftover snapshot {name} (ledger sweep at start)")
            } else {
                format!("removed snapshot {name} (the job was cancelled or is being deleted)")
            };
            tracing::info!(job = %job.id, "{message}");
            let _ = self.event_blocking(&job.id, Event::Note { message });
        }
        Ok(removed)
    }

    /// Before a job is deleted or once it is cancelled: its ledger must be empty (swept now
    /// if not). Blocking.
    fn clear_ledger(&self, job: &JobRecord, src: Option<&SourceRecord>) -> Result<(), String> {
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

    /// One run of a job (blocking): a whole replication cycle of its source's kind, to the
    /// staging target (a staging server, or an S3 bucket written as a store directly).
    fn run(
        &self,
        job: JobRecord,
        src: Option<SourceRecord>,
        staging: Option<StagingRecord>,
        progress: &watch::Sender<Option<Live>>,
        cancel: &Arc<AtomicBool>,
    ) -> Outcome {
        let fail = |message: String, retry: bool| Outcome::Failed { message, retry };
        let Some(src) = src else {
            return fail(format!("source {} no longer exists", job.source_id), false);
        };
        let Some(staging) = staging else {
            return fail("no staging target is configured".into(), false);
        };
        let user = crate::staging_target::User::Job(job.id.clone());
        let target =
            match crate::staging_target::connector(&staging, &self.handle, &self.fleet, user) {
                Ok(t) => t,
                // An unreachable bucket is worth retrying; a malformed setting is not reachable
                // here (validated when stored).
                Err(e) => return fail(format!("staging target: {e}"), true),
            };
        let mut run = RunCtx::new(self, &job, target.as_ref(), progress, cancel);
        match src.kind {
            SourceKind::Vsphere => run_vsphere::run(&mut run, &src),
            SourceKind::Hyperv | SourceKind::Scvmm => run_hyperv::run(&mut run, &src),
        }
    }
}

#[cfg(test)]
mod tests;
