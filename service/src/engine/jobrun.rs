//! What every run does per disk, whatever the source: report progress over all of the VM's
//! disks, replicate one frozen disk to the staging target (reads fail at once after a cancel),
//! and write the timeline line for it.

use super::{Engine, mib};
use crate::store::JobRecord;
use godwit_disk::{BlockSource, Run};
use godwit_transfer::replicate::{Connect, ProgressFn, ReplicateOptions, replicate_disk};
use godwit_webui::backend::Progress;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::watch;

pub(super) type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// One run's shared state: where it writes, its progress and cancel flag, and its totals.
pub(super) struct RunCtx<'a> {
    pub engine: &'a Engine,
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
        target: &'a dyn Connect,
        progress: &'a watch::Sender<Option<Progress>>,
        cancel: &'a Arc<AtomicBool>,
    ) -> Self {
        RunCtx {
            engine,
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
        job: &JobRecord,
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
        metadata.insert("job".to_string(), job.id.clone());
        metadata.insert("source".to_string(), job.source_id.clone());
        let opts = &self.engine.opts;
        let ropts = ReplicateOptions {
            chunk_size: opts.chunk_size,
            bandwidth_limit: opts.bandwidth_limit,
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
            &job.vm,
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
