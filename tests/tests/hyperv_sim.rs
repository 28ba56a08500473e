//! The Hyper-V simulator proven by pywinrm, and Godwit's WinRM client and inventory against it.

use godwit_hyperv::inventory::Source;
use godwit_hyperv::{Credentials, Error, Fingerprint, inventory};
use godwit_hyperv_sim::model::SimModel;
use godwit_hyperv_sim::{RunningSim, SimConfig, start};
use std::path::Path;
use std::process::Command;

const PASSWORD: &str = "S3cret-sim";

fn qemu_img(args: &[&str]) {
    let st = Command::new("qemu-img")
        .args(args)
        .status()
        .expect("qemu-img runs");
    assert!(st.success(), "qemu-img {args:?}");
}

fn model_json(receive_timeouts: u32, command_fault: Option<u32>) -> String {
    let fault = command_fault.map_or("null".to_string(), |c| c.to_string());
    format!(
        r#"{{"vms":[
 {{"id":"6c1f2a8e-0000-4000-8000-000000000002","name":"web-gen2","generation":2,"state":"Running","processor_count":4,
   "memory_startup":4294967296,"version":"9.0","checkpoint_type":"Production",
   "disks":[{{"controller_type":"SCSI","controller_number":0,"controller_location":0,"path":"web/web.vhdx"}}]}},
 {{"id":"6c1f2a8e-0000-4000-8000-000000000001","name":"db-gen1","generation":1,"state":"Off","processor_count":2,
   "memory_startup":2147483648,"version":"5.0","checkpoint_type":"Standard",
   "disks":[{{"controller_type":"IDE","controller_number":0,"controller_location":0,"path":"db/db.vhd"}},
            {{"controller_type":"IDE","controller_number":0,"controller_location":1,"disk_number":3}}]}}],
 "auth":["basic","ntlm"],
 "faults":{{"receive_timeouts":{receive_timeouts},"command_fault":{fault}}}}}"#
    )
}

fn sim_in(dir: &Path, receive_timeouts: u32, command_fault: Option<u32>) -> RunningSim {
    std::fs::create_dir_all(dir.join("web")).unwrap();
    std::fs::create_dir_all(dir.join("db")).unwrap();
    let vhdx = dir.join("web/web.vhdx");
    let vhd = dir.join("db/db.vhd");
    if !vhdx.exists() {
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "vhdx",
            "-o",
            "subformat=dynamic",
            vhdx.to_str().unwrap(),
            "64M",
        ]);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "vpc",
            "-o",
            "subformat=dynamic",
            vhd.to_str().unwrap(),
            "32M",
        ]);
    }
    std::fs::write(
        dir.join("vms.json"),
        model_json(receive_timeouts, command_fault),
    )
    .unwrap();
    let model = SimModel::load(dir).unwrap();
    start(
        SimConfig {
            user: "Administrator".into(),
            password: PASSWORD.into(),
            model,
            data_dir: dir.to_path_buf(),
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap()
}

fn source(sim: &RunningSim) -> Source {
    Source::parse(&format!(
        "hyperv://Administrator@127.0.0.1:{}",
        sim.addr.port()
    ))
    .unwrap()
}

fn creds(pw: &str) -> Credentials {
    Credentials {
        user: "Administrator".into(),
        password: pw.into(),
    }
}

#[test]
fn pywinrm_accepts_the_simulator() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim_in(dir.path(), 1, None);
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &sim.cert_pem).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/hyperv/pywinrm_check.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(format!("https://127.0.0.1:{}/wsman", sim.addr.port()))
        .arg(&ca)
        .env("GODWIT_SIM_PASSWORD", PASSWORD)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "pywinrm: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["hello"]["stdout"], "hello from sim\r\n");
    assert_eq!(v["hello"]["rc"], 0);
    assert_eq!(v["err"]["rc"], 1);
    assert!(
        v["err"]["stderr"].as_str().unwrap().starts_with("boom\n"),
        "{v}"
    );
    assert_eq!(v["exit"]["rc"], 3);
    assert_eq!(v["cmd"]["stdout"], "hi\r\n");
    assert_eq!(v["badpw"], "InvalidCredentialsError");
}

