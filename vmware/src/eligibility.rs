//! Whether a VM can be replicated: the limits of the AWS SMS connector Godwit replaces
//! (`seeds/002_*.txt`) and what vSphere itself refuses or would corrupt. Pure; every reason
//! names the disk it concerns. The sources of each rule are next to it and in docs/vsphere.md.

use crate::inventory::{Backing, Vm, VmDisk};
use serde::Serialize;

/// At most this many volumes per VM (seed: "fail for VMs with more than 22 volumes").
pub const MAX_VOLUMES: usize = 22;
/// MBR boot volume limit (seed: "cannot exceed 2 TiB").
pub const MAX_BOOT_DISK_BYTES: u64 = 2 << 40;
/// GPT non-boot volume limit (seed: "cannot be bigger than 4 TiB").
pub const MAX_DATA_DISK_BYTES: u64 = 4 << 40;
/// Snapshots Godwit creates carry this prefix; sweeps only ever remove these.
pub const SNAPSHOT_PREFIX: &str = "godwit-";

/// Why a VM cannot be replicated (or a caution that does not block it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Eligibility {
    pub eligible: bool,
    pub reasons: Vec<String>,
    pub warnings: Vec<String>,
}

/// `disk 1 (Hard disk 2, [ds] vm/vm_1.vmdk)`: how reasons name a disk.
pub fn disk_name(i: usize, d: &VmDisk) -> String {
    if d.label.is_empty() {
        format!("disk {i} ({})", d.file_name)
    } else {
        format!("disk {i} ({}, {})", d.label, d.file_name)
    }
}

/// Reasons that concern the encryption of the VM and its disks: the cycle refuses on these
/// before it takes a snapshot. vSphere VM encryption (6.5+) sets `config.keyId` on an
/// encrypted VM and `keyId` on each encrypted disk backing
/// (<https://developer.broadcom.com/xapis/virtual-infrastructure-json-api/latest/data-structures/VirtualDiskFlatVer2BackingInfo>);
/// the descriptor of an encrypted VMDK carries the key bundle ("The VMDK descriptor file is
/// mostly cleartext, but contains a key ID for the KEK and the internal key (DEK) in the
/// encrypted bundle", vSphere Security,
/// <https://docs.vmware.com/en/VMware-vSphere/6.5/com.vmware.vsphere.security.doc/GUID-8D7D09AC-8579-4A33-9449-8E8BA49A3003.html>).
/// Read over `/folder` or NFC such a disk is ciphertext.
pub fn encryption_reasons(vm: &Vm) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(k) = &vm.key_id {
        out.push(format!(
            "is encrypted (config.keyId {k}): its disks would be copied as ciphertext; decrypt the VM first"
        ));
    }
    for (i, d) in vm.disks.iter().enumerate() {
        if let Some(k) = &d.key_id {
            out.push(format!(
                "{} is encrypted (backing keyId {k}): it would be copied as ciphertext",
                disk_name(i, d)
            ));
        } else if let Some(why) = &d.descriptor_encryption {
            out.push(format!(
                "{} is encrypted (its descriptor has {why}): it would be copied as ciphertext",
                disk_name(i, d)
            ));
        }
    }
    out
}

/// Apply the seed's limits, Godwit's snapshot rules and what vSphere refuses.
pub fn eligibility(vm: &Vm) -> Eligibility {
    let mut reasons = Vec::new();
    let mut warnings = Vec::new();
    if !vm.missing.is_empty() {
        let paths: Vec<String> = vm
            .missing
            .iter()
            .map(|m| format!("{} ({})", m.path, m.fault))
            .collect();
        reasons.push(format!(
            "properties could not be read: {}",
            paths.join(", ")
        ));
    }
    if vm.template {
        reasons.push("is a template".into());
    }
    if vm.vcls_agent || vm.name.starts_with("vCLS") {
        reasons.push("is a vSphere Cluster Services (vCLS) agent VM".into());
    }
    if vm.disks.is_empty() {
        reasons.push("has no virtual disks".into());
    }
    if vm.disks.len() > MAX_VOLUMES {
        reasons.push(format!(
            "has {} disks; at most {MAX_VOLUMES} volumes are supported",
            vm.disks.len()
        ));
    }
    reasons.extend(encryption_reasons(vm));
    // "it is not possible to take snapshots of virtual machines on which Fault Tolerance is
    // enabled" (vSphere Availability, Fault Tolerance interoperability,
    // https://docs.vmware.com/en/VMware-vSphere/8.0/vsphere-availability/GUID-F5264795-11DA-4242-B774-8C3450997033.html).
    if let Some(ft) = vm
        .ft_state
        .as_deref()
        .filter(|s| !matches!(*s, "notConfigured" | ""))
    {
        reasons.push(format!(
            "is protected by Fault Tolerance (faultToleranceState {ft}): vSphere takes no snapshots of FT VMs; turn FT off first"
        ));
    }
    // runtime.consolidationNeeded: a snapshot removal left delta disks behind; the VM runs on
    // them and a new snapshot would stack on top (Forklift warns on pre-existing deltas,
    // kubev2v/forklift#2397).
    if vm.consolidation_needed {
        reasons.push(
            "needs disk consolidation (runtime.consolidationNeeded): delta disks were left behind; consolidate the VM's disks first"
                .into(),
        );
    }
    let foreign: Vec<&str> = vm
        .snapshots
        .iter()
        .filter(|s| !s.name.starts_with(SNAPSHOT_PREFIX))
        .map(|s| s.name.as_str())
        .collect();
    if !foreign.is_empty() {
        reasons.push(format!(
            "has pre-existing snapshots ({}); consolidate or delete them first",
            foreign.join(", ")
        ));
    }
    for (i, d) in vm.disks.iter().enumerate() {
        disk_reasons(vm, i, d, &mut reasons);
    }
    if vm.firmware.as_deref() == Some("efi") {
        warnings.push("UEFI firmware: the boot disk is likely GPT; targets that need an MBR boot volume will not boot it".into());
    }
    Eligibility {
        eligible: reasons.is_empty(),
        reasons,
        warnings,
    }
}

