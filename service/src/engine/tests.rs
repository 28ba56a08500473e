//! The owner runtime over a real store: the cancel/finish race of issue #20, and recovery.

use super::*;
use godwit_webui::backend::{JobState, Schedule};

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
        run_started: job::in_flight(state).then_some(1),
        cancel_requested: false,
        replica: Default::default(),
    }
}

/// An engine over a fresh store whose job `j` is `Transferring` with a run registered (as the
/// owner leaves it after `Start`), the owner task running.
fn engine_with_running_job(
    rt: &tokio::runtime::Runtime,
) -> (Arc<Engine>, Arc<Store>, tempfile::TempDir) {
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
    engine.spawn_owner();
    (engine, store, dir)
}

fn finish_done(engine: &Engine) {
    engine.send(Cmd::Event {
        id: "j".into(),
        event: Event::Finished {
            outcome: Outcome::Done {
                disks: 1,
                bytes_sent: 1,
            },
            now: now(),
        },
        reply: None,
    });
}

/// Issue #20: `cancel()` read the record outside the owner and wrote it back. A `finish()`
/// landing between the read and the write was overwritten: the job stayed `Transferring`
/// with no run behind it (start_due never picked it up again) and the completed run was lost.
/// Now both are events to the one owner; whatever their order, both are in the record.
#[test]
fn cancel_racing_finish_loses_no_update() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    for round in 0..40 {
        let (engine, store, _dir) = engine_with_running_job(&rt);
        let e2 = engine.clone();
        let canceller = std::thread::spawn(move || {
            let r = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(e2.cancel("j"));
            // Before the end: accepted; after it: refused (the job is already Completed).
            if let Err(e) = r {
                assert!(e.to_string().contains("already Completed"), "{e}");
            }
        });
        if round % 2 == 0 {
            std::thread::yield_now();
        }
        finish_done(&engine);
        canceller.join().unwrap();
        // The owner handles commands in order: once this answers, the finish is applied.
        rt.block_on(engine.recover());
        let j = store.job("j").unwrap().unwrap();
        assert!(!engine.is_running("j"));
        assert!(
            !job::in_flight(j.state),
            "no run is active but the job is {:?}: start_due never picks it up",
            j.state
        );
        assert!(matches!(j.state, JobState::Completed | JobState::Cancelled));
        assert_eq!(j.runs_completed, 1, "the completed run was lost: {j:?}");
        assert!(j.last_sync.is_some(), "the completed run was lost: {j:?}");
        assert!(!j.cancel_requested);
    }
}

/// A run that was active when the service stopped starts again; one being cancelled stays
/// cancelled; both say so in their timeline.
#[test]
fn recover_after_a_kill() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("g.redb")).unwrap());
    store
        .put_job(&job("a", JobState::Transferring), None)
        .unwrap();
    let mut b = job("b", JobState::Snapshotting);
    b.cancel_requested = true;
    store.put_job(&b, None).unwrap();
    store.put_job(&job("c", JobState::Completed), None).unwrap();
    let engine = Engine::new(
        store.clone(),
        dir.path().to_path_buf(),
        rt.handle().clone(),
        EngineOptions::default(),
    );
    engine.spawn_owner();
    assert_eq!(rt.block_on(engine.recover()), 2);
    let a = store.job("a").unwrap().unwrap();
    assert_eq!(a.state, JobState::Scheduled);
    assert!(a.next_run.is_some() && a.run_started.is_none());
    assert_eq!(store.job("b").unwrap().unwrap().state, JobState::Cancelled);
    assert_eq!(store.job("c").unwrap().unwrap().state, JobState::Completed);
    let events = store.events("a").unwrap();
    assert!(
        events
            .last()
            .unwrap()
            .message
            .contains("the run starts again"),
        "{events:?}"
    );
    // Nothing started before `begin`; a job with no source fails at once after it.
    assert!(!engine.is_running("a"));
    engine.begin();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let a = store.job("a").unwrap().unwrap();
        if a.state == JobState::Failed {
            assert_eq!(a.last_error.as_deref(), Some("source s no longer exists"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{a:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