#[test]
fn inventory_lists_vms_disks_and_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim_in(dir.path(), 2, None);
    let inv = inventory(&source(&sim), &creds(PASSWORD), Some(sim.fingerprint)).unwrap();
    assert_eq!(inv.vms.len(), 2);
    let web = &inv.vms[0];
    assert_eq!(web.record.name, "web-gen2");
    assert_eq!(web.record.generation, 2);
    let d = &web.record.disks[0];
    assert_eq!(d.vhd_format.as_deref(), Some("VHDX"));
    assert_eq!(d.vhd_type.as_deref(), Some("Dynamic"));
    assert_eq!(d.size.unwrap().0, 64 << 20);
    assert_eq!(d.path.as_deref(), Some("C:\\VMs\\web\\web.vhdx"));
    assert!(web.eligible, "{:?}", web.reasons);
    let db = &inv.vms[1];
    assert_eq!(db.record.disks[0].vhd_format.as_deref(), Some("VHD"));
    // qemu-img rounds VHD sizes to a CHS geometry: compare with what it reports.
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(dir.path().join("db/db.vhd"))
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(
        db.record.disks[0].size.unwrap().0,
        info["virtual-size"].as_u64().unwrap()
    );
    assert_eq!(db.record.disks[0].vhd_type.as_deref(), Some("Dynamic"));
    assert!(!db.eligible);
    assert!(
        db.reasons[0].contains("disk 1 (IDE 0:1) is a pass-through"),
        "{:?}",
        db.reasons
    );
}

#[test]
fn wrong_password_and_fingerprints_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim_in(dir.path(), 0, None);
    let e = inventory(&source(&sim), &creds("nope"), Some(sim.fingerprint)).unwrap_err();
    assert!(matches!(e, Error::AuthFailed { .. }), "{e}");
    assert!(e.to_string().contains("refused the credentials"), "{e}");
    let wrong = Fingerprint::of_der(b"another certificate");
    let e = inventory(&source(&sim), &creds(PASSWORD), Some(wrong)).unwrap_err();
    assert!(matches!(e, Error::PinMismatch { .. }), "{e}");
    assert!(e.to_string().contains(&sim.fingerprint.to_string()), "{e}");
    let e = inventory(&source(&sim), &creds(PASSWORD), None).unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("--source-fingerprint {}", sim.fingerprint)),
        "{e}"
    );
}

#[test]
fn winrm_fault_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim_in(dir.path(), 0, Some(2_150_858_770));
    let e = inventory(&source(&sim), &creds(PASSWORD), Some(sim.fingerprint)).unwrap_err();
    let s = e.to_string();
    assert!(matches!(e, Error::Fault { .. }), "{s}");
    assert!(
        s.contains("WSMan 0x80338012") && s.contains("injected fault"),
        "{s}"
    );
}

