use super::*;

#[test]
fn the_issue_s_datastore_error_becomes_one_readable_line() {
    let raw = "[LocalDS_0] DC0_H0_VM1/disk1.vmdk: open: 127.0.0.1:8989: [LocalDS_0] DC0_H0_VM1/disk1.vmdk not found";
    let e = classify(raw);
    assert_eq!(e.code, "vsphere.file_not_found");
    assert_eq!(
        e.message,
        "The disk file [LocalDS_0] DC0_H0_VM1/disk1.vmdk was not found on its datastore."
    );
    assert!(!e.message.contains("127.0.0.1"));
    assert!(!e.remediation.is_empty());
    assert_eq!(e.detail.as_deref(), Some(raw));
}

#[test]
fn readable_drops_repeated_prefixes_addresses_and_flags() {
    assert_eq!(
        readable("[ds] a.vmdk: open: 10.0.0.5:902: [ds] a.vmdk is locked"),
        "Open: [ds] a.vmdk is locked"
    );
    assert_eq!(
        readable(
            "vc.example: the server's certificate is not trusted yet. If that is it, run again with --source-fingerprint X"
        ),
        "Vc.example: the server's certificate is not trusted yet"
    );
    assert_eq!(readable(""), "The run failed");
    assert_eq!(readable("first line\nsecond"), "First line");
}

#[test]
fn real_failures_map_to_their_codes() {
    let cases = [
        (
            "the certificate of source src-1 (vc:443) is not the approved one; if it was replaced on purpose, remove the source and add it again to approve the new certificate (x)",
            "source.certificate_changed",
        ),
        (
            "staging 127.0.0.1:1500: the server's certificate SHA256:AA does not match the pinned fingerprint SHA256:BB; refusing to connect",
            "staging.certificate_mismatch",
        ),
        (
            "source vc.example rejected the stored user name or password: vc: Login: SOAP fault InvalidLogin: Cannot complete login",
            "source.login_refused",
        ),
        (
            "vc: RetrieveProperties: SOAP fault NotAuthenticated: The session is not authenticated.",
            "vsphere.session_lost",
        ),
        (
            "vc: VM web refused: disk 0 is encrypted",
            "vsphere.encrypted_disk",
        ),
        (
            "disk 1 (x.vmdk): capacity 10 GiB disagrees with the descriptor's 8 GiB",
            "source.capacity_mismatch",
        ),
        (
            "hv1: Get-VM: WinRM fault w:AccessDenied: Access is denied.",
            "hyperv.access_denied",
        ),
        (
            "hv1: Create shell: WinRM fault w:QuotaLimit: The WS-Management service cannot process the request. This user has exceeded the maximum number of concurrent shells allowed for this user.",
            "hyperv.winrm_quota",
        ),
        (
            "hv1: the host could not reach the push URL https://10.0.0.9:8443: timed out",
            "hyperv.push_url_unreachable",
        ),
        (
            "staging 10.0.0.7:1500: connection: Connection refused (os error 111)",
            "staging.unreachable",
        ),
        (
            "store put: write chunk: No space left on device (os error 28)",
            "staging.out_of_space",
        ),
        ("no staging target is configured", "staging.not_configured"),
        (
            "127.0.0.1:36779: VM \"DC0_H0_VM1\" (vm-60) refused: disk 0 (disk-202-0, [LocalDS_0] DC0_H0_VM1/disk1.vmdk): its files hold a disk of 0 bytes but vCenter's capacityInBytes is 1048576 bytes; refusing to pad or truncate",
            "source.capacity_mismatch",
        ),
        ("source src-9 no longer exists", "job.source_removed"),
        ("vc: VM \"web\" not found", "source.not_found"),
        (
            "disk 0 (a.vmdk): the source disk changed while it was read",
            "source.disk_changed",
        ),
        ("something odd: EOF", "internal.unexpected"),
    ];
    for (raw, code) in cases {
        let e = classify(raw);
        assert_eq!(e.code, code, "{raw}");
        assert!(!e.message.is_empty() && !e.remediation.is_empty(), "{raw}");
        assert!(!e.message.contains("--"), "{raw}: {}", e.message);
        assert!(!e.remediation.contains("--"), "{raw}");
    }
}

#[test]
fn no_message_or_remediation_names_a_command_line_flag() {
    for raw in [
        "h: the server's certificate is not trusted yet; its fingerprint is F. If that is the certificate you expect, run again with --source-fingerprint F",
        "VM \"a\" runs on Hyper-V host h (h:5986), whose certificate is not pinned; its fingerprint is F. If that is the host's certificate, add the line `h F` to the --trust-file",
    ] {
        let e = classify(raw);
        assert!(
            !e.message.contains("--") && !e.remediation.contains("--"),
            "{e:?}"
        );
    }
}

proptest::proptest! {
    /// Whatever the text, the result is one non-empty line with a code.
    #[test]
    fn classify_is_total(raw in ".{0,200}") {
        let e = classify(&raw);
        proptest::prop_assert!(!e.code.is_empty());
        proptest::prop_assert!(!e.message.is_empty());
        proptest::prop_assert!(!e.message.contains('\n'));
    }
}

