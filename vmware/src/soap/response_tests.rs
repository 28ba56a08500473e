use super::*;
use proptest::prelude::*;

const VCSIM_VM: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><RetrievePropertiesExResponse xmlns="urn:vim25"><returnval>
<objects><obj type="VirtualMachine">vm-57</obj>
<propSet><name>name</name><val xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance" XMLSchema-instance:type="xsd:string">DC0_H0_VM0</val></propSet>
<propSet><name>config.hardware.device</name><val xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance" XMLSchema-instance:type="ArrayOfVirtualDevice">
 <VirtualDevice XMLSchema-instance:type="VirtualIDEController"><key>200</key></VirtualDevice>
 <VirtualDevice XMLSchema-instance:type="VirtualDisk"><key>204</key><deviceInfo><label>disk-202-0</label></deviceInfo>
  <backing XMLSchema-instance:type="VirtualDiskFlatVer2BackingInfo"><fileName>[LocalDS_0] DC0_H0_VM0/disk1.vmdk</fileName><diskMode>persistent</diskMode><thinProvisioned>true</thinProvisioned><changeId>52 aa/3</changeId>
   <parent><fileName>[LocalDS_0] DC0_H0_VM0/base.vmdk</fileName></parent></backing>
  <controllerKey>202</controllerKey><unitNumber>0</unitNumber><capacityInKB>1024</capacityInKB></VirtualDevice>
 <VirtualDevice XMLSchema-instance:type="VirtualDisk"><key>205</key>
  <backing XMLSchema-instance:type="VirtualDiskRawDiskMappingVer1BackingInfo"><fileName>[LocalDS_0] r.vmdk</fileName><compatibilityMode>physicalMode</compatibilityMode><diskMode>independent_persistent</diskMode></backing>
  <capacityInKB>10</capacityInKB><capacityInBytes>10241</capacityInBytes></VirtualDevice>
</val></propSet>
<propSet><name>snapshot</name><val xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance" XMLSchema-instance:type="VirtualMachineSnapshotInfo"><currentSnapshot type="VirtualMachineSnapshot">snapshot-2</currentSnapshot>
 <rootSnapshotList><snapshot type="VirtualMachineSnapshot">snapshot-1</snapshot><name>before upgrade</name>
  <childSnapshotList><snapshot type="VirtualMachineSnapshot">snapshot-2</snapshot><name>godwit-1</name></childSnapshotList></rootSnapshotList></val></propSet>
<missingSet><path>config.extraConfig</path><fault><fault xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance" XMLSchema-instance:type="NoPermission"></fault><localizedMessage>denied</localizedMessage></fault></missingSet>
</objects><token>page-2</token></returnval></RetrievePropertiesExResponse></soapenv:Body></soapenv:Envelope>"#;

#[test]
fn parses_a_vcsim_style_vm_page() {
    let r = parse_retrieve_result(VCSIM_VM.as_bytes(), "RetrievePropertiesEx").unwrap();
    assert_eq!(r.token.as_deref(), Some("page-2"));
    let o = &r.objects[0];
    assert_eq!(o.missing[0].fault, "NoPermission");
    let vm = crate::inventory::vm_from_object(o).unwrap();
    assert_eq!(vm.name, "DC0_H0_VM0");
    assert_eq!(vm.disks.len(), 2);
    assert_eq!(vm.disks[0].capacity_bytes, 1024 * 1024);
    assert_eq!(vm.disks[0].change_id.as_deref(), Some("52 aa/3"));
    assert_eq!(
        vm.disks[0].parent_chain,
        vec!["[LocalDS_0] DC0_H0_VM0/base.vmdk"]
    );
    assert_eq!(vm.disks[1].capacity_bytes, 10241);
    assert!(vm.disks[1].independent());
    assert_eq!(vm.snapshots.len(), 2);
    let el = crate::inventory::eligibility(&vm);
    assert!(!el.eligible);
    let all = el.reasons.join("\n");
    for want in [
        "raw device mapping",
        "independent",
        "before upgrade",
        "NoPermission",
    ] {
        assert!(all.contains(want), "{want} not in {all}");
    }
    assert!(!all.contains("godwit-1"));
}

#[test]
fn faults_are_typed_by_detail_type() {
    let body = encode_fault(
        "InvalidLogin",
        "Cannot complete login due to an incorrect user name or password.",
    );
    match parse_service_content(body.as_bytes()) {
        Err(ReplyError::Fault { fault, message }) => {
            assert_eq!(fault, "InvalidLogin");
            assert!(message.contains("incorrect"));
        }
        other => panic!("{other:?}"),
    }
    // No detail: the faultcode is used.
    let bare = r#"<Envelope><Body><Fault><faultcode>ServerFaultCode</faultcode><faultstring>x</faultstring></Fault></Body></Envelope>"#;
    assert_eq!(
        parse_empty_reply(bare.as_bytes(), "Logout"),
        Err(ReplyError::Fault {
            fault: "ServerFaultCode".into(),
            message: "x".into()
        })
    );
}