#[test]
fn long_scripts_in_pieces_clixml_errors_and_malformed_envelopes() {
    use godwit_hyperv::client::WinRm;
    use godwit_hyperv::transport::{HttpsTransport, Transport};
    let dir = tempfile::tempdir().unwrap();
    let sim = sim_in(dir.path(), 1, None);
    let t = HttpsTransport::new(
        "127.0.0.1",
        sim.addr.port(),
        creds(PASSWORD),
        vec![sim.fingerprint],
        std::time::Duration::from_secs(30),
    )
    .unwrap();
    let client = WinRm::new(t);
    let shell = client.open_shell().unwrap();
    // 300 KB of output: longer than one command line, more than one Receive envelope.
    let text: String = (0..30_000)
        .map(|i| char::from(b'a' + u8::try_from(i % 26).unwrap()))
        .collect();
    let o = shell.run_ps(&format!("Write-Output '{text}'")).unwrap();
    assert_eq!(o.exit_code, 0);
    assert_eq!(o.stdout, format!("{text}\r\n").into_bytes());
    let e = shell
        .run_ps_json("fails.ps1", "Write-Error 'VM web not found'")
        .unwrap_err();
    let s = e.to_string();
    assert!(
        s.contains("fails.ps1 failed with exit code 1: VM web not found"),
        "{s}"
    );
    // A cmdlet called with a parameter it does not have fails at binding, worded as
    // PowerShell does (Get-VMSnapshot has no -VMId: hyperv-sim/src/cmdlets.rs cites its page),
    // also inside a script the simulator knows: checkpoint-create.ps1 with the old mistake.
    let e = shell
        .run_ps_json("snap.ps1", "Get-VMSnapshot -VMId 'a' -Name 'godwit-1'")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "Get-VMSnapshot : A parameter cannot be found that matches parameter name 'VMId'."
        ),
        "{e}"
    );
    let edited = godwit_hyperv::checkpoint::CREATE_SCRIPT.replace(
        "Get-VMSnapshot -VM $vm -Name",
        "Get-VMSnapshot -VMId $vm.Id -Name",
    );
    assert_ne!(edited, godwit_hyperv::checkpoint::CREATE_SCRIPT);
    let args = serde_json::json!({"VmId": "x", "Name": "godwit-1", "Resume": "y"});
    let e = shell
        .run_ps_json(
            "checkpoint-create.ps1",
            &godwit_hyperv::powershell::with_args(&edited, &args),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("matches parameter name 'VMId'"), "{e}");
    // PowerShell 7's additions do not bind on 5.1 either.
    let e = shell
        .run_ps_json("p.ps1", "1..2 | ForEach-Object -Parallel { $_ }")
        .unwrap_err()
        .to_string();
    assert!(e.contains("parameter name 'Parallel'"), "{e}");
    shell.close().unwrap();
    let r = client
        .transport()
        .post("malformed", "<Envelope><Header>".into())
        .unwrap();
    assert_eq!(r.status, 500);
    let reply = godwit_hyperv::wsman::parse_reply(&r.body).unwrap();
    match reply.body {
        godwit_hyperv::wsman::ReplyBody::Fault(f) => {
            assert!(f.message.contains("malformed envelope"), "{f:?}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn godwit_inventory_cli_lists_the_simulated_host() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim_in(dir.path(), 0, None);
    let out = godwit_tests::peers::run_ok(
        Command::new(godwit_tests::peers::godwit_bin())
            .env("GODWIT_PASSWORD", PASSWORD)
            .args(["inventory", "--json", "--source"])
            .arg(format!(
                "hyperv://Administrator@127.0.0.1:{}",
                sim.addr.port()
            ))
            .arg("--source-fingerprint")
            .arg(sim.fingerprint.to_string()),
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| vm["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web-gen2", "db-gen1"], "{out}");
    assert_eq!(v[0]["eligible"], true);
    assert_eq!(v[1]["eligible"], false);
}

/// A host as Windows' WinRM service is by default: Negotiate (NTLM) only, `Auth/Basic = false`
/// (the simulator's default too: vms.json names no `auth`).
fn ntlm_only_sim(dir: &Path) -> RunningSim {
    drop(sim_in(dir, 0, None));
    let json = model_json(0, None).replacen("\"auth\":[\"basic\",\"ntlm\"],", "", 1);
    assert!(!json.contains("\"auth\""), "{json}");
    std::fs::write(dir.join("vms.json"), json).unwrap();
    start(
        SimConfig {
            user: "Administrator".into(),
            password: PASSWORD.into(),
            model: SimModel::load(dir).unwrap(),
            data_dir: dir.to_path_buf(),
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap()
}

fn pywinrm_check(sim: &RunningSim, ca: &Path, transport: &str) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/hyperv/pywinrm_check.py"
        ))
        .arg(format!("https://127.0.0.1:{}/wsman", sim.addr.port()))
        .arg(ca)
        .arg(transport)
        .env("GODWIT_SIM_PASSWORD", PASSWORD)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "pywinrm ({transport}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn ntlm_only_host_pywinrm_and_godwit_authenticate_with_ntlm() {
    let dir = tempfile::tempdir().unwrap();
    let sim = ntlm_only_sim(dir.path());
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &sim.cert_pem).unwrap();
    // Basic is refused (Windows' default), whatever the password: pywinrm's Basic transport
    // gets 401.
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/hyperv/pywinrm_check.py"
        ))
        .arg(format!("https://127.0.0.1:{}/wsman", sim.addr.port()))
        .arg(&ca)
        .arg("basic")
        .env("GODWIT_SIM_PASSWORD", PASSWORD)
        .output()
        .expect("python3 runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("InvalidCredentialsError"),
        "Basic accepted by a default host: {err}"
    );
    // pywinrm's NTLM transport (requests-ntlm / pyspnego) against the simulator's NTLM.
    let v = pywinrm_check(&sim, &ca, "ntlm");
    assert_eq!(v["hello"]["stdout"], "hello from sim\r\n", "{v}");
    assert_eq!(v["exit"]["rc"], 3, "{v}");
    assert_eq!(v["badpw"], "InvalidCredentialsError", "{v}");
    // Godwit sees the host offer only Negotiate and authenticates with NTLM.
    let inv = inventory(&source(&sim), &creds(PASSWORD), Some(sim.fingerprint)).unwrap();
    assert_eq!(inv.vms.len(), 2);
    let e = inventory(&source(&sim), &creds("nope"), Some(sim.fingerprint)).unwrap_err();
    assert!(matches!(e, Error::AuthFailed { .. }), "{e}");
    assert_eq!(sim.open_shells(), 0);
}

