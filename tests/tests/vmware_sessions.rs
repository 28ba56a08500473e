//! vCenter sessions during a cycle, against vcsim: an administrator ends our session with
//! `SessionManager.TerminateSession` (vcsim's own method) while we read; an idle session
//! expires (vcsim's own SessionIdleTimeout). `/folder` and NFC then answer 401 — vcsim serves
//! them without any session, so that part is our labelled STUB (tests/vcsim/auth.go), which
//! asks vcsim itself whether the session is still live. The cycle logs in again and finishes,
//! byte-identical; a keep-alive keeps an idle cycle's session from expiring at all. Also: a
//! server that answers 200 to a Range GET covering a whole small file (STUB
//! /stub/folder-ignore-range) is accepted.

use godwit_disk::BlockSource;
use godwit_tests::vcsim;
use godwit_vmware::replicate::{CycleOptions, DiskAccess, run_cycle_with};
use std::path::Path;
use std::time::Duration;
use vcsim::{
    Vcsim, VcsimOptions, make_disk, prepare_two_disks, qemu_raw, read_all, set_vm_disks, vm_by_name,
};

fn opts(dir: &Path) -> CycleOptions {
    CycleOptions {
        vm_name: vcsim::VM.into(),
        ledger: dir.join("ledger.json"),
        change_ids: dir.join("ids.json"),
        ..CycleOptions::default()
    }
}

fn no_snapshot(v: &Vcsim) {
    let s = v.connect();
    assert!(vm_by_name(&s, vcsim::VM).snapshots.is_empty());
    s.logout().unwrap();
}

/// Two flat disks; disk 0 holds 512 KiB of random bytes (so its streamOptimized download is
/// that big and, throttled, slow).
fn noisy_disks(v: &Vcsim) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::io::{Read, Write};
    let vm = vcsim::VM;
    let dir = v.datastore().1.join(vm);
    let a = make_disk(&dir, "noisy", true, 1 << 20, &[]);
    let mut noise = vec![0u8; 512 * 1024];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut noise)
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("noisy-flat.vmdk"))
        .unwrap()
        .write_all(&noise)
        .unwrap();
    let b = make_disk(&dir, "small", true, 3 << 20, &["write -P 0x3e 4096 70000"]);
    let s = v.connect();
    set_vm_disks(
        &s,
        vm,
        &[
            (&format!("[LocalDS_0] {vm}/noisy.vmdk"), 1 << 20),
            (&format!("[LocalDS_0] {vm}/small.vmdk"), 3 << 20),
        ],
    );
    s.logout().unwrap();
    (a, b)
}

