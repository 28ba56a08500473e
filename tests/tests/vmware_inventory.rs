//! `godwit inventory` against vcsim (VPX and ESX models) over TLS, and the documented exit
//! codes for a wrong password (3), an unpinned or wrong certificate (4) and an unknown VM (5).

use godwit_tests::peers::godwit_bin;
use godwit_tests::vcsim;
use godwit_vmware::soap::envelope as env;
use std::process::{Command, Output};
use vcsim::{PASSWORD, USER, Vcsim, run_task, vm_by_name};

fn inventory(v: &Vcsim, password: &str, extra: &[&str]) -> Output {
    Command::new(godwit_bin())
        .arg("inventory")
        .arg("--source")
        .arg(v.source(USER))
        .args(extra)
        .env("GODWIT_PASSWORD", password)
        .output()
        .expect("run godwit")
}

fn ok_json(out: &Output) -> Vec<serde_json::Value> {
    assert!(
        out.status.success(),
        "godwit inventory failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("inventory --json output is JSON")
}

#[test]
fn vpx_inventory_lists_vms_disks_and_eligibility() {
    let v = Vcsim::start(false);
    // Real state changes the inventory must see: a foreign snapshot on VM1, CBT on VM0.
    let s = v.connect();
    let vm1 = vm_by_name(&s, "DC0_H0_VM1");
    run_task(
        &s,
        "CreateSnapshot_Task",
        env::create_snapshot(&vm1.moref, "before-upgrade", "", false, false),
    );
    let vm0 = vm_by_name(&s, "DC0_H0_VM0");
    run_task(
        &s,
        "ReconfigVM_Task",
        env::reconfig_change_tracking(&vm0.moref, true),
    );
    s.logout().unwrap();

    let fp = v.fingerprint_arg();
    let vms = ok_json(&inventory(
        &v,
        PASSWORD,
        &["--json", "--source-fingerprint", &fp],
    ));
    let names: Vec<&str> = vms.iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "DC0_C0_RP0_VM0",
            "DC0_C0_RP0_VM1",
            "DC0_H0_VM0",
            "DC0_H0_VM1"
        ]
    );
    for vm in &vms {
        assert_eq!(vm["power_state"], "poweredOn");
        assert!(
            vm["host_name"].as_str().is_some_and(|h| !h.is_empty()),
            "{vm}"
        );
        let disks = vm["disks"].as_array().unwrap();
        assert!(!disks.is_empty(), "{vm}");
        assert!(
            disks[0]["file_name"]
                .as_str()
                .unwrap()
                .starts_with("[LocalDS_0] ")
        );
        assert!(disks[0]["capacity_bytes"].as_u64().unwrap() > 0);
        assert_eq!(disks[0]["backing"]["kind"], "flat");
    }
    let by = |n: &str| vms.iter().find(|x| x["name"] == n).unwrap();
    assert_eq!(by("DC0_H0_VM0")["cbt_enabled"], true);
    assert_eq!(by("DC0_H0_VM0")["eligibility"]["eligible"], true);
    let vm1 = by("DC0_H0_VM1");
    assert_eq!(vm1["eligibility"]["eligible"], false);
    let reasons = vm1["eligibility"]["reasons"].to_string();
    assert!(
        reasons.contains("pre-existing snapshots (before-upgrade)"),
        "{reasons}"
    );

    // Text output, one VM.
    let out = inventory(
        &v,
        PASSWORD,
        &[
            "--vm",
            "DC0_H0_VM1",
            "--source-fingerprint",
            &v.fingerprint.to_lowercase(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("VirtualCenter"), "{text}");
    assert!(
        text.contains("DC0_H0_VM1") && text.contains("NOT eligible"),
        "{text}"
    );
    assert!(!text.contains("DC0_H0_VM0 "), "{text}");
}

#[test]
fn esx_inventory_with_a_trust_file() {
    let v = Vcsim::start(true);
    let trust = v.dir.path().join("trust");
    // Further hosts plus ours, pinned as uppercase hex without colons.
    std::fs::write(
        &trust,
        format!(
            "# known hosts\nesx9.example:443 SHA256:{}\n{} {}\n",
            "00".repeat(32),
            v.authority(),
            v.fingerprint.to_uppercase()
        ),
    )
    .unwrap();
    let vms = ok_json(&inventory(
        &v,
        PASSWORD,
        &["--json", "--trust-file", trust.to_str().unwrap()],
    ));
    assert_eq!(vms.len(), 2, "{vms:?}");
    for vm in &vms {
        assert!(
            vm["name"].as_str().unwrap().starts_with("ha-host_VM"),
            "{vm}"
        );
        assert!(!vm["disks"].as_array().unwrap().is_empty());
    }
    let out = inventory(&v, PASSWORD, &["--trust-file", trust.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("HostAgent"));
}

fn assert_fails(out: &Output, code: i32, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
}

#[test]
fn errors_are_clear_with_documented_exit_codes() {
    let v = Vcsim::start(false);
    let fp = v.fingerprint_arg();
    // First contact without a pin: nothing proceeds, the fingerprint and how to pin it are shown.
    let shown = format!(
        "SHA256:{}",
        v.fingerprint
            .to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":")
    );
    assert_fails(
        &inventory(&v, PASSWORD, &[]),
        4,
        &["not trusted", &shown, "--source-fingerprint"],
    );
    // A wrong pin.
    let wrong = format!("SHA256:{}", "ab".repeat(32));
    assert_fails(
        &inventory(&v, PASSWORD, &["--source-fingerprint", &wrong]),
        4,
        &["does not match", &shown],
    );
    // Wrong password.
    assert_fails(
        &inventory(&v, "nope", &["--source-fingerprint", &fp]),
        3,
        &["InvalidLogin", "Login"],
    );
    // Unknown VM.
    assert_fails(
        &inventory(
            &v,
            PASSWORD,
            &["--source-fingerprint", &fp, "--vm", "no-such-vm"],
        ),
        5,
        &["\"no-such-vm\" not found"],
    );
    // No password at all, and a malformed pin.
    let out = Command::new(godwit_bin())
        .args([
            "inventory",
            "--source",
            &v.source(USER),
            "--source-fingerprint",
            &fp,
        ])
        .env_remove("GODWIT_PASSWORD")
        .output()
        .unwrap();
    assert_fails(&out, 2, &["GODWIT_PASSWORD", "--password-file"]);
    assert_fails(
        &inventory(&v, PASSWORD, &["--source-fingerprint", "SHA256:12"]),
        2,
        &["32"],
    );
    // The password file works.
    let pw = v.dir.path().join("pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let out = Command::new(godwit_bin())
        .args([
            "inventory",
            "--source",
            &v.source(USER),
            "--source-fingerprint",
            &fp,
            "--password-file",
            pw.to_str().unwrap(),
        ])
        .env_remove("GODWIT_PASSWORD")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// vcsim ignores maxObjects, so paging is a STUB (tests/vcsim/paging.go): with pages of one
/// object the inventory must follow ContinueRetrievePropertiesEx tokens to the end and list
/// exactly what an unpaged reply lists.
#[test]
fn inventory_follows_continue_retrieve_tokens_to_the_last_page() {
    let v = Vcsim::start(false);
    let fp = v.fingerprint_arg();
    let whole = ok_json(&inventory(
        &v,
        PASSWORD,
        &["--json", "--source-fingerprint", &fp],
    ));
    assert!(whole.len() >= 4, "{whole:#?}");

    v.stub("/stub/page?n=1", Some(""));
    let paged = ok_json(&inventory(
        &v,
        PASSWORD,
        &["--json", "--source-fingerprint", &fp],
    ));
    assert_eq!(
        paged, whole,
        "a paged inventory lists exactly the unpaged one"
    );
    let stats: serde_json::Value = serde_json::from_str(&v.stub("/stub/page-stats", None)).unwrap();
    let continues = stats["continues"].as_u64().unwrap();
    assert!(
        continues >= (whole.len() as u64) - 1,
        "one ContinueRetrievePropertiesEx per further VM at least: {stats}"
    );

    // Through the session API too: every VM object, each once.
    let s = v.connect();
    let vms = s.all_of_kind("VirtualMachine", &["name"]).unwrap();
    let mut names: Vec<String> = vms
        .iter()
        .filter_map(|o| o.prop("name").map(|p| p.text.trim().to_string()))
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), vms.len(), "no VM twice");
    assert_eq!(vms.len(), whole.len());
    s.logout().unwrap();
}