fn disk_reasons(vm: &Vm, i: usize, d: &VmDisk, reasons: &mut Vec<String>) {
    let name = disk_name(i, d);
    match &d.backing {
        Backing::Rdm { mode } => reasons.push(format!("{name} is a raw device mapping ({mode})")),
        Backing::Other { type_name } => {
            reasons.push(format!("{name} has unsupported backing {type_name}"));
        }
        _ => {}
    }
    if d.independent() {
        reasons.push(format!(
            "{name} is {}: snapshots do not cover it",
            d.disk_mode
        ));
    }
    // Multi-writer disks cannot be snapshotted (VMware KB 1034165, "Enabling or disabling
    // simultaneous write protection provided by VMFS using the multi-writer flag": snapshots
    // are among the unsupported actions; VirtualDiskSharing, sharingMultiWriter).
    if d.sharing.as_deref() == Some("sharingMultiWriter") {
        reasons.push(format!(
            "{name} is shared with other VMs (sharingMultiWriter): multi-writer disks cannot be snapshotted"
        ));
    }
    // A backing with parents while the VM lists no snapshot: orphaned deltas (a failed
    // consolidation, a backup product's leftovers). Reading the base would miss the deltas'
    // writes; the chain is not ours to read.
    if !d.parent_chain.is_empty() && vm.snapshots.is_empty() {
        reasons.push(format!(
            "{name} runs on a chain of {} delta file(s) without a snapshot (parent {}); consolidate the VM's disks first",
            d.parent_chain.len(),
            d.parent_chain.first().map_or("?", String::as_str)
        ));
    }
    if i == 0 && d.capacity_bytes > MAX_BOOT_DISK_BYTES {
        reasons.push(format!(
            "boot {name} is larger than 2 TiB ({} bytes), beyond the MBR limit",
            d.capacity_bytes
        ));
    }
    if i > 0 && d.capacity_bytes > MAX_DATA_DISK_BYTES {
        reasons.push(format!(
            "{name} is larger than 4 TiB ({} bytes)",
            d.capacity_bytes
        ));
    }
}

/// What a VMDK descriptor says about encryption, if anything: `encryption.keySafe` /
/// `encryption.data` (the key bundle) or the `vmwarevmcrypt` I/O filter in `ddb.iofilters`
/// (VM encryption is implemented as an I/O filter). Pure; `bytes` is the start of the file
/// (a text descriptor, or a sparse file's embedded one), read leniently as text.
pub fn descriptor_encryption(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut found = Vec::new();
    for line in text.lines().take(4096) {
        // Descriptors in sparse files are padded with NULs.
        let line = line.trim_matches(|c: char| c.is_whitespace() || c == '\0');
        let key = line.split('=').next().unwrap_or("").trim();
        if key.eq_ignore_ascii_case("encryption.keySafe")
            || key.eq_ignore_ascii_case("encryption.data")
        {
            found.push(key.to_string());
        } else if key.eq_ignore_ascii_case("ddb.iofilters")
            && line.to_ascii_lowercase().contains("vmwarevmcrypt")
        {
            found.push("ddb.iofilters = vmwarevmcrypt".into());
        }
    }
    found.dedup();
    (!found.is_empty()).then(|| found.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn descriptors_say_whether_they_are_encrypted() {
        let plain = b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nRW 8192 FLAT \"a-flat.vmdk\" 0\nddb.adapterType = \"lsilogic\"\n";
        assert_eq!(descriptor_encryption(plain), None);
        let enc = b"# Disk DescriptorFile\nversion=1\nRW 8192 VMFS \"a-flat.vmdk\"\nencryption.keySafe = \"vmware:key/list/(pair/(fqid/<VMWARE-NULL>/KMS/1,HMAC-SHA-256,x))\"\nencryption.data = \"AAAA\"\nddb.iofilters = \"vmwarevmcrypt\"\n";
        assert_eq!(
            descriptor_encryption(enc).as_deref(),
            Some("encryption.keySafe, encryption.data, ddb.iofilters = vmwarevmcrypt")
        );
        let filter_only = b"ddb.iofilters = \"spm:vmwarevmcrypt\"\n";
        assert!(descriptor_encryption(filter_only).is_some());
        // Binary bytes around an embedded descriptor do not hide it.
        let mut sparse = vec![0u8, 0xff, 0x4b, 0x44];
        sparse.extend_from_slice(b"\nencryption.keySafe = \"x\"\n");
        assert!(descriptor_encryption(&sparse).is_some());
    }

    proptest! {
        #[test]
        fn descriptor_scan_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = descriptor_encryption(&bytes);
        }
    }
}
