//! Faults real Windows hosts send, as the simulator sends them (each rule cites Microsoft's
//! page in `hyperv-sim/src`):
//!
//! - IdleTimeout: pywinrm shows the simulator really deletes an idle shell (fault 0x8033805B on
//!   its next request); with the timeout below the transfer time (`--bwlimit`), a WinRM-read
//!   cycle and a push cycle complete anyway (shells reopened) and leave no checkpoint;
//! - MaxShellsPerUser: a cycle that finds the quota used up by another client waits and goes
//!   on when a shell is free;
//! - access denied (WSManFault 5) for an account that is not an administrator: exit 3 at once
//!   with what to change, nothing retried, nothing left;
//! - a domain account the host refuses over Basic passes with NTLM (Negotiate offered).

use godwit_hyperv_sim::model::SimModel;
use godwit_hyperv_sim::{RunningSim, SimConfig, start};
use godwit_tests::hyperv::*;
use godwit_tests::peers::sha256_file;
use godwit_tests::staging;
use staging::{Server, token_file};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn staging(srv: &Server) -> Staging {
    Staging {
        url: srv.url(),
        fingerprint: srv.fingerprint.clone(),
        token_file: token_file(srv.data.parent().unwrap(), &srv.token),
    }
}

fn web_vm() -> String {
    format!(
        r#"{{"id":"{WEB_ID}","name":"web-gen2","generation":2,"state":"Running","processor_count":4,
   "memory_startup":4294967296,"version":"9.0","checkpoint_type":"Production",
   "disks":[{{"controller_type":"SCSI","controller_number":0,"controller_location":0,"path":"web/web.vhdx"}}]}}"#
    )
}

