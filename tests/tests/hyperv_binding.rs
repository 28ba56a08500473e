//! The simulator binds every cmdlet call the way Windows PowerShell 5.1 does, before anything
//! runs (hyperv-sim/src/binding.rs, the parameter sets transcribed from each cmdlet's Learn
//! page): a combination of parameters from two parameter sets, a missing mandatory parameter,
//! a positional argument too many and a value parameter without a value are refused over WinRM
//! with PowerShell's wording, also inside a script the simulator recognises; and every call of
//! every script Godwit sends binds to exactly one set.

use godwit_hyperv::Credentials;
use godwit_hyperv::client::WinRm;
use godwit_hyperv::transport::HttpsTransport;
use godwit_tests::hyperv::{PASSWORD, start_sim_json};

#[test]
fn calls_windows_would_refuse_to_bind_are_refused_by_the_simulator() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim_json(dir.path(), r#"{"vms":[]}"#);
    let t = HttpsTransport::new(
        "127.0.0.1",
        sim.addr.port(),
        Credentials {
            user: "Administrator".into(),
            password: PASSWORD.into(),
        },
        vec![sim.fingerprint],
        std::time::Duration::from_secs(30),
    )
    .unwrap();
    let client = WinRm::new(t);
    let shell = client.open_shell().unwrap();
    let refused = |name: &str, script: &str| -> String {
        shell
            .run_ps_json(name, script)
            .expect_err(script)
            .to_string()
    };
    // -VM is in the VMObject set, -Id in the Id set: no set has both.
    let e = refused("a.ps1", "$s = Get-VMSnapshot -VM $vm -Id $id");
    assert!(
        e.contains("Get-VMSnapshot : Parameter set cannot be resolved using the specified named parameters."),
        "{e}"
    );
    assert!(e.contains("AmbiguousParameterSet"), "{e}");
    // -Name alone: the default set (VMName) needs -VMName, and WinRM cannot prompt for it.
    let e = refused("b.ps1", "$s = Get-VMSnapshot -Name 'godwit-1'");
    assert!(
        e.contains(
            "Cannot process command because of one or more missing mandatory parameters: VMName."
        ),
        "{e}"
    );
    assert!(e.contains("MissingMandatoryParameter"), "{e}");
    // Positional: Start-Sleep takes one.
    let e = refused("c.ps1", "Start-Sleep 1 2");
    assert!(
        e.contains("A positional parameter cannot be found that accepts argument '2'."),
        "{e}"
    );
    // -NewName takes a value; -Passthru (a switch) does not.
    let e = refused(
        "d.ps1",
        "Rename-VMSnapshot -VMSnapshot $s -Passthru -NewName",
    );
    assert!(
        e.contains("Missing an argument for parameter 'NewName'."),
        "{e}"
    );
    // Inside a script the simulator recognises: checkpoint-create.ps1 with the rename's
    // -VMSnapshot dropped (Rename-VMSnapshot's default set then needs -VMName and -Name).
    let script = godwit_hyperv::checkpoint::CREATE_SCRIPT;
    let edited = script.replace(
        "Rename-VMSnapshot -VMSnapshot $snap -NewName",
        "Rename-VMSnapshot -NewName",
    );
    assert_ne!(edited, script);
    let args = serde_json::json!({"VmId": "x", "Name": "godwit-1", "Resume": "y"});
    let e = refused(
        "checkpoint-create.ps1",
        &godwit_hyperv::powershell::with_args(&edited, &args),
    );
    assert!(
        e.contains("Rename-VMSnapshot : Cannot process command because of one or more missing mandatory parameters:"),
        "{e}"
    );
    assert!(e.contains(" VMName") && e.contains(" Name"), "{e}");
    shell.close().unwrap();
}

/// Every call of every script, as sent, binds to one parameter set (the check the simulator
/// runs on each script); and the sets chosen for the calls that matter are the ones meant.
#[test]
fn every_call_of_every_script_binds_to_one_set() {
    use godwit_hyperv_sim::binding::bind_call;
    use godwit_hyperv_sim::cmdlets::find;
    use godwit_hyperv_sim::pwsh::{calls, parse};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../hyperv/scripts");
    let mut chosen = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap();
        let sent = godwit_hyperv::powershell::with_args(&text, &serde_json::json!({}));
        let tree = parse(&sent).unwrap();
        let (cs, functions) = calls(&tree, &sent);
        for c in cs {
            if functions.iter().any(|f| f.eq_ignore_ascii_case(&c.name)) {
                continue;
            }
            let cmdlet = find(&c.name).unwrap_or_else(|| panic!("{}: no table", c.name));
            let b = bind_call(cmdlet, &c.elements, c.piped)
                .unwrap_or_else(|err| panic!("{}: line {}: {err}", e.path().display(), c.line));
            chosen.push((cmdlet.name, b.set));
        }
    }
    for want in [
        ("Get-VMSnapshot", "VMObject"),
        ("Get-VMSnapshot", "Id"),
        ("Rename-VMSnapshot", "SnapshotObject"),
        ("Remove-VMSnapshot", "SnapshotObject"),
        ("Get-VM", "Id"),
        ("Get-VHD", "Path"),
        ("Get-VMHardDiskDrive", "VMObject"),
        ("Get-CimInstance", "CimInstanceComputerSet"),
        ("Get-CimInstance", "ClassNameComputerSet"),
        ("Invoke-CimMethod", "CimInstanceComputerSet"),
        ("New-CimInstance", "CimClassComputerSet"),
        ("Where-Object", "ScriptBlockSet"),
        ("ForEach-Object", "ScriptBlockSet"),
        ("Get-SCVirtualDiskDrive", "VM"),
        ("Get-SCVirtualMachine", "All"),
        ("Get-SCVMHost", "Connection"),
    ] {
        assert!(chosen.contains(&want), "{want:?} not among {chosen:?}");
    }
}
