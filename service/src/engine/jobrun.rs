//! What every run does, whatever the source: report its phases and timeline lines to the
//! owner (each persisted before the run goes on), report progress over all of the VM's disks,
//! replicate one frozen disk to the staging target (reads fail at once after a cancel), and
//! turn the cycle's result into an [`Outcome`]. The vSphere and Hyper-V runners differ only in
//! how they take, read and remove a snapshot/checkpoint.

use super::{Engine, mib};
use crate::job::view::Live;
use crate::job::{Event, Outcome};
use crate::store::JobRecord;
use godwit_disk::{BlockSource, Run};
use godwit_transfer::replicate::{Connect, ProgressFn, ReplicateOptions, replicate_disk};
use godwit_webui::backend::{JobState, Progress, StageTimes};
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
    pub progress: &'a watch::Sender<Option<Live>>,
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
        progress: &'a watch::Sender<Option<Live>>,
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
                at: crate::time::now(),
            })?;
        }
        let mut synced = self.transfer(n, disk, changed)?;
        synced.message.push_str(detail);
        self.report(Event::DiskSynced {
            index: u32::try_from(n)?,
            sync_id: synced.sync_id,
            sha256: synced.sha256,
            stages: synced.stages,
            at: crate::time::now(),
            message: synced.message,
        })?;
        if n_disks == Some(n + 1) {
            self.report(Event::Phase {
                state: JobState::RemovingSnapshot,
                message: removing.trim_start_matches("; ").to_string(),
                at: crate::time::now(),
            })
        } else {
            Ok(())
        }
    }

    /// The run found the VM's disks (label, capacity): the job records them and the progress
    /// counts their total.
    pub fn set_disks(&mut self, disks: Vec<(String, u64)>) -> Result<(), SinkError> {
        self.set_total(disks.iter().map(|d| d.1).sum());
        self.report(Event::Disks { disks })
    }

    /// The run knows how much it has to read.
    pub fn set_total(&mut self, total: u64) {
        self.total = total;
        self.progress.send_replace(Some(Live {
            progress: Progress {
                bytes_done: 0,
                bytes_total: total,
                throughput_bps: 0,
            },
            ..Live::default()
        }));
    }

    /// Replicate disk `n` of the job's VM (only `changed` ranges when the source knows them).
    /// Returns the replica made and its timeline line.
    pub fn transfer(
        &mut self,
        n: usize,
        disk: &dyn BlockSource,
        changed: Option<&[std::ops::Range<u64>]>,
    ) -> Result<Synced, SinkError> {
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
            tx.send_replace(Some(Live {
                progress: Progress {
                    bytes_done: (base + p.bytes_done).min(total),
                    bytes_total: total,
                    throughput_bps: p.rate_bytes_per_sec,
                },
                disk: Some(p.disk),
                disk_done: p.bytes_done,
                disk_total: p.disk_size,
                disk_rate: p.rate_bytes_per_sec,
                read_total: p.read_total,
                read_done: p.read_done,
                read_rate: p.read_rate_bytes_per_sec,
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
            // The ETA counts the allocated bytes left to read (sparse disks are not
            // over-estimated), and each replica records its content's SHA-256.
            measure_allocation: true,
            raw_sha256: true,
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
        let message = format!(
            "disk {n} replicated as sync {}: {} read, {} sent ({} chunks new, {} reused, {} carried)",
            rep.sync_id,
            mib(rep.bytes_read),
            mib(rep.bytes_sent),
            rep.chunks_new,
            rep.chunks_reused,
            rep.chunks_carried
        );
        Ok(Synced {
            message,
            stages: stage_times(&rep),
            sync_id: rep.sync_id,
            sha256: rep.raw_sha256,
        })
    }
}

/// One disk's replica as the run reports it.
pub(super) struct Synced {
    pub message: String,
    pub sync_id: String,
    pub sha256: Option<String>,
    pub stages: StageTimes,
}

fn ms(seconds: f64) -> u64 {
    if seconds.is_finite() && seconds > 0.0 {
        // Saturating float-to-int conversion.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let v = (seconds * 1000.0).round() as u64;
        v
    } else {
        0
    }
}

/// Where a disk's transfer spent its time, from the replication report.
fn stage_times(rep: &godwit_transfer::replicate::ReplicateReport) -> StageTimes {
    StageTimes {
        read_ms: ms(rep.seconds_read),
        hash_ms: ms(rep.seconds_hash),
        compress_ms: ms(rep.seconds_compress),
        send_ms: ms(rep.seconds_send),
        staging_wait_ms: ms(rep.seconds_wait_staging),
        wall_ms: ms(rep.seconds),
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
