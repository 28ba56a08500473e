//! Malformed SOAP from a live server: the vcsim harness's STUB layer (tests/vcsim/main.go,
//! `/stub/malform`) replaces the next `/sdk` reply with garbage, a truncated document, a body
//! over the 64 MiB limit, a `missingSet` (HTTP 200) or a reply without `returnval`. Each gives
//! a clear error naming the host and the method, and never a panic.

use godwit_tests::vcsim;
use godwit_vmware::ErrorKind;
use godwit_vmware::inventory::{eligibility, vm_from_object};
use godwit_vmware::soap::{envelope as env, response as resp};
use vcsim::{Vcsim, vm_by_name};

#[test]
fn malformed_replies_give_clear_errors() {
    let v = Vcsim::start(false);
    let s = v.connect();
    let vm = vm_by_name(&s, "DC0_H0_VM0");
    let host = v.authority();
    let malform = |mode: &str| {
        v.stub(&format!("/stub/malform?mode={mode}"), Some("{}"));
    };

    malform("garbage");
    let e = s.object_properties(&vm.moref, &["name"]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    let m = e.to_string();
    assert!(
        m.contains(&host) && m.contains("malformed reply to RetrievePropertiesEx"),
        "{m}"
    );

    malform("truncated");
    let m = s
        .object_properties(&vm.moref, &["name"])
        .unwrap_err()
        .to_string();
    assert!(m.contains("document ends inside"), "{m}");

    malform("oversized");
    let e = s.object_properties(&vm.moref, &["name"]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol);
    assert!(e.to_string().contains("limit"), "{e}");

    // HTTP 200 with a missingSet: the VM is reported, and not eligible, with the reason.
    malform("missingset");
    let o = s
        .object_properties(&vm.moref, &["name", "config.hardware.device"])
        .unwrap();
    let locked = vm_from_object(&o).unwrap();
    assert_eq!(locked.name, "locked-vm");
    let el = eligibility(&locked);
    assert!(!el.eligible);
    assert!(
        el.reasons
            .join(";")
            .contains("config.hardware.device (NoPermission)"),
        "{:?}",
        el.reasons
    );

    malform("noreturnval");
    let m = s
        .call(
            "CreateSnapshot_Task",
            &|_| env::create_snapshot(&vm.moref, "godwit-x", "", false, false),
            &|b| resp::parse_moref_reply(b, "CreateSnapshot_Task"),
        )
        .unwrap_err()
        .to_string();
    assert!(m.contains("no <returnval>"), "{m}");

    // A real fault from vcsim: an object that does not exist.
    let gone = godwit_vmware::MoRef::new("VirtualMachineSnapshot", "snapshot-999");
    let e = s
        .call(
            "RemoveSnapshot_Task",
            &|_| env::remove_snapshot(&gone, false, true),
            &|b| resp::parse_moref_reply(b, "RemoveSnapshot_Task"),
        )
        .unwrap_err();
    assert_eq!(e.fault_type(), Some("ManagedObjectNotFound"), "{e}");
    assert_eq!(e.kind(), ErrorKind::NotFound);

    // The session is still usable afterwards.
    assert_eq!(s.all_of_kind("VirtualMachine", &["name"]).unwrap().len(), 4);
    s.logout().unwrap();
}
