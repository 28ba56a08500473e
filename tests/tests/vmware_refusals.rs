//! What vCenter would let a naive connector copy wrongly is refused, against vcsim: encrypted
//! VMs and disks (config.keyId, a backing's keyId — set by our labelled STUB, vcsim has the
//! fields but never sets them — and a descriptor with the encryption key bundle, a real file
//! vcsim serves), a disk whose file holds a different size than vCenter's capacity (vcsim's
//! own default VMs have empty disk files), Fault Tolerance and consolidationNeeded (STUB), a
//! multi-writer disk and a delta chain without a snapshot (vcsim stores the backing we give),
//! and a missing privilege (STUB deny list behind HasPrivilegeOnEntity).
//!
//! Each refusal through `godwit replicate` exits non-zero naming the VM, the disk and the
//! reason, leaves no snapshot and writes nothing to the store; `godwit inventory --json`
//! shows each reason.

use godwit_tests::peers::godwit_bin;
use godwit_tests::vcsim;
use std::path::Path;
use std::process::Command;
use vcsim::{
    PASSWORD, USER, Vcsim, files_under, make_disk, replicate_cli, set_vm_disks_ext, vm_by_name,
    vm_state,
};

const ENCRYPTED_DESCRIPTOR_LINES: &str = "\nencryption.keySafe = \"vmware:key/list/(pair/(fqid/<VMWARE-NULL>/godwit-test-kms/1,HMAC-SHA-256,AAAA))\"\nencryption.data = \"AAAAAQ==\"\nddb.iofilters = \"vmwarevmcrypt\"\n";

