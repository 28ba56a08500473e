use super::*;
use proptest::prelude::*;

fn disks(sizes: &[u64]) -> Vec<DiskRecord> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &capacity_bytes)| DiskRecord {
            index: u32::try_from(i).unwrap(),
            label: format!("disk {i}"),
            capacity_bytes,
            ..DiskRecord::default()
        })
        .collect()
}

const MIB: u64 = 1 << 20;

#[test]
fn eta_counts_allocated_bytes_not_capacity() {
    // A 1 GiB disk with 100 MiB allocated, 40 MiB of it read, at 10 MiB/s: 6 s left, not ~100.
    let live = Live {
        disk: Some(0),
        disk_done: 600 * MIB,
        disk_total: 1024 * MIB,
        disk_rate: 100 * MIB,
        read_total: 100 * MIB,
        read_done: 40 * MIB,
        read_rate: 10 * MIB,
        ..Live::default()
    };
    assert_eq!(eta_seconds(&disks(&[1024 * MIB]), &live), Some(6));
}

#[test]
fn later_disks_count_at_the_measured_allocated_share() {
    // Disk 0: 1 GiB, 25 % allocated, all read; disk 1 (2 GiB) counted at 25 %: 512 MiB at
    // 64 MiB/s = 8 s.
    let live = Live {
        disk: Some(0),
        disk_done: 1024 * MIB,
        disk_total: 1024 * MIB,
        read_total: 256 * MIB,
        read_done: 256 * MIB,
        read_rate: 64 * MIB,
        ..Live::default()
    };
    assert_eq!(
        eta_seconds(&disks(&[1024 * MIB, 2048 * MIB]), &live),
        Some(8)
    );
}

#[test]
fn eta_without_allocation_uses_virtual_bytes_and_is_unknown_without_a_rate() {
    let mut live = Live {
        disk: Some(1),
        disk_done: 50 * MIB,
        disk_total: 100 * MIB,
        disk_rate: 10 * MIB,
        ..Live::default()
    };
    assert_eq!(eta_seconds(&disks(&[10, 100 * MIB]), &live), Some(5));
    live.disk_rate = 0;
    assert_eq!(eta_seconds(&disks(&[10, 100 * MIB]), &live), None);
    assert_eq!(eta_seconds(&disks(&[10]), &Live::default()), None);
}

proptest! {
    /// The ETA never grows as more of the same disk is read at the same rate.
    #[test]
    fn eta_is_monotone(total in 1u64..1 << 40, a in 0u64..1 << 40, b in 0u64..1 << 40, rate in 1u64..1 << 30, later in 0u64..1 << 40) {
        let (lo, hi) = (a.min(b).min(total), a.max(b).min(total));
        let live = |done| Live {
            disk: Some(0),
            disk_total: total,
            read_total: total,
            read_done: done,
            read_rate: rate,
            ..Live::default()
        };
        let d = disks(&[total, later]);
        let (e_lo, e_hi) = (eta_seconds(&d, &live(lo)), eta_seconds(&d, &live(hi)));
        prop_assert!(e_lo.is_some() && e_hi.is_some());
        prop_assert!(e_hi <= e_lo);
    }
}
