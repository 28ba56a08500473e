//! Unit and property tests of [`step`]: every event in every state, no lost update, and a kill
//! at any point resumes.

use super::*;
use proptest::prelude::*;

const RULES: Rules = Rules {
    retry_base_secs: 60,
    schedule_hour_secs: 3600,
};

const STATES: [JobState; 8] = [
    JobState::Scheduled,
    JobState::Snapshotting,
    JobState::Transferring,
    JobState::RemovingSnapshot,
    JobState::RetryWait,
    JobState::Completed,
    JobState::Failed,
    JobState::Cancelled,
];

fn job(state: JobState, schedule: Schedule) -> JobRecord {
    JobRecord {
        id: "job-1".into(),
        source_id: "src-1".into(),
        vm: "vm".into(),
        vm_moref: None,
        vm_instance_uuid: None,
        schedule,
        state,
        runs_completed: 0,
        failures: 0,
        last_error: None,
        next_run: matches!(state, JobState::Scheduled | JobState::RetryWait).then_some(100),
        last_sync: None,
        created: 1,
        run_started: in_flight(state).then_some(50),
        cancel_requested: false,
        replica: Default::default(),
    }
}

fn events(now: u64) -> Vec<Event> {
    vec![
        Event::Start { now },
        Event::Phase {
            state: JobState::Transferring,
            message: "t".into(),
            at: 0,
        },
        Event::Phase {
            state: JobState::RemovingSnapshot,
            message: "r".into(),
            at: 0,
        },
        Event::Identity {
            moref: "vm-7".into(),
            instance_uuid: Some("u".into()),
            message: "i".into(),
        },
        Event::Disks {
            disks: vec![("Hard disk 1".into(), 10), ("Hard disk 2".into(), 20)],
        },
        Event::DiskSynced {
            index: 0,
            sync_id: "s0".into(),
            sha256: Some("ab".into()),
            stages: StageTimes::default(),
            at: now,
            message: "d".into(),
        },
        Event::Note {
            message: "n".into(),
        },
        Event::Finished {
            outcome: Outcome::Done {
                disks: 1,
                bytes_sent: 10,
            },
            now,
        },
        Event::Finished {
            outcome: Outcome::Cancelled,
            now,
        },
        Event::Finished {
            outcome: Outcome::Failed {
                message: "boom".into(),
                retry: true,
            },
            now,
        },
        Event::Finished {
            outcome: Outcome::Failed {
                message: "denied".into(),
                retry: false,
            },
            now,
        },
        Event::Cancel,
        Event::RunNow { now },
        Event::Recover { now },
    ]
}

/// What must hold of every step, whatever the state and event.
fn check_step(
    before: &JobRecord,
    event: &Event,
    result: &Result<(JobRecord, Vec<Effect>), Refusal>,
) {
    let Ok((after, effects)) = result else {
        return;
    };
    // The record is persisted before anything else happens (a kill after any effect finds it).
    if after != before {
        assert!(
            matches!(effects.first(), Some(Effect::Persist { .. })),
            "{before:?} + {event:?}: changed record not persisted first: {effects:?}"
        );
    }
    let persists = effects
        .iter()
        .filter(|e| matches!(e, Effect::Persist { .. }))
        .count();
    assert!(persists <= 1, "{effects:?}");
    // Only `Start` enters the run states and starts a run; only `Finished`/`Recover` leave them.
    let starts = effects.contains(&Effect::StartRun);
    match (in_flight(before.state), in_flight(after.state)) {
        (false, true) => assert!(matches!(event, Event::Start { .. }) && starts),
        (true, false) => assert!(matches!(
            event,
            Event::Finished { .. } | Event::Recover { .. }
        )),
        _ => assert!(!starts, "{before:?} + {event:?}: {effects:?}"),
    }
    if starts {
        assert_eq!(after.state, JobState::Snapshotting);
        assert!(after.run_started.is_some() && !after.cancel_requested);
    }
    if effects.contains(&Effect::SignalCancel) {
        assert!(in_flight(after.state) && after.cancel_requested);
    }
    if effects.contains(&Effect::ClearLedger) {
        assert!(!in_flight(after.state));
    }
    // Idle records carry no run bookkeeping; a waiting one knows when it runs.
    if !in_flight(after.state) {
        assert!(!after.cancel_requested, "{after:?}");
        assert!(after.run_started.is_none() || after == before, "{after:?}");
    }
    if matches!(after.state, JobState::Scheduled | JobState::RetryWait) {
        assert!(after.next_run.is_some(), "{after:?}");
    }
    if matches!(
        after.state,
        JobState::Completed | JobState::Failed | JobState::Cancelled
    ) {
        assert!(after.next_run.is_none(), "{after:?}");
    }
}