fn inventory_json(v: &Vcsim, extra: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(godwit_bin())
        .args(["inventory", "--json", "--source", &v.source(USER)])
        .args(["--source-fingerprint", &v.fingerprint_arg()])
        .args(extra)
        .env("GODWIT_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn reasons_of(vms: &[serde_json::Value], name: &str) -> String {
    let vm = vms
        .iter()
        .find(|x| x["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed"));
    assert_eq!(vm["eligibility"]["eligible"], false, "{vm:#}");
    vm["eligibility"]["reasons"].to_string()
}

/// `godwit replicate` of `vm` is refused: non-zero exit, stderr naming every `needle`, no
/// snapshot on the VM, nothing in the store.
fn assert_refused(v: &Vcsim, vm: &str, needles: &[&str], work: &Path) {
    let store = work.join(format!("store-{vm}"));
    let state = work.join("state");
    let out = replicate_cli(v, vm, &store, &state, &["--cbt"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{vm} was not refused: {err}");
    for n in needles.iter().chain([&vm]) {
        assert!(err.contains(n), "{n:?} not in the refusal: {err}");
    }
    assert!(
        files_under(&store).is_empty(),
        "{vm}: the store holds {:?}",
        files_under(&store)
    );
    let s = v.connect();
    let snaps = vm_by_name(&s, vm).snapshots;
    assert!(snaps.is_empty(), "{vm}: snapshots left {snaps:?}");
    s.logout().unwrap();
    let ledger =
        std::fs::read_to_string(state.join("vsphere-snapshot-ledger.json")).unwrap_or_default();
    assert!(!ledger.contains("godwit-"), "{vm}: ledger {ledger}");
}

/// Give `vm` one good flat disk of `size` bytes (attached with `capacity`, extra backing XML).
fn one_disk(
    v: &Vcsim,
    vm: &str,
    name: &str,
    size: u64,
    capacity: u64,
    extra: &str,
) -> std::path::PathBuf {
    let dir = v.datastore().1.join(vm);
    let d = make_disk(&dir, name, true, size, &["write -P 0x61 0 64k"]);
    let s = v.connect();
    set_vm_disks_ext(
        &s,
        vm,
        &[(&format!("[LocalDS_0] {vm}/{name}.vmdk"), capacity, extra)],
    );
    s.logout().unwrap();
    d
}

#[test]
fn encrypted_vms_and_disks_are_refused_before_any_snapshot() {
    let v = Vcsim::start(false);
    let work = tempfile::tempdir().unwrap();
    let (vm0, vm1, vm2) = ("DC0_H0_VM0", "DC0_H0_VM1", "DC0_C0_RP0_VM0");
    for vm in [vm0, vm1, vm2] {
        one_disk(&v, vm, "d", 1 << 20, 1 << 20, "");
    }
    let s = v.connect();
    let (m0, m1) = (vm_by_name(&s, vm0), vm_by_name(&s, vm1));
    s.logout().unwrap();
    // VM0 encrypted as a whole (config.keyId), VM1 only its disk (backing keyId).
    vm_state(
        &v,
        &format!(r#"{{"vm":"{}","key_id":"key-vm0"}}"#, m0.moref.value),
    );
    vm_state(
        &v,
        &format!(
            r#"{{"vm":"{}","disk_key_ids":{{"{}":"key-disk1"}}}}"#,
            m1.moref.value, m1.disks[0].key
        ),
    );
    // VM2: nothing in vCenter's properties, but its descriptor carries the key bundle.
    let desc = v.datastore().1.join(vm2).join("d.vmdk");
    let mut text = std::fs::read_to_string(&desc).unwrap();
    text.push_str(ENCRYPTED_DESCRIPTOR_LINES);
    std::fs::write(&desc, text).unwrap();

    let vms = inventory_json(&v, &[]);
    let r0 = reasons_of(&vms, vm0);
    assert!(r0.contains("encrypted") && r0.contains("key-vm0"), "{r0}");
    let r1 = reasons_of(&vms, vm1);
    assert!(r1.contains("disk 0") && r1.contains("key-disk1"), "{r1}");
    // The descriptor is read for one VM (`--vm`).
    let one = inventory_json(&v, &["--vm", vm2]);
    let r2 = reasons_of(&one, vm2);
    assert!(
        r2.contains("disk 0") && r2.contains("encryption.keySafe") && r2.contains("vmwarevmcrypt"),
        "{r2}"
    );

    assert_refused(&v, vm0, &["encrypted", "key-vm0"], work.path());
    assert_refused(
        &v,
        vm1,
        &["disk 0", "d.vmdk", "encrypted", "key-disk1"],
        work.path(),
    );
    assert_refused(
        &v,
        vm2,
        &["disk 0", "d.vmdk", "encryption.keySafe", "ciphertext"],
        work.path(),
    );
}

#[test]
fn a_disk_whose_file_and_capacity_disagree_fails_naming_both_numbers() {
    let v = Vcsim::start(false);
    let work = tempfile::tempdir().unwrap();
    // vcsim's own VM: its disk1.vmdk is an empty file, vCenter says 1 MiB. Before the check
    // this replicated as a 0-byte disk.
    let vm = "DC0_C0_RP0_VM0";
    assert_refused(
        &v,
        vm,
        &[
            "disk 0",
            "disk1.vmdk",
            "0 bytes",
            "capacityInBytes is 1048576 bytes",
        ],
        work.path(),
    );
    // A 2 MiB disk that vCenter believes is 4 MiB.
    let vm = "DC0_H0_VM0";
    one_disk(&v, vm, "short", 2 << 20, 4 << 20, "");
    assert_refused(
        &v,
        vm,
        &["disk 0", "short.vmdk", "2097152 bytes", "4194304 bytes"],
        work.path(),
    );
}

#[test]
fn ft_consolidation_multi_writer_delta_chains_and_missing_privileges_are_refused() {
    let v = Vcsim::start(false);
    let work = tempfile::tempdir().unwrap();
    let (vm0, vm1, vm2, vm3) = (
        "DC0_H0_VM0",
        "DC0_H0_VM1",
        "DC0_C0_RP0_VM0",
        "DC0_C0_RP0_VM1",
    );
    one_disk(&v, vm0, "d", 1 << 20, 1 << 20, "");
    one_disk(&v, vm1, "d", 1 << 20, 1 << 20, "");
    one_disk(
        &v,
        vm2,
        "shared",
        1 << 20,
        1 << 20,
        "<sharing>sharingMultiWriter</sharing>",
    );
    one_disk(
        &v,
        vm3,
        "d-000001",
        1 << 20,
        1 << 20,
        r#"<parent><fileName>[LocalDS_0] DC0_C0_RP0_VM1/d.vmdk</fileName><diskMode>persistent</diskMode></parent>"#,
    );
    let s = v.connect();
    let (m0, m1) = (vm_by_name(&s, vm0), vm_by_name(&s, vm1));
    s.logout().unwrap();
    vm_state(
        &v,
        &format!(r#"{{"vm":"{}","ft_state":"running"}}"#, m0.moref.value),
    );
    vm_state(
        &v,
        &format!(
            r#"{{"vm":"{}","consolidation_needed":true}}"#,
            m1.moref.value
        ),
    );

    let vms = inventory_json(&v, &[]);
    let r = reasons_of(&vms, vm0);
    assert!(
        r.contains("Fault Tolerance") && r.contains("running"),
        "{r}"
    );
    let r = reasons_of(&vms, vm1);
    assert!(r.contains("consolidation"), "{r}");
    let r = reasons_of(&vms, vm2);
    assert!(
        r.contains("disk 0") && r.contains("sharingMultiWriter"),
        "{r}"
    );
    let r = reasons_of(&vms, vm3);
    assert!(
        r.contains("disk 0") && r.contains("delta") && r.contains("d.vmdk"),
        "{r}"
    );

    assert_refused(&v, vm0, &["Fault Tolerance"], work.path());
    assert_refused(&v, vm1, &["consolidation"], work.path());
    assert_refused(
        &v,
        vm2,
        &["disk 0", "shared.vmdk", "sharingMultiWriter"],
        work.path(),
    );
    assert_refused(&v, vm3, &["disk 0", "d-000001.vmdk", "delta"], work.path());

    // Privileges: an otherwise eligible VM, an account without CreateSnapshot and without
    // Datastore.Browse: refused before any snapshot, naming each privilege and entity.
    vm_state(
        &v,
        &format!(
            r#"{{"vm":"{}","ft_state":"notConfigured"}}"#,
            m0.moref.value
        ),
    );
    v.stub(
        "/stub/privileges?deny=VirtualMachine.State.CreateSnapshot,Datastore.Browse",
        Some(""),
    );
    assert_refused(
        &v,
        vm0,
        &[
            "VirtualMachine.State.CreateSnapshot",
            "Datastore.Browse",
            "datastore LocalDS_0 in DC0",
            "CreateSnapshot_Task",
        ],
        work.path(),
    );
    let checks: serde_json::Value =
        serde_json::from_str(&v.stub("/stub/privilege-stats", None)).unwrap();
    assert!(checks["checks"].as_u64().unwrap() >= 4, "{checks}");
    // With the privileges back the same VM replicates.
    v.stub("/stub/privileges?deny=", Some(""));
    let out = replicate_cli(
        &v,
        vm0,
        &work.path().join("store-ok"),
        &work.path().join("state"),
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
