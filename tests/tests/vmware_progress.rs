//! `godwit replicate --json` of a vSphere VM (vcsim, two disks read remotely): one sequence of
//! progress events per disk, each monotonic and ending at its total, the total of the sparse
//! disk being its allocated grains as qemu-img maps them (not its virtual size); one `done`
//! event per disk carrying the same figures.

use godwit_tests::cli::{check_progress, progress_events, qemu_allocated};
use godwit_tests::vcsim;
use vcsim::{FLAT_SIZE, SPARSE_SIZE, VM, Vcsim, prepare_two_disks, replicate_cli};

#[test]
fn vsphere_replication_reports_allocation_aware_progress_per_disk() {
    let work = tempfile::tempdir().unwrap();
    let v = Vcsim::start(false);
    let (sparse, _flat) = prepare_two_disks(&v);
    let store = work.path().join("store");
    let o = replicate_cli(
        &v,
        VM,
        &store,
        &work.path().join("state"),
        &["--json", "--chunk-size", "64K"],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (progress, done) = progress_events(&out);
    assert_eq!(done.len(), 2, "{out}");
    let sparse_alloc = qemu_allocated(&sparse, "vmdk");
    assert!(
        sparse_alloc > 0 && sparse_alloc < SPARSE_SIZE / 4,
        "{sparse_alloc}"
    );
    for (disk, size) in [(0u64, SPARSE_SIZE), (1, FLAT_SIZE)] {
        let events: Vec<_> = progress
            .iter()
            .filter(|e| e["disk"] == disk)
            .cloned()
            .collect();
        let total = check_progress(&events, "replicate");
        assert!(
            events
                .iter()
                .all(|e| e["vm"] == VM && e["disk_size"] == size)
        );
        assert!(total > 0 && total <= size, "disk {disk}: {total}");
        if disk == 0 {
            assert_eq!(total, sparse_alloc, "the sparse disk's allocated grains");
        }
        let d = done.iter().find(|d| d["disk"] == disk).unwrap();
        assert_eq!(d["bytes_total"].as_u64(), Some(total), "{d}");
        assert_eq!(d["bytes_done"].as_u64(), Some(total), "{d}");
    }
}
