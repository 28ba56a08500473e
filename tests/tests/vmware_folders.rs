//! Inventories as real vCenters have them, against vcsim:
//!
//! - datacenters inside folders (vcsim's own Model.Folder) and two datacenters that each have
//!   a `LocalDS_0` (vcsim's own model). `/folder` must be given the datacenter's inventory
//!   path (`F0/DC1`): vcsim's finder also finds a nested datacenter by its bare name, vCenter
//!   does not, so the simulator refuses that (labelled STUB, tests/vcsim/main.go);
//! - a VM whose name another VM in another folder also has (vcsim's own CreateFolder,
//!   MoveIntoFolder_Task and Rename_Task, which refuse a duplicate within one folder as
//!   vCenter does); VMs named by MoRef and by instance UUID.

use godwit_tests::peers::godwit_bin;
use godwit_tests::vcsim;
use godwit_vmware::soap::envelope as env;
use godwit_vmware::soap::response as resp;
use std::process::Command;
use vcsim::{
    PASSWORD, USER, Vcsim, VcsimOptions, export_equals, files_under, make_disk, replicate_cli,
    run_task, set_vm_disks_of,
};

/// A VM in a datacenter inside a folder (F0/DC1) with three disks (monolithicSparse, a thin
/// monolithicFlat with holes, a fully written flat one, odd sizes) replicates through the CLI,
/// and each export equals `qemu-img convert -O raw` of its source. DC0 at the root has its own
/// `LocalDS_0` holding different files at the same paths: reading the wrong datastore would
/// show.
#[test]
fn vm_in_a_datacenter_inside_a_folder_replicates_three_disks_byte_equal() {
    let v = Vcsim::start_opts(&VcsimOptions {
        datacenters: Some(2),
        folders: Some(1),
        ..VcsimOptions::default()
    });
    let vm = "DC1_H0_VM0";
    let dir = v.datastore_in("F0/DC1", "LocalDS_0").join(vm);
    let decoy = v.datastore_in("DC0", "LocalDS_0").join(vm);
    let sizes = [
        3 * 1024 * 1024 + 1024,
        9 * 1024 * 1024 + 4096,
        2 * 1024 * 1024,
    ];
    let a = make_disk(
        &dir,
        "a",
        false,
        sizes[0],
        &["write -P 0xa1 0 100k", "write -P 0x77 3145728 1k"],
    );
    let b = make_disk(
        &dir,
        "b",
        true,
        sizes[1],
        &["write -P 0x3e 4096 70000", "write -P 0xe4 8M 65k"],
    );
    let c = make_disk(&dir, "c", true, sizes[2], &["write -P 0x5a 0 2M"]);
    for n in ["a", "b", "c"] {
        make_disk(&decoy, n, true, 4096, &["write -P 0xee 0 4k"]);
    }
    let s = v.connect();
    let target = godwit_vmware::replicate::find_vm(&s, vm).unwrap();
    assert_eq!(target.folder.as_deref(), Some("F0/DC1/vm/F0"), "{target:?}");
    set_vm_disks_of(
        &s,
        &target,
        &[
            (&format!("[LocalDS_0] {vm}/a.vmdk"), sizes[0], ""),
            (&format!("[LocalDS_0] {vm}/b.vmdk"), sizes[1], ""),
            (&format!("[LocalDS_0] {vm}/c.vmdk"), sizes[2], ""),
        ],
    );
    s.logout().unwrap();

    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let state = work.path().join("state");
    let out = replicate_cli(&v, vm, &store, &state, &[]);
    assert!(
        out.status.success(),
        "replicate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (i, src) in [&a, &b, &c].into_iter().enumerate() {
        export_equals(&store, vm, i, src, work.path());
    }
    let s = v.connect();
    assert!(
        godwit_vmware::replicate::find_vm(&s, vm)
            .unwrap()
            .snapshots
            .is_empty()
    );
    s.logout().unwrap();
}

