use super::*;
use proptest::prelude::*;

fn drive(vhd_type: &str) -> ScvmmDrive {
    ScvmmDrive {
        bus_type: "SCSI".into(),
        bus: 0,
        lun: 1,
        pass_through: false,
        location: Some(r"C:\ClusterStorage\Volume1\web\web.vhdx".into()),
        vhd_format_type: Some("VHDX".into()),
        vhd_type: Some(vhd_type.into()),
        maximum_size: Some(40 << 30),
        size: Some(4 << 30),
        parent_location: None,
        shared: false,
    }
}

fn vm(name: &str, host: &str) -> ScvmmVmRecord {
    ScvmmVmRecord {
        id: "0f2d5c11-0000-4000-8000-000000000001".into(),
        vm_id: "6c1f2a8e-0000-4000-8000-0000000000a2".into(),
        name: name.into(),
        vm_host: host.into(),
        host_fqdn: Some(format!("{host}.corp.test")),
        status: "Running".into(),
        generation: 2,
        cpu_count: 4,
        memory_mb: 4096,
        checkpoint_type: "Production".into(),
        is_highly_available: false,
        drives: vec![drive("DynamicallyExpanding")],
    }
}

fn report(vms: Vec<ScvmmVmRecord>) -> ScvmmReport {
    ScvmmReport {
        server: "vmm01.corp.test".into(),
        hosts: vec![
            ScvmmHost {
                name: "hv-a".into(),
                fqdn: Some("hv-a.corp.test".into()),
                platform: "HyperV".into(),
                overall_state: "OK".into(),
            },
            ScvmmHost {
                name: "esx-1".into(),
                fqdn: None,
                platform: "VMwareESX".into(),
                overall_state: "OK".into(),
            },
        ],
        vms,
    }
}

#[test]
fn report_round_trips_and_maps_to_hyperv_terms() {
    let r = report(vec![vm("web", "hv-a")]);
    let text = serde_json::to_string(&r).unwrap();
    assert!(
        text.contains("\"VMId\":") && text.contains("\"VHDType\":"),
        "{text}"
    );
    assert_eq!(parse_scvmm_inventory_json(&text).unwrap(), r);
    assert_eq!(
        parse_scvmm_inventory_json(&format!("\u{feff}{text}\r\n")).unwrap(),
        r
    );
    assert!(parse_scvmm_inventory_json("[]").is_err());
    let rec = r.vms[0].to_vm_record();
    assert_eq!(rec.id, "6c1f2a8e-0000-4000-8000-0000000000a2");
    assert_eq!(rec.memory_startup, Bytes(4 << 30));
    assert_eq!(rec.disks[0].vhd_type.as_deref(), Some("Dynamic"));
    assert_eq!(rec.disks[0].size, Some(Bytes(40 << 30)));
    for t in ["Fixed", "Dynamic", "Differencing"] {
        assert_eq!(hyperv_vhd_type(&vmm_vhd_type(t)), t);
    }
}

#[test]
fn eligibility_adds_vmm_reasons_and_names_hosts() {
    let mut moving = vm("moving", "hv-a");
    moving.status = "UnderMigration".into();
    let mut pt = vm("pt", "hv-a");
    pt.drives[0].pass_through = true;
    let mut ha = vm("ha", "hv-a");
    ha.is_highly_available = true;
    let inv = evaluate_scvmm(
        "vmm01:5986",
        report(vec![
            vm("web", "hv-a"),
            moving,
            vm("esx-vm", "esx-1"),
            pt,
            ha,
        ]),
    );
    let by = |n: &str| inv.vms.iter().find(|v| v.vm.record.name == n).unwrap();
    assert!(by("web").vm.eligible, "{:?}", by("web").vm.reasons);
    assert_eq!(by("web").host_address, "hv-a.corp.test");
    assert!(by("moving").vm.reasons[0].contains("UnderMigration"));
    assert!(by("esx-vm").vm.reasons[0].contains("VMwareESX"));
    assert!(by("pt").vm.reasons[0].contains("pass-through"));
    assert!(by("ha").vm.eligible && by("ha").vm.warnings[1].contains("live migration"));
    let e = find_vm(&inv, "nope").unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("SCVMM vmm01:5986"), "{e}");
    let e = find_vm(&inv, "moving").unwrap_err().to_string();
    assert!(
        e.contains("host hv-a") && e.contains("UnderMigration"),
        "{e}"
    );
    let twice = evaluate_scvmm("v", report(vec![vm("web", "hv-a"), vm("web", "hv-b")]));
    let e = find_vm(&twice, "web").unwrap_err().to_string();
    assert!(e.contains("hv-a, hv-b"), "{e}");
}