// --- issue 18, typed export errors (wt-errors) ---

#[test]
fn export_failures_map_to_their_codes() {
    let cases = [
        (
            "/data/exports/two.raw: the data partition is full for this export: it needs up to 12 MiB and 10 MiB is free, 8 MiB of which stays for the service's own state; delete exports to free space, or enlarge the appliance's disk",
            "export.target_full",
        ),
        (
            "/data/exports/a.vmdk: write: No space left on device (os error 28)",
            "export.target_full",
        ),
        (
            "/data/exports/a.vmdk: write: Read-only file system (os error 30)",
            "export.target_unwritable",
        ),
        (
            "/data/exports/a.vmdk: open: Permission denied (os error 13)",
            "export.target_unwritable",
        ),
        (
            "S3 put part 1 of s3://b/k: AccessDenied: Access Denied",
            "export.target_unwritable",
        ),
        (
            "staging://127.0.0.1:1500: no sync of DC0_H0_VM0 disk 3: not found",
            "export.sync_not_found",
        ),
        (
            "export of sync 2026-12-07T22-00-00Z: integrity check failed: raw content hashes to aa, but replication recorded bb",
            "export.checksum_mismatch",
        ),
        ("/data/exports/a.vmdk: cancelled", "export.cancelled"),
        (
            "staging server 127.0.0.1:1500: 127.0.0.1:1500: connection: Connection refused (os error 111)",
            "staging.unreachable",
        ),
    ];
    for (raw, code) in cases {
        let e = classify_export(raw);
        assert_eq!(e.code, code, "{raw}");
        assert!(!e.message.is_empty() && !e.remediation.is_empty(), "{raw}");
        assert!(!e.message.contains("--") && !e.remediation.contains("--"));
        assert!(!e.message.contains("os error"), "{}", e.message);
        assert_eq!(e.detail.as_deref(), Some(raw));
    }
}

#[test]
fn an_untyped_export_record_is_typed_and_a_typed_one_kept() {
    let old = JobError {
        code: String::new(),
        message: "x: no sync of vm disk 0: not found".into(),
        remediation: String::new(),
        detail: Some("x: no sync of vm disk 0: not found".into()),
    };
    assert_eq!(typed_export(old).code, "export.sync_not_found");
    let kept = export_cancelled("by the operator");
    assert_eq!(typed_export(kept.clone()), kept);
}

proptest::proptest! {
    #[test]
    fn classify_export_is_total(raw in ".{0,200}") {
        let e = classify_export(&raw);
        proptest::prop_assert!(!e.code.is_empty());
        proptest::prop_assert!(!e.message.is_empty());
        proptest::prop_assert!(!e.message.contains('\n'));
    }
}
// --- end typed export errors ---

// --- issue 18, the command line's remedies (wt-errors) ---

#[test]
fn command_line_failures_map_to_codes_with_remedies_naming_options() {
    let cases = [
        (
            "127.0.0.1:9: connection: staging server: TCP connect: 127.0.0.1:9: Connection refused (os error 111)",
            "staging.unreachable",
            "The staging server 127.0.0.1:9 could not be reached.",
        ),
        (
            "staging 10.0.0.5:1500: the server's certificate SHA256:AA does not match the pinned fingerprint SHA256:BB; refusing to connect",
            "staging.certificate_mismatch",
            "The staging server presented a certificate other than the one given.",
        ),
        (
            "/tmp/x.vmdk: open: No such file or directory (os error 2)",
            "input.not_found",
            "/tmp/x.vmdk does not exist.",
        ),
        (
            "/tmp/n.txt: not a disk image: no VMDK, VHD or VHDX header; give -f raw to convert it as a raw disk anyway",
            "input.not_a_disk",
            "The input file is not a disk image this tool reads.",
        ),
        (
            "/srv/store: no sync of web disk 0: not found",
            "export.sync_not_found",
            "The staging target holds no replica of this VM's disk.",
        ),
        (
            "fingerprint \"67::1\": expected SHA256: followed by 64 hex digits (colons allowed)",
            "input.bad_fingerprint",
            "The fingerprint given is not a SHA-256 certificate fingerprint.",
        ),
        (
            "/srv/x: no store here (expected /srv/x/store)",
            "staging.store_not_found",
            "There is no staging store where the command looked.",
        ),
    ];
    for (raw, code, message) in cases {
        let e = classify_cli(raw);
        assert_eq!(e.code, code, "{raw}");
        assert_eq!(e.message, message, "{raw}");
        assert!(!e.remediation.is_empty());
        assert_eq!(e.detail.as_deref(), Some(raw));
    }
}

proptest::proptest! {
    #[test]
    fn classify_cli_is_total(raw in ".{0,200}") {
        let e = classify_cli(&raw);
        proptest::prop_assert!(!e.code.is_empty());
        proptest::prop_assert!(!e.message.is_empty());
        proptest::prop_assert!(!e.message.contains('\n'));
    }
}
// --- end the command line's remedies ---
