//! What every run does, whatever the source: report its phases and timeline lines to the
//! owner (each persisted before the run goes on), report progress over all of the VM's disks,
//! replicate one frozen disk to the staging target (reads fail at once after a cancel), and
//! turn the cycle's result into an [`Outcome`]. The vSphere and Hyper-V runners differ only in
//! how they take, read and remove a snapshot/checkpoint.

use super::{Engine, mib};
use crate::job::{Event, Outcome};
use crate::store::JobRecord;
use godwit_disk::{BlockSource, Run};
use godwit_transfer::replicate::{Connect, ProgressFn, ReplicateOptions, replicate_disk};
use godwit_webui::backend::{JobState, Progress};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::watch;

pub(super) type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// One run's shared state: where it writes, its progress and cancel flag, and its totals.
pub(super) struct RunCtx<'a> {
    pub engine: &'a Engine,
    /// The job as it was when the run started (read only: changes go to the owner).
    pub job: &'a JobRecord,
    pub target: &'a dyn Connect,
    pub progress: &'a watch::Sender<Option<Progress>>,
    pub cancel: &'a AtomicBool,
    /// Virtual bytes of all the VM's disks.
    pub total: u64,
    /// Virtual bytes of the disks already replicated in this run.
    pub done_before: u64,
    pub bytes_sent: u64,
    pub disks: usize,
}

impl<'a> RunCtx<'a> {
    pub fn new(
        engine: &'a Engine,
        job: &'a JobRecord,
        target: &'a dyn Connect,
        progress: &'a watch::Sender<Option<Progress>>,
        cancel: &'a Arc<AtomicBool>,
    ) -> Self {
        RunCtx {
            engine,
            job,
            target,
            progress,
            cancel,
            total: 0,
            done_before: 0,
            bytes_sent: 0,
            disks: 0,
        }
    }

    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// Have the owner step the job with `event`; returns once it is persisted.
    pub fn report(&self, event: Event) -> Result<(), SinkError> {
        Ok(self.engine.event_blocking(&self.job.id, event)?)
    }

    /// A timeline line.
    pub fn note(&self, message: String) -> Result<(), SinkError> {
        self.report(Event::Note { message })
    }

    /// The cycle's result as the run's outcome: done, cancelled (any error after a cancel is
    /// the cancel), or what `failure` makes of the source's error.
    pub fn outcome<E>(
        &self,
        result: Result<(), E>,
        failure: impl FnOnce(&E) -> Outcome,
    ) -> Outcome {
        match result {
            Ok(()) => Outcome::Done {
                disks: self.disks,
                bytes_sent: self.bytes_sent,
            },
            Err(_) if self.cancelled() => Outcome::Cancelled,
            Err(e) => failure(&e),
        }
    }

    /// One frozen disk of the cycle, the same for every source: the first one moves the job to
    /// `Transferring` (with `taken`, the line saying the snapshot/checkpoint exists), the disk
    /// is replicated, its line (with `detail` appended) goes to the timeline, and the last one
    /// (when the disk count is known) moves the job to `RemovingSnapshot` (`removing`).
    #[allow(clippy::too_many_arguments)]
    pub fn disk(
        &mut self,
        n: usize,
        n_disks: Option<usize>,
        taken: impl FnOnce() -> String,
        disk: &dyn BlockSource,
        changed: Option<&[std::ops::Range<u64>]>,
        detail: &str,
        removing: &str,
    ) -> Result<(), SinkError> {
        if n == 0 {
            self.report(Event::Phase {
                state: JobState::Transferring,
                message: taken(),
            })?;
        }
        let mut message = self.transfer(n, disk, changed)?;
        message.push_str(detail);
        if n_disks == Some(n + 1) {
            message.push_str(removing);
            self.report(Event::Phase {
                state: JobState::RemovingSnapshot,
                message,
            })
        } else {
            self.note(message)
        }
    }

    /// The run knows how much it has to read.
    pub fn set_total(&mut self, total: u64) {
        self.total = total;
        self.progress.send_replace(Some(Progress {
            bytes_done: 0,
            bytes_total: total,
            throughput_bps: 0,
        }));
    }

    /// Replicate disk `n` of the job's VM (only `changed` ranges when the source knows them).
    /// Returns the timeline line.
    pub fn transfer(
        &mut self,
        n: usize,
        disk: &dyn BlockSource,
        changed: Option<&[std::ops::Range<u64>]>,
    ) -> Result<String, SinkError> {
        if self.cancelled() {
            return Err("cancelled by the operator".into());
        }
        let size = disk.virtual_size();
        // A source that could not say its sizes up front (or a disk that grew).
        if self.done_before + size > self.total {
            self.total = self.done_before + size;
        }
        let ranges: Option<Vec<godwit_transfer::Range>> =
            changed.map(|r| r.iter().cloned().map(Into::into).collect());
        let (base, total) = (self.done_before, self.total);
        let tx = self.progress.clone();
        let pf: ProgressFn = Arc::new(move |p: &godwit_transfer::replicate::Progress| {
            tx.send_replace(Some(Progress {
                bytes_done: (base + p.bytes_done).min(total),
                bytes_total: total,
                throughput_bps: p.rate_bytes_per_sec,
            }));
        });
        let mut metadata = std::collections::BTreeMap::new();
        metadata.insert("job".to_string(), self.job.id.clone());
        metadata.insert("source".to_string(), self.job.source_id.clone());
        let opts = &self.engine.opts;
        let ropts = ReplicateOptions {
            chunk_size: opts.chunk_size,
            // The settings page's limit in force now (issue 18), else `--bwlimit`.
            bandwidth_limit: self
                .engine
                .store
                .settings()
                .ok()
                .and_then(|s| crate::commands::limit_now(&s))
                .or(opts.bandwidth_limit),
            metadata,
            progress: Some(pf),
            ..ReplicateOptions::default()
        };
        let source = Cancellable {
            inner: disk,
            cancel: self.cancel,
        };
        let disk_no = u32::try_from(n)?;
        let rep = replicate_disk(
            &source,
            ranges.as_deref(),
            self.target,
            &self.job.vm,
            disk_no,
            &ropts,
            &self.engine.handle,
        )?;
        self.done_before += size;
        self.bytes_sent += rep.bytes_sent;
        self.disks += 1;
        self.engine
            .bytes_transferred
            .fetch_add(rep.bytes_sent, Ordering::Relaxed);
        Ok(format!(
            "disk {n} replicated as sync {}: {} read, {} sent ({} chunks new, {} reused, {} carried)",
            rep.sync_id,
            mib(rep.bytes_read),
            mib(rep.bytes_sent),
            rep.chunks_new,
            rep.chunks_reused,
            rep.chunks_carried
        ))
    }
}

/// A disk whose reads fail once the job is cancelled, so a transfer stops promptly.
struct Cancellable<'a> {
    inner: &'a dyn BlockSource,
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
