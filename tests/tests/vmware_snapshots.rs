//! Snapshot creation as vCenter behaves under load and with VMware Tools, against vcsim plus
//! our labelled STUB (tests/vcsim/vmstate.go): vcsim runs snapshot tasks synchronously and
//! never fails a quiesce, so the stub can hold a CreateSnapshot_Task queued for a while
//! (then create the snapshot through vcsim's own method) and fail the next quiesced create
//! with ApplicationQuiesceFault.

use godwit_disk::BlockSource;
use godwit_tests::vcsim;
use godwit_vmware::ledger::Ledger;
use godwit_vmware::replicate::{CycleOptions, run_cycle};
use std::path::Path;
use std::time::Duration;
use vcsim::{VM, Vcsim, prepare_two_disks, qemu_raw, read_all, vm_by_name, vm_state};

fn opts(dir: &Path) -> CycleOptions {
    CycleOptions {
        vm_name: VM.into(),
        ledger: dir.join("ledger.json"),
        change_ids: dir.join("ids.json"),
        ..CycleOptions::default()
    }
}

/// A quiesced snapshot that fails with a quiesce fault is taken again without quiescing,
/// once, and the report says so; with quiescing off nothing is quiesced at all.
#[test]
fn a_quiesce_fault_retries_once_without_quiescing_and_is_reported() {
    let v = Vcsim::start(false);
    let (a, _) = prepare_two_disks(&v);
    let s = v.connect();
    let vm = vm_by_name(&s, VM);
    vm_state(
        &v,
        &format!(r#"{{"vm":"{}","tools_running":true}}"#, vm.moref.value),
    );
    v.stub("/stub/snapshot?quiesce_faults=1", Some(""));
    let work = tempfile::tempdir().unwrap();
    let mut first = Vec::new();
    let report = run_cycle(&s, &opts(work.path()), &mut |n, d: &dyn BlockSource, _| {
        if n == 0 {
            first = read_all(d);
        }
        Ok(())
    })
    .unwrap();
    assert!(!report.quiesced, "{report:?}");
    assert!(
        report
            .quiesce_fallback
            .as_deref()
            .is_some_and(|f| f.contains("ApplicationQuiesceFault")),
        "{report:?}"
    );
    assert!(first == qemu_raw(&a, work.path()));
    // Tools run and no fault is pending: quiesced.
    let report = run_cycle(&s, &opts(work.path()), &mut |_, _: &dyn BlockSource, _| {
        Ok(())
    })
    .unwrap();
    assert!(
        report.quiesced && report.quiesce_fallback.is_none(),
        "{report:?}"
    );
    // Quiescing switched off: a pending quiesce fault is never met.
    v.stub("/stub/snapshot?quiesce_faults=1", Some(""));
    let no_q = CycleOptions {
        quiesce: false,
        ..opts(work.path())
    };
    let report = run_cycle(&s, &no_q, &mut |_, _: &dyn BlockSource, _| Ok(())).unwrap();
    assert!(
        !report.quiesced && report.quiesce_fallback.is_none(),
        "{report:?}"
    );
    assert!(vm_by_name(&s, VM).snapshots.is_empty());
    s.logout().unwrap();
}

/// A CreateSnapshot_Task that outlives the task timeout is not forgotten: its ledger entry
/// keeps the task MoRef; while the task still runs the next cycle refuses to go on; once the
/// task created the snapshot, the next cycle removes it and proceeds. Nothing is left.
#[test]
fn a_snapshot_create_timeout_keeps_the_ledger_entry_until_the_task_is_known() {
    let v = Vcsim::start(false);
    prepare_two_disks(&v);
    let work = tempfile::tempdir().unwrap();
    v.stub("/stub/snapshot?delay_ms=3000", Some(""));
    let mut o = v.connect_opts(vcsim::PASSWORD);
    o.task_timeout = Duration::from_millis(800);
    let s = godwit_vmware::session::Session::connect(&o).unwrap();
    let err = run_cycle(&s, &opts(work.path()), &mut |_, _: &dyn BlockSource, _| {
        Ok(())
    })
    .expect_err("the snapshot task outlives its timeout");
    assert!(err.to_string().contains("did not finish"), "{err}");
    let ledger = Ledger::open(&work.path().join("ledger.json")).unwrap();
    assert_eq!(ledger.entries().len(), 1, "kept: {:?}", ledger.entries());
    let entry = ledger.entries()[0].clone();
    assert!(
        entry.task.is_some() && entry.snapshot.is_none(),
        "{entry:?}"
    );
    // Right away: the task still runs; the cycle stops, the entry stays.
    v.stub("/stub/snapshot?delay_ms=0", Some(""));
    let err = run_cycle(&s, &opts(work.path()), &mut |_, _: &dyn BlockSource, _| {
        Ok(())
    })
    .expect_err("the earlier task still runs");
    assert!(err.to_string().contains("still being created"), "{err}");
    assert_eq!(
        Ledger::open(&work.path().join("ledger.json"))
            .unwrap()
            .entries()
            .len(),
        1
    );
    // The task ends and its snapshot appears; the next cycle removes it, then runs.
    std::thread::sleep(Duration::from_millis(3200));
    assert!(
        vm_by_name(&s, VM)
            .snapshots
            .iter()
            .any(|x| x.name == entry.snapshot_name),
        "the late snapshot exists"
    );
    let report = run_cycle(&s, &opts(work.path()), &mut |_, _: &dyn BlockSource, _| {
        Ok(())
    })
    .unwrap();
    assert_eq!(report.swept, vec![entry.snapshot_name.clone()]);
    assert!(vm_by_name(&s, VM).snapshots.is_empty());
    assert!(
        Ledger::open(&work.path().join("ledger.json"))
            .unwrap()
            .entries()
            .is_empty()
    );
    s.logout().unwrap();
}