#[test]
fn every_event_in_every_state() {
    for schedule in [Schedule::Once, Schedule::EveryHours { hours: 2 }] {
        for state in STATES {
            for cancel_requested in [false, true] {
                let mut before = job(state, schedule.clone());
                before.cancel_requested = cancel_requested && in_flight(state);
                for event in events(200) {
                    let r = step(before.clone(), event.clone(), &RULES);
                    check_step(&before, &event, &r);
                }
            }
        }
    }
}

#[test]
fn a_run_goes_through_its_phases_and_completes() {
    let j = job(JobState::Scheduled, Schedule::Once);
    assert!(
        step(j.clone(), Event::Start { now: 99 }, &RULES).is_err(),
        "not due yet"
    );
    let (j, fx) = step(j, Event::Start { now: 100 }, &RULES).unwrap();
    assert_eq!(j.state, JobState::Snapshotting);
    assert_eq!(fx[1], Effect::StartRun);
    let (j, _) = step(
        j,
        Event::Phase {
            state: JobState::Transferring,
            message: "snapshot taken".into(),
            at: 0,
        },
        &RULES,
    )
    .unwrap();
    assert!(
        step(
            j.clone(),
            Event::Phase {
                state: JobState::Snapshotting,
                message: "back".into(),
                at: 0,
            },
            &RULES
        )
        .is_err(),
        "phases only go forward"
    );
    let (j, fx) = step(
        j,
        Event::Finished {
            outcome: Outcome::Done {
                disks: 2,
                bytes_sent: 3 << 20,
            },
            now: 130,
        },
        &RULES,
    )
    .unwrap();
    assert_eq!(j.state, JobState::Completed);
    assert_eq!(
        (j.runs_completed, j.last_sync, j.next_run),
        (1, Some(130), None)
    );
    assert_eq!(
        fx[0],
        Effect::Persist {
            event: Some("run completed: 2 disk(s), 3.0 MiB sent, snapshot removed".into())
        }
    );
}

#[test]
fn periodic_job_waits_for_its_period_from_the_run_start() {
    let j = job(JobState::Scheduled, Schedule::EveryHours { hours: 2 });
    let (j, _) = step(j, Event::Start { now: 100 }, &RULES).unwrap();
    let (j, fx) = step(
        j,
        Event::Finished {
            outcome: Outcome::Done {
                disks: 1,
                bytes_sent: 0,
            },
            now: 500,
        },
        &RULES,
    )
    .unwrap();
    assert_eq!(
        (j.state, j.next_run),
        (JobState::Scheduled, Some(100 + 7200))
    );
    assert!(fx.contains(&Effect::ArmTimer { at: 7300 }));
}

#[test]
fn failures_back_off_then_fail_or_wait_for_the_period() {
    for (schedule, last) in [
        (Schedule::Once, JobState::Failed),
        (Schedule::EveryHours { hours: 1 }, JobState::Scheduled),
    ] {
        let mut j = job(JobState::Scheduled, schedule);
        let mut delays = Vec::new();
        for _ in 0..MAX_FAILURES {
            let now = j.next_run.unwrap();
            let (r, _) = step(j, Event::Start { now }, &RULES).unwrap();
            let (r, _) = step(
                r,
                Event::Finished {
                    outcome: Outcome::Failed {
                        message: "host unreachable".into(),
                        retry: true,
                    },
                    now,
                },
                &RULES,
            )
            .unwrap();
            if r.state == JobState::RetryWait {
                delays.push(r.next_run.unwrap() - now);
            }
            j = r;
        }
        assert_eq!(delays, [60, 120, 240, 480]);
        assert_eq!(j.state, last);
        assert_eq!(j.last_error.as_deref(), Some("host unreachable"));
    }
    assert_eq!(backoff(&RULES, 30), MAX_BACKOFF_SECS);
    // A failure the operator must fix is not retried.
    let (j, _) = step(
        job(JobState::Transferring, Schedule::EveryHours { hours: 1 }),
        Event::Finished {
            outcome: Outcome::Failed {
                message: "certificate changed".into(),
                retry: false,
            },
            now: 9,
        },
        &RULES,
    )
    .unwrap();
    assert_eq!((j.state, j.next_run), (JobState::Failed, None));
    // Run now clears the failure count of a failed job.
    let (j, _) = step(j, Event::RunNow { now: 10 }, &RULES).unwrap();
    assert_eq!(
        (j.state, j.failures, j.next_run),
        (JobState::Scheduled, 0, Some(10))
    );
}