#[test]
fn a_cycle_whose_session_is_terminated_mid_read_completes_after_a_relogin() {
    let v = Vcsim::start(false);
    let (a, b) = noisy_disks(&v);
    let work = tempfile::tempdir().unwrap();
    let s = v.connect();
    let key = s.session_key().expect("session key");

    // /folder: the session ends while disk 0 is being read.
    let mut images = Vec::new();
    let report = run_cycle_with(
        &s,
        &opts(work.path()),
        DiskAccess::Folder,
        &mut |n, d: &dyn BlockSource, _| {
            if n == 0 {
                let mut head = vec![0u8; 4096];
                d.read_at(0, &mut head)?;
                v.terminate_session(&s.session_key().unwrap());
            }
            images.push(read_all(d));
            Ok(())
        },
    )
    .expect("the cycle survives the terminated session");
    assert!(report.relogins >= 1, "{report:?}");
    assert_ne!(s.session_key().unwrap(), key, "a new session");
    assert!(images[0] == qemu_raw(&a, work.path()), "disk 0 differs");
    assert!(images[1] == qemu_raw(&b, work.path()), "disk 1 differs");
    no_snapshot(&v);

    // NFC: the session ends while disk 0 downloads (throttled to 128 KiB/s: 4 s); disk 1's
    // download is refused with 401 by the host, the cycle logs in again and downloads it.
    v.stub("/stub/nfc?rate=131072", Some(""));
    let before = s.relogins();
    let mut images = Vec::new();
    let report = std::thread::scope(|sc| {
        let killer = sc.spawn(|| {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while std::time::Instant::now() < deadline {
                let leases = v.nfc_stats();
                if leases
                    .last()
                    .is_some_and(|l| l["bytes_served"].as_u64().unwrap_or(0) > 0)
                {
                    v.terminate_session(&s.session_key().unwrap());
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        });
        let r = run_cycle_with(
            &s,
            &opts(work.path()),
            DiskAccess::Nfc,
            &mut |_, d: &dyn BlockSource, _| {
                images.push(read_all(d));
                Ok(())
            },
        );
        assert!(
            killer.join().unwrap(),
            "the session was terminated mid-download"
        );
        r
    })
    .expect("the NFC cycle survives the terminated session");
    assert!(s.relogins() > before, "{report:?}");
    let lease = v.nfc_stats().pop().unwrap();
    assert!(lease["unauthorized"].as_u64().unwrap() >= 1, "{lease}");
    assert_eq!(lease["completed"], true, "{lease}");
    assert!(images[0] == qemu_raw(&a, work.path()));
    assert!(images[1] == qemu_raw(&b, work.path()));
    s.logout().unwrap();
    no_snapshot(&v);
}

/// Sessions idle for 1 s expire. A cycle that spends 2.5 s in its sink without a SOAP call
/// keeps its session with a keep-alive (no re-login); without the keep-alive the session
/// expires and the cycle has to log in again — it still completes.
#[test]
fn a_keepalive_keeps_a_long_cycles_session() {
    let v = Vcsim::start_opts(&VcsimOptions {
        session_idle_timeout: Some(Duration::from_secs(1)),
        ..VcsimOptions::default()
    });
    let (a, _) = prepare_two_disks(&v);
    let work = tempfile::tempdir().unwrap();
    let run = |keepalive: Option<Duration>| {
        let s = v.connect();
        let mut first = Vec::new();
        let r = run_cycle_with(
            &s,
            &CycleOptions {
                keepalive,
                ..opts(work.path())
            },
            DiskAccess::Folder,
            &mut |n, d: &dyn BlockSource, _| {
                if n == 0 {
                    std::thread::sleep(Duration::from_millis(2500));
                    first = read_all(d);
                }
                Ok(())
            },
        )
        .unwrap();
        let _ = s.logout();
        assert!(first == qemu_raw(&a, work.path()));
        r
    };
    let kept = run(Some(Duration::from_millis(300)));
    assert_eq!(
        kept.relogins, 0,
        "the keep-alive kept the session: {kept:?}"
    );
    let lost = run(None);
    assert!(
        lost.relogins >= 1,
        "without keep-alive it expired: {lost:?}"
    );
    no_snapshot(&v);
}

/// Some servers answer a Range GET for a whole small file with 200 and the file: accepted;
/// a 200 to a range that is not the whole file is still refused.
#[test]
fn a_200_to_a_range_covering_a_whole_small_file_is_accepted() {
    let v = Vcsim::start(false);
    let (a, b) = prepare_two_disks(&v);
    let work = tempfile::tempdir().unwrap();
    v.stub("/stub/folder-ignore-range?max=65536", Some(""));
    let s = v.connect();
    let mut images = Vec::new();
    run_cycle_with(
        &s,
        &opts(work.path()),
        DiskAccess::Folder,
        &mut |_, d: &dyn BlockSource, _| {
            images.push(read_all(d));
            Ok(())
        },
    )
    .expect("descriptors answered 200 are accepted");
    assert!(images[0] == qemu_raw(&a, work.path()));
    assert!(images[1] == qemu_raw(&b, work.path()));
    // A 200 to part of a file: the server ignored the range; refused.
    v.stub("/stub/folder-ignore-range?max=16777216&partial=1", Some(""));
    let loc = godwit_vmware::datastore::DatastoreLocator::new(&s).unwrap();
    let f = godwit_disk::storage::Locator::open(
        &loc,
        &format!("[LocalDS_0] {}/flat-flat.vmdk", vcsim::VM),
        None,
    )
    .unwrap()
    .file;
    let mut buf = vec![0u8; 4096];
    let e = f.read_exact_at(&mut buf, 0).unwrap_err().to_string();
    assert!(e.contains("ignored the Range header"), "{e}");
    s.logout().unwrap();
    no_snapshot(&v);
}