fn inventory(v: &Vcsim, extra: &[&str]) -> std::process::Output {
    Command::new(godwit_bin())
        .args(["inventory", "--source", &v.source(USER)])
        .args(["--source-fingerprint", &v.fingerprint_arg()])
        .args(extra)
        .env("GODWIT_PASSWORD", PASSWORD)
        .output()
        .unwrap()
}

fn task(s: &godwit_vmware::session::Session, method: &str, body: String) {
    run_task(s, method, body);
}

/// Two VMs named `DC0_H0_VM0` in two folders: `--vm` with that name is refused (inventory and
/// replicate), listing each candidate's MoRef and folder, with no snapshot taken and nothing
/// written; the MoRef and the instance UUID each name one of them.
#[test]
fn duplicate_names_are_refused_and_morefs_and_instance_uuids_name_a_vm() {
    let v = Vcsim::start(false);
    let name = "DC0_H0_VM0";
    let s = v.connect();
    let first = godwit_vmware::replicate::find_vm(&s, name).unwrap();
    let other = godwit_vmware::replicate::find_vm(&s, "DC0_H0_VM1").unwrap();
    let vm_folder = first.parent.clone().unwrap();
    let finance = s
        .call(
            "CreateFolder",
            &|_| env::envelope("CreateFolder", &vm_folder, "<name>Finance</name>"),
            &|b| resp::parse_moref_reply(b, "CreateFolder"),
        )
        .unwrap();
    task(
        &s,
        "MoveIntoFolder_Task",
        env::envelope(
            "MoveIntoFolder_Task",
            &finance,
            &env::moref_el("list", &other.moref),
        ),
    );
    // vcsim refuses the duplicate within one folder (as vCenter does), so it had to move.
    task(
        &s,
        "Rename_Task",
        env::envelope(
            "Rename_Task",
            &other.moref,
            &format!("<newName>{name}</newName>"),
        ),
    );
    // The renamed VM gets a disk with data, so replicating it by MoRef shows it is that VM.
    let dir = v.datastore().1.join("DC0_H0_VM1");
    let d = make_disk(&dir, "only", true, 1 << 20, &["write -P 0x42 0 1M"]);
    let other = godwit_vmware::vmref::resolve(
        &s,
        &godwit_vmware::vmref::VmTarget::named(&other.moref.value),
    )
    .unwrap();
    set_vm_disks_of(
        &s,
        &other,
        &[("[LocalDS_0] DC0_H0_VM1/only.vmdk", 1 << 20, "")],
    );
    s.logout().unwrap();

    // Inventory: refused, exit 2, each candidate with MoRef and folder.
    let out = inventory(&v, &["--vm", name, "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for want in [
        first.moref.value.as_str(),
        other.moref.value.as_str(),
        "in folder DC0/vm",
        "in folder DC0/vm/Finance",
        "ambiguous",
    ] {
        assert!(err.contains(want), "{want:?} not in: {err}");
    }

    // Replicate: refused the same way; no snapshot, nothing in the store.
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let state = work.path().join("state");
    let out = replicate_cli(&v, name, &store, &state, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&first.moref.value) && err.contains(&other.moref.value),
        "{err}"
    );
    assert!(files_under(&store).is_empty(), "{:?}", files_under(&store));
    let s = v.connect();
    for m in [&first.moref, &other.moref] {
        let snaps = godwit_vmware::snapshot::vm_snapshots(&s, m).unwrap();
        assert!(snaps.is_empty(), "{m}: {snaps:?}");
    }
    s.logout().unwrap();

    // By MoRef and by instance UUID: exactly that VM.
    for q in [
        other.moref.value.clone(),
        other.instance_uuid.clone().unwrap(),
    ] {
        let out = inventory(&v, &["--vm", &q, "--json"]);
        assert!(
            out.status.success(),
            "{q}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let vms: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(vms.len(), 1, "{vms:?}");
        assert_eq!(vms[0]["moref"]["value"], other.moref.value.as_str());
        assert_eq!(vms[0]["folder"], "DC0/vm/Finance");
    }
    let out = replicate_cli(&v, &other.moref.value, &store, &state, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    export_equals(&store, &other.moref.value, 0, &d, work.path());
}