#[test]
fn cancel_idle_running_and_over() {
    let (j, fx) = step(
        job(JobState::RetryWait, Schedule::Once),
        Event::Cancel,
        &RULES,
    )
    .unwrap();
    assert_eq!((j.state, j.next_run), (JobState::Cancelled, None));
    assert_eq!(fx[1], Effect::ClearLedger, "a kept checkpoint goes");
    assert_eq!(
        step(j, Event::Cancel, &RULES).unwrap_err().to_string(),
        "job job-1 is already Cancelled"
    );
    let (j, fx) = step(
        job(JobState::Transferring, Schedule::Once),
        Event::Cancel,
        &RULES,
    )
    .unwrap();
    assert_eq!(
        (j.state, j.cancel_requested),
        (JobState::Transferring, true)
    );
    assert_eq!(fx[1], Effect::SignalCancel);
    assert_eq!(
        step(j.clone(), Event::RunNow { now: 1 }, &RULES)
            .unwrap_err()
            .to_string(),
        "job job-1 is running"
    );
    // The run ends well after all (the cancel came after its last read): still cancelled.
    let (j, _) = step(
        j,
        Event::Finished {
            outcome: Outcome::Done {
                disks: 1,
                bytes_sent: 1,
            },
            now: 5,
        },
        &RULES,
    )
    .unwrap();
    assert_eq!(
        (j.state, j.runs_completed, j.cancel_requested),
        (JobState::Cancelled, 1, false)
    );
}

/// Issue #20's lost update, as events: a cancel and the run's end reach the owner in either
/// order; both are in the record afterwards and it never says a run is active when none is.
#[test]
fn cancel_and_finish_in_either_order_lose_nothing() {
    let running = job(JobState::Transferring, Schedule::Once);
    let done = Event::Finished {
        outcome: Outcome::Done {
            disks: 1,
            bytes_sent: 1,
        },
        now: 7,
    };
    let (a, _) = step(running.clone(), Event::Cancel, &RULES).unwrap();
    let (a, _) = step(a, done.clone(), &RULES).unwrap();
    let (b, _) = step(running, done, &RULES).unwrap();
    let b_cancel = step(b.clone(), Event::Cancel, &RULES);
    for j in [&a, &b] {
        assert!(!in_flight(j.state));
        assert_eq!((j.runs_completed, j.last_sync), (1, Some(7)));
    }
    assert_eq!(a.state, JobState::Cancelled);
    assert_eq!(b.state, JobState::Completed);
    assert!(
        b_cancel.is_err(),
        "cancelling a completed job is refused, not written"
    );
}

#[test]
fn recover_resumes_or_stays_cancelled() {
    for state in STATES {
        for cancel in [false, true] {
            let mut j = job(state, Schedule::Once);
            j.cancel_requested = cancel && in_flight(state);
            let (r, fx) = step(j.clone(), Event::Recover { now: 300 }, &RULES).unwrap();
            if !in_flight(state) {
                assert_eq!((r, fx), (j, Vec::new()), "an idle job is left alone");
                continue;
            }
            if cancel {
                assert_eq!((r.state, r.next_run), (JobState::Cancelled, None));
            } else {
                assert_eq!((r.state, r.next_run), (JobState::Scheduled, Some(300)));
                assert!(due(&r, 300));
            }
            assert!(r.run_started.is_none() && !r.cancel_requested);
        }
    }
}