#[test]
fn malformed_replies_say_what_is_wrong() {
    let cases: &[(&str, &str)] = &[
        ("", "no root"),
        ("<x/>", "not <Envelope>"),
        ("<Envelope/>", "no <Body>"),
        (
            "<Envelope><Body><Other/></Body></Envelope>",
            "no <RetrieveServiceContentResponse>",
        ),
        (
            "<Envelope><Body><RetrieveServiceContentResponse><returnval><about><apiVersion>6.5</apiVersion></about></returnval></RetrieveServiceContentResponse></Body></Envelope>",
            "rootFolder",
        ),
    ];
    for (body, want) in cases {
        let e = parse_service_content(body.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{body}: {e}");
    }
    let big = vec![b' '; usize::try_from(MAX_REPLY_BYTES).unwrap() + 1];
    assert!(
        parse_reply(&big, "X")
            .unwrap_err()
            .to_string()
            .contains("limit")
    );
    // An area past the answer's range is clamped into it and counted; one wholly outside is
    // dropped; overlapping areas are refused.
    let over = encode_disk_change_info(&DiskChangeInfo {
        start_offset: 100,
        length: 10,
        areas: vec![(95, 7), (105, 10), (200, 5)],
        clamped: 0,
    });
    let got = parse_disk_change_info(over.as_bytes()).unwrap();
    assert_eq!(got.areas, vec![(100, 2), (105, 5)]);
    assert_eq!(got.clamped, 3);
    let overlap = encode_disk_change_info(&DiskChangeInfo {
        start_offset: 0,
        length: 10,
        areas: vec![(0, 5), (3, 4)],
        clamped: 0,
    });
    assert!(
        parse_disk_change_info(overlap.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("overlaps")
    );
    let bad_area = encode_disk_change_info(&DiskChangeInfo {
        start_offset: 0,
        length: 10,
        areas: vec![(5, 10)],
        clamped: 0,
    });
    let neg = bad_area.replace("<start>5</start>", "<start>-5</start>");
    assert!(
        parse_disk_change_info(neg.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("not a non-negative")
    );
}

#[test]
fn login_keys_and_privilege_answers() {
    let login = r#"<Envelope><Body><LoginResponse><returnval><key>52c7-ab</key><userName>admin</userName></returnval></LoginResponse></Body></Envelope>"#;
    assert_eq!(parse_login(login.as_bytes()).unwrap(), "52c7-ab");
    let nokey = login.replace("<key>52c7-ab</key>", "");
    assert!(
        parse_login(nokey.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("key")
    );
    let privs = r#"<Envelope><Body><HasPrivilegeOnEntityResponse><returnval>true</returnval><returnval>false</returnval></HasPrivilegeOnEntityResponse></Body></Envelope>"#;
    assert_eq!(
        parse_bool_list(privs.as_bytes(), "HasPrivilegeOnEntity", 2).unwrap(),
        vec![true, false]
    );
    assert!(parse_bool_list(privs.as_bytes(), "HasPrivilegeOnEntity", 3).is_err());
    let odd = privs.replace(">false<", ">maybe<");
    assert!(parse_bool_list(odd.as_bytes(), "HasPrivilegeOnEntity", 2).is_err());
}

#[test]
fn task_info_states() {
    let ok = xml::parse(br#"<val><state>success</state><result type="VirtualMachineSnapshot">snapshot-3</result></val>"#).unwrap();
    let t = parse_task_info(&ok).unwrap();
    assert_eq!(t.result.unwrap().value, "snapshot-3");
    let err = xml::parse(br#"<val xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><state>error</state><error><fault xsi:type="InvalidPowerState"/><localizedMessage>off</localizedMessage></error></val>"#).unwrap();
    let t = parse_task_info(&err).unwrap();
    assert_eq!(t.error_fault.as_deref(), Some("InvalidPowerState"));
    assert!(parse_task_info(&xml::parse(b"<val><state>odd</state></val>").unwrap()).is_err());
}

proptest! {
    #[test]
    fn disk_change_info_round_trips(start in 0u64..1 << 40, gaps in proptest::collection::vec((0u64..1 << 20, 1u64..1 << 20), 0..20)) {
        let mut areas = Vec::new();
        let mut pos = start;
        for (gap, len) in gaps {
            pos += gap;
            areas.push((pos, len));
            pos += len;
        }
        let info = DiskChangeInfo { start_offset: start, length: pos - start + 1, areas, clamped: 0 };
        prop_assert_eq!(parse_disk_change_info(encode_disk_change_info(&info).as_bytes()).unwrap(), info);
    }

    #[test]
    fn faults_round_trip(fault in "[A-Za-z]{1,20}", message in "\\PC{0,40}") {
        let parsed = parse_empty_reply(encode_fault(&fault, &message).as_bytes(), "Logout");
        prop_assert_eq!(parsed, Err(ReplyError::Fault { fault, message: message.trim().to_string() }));
    }

    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        fuzz_all_parsers(&bytes);
    }

    #[test]
    fn parsers_never_panic_on_mutated_replies(cut in 0usize..3000, byte in any::<u8>()) {
        let mut b = VCSIM_VM.as_bytes().to_vec();
        let i = cut % b.len();
        b[i] = byte;
        fuzz_all_parsers(&b);
        fuzz_all_parsers(&b[..i]);
    }
}
