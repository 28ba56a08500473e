//! The engine's owner task and the thin runtime around [`crate::job::step`]. Every change of a
//! job record goes through here, one command at a time: the operator's cancel and run-now,
//! a run's phases and end, timers, the start of due jobs, recovery, creation and deletion. For
//! each it reads the record, steps it, persists the new record and only then carries out the
//! other effects (start a run, signal a cancel, remove a kept checkpoint, arm a timer, log).
//! Nothing else writes job records, so no update can be lost between a read and a write.

use super::{Engine, Running, lock};
use crate::job::{self, Effect, Event, Refusal};
use crate::store::{JobRecord, StoreResult};
use crate::time::now;
use godwit_webui::backend::CommandError;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

pub(super) type Reply<T> = oneshot::Sender<Result<T, CommandError>>;

/// What the owner is asked to do.
pub(super) enum Cmd {
    /// Step one job with an event (from a handler, a run, a sweep or a timer).
    Event {
        id: String,
        event: Event,
        reply: Option<Reply<()>>,
    },
    /// Store a new job unless one already replicates the same VM.
    Create {
        job: Box<JobRecord>,
        message: String,
        reply: Reply<JobRecord>,
    },
    /// Keep a job from starting while its ledger is cleared (before a delete); refused while
    /// it runs. Answers with the record.
    Hold { id: String, reply: Reply<JobRecord> },
    /// End a hold, deleting the job's record and timeline when `delete`.
    Release {
        id: String,
        delete: bool,
        reply: Option<Reply<()>>,
    },
    /// Every job whose run was active when the service stopped (service start).
    Recover { reply: oneshot::Sender<usize> },
    /// Start due jobs from now on (after recovery and the ledger sweep).
    Begin,
    /// Look for due jobs now.
    Wake,
}

/// The owner's own state: only this task touches it.
struct Owner {
    engine: Arc<Engine>,
    rules: job::Rules,
    /// Jobs with work in progress on their ledger (cancel, delete): not started meanwhile.
    held: HashSet<String>,
    begun: bool,
}

pub(super) fn refusal(r: Refusal) -> CommandError {
    CommandError::Conflict {
        message: r.to_string(),
    }
}

fn not_found(id: &str) -> CommandError {
    CommandError::NotFound {
        message: format!("job {id}"),
    }
}

fn answer<T>(reply: Option<Reply<T>>, r: Result<T, CommandError>) {
    if let Some(tx) = reply {
        let _ = tx.send(r);
    }
}

pub(super) async fn run(engine: Arc<Engine>, mut rx: mpsc::UnboundedReceiver<Cmd>) {
    let rules = engine.rules();
    let mut owner = Owner {
        engine,
        rules,
        held: HashSet::new(),
        begun: false,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => owner.engine.sample(),
            cmd = rx.recv() => match cmd {
                Some(cmd) => owner.handle(cmd),
                None => return,
            },
        }
        if owner.begun
            && let Err(e) = owner.start_due()
        {
            tracing::error!(error = %e, "job engine: cannot start due jobs");
        }
    }
}