/// The persisted job format is unchanged (existing data directories load).
#[test]
fn persisted_record_format_is_unchanged() {
    let old = r#"{"id":"job-1","source_id":"src-1","vm":"vm","schedule":{"kind":"once"},"state":"transferring","runs_completed":3,"failures":1,"last_error":null,"next_run":null,"last_sync":1700000000,"created":1,"run_started":1700000100}"#;
    let j: JobRecord = serde_json::from_str(old).unwrap();
    assert_eq!(j.state, JobState::Transferring);
    assert!(!j.cancel_requested);
    let (r, _) = step(j, Event::Recover { now: 5 }, &RULES).unwrap();
    assert_eq!(r.state, JobState::Scheduled);
}

fn arb_event() -> impl Strategy<Value = Event> {
    let now = 0u64..100_000;
    prop_oneof![
        now.clone().prop_map(|now| Event::Start { now }),
        prop_oneof![
            Just(JobState::Transferring),
            Just(JobState::RemovingSnapshot)
        ]
        .prop_map(|state| Event::Phase {
            state,
            message: "p".into(),
            at: 7
        }),
        Just(Event::Identity {
            moref: "vm-1".into(),
            instance_uuid: None,
            message: "i".into()
        }),
        Just(Event::Note {
            message: "n".into()
        }),
        (1usize..4).prop_map(|n| Event::Disks {
            disks: (0..n).map(|i| (format!("disk {i}"), 1 << 20)).collect()
        }),
        (0u32..4, now.clone()).prop_map(|(index, at)| Event::DiskSynced {
            index,
            sync_id: format!("s{index}"),
            sha256: None,
            stages: StageTimes::default(),
            at,
            message: "d".into()
        }),
        (now.clone(), 0u8..4).prop_map(|(now, k)| Event::Finished {
            outcome: match k {
                0 => Outcome::Done {
                    disks: 1,
                    bytes_sent: 1
                },
                1 => Outcome::Cancelled,
                2 => Outcome::Failed {
                    message: "x".into(),
                    retry: true
                },
                _ => Outcome::Failed {
                    message: "y".into(),
                    retry: false
                },
            },
            now
        }),
        Just(Event::Cancel),
        now.clone().prop_map(|now| Event::RunNow { now }),
        now.prop_map(|now| Event::Recover { now }),
    ]
}

fn arb_schedule() -> impl Strategy<Value = Schedule> {
    prop_oneof![
        Just(Schedule::Once),
        (1u32..48).prop_map(|hours| Schedule::EveryHours { hours })
    ]
}

proptest! {
    /// Any sequence of events through the one owner: the record says a run is active exactly
    /// when one is (started and not yet finished or recovered), a completed run is always
    /// counted, and an accepted cancel is never lost.
    #[test]
    fn no_lost_update(schedule in arb_schedule(), evs in proptest::collection::vec(arb_event(), 0..40)) {
        let mut j = job(JobState::Scheduled, schedule);
        let mut active = false;
        let mut completed = 0u32;
        let mut cancel_pending = false;
        for ev in evs {
            let before = j.clone();
            let r = step(j.clone(), ev.clone(), &RULES);
            check_step(&before, &ev, &r);
            let Ok((after, effects)) = r else { continue };
            if effects.contains(&Effect::StartRun) {
                prop_assert!(!active);
                active = true;
                cancel_pending = false;
            }
            if effects.contains(&Effect::SignalCancel) {
                cancel_pending = true;
            }
            match &ev {
                Event::Finished { outcome, .. } => {
                    active = false;
                    if matches!(outcome, Outcome::Done { .. }) {
                        completed += 1;
                    }
                    if cancel_pending {
                        prop_assert_eq!(after.state, JobState::Cancelled);
                    }
                    cancel_pending = false;
                }
                Event::Recover { .. } if active => {
                    if cancel_pending {
                        prop_assert_eq!(after.state, JobState::Cancelled);
                    }
                    active = false;
                    cancel_pending = false;
                }
                _ => {}
            }
            prop_assert_eq!(in_flight(after.state), active, "{:?} after {:?}", after, ev);
            check_view(&after);
            prop_assert_eq!(after.runs_completed, completed);
            j = after;
        }
    }

    /// A kill at any point: whatever record was last persisted, a restart (`Recover`) leaves a
    /// job that is idle and either will run again or is over on purpose; recovering twice
    /// changes nothing more.
    #[test]
    fn kill_at_any_point_resumes(schedule in arb_schedule(), evs in proptest::collection::vec(arb_event(), 0..30), now in 0u64..200_000) {
        let mut persisted = job(JobState::Scheduled, schedule);
        for ev in evs {
            if let Ok((after, effects)) = step(persisted.clone(), ev, &RULES)
                && matches!(effects.first(), Some(Effect::Persist { .. }))
            {
                persisted = after;
            }
            let (r, _) = step(persisted.clone(), Event::Recover { now }, &RULES).unwrap();
            prop_assert!(!in_flight(r.state));
            prop_assert!(!r.cancel_requested);
            if in_flight(persisted.state) && !persisted.cancel_requested {
                prop_assert!(due(&r, now), "an interrupted run starts again: {:?}", r);
            }
            let (again, fx) = step(r.clone(), Event::Recover { now }, &RULES).unwrap();
            prop_assert_eq!(again, r);
            prop_assert!(fx.is_empty());
        }
    }
}