/// One VM whose VHD is gone and one whose only disk is pass-through disk 0 (a `DiskNumber` of 0,
/// which a truthiness test would miss) do not fail the host's inventory: `godwit inventory`
/// lists every VM, the good one eligible, each of the others with its disk's own reason.
#[test]
fn a_missing_vhd_or_pass_through_disk_0_is_that_vms_reason_not_the_hosts_failure() {
    let dir = tempfile::tempdir().unwrap();
    let _ = sim_in(dir.path(), 0, None); // the disk files
    std::fs::write(
        dir.path().join("vms.json"),
        r#"{"vms":[
 {"id":"6c1f2a8e-0000-4000-8000-000000000002","name":"web-gen2","generation":2,"state":"Running","processor_count":4,
   "memory_startup":4294967296,"version":"9.0","checkpoint_type":"Production",
   "disks":[{"controller_type":"SCSI","controller_number":0,"controller_location":0,"path":"web/web.vhdx"}]},
 {"id":"6c1f2a8e-0000-4000-8000-000000000003","name":"lost-vhd","generation":2,"state":"Running","processor_count":2,
   "memory_startup":2147483648,"version":"9.0","checkpoint_type":"Production",
   "disks":[{"controller_type":"SCSI","controller_number":0,"controller_location":0,"path":"lost/lost.vhdx"}]},
 {"id":"6c1f2a8e-0000-4000-8000-000000000004","name":"passthru-0","generation":2,"state":"Running","processor_count":2,
   "memory_startup":2147483648,"version":"9.0","checkpoint_type":"Production",
   "disks":[{"controller_type":"SCSI","controller_number":0,"controller_location":0,"disk_number":0}]}]}"#,
    )
    .unwrap();
    let sim = start(
        SimConfig {
            user: "Administrator".into(),
            password: PASSWORD.into(),
            model: SimModel::load(dir.path()).unwrap(),
            data_dir: dir.path().to_path_buf(),
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let out = godwit_tests::peers::run_ok(
        Command::new(godwit_tests::peers::godwit_bin())
            .env("GODWIT_PASSWORD", PASSWORD)
            .args(["inventory", "--json", "--source"])
            .arg(format!(
                "hyperv://Administrator@127.0.0.1:{}",
                sim.addr.port()
            ))
            .arg("--source-fingerprint")
            .arg(sim.fingerprint.to_string()),
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let vms = v.as_array().unwrap();
    let by = |n: &str| {
        vms.iter()
            .find(|vm| vm["Name"] == n)
            .unwrap_or_else(|| panic!("{n} not listed: {out}"))
    };
    assert_eq!(vms.len(), 3, "{out}");
    assert_eq!(by("web-gen2")["eligible"], true, "{out}");
    let lost = by("lost-vhd");
    assert_eq!(lost["eligible"], false, "{lost}");
    let text = lost.to_string();
    assert!(
        text.contains("Get-VHD") && text.contains("C:\\\\VMs\\\\lost\\\\lost.vhdx"),
        "the missing VHD's own error names it: {lost}"
    );
    let pt = by("passthru-0");
    assert_eq!(pt["eligible"], false, "{pt}");
    assert!(pt.to_string().contains("pass-through"), "{pt}");
}
