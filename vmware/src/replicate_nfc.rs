//! The NFC side of a cycle: one export lease for all disks, each disk's device URL found by its
//! key (controller class, bus and unit — never by position), every disk downloaded to a spool
//! file under a keep-alive, the lease completed as soon as the last disk is read (Abort on any
//! failure), then each spooled disk checked and handed to the sink.

use crate::cbt::ChangeIdStore;
use crate::eligibility::disk_name;
use crate::error::{Error, Result};
use crate::inventory::{Vm, VmDisk};
use crate::nfc;
use crate::replicate::{
    CycleOptions, DiskReport, DiskSink, capacity_refusal, feed, plan_disk, snapshot_disks, stored,
    vm_uuid,
};
use crate::session::Session;
use crate::snapshot::TakenSnapshot;
use crate::soap::lease::{DeviceUrl, device_key_slot};
use godwit_disk::{BlockSource, Disk};
use std::path::Path;

/// Remove NFC spool files a crashed cycle left in `dir`.
pub(crate) fn remove_stale_spool(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("nfc-") && name.ends_with(".vmdk") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[derive(Default)]
pub(crate) struct NfcOutcome {
    pub bytes: u64,
    pub lease: Option<String>,
}

/// Pure: the disk device URL of each disk, by the key vCenter gives it
/// (`/vm-70/VirtualLsiLogicController0:0`: the disk's controller class and bus number, then
/// its unit number). An error names the disk and the keys offered.
pub fn match_device_urls(
    disks: &[VmDisk],
    urls: &[DeviceUrl],
) -> std::result::Result<Vec<DeviceUrl>, String> {
    let disk_urls: Vec<&DeviceUrl> = urls.iter().filter(|u| u.disk).collect();
    let mut out = Vec::new();
    for (i, d) in disks.iter().enumerate() {
        let found: Vec<&&DeviceUrl> = disk_urls
            .iter()
            .filter(|u| {
                let (Some((class, bus, unit)), Some(c), Some(n)) =
                    (device_key_slot(&u.key), &d.controller, d.unit_number)
                else {
                    return false;
                };
                class == c.type_name && bus == c.bus_number && unit == n
            })
            .collect();
        match found.as_slice() {
            [one] => out.push((**one).clone()),
            other => {
                return Err(format!(
                    "{}: {} of the lease's disk device URLs match its controller {}{}:{} (keys offered: {})",
                    disk_name(i, d),
                    other.len(),
                    d.controller.as_ref().map_or("?", |c| c.type_name.as_str()),
                    d.controller.as_ref().map_or(-1, |c| c.bus_number),
                    d.unit_number.unwrap_or(-1),
                    disk_urls
                        .iter()
                        .map(|u| u.key.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn read_disks_nfc(
    s: &Session,
    opts: &CycleOptions,
    vm: &Vm,
    snap: &TakenSnapshot,
    spool_dir: &Path,
    store: &mut ChangeIdStore,
    sink: &mut DiskSink<'_>,
    outcome: &mut NfcOutcome,
) -> Result<Vec<DiskReport>> {
    let disks = snapshot_disks(s, snap)?;
    let lease = if vm.power_state.as_deref() == Some("poweredOff") {
        nfc::export_vm(s, &vm.moref)?
    } else {
        nfc::export_snapshot(s, &snap.moref)?
    };
    outcome.lease = Some(lease.moref.value.clone());
    let urls = match match_device_urls(&disks, &lease.info.device_urls) {
        Ok(u) => u,
        Err(why) => {
            let _ = lease.abort();
            return Err(Error::malformed(
                &s.endpoint().authority(),
                "HttpNfcLease info",
                why,
            ));
        }
    };
    let total: u64 = disks.iter().map(|d| d.capacity_bytes).sum();
    let mut endpoints = nfc::DeviceEndpoints::new(s);
    let paths: Vec<_> = (0..disks.len())
        .map(|i| nfc::spool_path(spool_dir, &lease.moref, i))
        .collect();
    let remove_spool = || {
        for p in &paths {
            let _ = std::fs::remove_file(p);
        }
    };
    // Download every disk; the lease is needed for nothing else.
    let downloaded = nfc::with_keepalive(&lease, total, |ka| {
        for ((d, url), path) in disks.iter().zip(&urls).zip(&paths) {
            nfc::download_disk(&mut endpoints, &lease, url, d.capacity_bytes, path, ka)?;
        }
        Ok(ka.done_bytes.load(std::sync::atomic::Ordering::Relaxed))
    });
    match downloaded {
        Ok(bytes) => {
            outcome.bytes = bytes;
            if let Err(e) = lease.complete() {
                remove_spool();
                return Err(e);
            }
        }
        Err(e) => {
            if let Err(a) = lease.abort() {
                tracing::warn!(error = %a, "could not abort the NFC lease");
            }
            remove_spool();
            return Err(e);
        }
    }
    let fed = feed_spooled(s, opts, vm, snap, store, &disks, &paths, sink);
    remove_spool();
    fed
}

/// Open every spooled disk and check it, then hand each to the sink.
#[allow(clippy::too_many_arguments)]
fn feed_spooled(
    s: &Session,
    opts: &CycleOptions,
    vm: &Vm,
    snap: &TakenSnapshot,
    store: &mut ChangeIdStore,
    disks: &[VmDisk],
    paths: &[std::path::PathBuf],
    sink: &mut DiskSink<'_>,
) -> Result<Vec<DiskReport>> {
    let mut opened = Vec::new();
    let mut refusals = Vec::new();
    for (i, (d, p)) in disks.iter().zip(paths).enumerate() {
        let disk = Disk::open(&p.to_string_lossy())?;
        refusals.extend(capacity_refusal(i, d, disk.virtual_size()));
        opened.push(disk);
    }
    if !refusals.is_empty() {
        return Err(Error::refused(
            &s.endpoint().authority(),
            &format!("{:?} ({})", vm.name, vm.moref.value),
            refusals,
        ));
    }
    let uuid = vm_uuid(vm);
    let mut reports = Vec::new();
    let mut new_ids = Vec::new();
    for (i, (d, disk)) in disks.iter().zip(&opened).enumerate() {
        let key = crate::cbt::change_id_key(&uuid, d.key, d.uuid.as_deref());
        let mut report = DiskReport {
            key: d.key,
            file_name: d.file_name.clone(),
            capacity_bytes: d.capacity_bytes,
            ..DiskReport::default()
        };
        let plan = plan_disk(s, opts, vm, snap, store, &key, d, &mut report)?;
        feed(i, d, disk, plan, &mut report, sink)?;
        reports.push(report);
        new_ids.push((key, stored(d)));
    }
    if opts.cbt {
        store.record(new_ids)?;
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{Backing, Controller};

    fn disk(key: i32, class: &str, bus: i32, unit: i32) -> VmDisk {
        VmDisk {
            key,
            label: format!("Hard disk {key}"),
            controller_key: Some(1000 + bus),
            unit_number: Some(unit),
            capacity_bytes: 1,
            file_name: format!("[ds] vm/d{key}.vmdk"),
            backing: Backing::Flat,
            thin: None,
            disk_mode: "persistent".into(),
            uuid: None,
            change_id: None,
            parent_chain: Vec::new(),
            datastore: None,
            key_id: None,
            sharing: None,
            controller: Some(Controller {
                type_name: class.into(),
                bus_number: bus,
            }),
            descriptor_encryption: None,
            descriptor_checked: false,
        }
    }

    fn url(key: &str, disk: bool) -> DeviceUrl {
        DeviceUrl {
            key: key.into(),
            url: format!("https://*/nfc/l/{}", key.replace('/', "_")),
            ssl_thumbprint: String::new(),
            disk,
            target_id: String::new(),
            file_size: None,
        }
    }

    #[test]
    fn device_urls_follow_keys_not_positions() {
        let disks = [
            disk(2000, "VirtualLsiLogicController", 0, 0),
            disk(2001, "VirtualLsiLogicController", 0, 1),
            disk(3000, "VirtualIDEController", 1, 0),
        ];
        let urls = [
            url("/vm-7/nvram", false),
            url("/vm-7/VirtualIDEController1:0", true),
            url("/vm-7/VirtualLsiLogicController0:1", true),
            url("/vm-7/VirtualLsiLogicController0:0", true),
        ];
        let got = match_device_urls(&disks, &urls).unwrap();
        let keys: Vec<&str> = got.iter().map(|u| u.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "/vm-7/VirtualLsiLogicController0:0",
                "/vm-7/VirtualLsiLogicController0:1",
                "/vm-7/VirtualIDEController1:0"
            ]
        );
        let e = match_device_urls(&disks, &urls[..3]).unwrap_err();
        assert!(
            e.contains("disk 0")
                && e.contains("VirtualLsiLogicController0:0")
                && e.contains("keys offered"),
            "{e}"
        );
    }
}