// ---- replication view (issue #18) ---------------------------------------------------------

use godwit_webui::backend::ReplicationState;

/// What the derived view must say of any record the step can produce.
fn check_view(j: &JobRecord) {
    let (state, reason) = view::replication_state(j);
    if in_flight(j.state) {
        assert!(
            matches!(
                state,
                ReplicationState::InitialSync | ReplicationState::Backlog
            ),
            "{j:?}: {state:?}"
        );
    }
    if j.state == JobState::Cancelled {
        assert_eq!(state, ReplicationState::Cancelled);
    }
    if state == ReplicationState::Stalled {
        assert!(reason.is_some(), "stalled carries its reason: {j:?}");
    }
    let list = view::checklist(j, |t| t.to_string());
    assert!(list.iter().filter(|p| p.state == "running").count() <= 1);
    if !in_flight(j.state) {
        assert!(list.iter().all(|p| p.state != "running"), "{list:?}");
    }
}

fn run_to_transferring(j: JobRecord) -> JobRecord {
    let (j, _) = step(j, Event::Start { now: 100 }, &RULES).unwrap();
    let (j, _) = step(
        j,
        Event::Disks {
            disks: vec![("Hard disk 1".into(), 100), ("Hard disk 2".into(), 200)],
        },
        &RULES,
    )
    .unwrap();
    let (j, _) = step(
        j,
        Event::Phase {
            state: JobState::Transferring,
            message: "snapshot taken".into(),
            at: 110,
        },
        &RULES,
    )
    .unwrap();
    j
}

#[test]
fn a_good_run_records_disks_phases_and_the_consistent_point() {
    let j = run_to_transferring(job(JobState::Scheduled, Schedule::EveryHours { hours: 6 }));
    assert_eq!(view::replication_state(&j).0, ReplicationState::InitialSync);
    let (j, fx) = step(
        j,
        Event::DiskSynced {
            index: 0,
            sync_id: "sync-a".into(),
            sha256: Some("aa".into()),
            stages: StageTimes {
                read_ms: 5,
                wall_ms: 9,
                ..StageTimes::default()
            },
            at: 120,
            message: "disk 0 replicated".into(),
        },
        &RULES,
    )
    .unwrap();
    assert_eq!(
        fx,
        vec![Effect::Persist {
            event: Some("disk 0 replicated".into())
        }]
    );
    assert_eq!(j.replica.disks[0].last_sync.as_deref(), Some("sync-a"));
    assert_eq!(j.replica.disks[0].sha256.as_deref(), Some("aa"));
    assert_eq!(j.replica.disks[1].last_sync, None);
    let rows = view::disk_rows(&j, None);
    assert_eq!(
        (rows[0].state.as_str(), rows[1].state.as_str()),
        ("done", "pending")
    );
    let list = view::checklist(&j, |t| t.to_string());
    let names: Vec<_> = list
        .iter()
        .map(|p| (p.name.as_str(), p.state.as_str()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("snapshot taken", "done"),
            ("disk 0 read and sent", "done"),
            ("disk 1 read and sent", "running"),
            ("snapshot removed", "pending"),
            ("replica committed", "pending"),
        ]
    );
    assert_eq!(list[1].at.as_deref(), Some("120"));
    let (j, _) = step(
        j,
        Event::DiskSynced {
            index: 1,
            sync_id: "sync-b".into(),
            sha256: None,
            stages: StageTimes {
                read_ms: 7,
                wall_ms: 1,
                ..StageTimes::default()
            },
            at: 130,
            message: "disk 1 replicated".into(),
        },
        &RULES,
    )
    .unwrap();
    assert_eq!(
        j.replica.stages.as_ref().map(|s| (s.read_ms, s.wall_ms)),
        Some((12, 10))
    );
    let (j, _) = step(
        j,
        Event::Finished {
            outcome: Outcome::Done {
                disks: 2,
                bytes_sent: 1,
            },
            now: 140,
        },
        &RULES,
    )
    .unwrap();
    // The lag counts from the snapshot, not from the end of the run.
    assert_eq!(j.replica.last_consistent, Some(110));
    assert_eq!(view::lag_seconds(&j, 200), Some(90));
    assert_eq!(view::replication_state(&j).0, ReplicationState::Continuous);
    assert!(
        view::checklist(&j, |t| t.to_string())
            .iter()
            .all(|p| p.state == "done")
    );
    // The next run is an incremental: backlog; the disks keep their last replica.
    let (j, _) = step(
        j,
        Event::Start {
            now: 100 + 6 * 3600,
        },
        &RULES,
    )
    .unwrap();
    assert_eq!(view::replication_state(&j).0, ReplicationState::Backlog);
    assert_eq!(j.replica.disks[1].last_sync.as_deref(), Some("sync-b"));
    assert!(
        j.replica.phases.is_empty(),
        "a new run starts a new checklist"
    );
}