#[test]
fn idle_shells_are_deleted_by_the_host_and_cycles_open_new_ones() {
    godwit_tests::peers::need(&["python3"]);
    let work = tempfile::tempdir().unwrap();
    let f = fixture(&work.path().join("host"));
    let idle_ms = 1500;
    let sim = start_sim_json(
        &f.dir,
        &format!(
            r#"{{"vms":[{}],"faults":{{"shell_idle_timeout_ms":{idle_ms}}}}}"#,
            web_vm()
        ),
    );
    // pywinrm: the shell is gone after the idle time, with the host's fault.
    let ca = work.path().join("sim.pem");
    std::fs::write(&ca, &sim.cert_pem).unwrap();
    let o = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/hyperv/pywinrm_idle.py"
        ))
        .arg(format!("https://127.0.0.1:{}/wsman", sim.addr.port()))
        .arg(&ca)
        .arg("2.5")
        .env("GODWIT_SIM_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["first"], "first", "{v}");
    let e = v["second_error"].as_str().unwrap();
    assert!(
        e.contains("shell was not found") && e.contains("2150858843"),
        "pywinrm: {v}"
    );
    assert_eq!(sim.idle_deleted_shells(), 1);
    // Godwit: transfers slower than the idle time (4 MiB of data at 1 MiB/s), over WinRM and by push.
    for (i, push) in [false, true].into_iter().enumerate() {
        // A staging server each, so each cycle sends every chunk (at --bwlimit).
        let srv = Server::start(&work.path().join(format!("staging{i}")), "127.0.0.1:0", &[]);
        let tok = work.path().join(format!("token{i}"));
        std::fs::create_dir_all(&tok).unwrap();
        let tf = token_file(&tok, &srv.token);
        let state = work.path().join(format!("state{i}"));
        let mut c = replicate_cmd(&sim, &srv.url(), &srv.fingerprint, &tf, &state, "web-gen2");
        c.args(["--json", "--bwlimit", "1M"]);
        if push {
            c.args(["--ingest-listen", "127.0.0.1:0"]);
        }
        let before = sim.idle_deleted_shells();
        let t0 = Instant::now();
        let o = c.output().unwrap();
        let took = t0.elapsed();
        assert!(
            o.status.success(),
            "push={push}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let deleted = sim.idle_deleted_shells() - before;
        eprintln!(
            "push={push}: {:.1} s with IdleTimeout {idle_ms} ms: the host deleted {deleted} idle shell(s), the cycle went on",
            took.as_secs_f64()
        );
        // A shell idled out, so the cycle lasted at least the idle time.
        assert!(
            took > Duration::from_millis(idle_ms),
            "the transfer was not slower than the idle time"
        );
        assert!(deleted >= 1, "no shell went idle long enough (push={push})");
        assert!(sim.checkpoints().is_empty(), "{:?}", sim.checkpoints());
        assert_eq!(ledger_entries(&state), 0);
        assert_eq!(
            export_sha(&staging(&srv), "web-gen2", work.path()),
            sha256_file(&f.web_ref)
        );
    }
}

#[test]
fn a_used_up_shell_quota_is_waited_out() {
    let work = tempfile::tempdir().unwrap();
    let f = fixture(&work.path().join("host"));
    // MaxShellsPerUser 1, and another client holds one shell for 3 s: the cycle's shell (one
    // per phase) is refused with wsman:QuotaLimit until that one is closed.
    let sim = start_sim_json(
        &f.dir,
        &format!(
            r#"{{"vms":[{}],"faults":{{"max_shells_per_user":1}}}}"#,
            web_vm()
        ),
    );
    let ca = work.path().join("sim.pem");
    std::fs::write(&ca, &sim.cert_pem).unwrap();
    let mut holder = hold_for_3s(&sim, &ca, false);
    let srv = Server::start(&work.path().join("staging"), "127.0.0.1:0", &[]);
    let tf = token_file(work.path(), &srv.token);
    let state = work.path().join("state");
    let t0 = Instant::now();
    let o = replicate_cmd(&sim, &srv.url(), &srv.fingerprint, &tf, &state, "web-gen2")
        .output()
        .unwrap();
    let took = t0.elapsed();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    eprintln!("a cycle that met MaxShellsPerUser waited and finished in {took:?}");
    assert!(sim.shell_quota_refusals() >= 1, "the quota was never met");
    assert!(holder.0.wait().unwrap().success());
    assert!(sim.checkpoints().is_empty());
    assert_eq!(sim.open_shells(), 0);
}

#[test]
fn a_used_up_operations_quota_is_waited_out() {
    let work = tempfile::tempdir().unwrap();
    let f = fixture(&work.path().join("host"));
    // MaxConcurrentOperationsPerUser 1, and another client (pywinrm) keeps a command running
    // for 3 s: every command of the cycle is refused with wsman:QuotaLimit
    // (ERROR_WSMAN_QUOTA_MAX_OPERATIONS) until that one ends.
    let sim = start_sim_json(
        &f.dir,
        &format!(
            r#"{{"vms":[{}],"faults":{{"max_concurrent_operations_per_user":1}}}}"#,
            web_vm()
        ),
    );
    let ca = work.path().join("sim.pem");
    std::fs::write(&ca, &sim.cert_pem).unwrap();
    let mut holder = hold_for_3s(&sim, &ca, true);
    let srv = Server::start(&work.path().join("staging"), "127.0.0.1:0", &[]);
    let tf = token_file(work.path(), &srv.token);
    let state = work.path().join("state");
    let t0 = Instant::now();
    let o = replicate_cmd(&sim, &srv.url(), &srv.fingerprint, &tf, &state, "web-gen2")
        .output()
        .unwrap();
    let took = t0.elapsed();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let refused = sim.operation_quota_refusals();
    eprintln!(
        "a cycle that met MaxConcurrentOperationsPerUser ({refused} refusals) waited and finished in {took:?}"
    );
    assert!(refused >= 1, "the quota was never met");
    assert!(
        took >= Duration::from_secs(1),
        "the quota was not waited out"
    );
    assert!(holder.0.wait().unwrap().success());
    assert!(sim.checkpoints().is_empty());
    assert_eq!(sim.open_shells(), 0);
    assert_eq!(
        export_sha(&staging(&srv), "web-gen2", work.path()),
        sha256_file(&f.web_ref)
    );
}

#[test]
fn access_denied_says_what_to_change_and_is_not_retried() {
    let work = tempfile::tempdir().unwrap();
    let f = fixture(&work.path().join("host"));
    let sim = start_sim_json(
        &f.dir,
        &format!(r#"{{"vms":[{}],"account_is_admin":false}}"#, web_vm()),
    );
    let srv = Server::start(&work.path().join("staging"), "127.0.0.1:0", &[]);
    let tf = token_file(work.path(), &srv.token);
    let state = work.path().join("state");
    let t0 = Instant::now();
    let o = replicate_cmd(&sim, &srv.url(), &srv.fingerprint, &tf, &state, "web-gen2")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("access is denied (WSManFault 5)")
            && err.contains("local Administrators group")
            && err.contains("LocalAccountTokenFilterPolicy"),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "retried? {err}");
    assert!(sim.checkpoints().is_empty());
    assert_eq!(ledger_entries(&state), 0);
}

#[test]
fn a_domain_account_refused_over_basic_passes_with_ntlm() {
    let work = tempfile::tempdir().unwrap();
    let f = fixture(&work.path().join("host"));
    std::fs::write(
        f.dir.join("vms.json"),
        format!(r#"{{"vms":[{}],"auth":["basic","ntlm"]}}"#, web_vm()),
    )
    .unwrap();
    let sim = start(
        SimConfig {
            user: "SIMDOM\\migrator".into(),
            password: PASSWORD.into(),
            model: SimModel::load(&f.dir).unwrap(),
            data_dir: f.dir.clone(),
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let o = Command::new(godwit_tests::peers::godwit_bin())
        .env("GODWIT_PASSWORD", PASSWORD)
        .args(["inventory", "--json", "--source"])
        .arg(format!(
            "hyperv://SIMDOM\\migrator@127.0.0.1:{}",
            sim.addr.port()
        ))
        .args(["--source-fingerprint", &sim.fingerprint.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v.to_string().contains("web-gen2"), "{v}");
    assert_eq!(sim.open_shells(), 0);
}

/// Another WinRM client (pywinrm) that opens one shell, and with `command` also runs a command
/// in it, holds them for 3 s and closes them; returned once it holds them.
fn hold_for_3s(sim: &RunningSim, ca: &Path, command: bool) -> staging::Guard {
    const SCRIPT: &str = r#"
import os, sys, time
from winrm.protocol import Protocol
p = Protocol(endpoint=sys.argv[1], transport="ntlm", username="Administrator",
             password=os.environ["GODWIT_SIM_PASSWORD"], server_cert_validation="validate",
             ca_trust_path=sys.argv[2])
s = p.open_shell()
c = p.run_command(s, "echo held") if sys.argv[3] == "1" else None
print("holding", flush=True)
time.sleep(3)
if c is not None:
    p.cleanup_command(s, c)
p.close_shell(s)
"#;
    let child = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(format!("https://127.0.0.1:{}/wsman", sim.addr.port()))
        .arg(ca)
        .arg(if command { "1" } else { "0" })
        .env("GODWIT_SIM_PASSWORD", PASSWORD)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut holder = staging::Guard(child);
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(holder.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "holding");
    holder
}