#[test]
fn routes_pin_by_address_or_name_and_pick_per_host_credentials() {
    let inv = evaluate_scvmm("v", report(vec![vm("web", "hv-a")]));
    let fp = Fingerprint([7; 32]);
    let fp2 = Fingerprint([8; 32]);
    let trust = TrustStore::parse(
        &format!("hv-a.corp.test:5986 {fp}\nhv-a {fp2}\nother {fp}\n"),
        "t",
    )
    .unwrap();
    let creds = Credentials {
        user: "vmm-admin".into(),
        password: "a".into(),
    };
    let mut access = HostAccess {
        port: 5986,
        trust,
        creds,
        per_host: vec![],
    };
    let r = route(&inv.vms[0], &access);
    assert_eq!(r.authority(), "hv-a.corp.test:5986");
    assert_eq!(r.pins, vec![fp, fp2]);
    assert_eq!(r.creds.user, "vmm-admin");
    access.per_host = parse_host_credentials("# hosts\nHV-A hvadmin p w d\n", "f").unwrap();
    assert_eq!(access.per_host[0].1.password, "p w d");
    let r = route(&inv.vms[0], &access);
    assert_eq!(
        (r.creds.user.as_str(), r.source.user.as_str()),
        ("hvadmin", "hvadmin")
    );
}

#[test]
fn host_credentials_refusals_name_the_line_not_the_password() {
    let e = parse_host_credentials("a b c\nhost-only\n", "creds.txt").unwrap_err();
    assert_eq!(e, "creds.txt: line 2: expected `HOST USER PASSWORD`");
    let e = parse_host_credentials("h u   \n", "f").unwrap_err();
    assert!(e.contains("line 1"), "{e}");
}

proptest! {
    #[test]
    fn host_credentials_round_trip(
        entries in proptest::collection::vec(
            ("[a-z][a-z0-9.-]{0,12}", "[A-Za-z\\\\@]{1,10}", "[!-~][ -~]{0,14}[!-~]"),
            0..5,
        )
    ) {
        let entries: Vec<(String, Credentials)> = entries
            .into_iter()
            .map(|(h, u, p)| (h, Credentials { user: u, password: p }))
            .collect();
        let text = encode_host_credentials(&entries);
        let back = parse_host_credentials(&text, "p").unwrap();
        prop_assert_eq!(back.len(), entries.len());
        for ((h, c), (h2, c2)) in back.iter().zip(&entries) {
            prop_assert_eq!(h, h2);
            prop_assert_eq!(&c.user, &c2.user);
            prop_assert_eq!(&c.password, &c2.password);
        }
    }
}

#[test]
fn fuzz_seed_parses_and_evaluates() {
    let text = include_str!("../../fuzz/corpus/hyperv_wsman/scvmm-inventory.json");
    let r = parse_scvmm_inventory_json(text).unwrap();
    assert_eq!(
        parse_scvmm_inventory_json(&serde_json::to_string(&r).unwrap()).unwrap(),
        r
    );
    let inv = evaluate_scvmm("seed:5986", r);
    let web = &inv.vms[0];
    assert_eq!(web.host_address, "hv-a.corp.test");
    assert!(
        web.vm.reasons.iter().any(|x| x.contains("pass-through")),
        "{:?}",
        web.vm.reasons
    );
}

#[test]
fn ledger_entries_follow_their_vm_to_its_new_host() {
    use crate::ledger::{Ledger, LedgerEntry};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ledger.json");
    let entry = |name: &str, host: &str, vm: &str| LedgerEntry {
        host: host.into(),
        vm_id: vm.into(),
        vm_name: "web".into(),
        checkpoint_name: name.into(),
        checkpoint_id: None,
        created_unix: 1,
        kept_for_retry_unix: None,
    };
    let mut l = Ledger::open(&p).unwrap();
    l.add(entry("godwit-a", "hv-a:5986", "VM-1")).unwrap();
    l.add(entry("godwit-b", "hv-b:5986", "vm-1")).unwrap();
    l.add(entry("godwit-c", "hv-a:5986", "vm-2")).unwrap();
    let moved = adopt_ledger_entries(&p, "vm-1", "hv-b:5986").unwrap();
    assert_eq!(moved, ["godwit-a"]);
    let hosts: Vec<(String, String)> = Ledger::open(&p)
        .unwrap()
        .entries()
        .iter()
        .map(|e| (e.checkpoint_name.clone(), e.host.clone()))
        .collect();
    assert_eq!(
        hosts,
        [
            ("godwit-a".to_string(), "hv-b:5986".to_string()),
            ("godwit-b".into(), "hv-b:5986".into()),
            ("godwit-c".into(), "hv-a:5986".into()),
        ]
    );
}