#[test]
fn a_failed_run_is_typed_and_its_history_line_is_readable() {
    let raw = "[LocalDS_0] DC0_H0_VM1/disk1.vmdk: open: 127.0.0.1:8989: [LocalDS_0] DC0_H0_VM1/disk1.vmdk not found";
    let j = run_to_transferring(job(JobState::Scheduled, Schedule::Once));
    let (j, fx) = step(
        j,
        Event::Finished {
            outcome: Outcome::Failed {
                message: raw.into(),
                retry: false,
            },
            now: 150,
        },
        &RULES,
    )
    .unwrap();
    let Some(Effect::Persist { event: Some(line) }) = fx.first() else {
        panic!("{fx:?}")
    };
    assert!(line.contains("was not found on its datastore"), "{line}");
    assert!(!line.contains("127.0.0.1"), "{line}");
    assert!(fx.contains(&Effect::LogFailure {
        code: "vsphere.file_not_found".into(),
        detail: raw.into()
    }));
    let e = j.replica.error.clone().unwrap();
    assert_eq!(e.code, "vsphere.file_not_found");
    assert_eq!(
        j.last_error.as_deref(),
        Some(raw),
        "the raw text stays for support"
    );
    let (state, why) = view::replication_state(&j);
    assert_eq!(state, ReplicationState::Stalled);
    assert_eq!(why.as_deref(), Some(e.message.as_str()));
    let list = view::checklist(&j, |t| t.to_string());
    assert_eq!(list[1].state, "failed", "{list:?}");
    // A good run clears the error.
    let (j, _) = step(j, Event::RunNow { now: 200 }, &RULES).unwrap();
    let (j, _) = step(j, Event::Start { now: 200 }, &RULES).unwrap();
    let (j, _) = step(
        j,
        Event::Finished {
            outcome: Outcome::Done {
                disks: 2,
                bytes_sent: 1,
            },
            now: 300,
        },
        &RULES,
    )
    .unwrap();
    assert_eq!(j.replica.error, None);
    assert_eq!(view::replication_state(&j).0, ReplicationState::Paused);
}

#[test]
fn history_lines_carry_no_debug_text() {
    let j = job(JobState::Transferring, Schedule::EveryHours { hours: 6 });
    let (_, fx) = step(j, Event::Recover { now: 5 }, &RULES).unwrap();
    let Some(Effect::Persist { event: Some(line) }) = fx.first() else {
        panic!()
    };
    assert!(line.contains("(transferring)"), "{line}");
    assert_eq!(
        view::schedule_text(&Schedule::EveryHours { hours: 6 }),
        "every 6 hours"
    );
}