impl Owner {
    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Event { id, event, reply } => {
                let finished = matches!(event, Event::Finished { .. });
                let r = self.apply(&id, event, reply);
                if finished {
                    // The run is over whatever happened to its record.
                    lock(&self.engine.running).remove(&id);
                }
                if let Err((e, reply)) = r {
                    tracing::warn!(job = %id, error = %e, "job event not applied");
                    answer(reply, Err(e));
                }
            }
            Cmd::Create {
                job,
                message,
                reply,
            } => {
                let _ = reply.send(self.create(*job, &message));
            }
            Cmd::Hold { id, reply } => {
                let r = self.hold(&id);
                let _ = reply.send(r);
            }
            Cmd::Release { id, delete, reply } => {
                self.held.remove(&id);
                let r = if delete {
                    self.engine.forget_samples(&id);
                    self.engine.store.delete_job(&id).map_err(Into::into)
                } else {
                    Ok(())
                };
                answer(reply, r);
            }
            Cmd::Recover { reply } => {
                let _ = reply.send(self.recover());
            }
            Cmd::Begin => self.begun = true,
            Cmd::Wake => {}
        }
    }

    /// Step one job and carry out the effects. A reply not consumed by an effect (a cleared
    /// ledger answers when it is done) is answered here on success, or handed back on error.
    #[allow(clippy::type_complexity)]
    fn apply(
        &mut self,
        id: &str,
        event: Event,
        reply: Option<Reply<()>>,
    ) -> Result<(), (CommandError, Option<Reply<()>>)> {
        let job = match self.engine.store.job(id) {
            Ok(Some(j)) => j,
            Ok(None) => return Err((not_found(id), reply)),
            Err(e) => return Err((e.into(), reply)),
        };
        let (next, effects) = match job::step(job, event, &self.rules) {
            Ok(x) => x,
            Err(r) => return Err((refusal(r), reply)),
        };
        let mut reply = reply;
        for effect in effects {
            match effect {
                Effect::Persist { event } => {
                    if let Err(e) = self.engine.store.put_job(&next, event.as_deref()) {
                        // Nothing after an unwritten record: a run must not start, a cancel
                        // must not be signalled, on a state the disk does not have.
                        return Err((e.into(), reply));
                    }
                }
                Effect::StartRun => self.start_run(&next),
                Effect::SignalCancel => {
                    if let Some(r) = lock(&self.engine.running).get(id) {
                        r.cancel.store(true, Ordering::SeqCst);
                    }
                }
                Effect::ClearLedger => self.clear_ledger(&next, reply.take()),
                Effect::ArmTimer { at } => self.arm_timer(at),
                Effect::ProgressComplete => {
                    let last = lock(&self.engine.running)
                        .get(id)
                        .and_then(|r| r.progress.borrow().clone());
                    if let Some(mut p) = last.map(|l| l.progress) {
                        p.bytes_done = p.bytes_total;
                        p.throughput_bps = 0;
                        lock(&self.engine.last_progress).insert(id.to_string(), p);
                    }
                }
                Effect::Log(line) => tracing::info!(job = %next.id, vm = %next.vm, "{line}"),
                Effect::LogFailure { code, detail } => {
                    tracing::warn!(job = %next.id, vm = %next.vm, code = %code, "job run failed [{code}]: {detail}");
                }
            }
        }
        answer(reply, Ok(()));
        Ok(())
    }

    fn create(&mut self, job: JobRecord, message: &str) -> Result<JobRecord, CommandError> {
        let jobs = self.engine.store.jobs()?;
        if let Some(j) = job::duplicate(&jobs, &job) {
            return Err(CommandError::Conflict {
                message: format!("job {} already replicates this VM", j.id),
            });
        }
        self.engine.store.put_job(&job, Some(message))?;
        tracing::info!(job = %job.id, vm = %job.vm, "job created");
        Ok(job)
    }

    fn hold(&mut self, id: &str) -> Result<JobRecord, CommandError> {
        let job = self.engine.store.job(id)?.ok_or_else(|| not_found(id))?;
        if job::in_flight(job.state) || self.held.contains(id) {
            return Err(CommandError::Conflict {
                message: format!("job {id} is running; cancel it first"),
            });
        }
        self.held.insert(id.to_string());
        Ok(job)
    }

    fn recover(&mut self) -> usize {
        let jobs = match self.engine.store.jobs() {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, "recovering jobs");
                return 0;
            }
        };
        let mut n = 0;
        for j in jobs.into_iter().filter(|j| job::in_flight(j.state)) {
            match self.apply(&j.id, Event::Recover { now: now() }, None) {
                Ok(()) => n += 1,
                Err((e, _)) => tracing::error!(job = %j.id, error = %e, "recovering a job"),
            }
        }
        n
    }

    /// A cancelled idle job may hold a checkpoint kept for its retry: removed in the
    /// background (blocking), the job held meanwhile; the cancel is answered once it is done.
    fn clear_ledger(&mut self, job: &JobRecord, reply: Option<Reply<()>>) {
        self.held.insert(job.id.clone());
        let engine = self.engine.clone();
        let job = job.clone();
        self.engine.handle.spawn(async move {
            let src = engine
                .store
                .settings()
                .ok()
                .and_then(|s| s.source(&job.source_id).cloned());
            let id = job.id.clone();
            let e2 = engine.clone();
            let r = tokio::task::spawn_blocking(move || e2.clear_ledger(&job, src.as_ref())).await;
            if let Ok(Err(e)) | Err(e) = r.map_err(|e| e.to_string()) {
                tracing::warn!(job = %id, error = %e, "cancel: the kept checkpoint could not be removed yet; the next start sweeps it");
            }
            engine.send(Cmd::Release {
                id,
                delete: false,
                reply: None,
            });
            answer(reply, Ok(()));
        });
    }

    fn arm_timer(&self, at: u64) {
        let t = now();
        if at <= t {
            return; // start_due runs after this command anyway
        }
        let engine = self.engine.clone();
        self.engine.handle.spawn(async move {
            tokio::time::sleep(Duration::from_secs(at - t)).await;
            engine.send(Cmd::Wake);
        });
    }

    fn start_due(&mut self) -> StoreResult<()> {
        let settings = self.engine.store.settings()?;
        let k = usize::try_from(settings.max_concurrent()).unwrap_or(usize::MAX);
        let t = now();
        let mut due: Vec<JobRecord> = self
            .engine
            .store
            .jobs()?
            .into_iter()
            .filter(|j| job::due(j, t) && !self.held.contains(&j.id))
            .collect();
        due.sort_by_key(|j| j.next_run);
        for j in due {
            if lock(&self.engine.running).len() >= k {
                break;
            }
            if let Err((e, _)) = self.apply(&j.id, Event::Start { now: t }, None) {
                tracing::error!(job = %j.id, error = %e, "cannot start a run");
            }
        }
        Ok(())
    }

    /// Spawn the run of a job whose `Snapshotting` record is persisted; its end comes back as
    /// [`Event::Finished`].
    fn start_run(&mut self, job: &JobRecord) {
        let settings = self.engine.store.settings().unwrap_or_default();
        let src = settings.source(&job.source_id).cloned();
        let staging = settings.staging.clone();
        let (tx, rx) = watch::channel(None);
        let cancel = Arc::new(AtomicBool::new(false));
        lock(&self.engine.running).insert(
            job.id.clone(),
            Running {
                progress: rx,
                cancel: cancel.clone(),
            },
        );
        lock(&self.engine.last_progress).remove(&job.id);
        let engine = self.engine.clone();
        let job = job.clone();
        self.engine.handle.spawn(async move {
            let id = job.id.clone();
            let worker = engine.clone();
            let outcome =
                tokio::task::spawn_blocking(move || worker.run(job, src, staging, &tx, &cancel))
                    .await
                    .unwrap_or_else(|e| job::Outcome::Failed {
                        message: format!("the run stopped unexpectedly: {e}"),
                        retry: true,
                    });
            engine.send(Cmd::Event {
                id,
                event: Event::Finished {
                    outcome,
                    now: now(),
                },
                reply: None,
            });
        });
    }
}
