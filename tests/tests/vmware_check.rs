//! `godwit check --vsphere-source`: log in to vcsim (pinned), read the ESXi hosts its
//! inventory knows, and check each of them (DNS, ICMP, TCP 443 and 902, TLS on 443) besides the
//! vCenter itself. vcsim's host names (DC0_H0, DC0_C0_H0, ...) do not resolve through the
//! system resolver, so every check of them fails and says so; with a private /etc/hosts (a mount
//! namespace of the check alone) that maps them to a loopback address nothing listens on, DNS
//! passes and TCP fails with the ESXi remediation that names the port. The pass case is the vCenter itself on loopback. A wrong pin stops the
//! run with exit 4.

use godwit_tests::peers::godwit_bin;
use godwit_tests::vcsim;
use serde_json::Value;
use std::process::Command;
use vcsim::{PASSWORD, USER, Vcsim};

fn check(v: &Vcsim, fingerprint: &str, extra: &[&str]) -> (i32, Vec<Value>, String) {
    check_with_hosts(v, fingerprint, extra, None)
}

/// `godwit check`; with `hosts`, in a private mount namespace whose /etc/hosts is that file
/// (the system resolver then knows vcsim's host names; nothing outside the process changes).
fn check_with_hosts(
    v: &Vcsim,
    fingerprint: &str,
    extra: &[&str],
    hosts: Option<&std::path::Path>,
) -> (i32, Vec<Value>, String) {
    let mut cmd = match hosts {
        None => Command::new(godwit_bin()),
        Some(h) => {
            let mut c = Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "sh", "-c"])
                .arg(r#"mount --bind "$1" /etc/hosts && shift && exec "$@""#)
                .arg("sh")
                .arg(h)
                .arg(godwit_bin());
            c
        }
    };
    let out = cmd
        .env("GODWIT_PASSWORD", PASSWORD)
        .args(["check", "--json", "--timeout", "2", "--vsphere-source"])
        .arg(v.source(USER))
        .args(["--source-fingerprint", fingerprint])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let results = serde_json::from_str::<Value>(&stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default();
    (out.status.code().unwrap_or(-1), results, stderr)
}

fn one<'a>(results: &'a [Value], check: &str, target: &str) -> &'a Value {
    let found: Vec<&Value> = results
        .iter()
        .filter(|r| r["check"] == check && r["target"] == target)
        .collect();
    assert_eq!(found.len(), 1, "{check} {target}: {results:#?}");
    found[0]
}

/// The DNS check of `name`, whichever resolver answered (`NAME @ RESOLVER`).
fn dns<'a>(results: &'a [Value], name: &str) -> &'a Value {
    let found: Vec<&Value> = results
        .iter()
        .filter(|r| {
            r["check"] == "dns"
                && r["target"]
                    .as_str()
                    .is_some_and(|t| t.starts_with(&format!("{name} @")))
        })
        .collect();
    assert_eq!(found.len(), 1, "dns {name}: {results:#?}");
    found[0]
}

const HOSTS: [&str; 4] = ["DC0_H0", "DC0_C0_H0", "DC0_C0_H1", "DC0_C0_H2"];

#[test]
fn every_esxi_host_of_the_inventory_is_checked() {
    let v = Vcsim::start(false);
    // The system resolver does not know vcsim's host names: each check of them fails and says
    // the name does not resolve (not a misleading "port closed").
    let (code, results, stderr) = check(&v, &v.fingerprint_arg(), &[]);
    // VPX model: one standalone host and a three-host cluster.
    assert!(stderr.contains("4 ESXi host(s)"), "{stderr}");
    for h in HOSTS {
        let r = dns(&results, h);
        assert_eq!(r["status"], "fail", "{r:#}");
        for port in [443, 902] {
            let r = one(&results, "tcp", &format!("{h}:{port}"));
            assert_eq!(r["status"], "fail", "{r:#}");
            assert!(
                r["purpose"]
                    .as_str()
                    .is_some_and(|p| p.starts_with(&format!("ESXi host {h}"))),
                "{r:#}"
            );
            assert!(
                r["remediation"]
                    .as_str()
                    .is_some_and(|m| m.contains("does not resolve") && m.contains(h)),
                "{r:#}"
            );
        }
        let r = one(&results, "tls", &format!("{h}:443"));
        assert_eq!(r["status"], "fail", "{r:#}");
    }
    // The vCenter itself: reachable on loopback, its certificate matching the pin.
    let vc = v.authority();
    let r = one(&results, "tcp", &vc);
    assert_eq!(r["status"], "pass", "{r:#}");
    let r = one(&results, "tls", &vc);
    assert_ne!(r["status"], "fail", "{r:#}");
    assert_eq!(code, 1, "ESXi hosts unreachable → exit 1");

    // A wrong pin stops before any check: exit 4 with the fingerprint to pin.
    let wrong = format!("SHA256:{}", "00".repeat(32));
    let (code, _, stderr) = check(&v, &wrong, &[]);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains(&vc), "{stderr}");
}

#[test]
fn esxi_hosts_that_resolve_but_refuse_get_the_port_remediation() {
    // A private /etc/hosts needs a mount namespace: root only (as the netns tests).
    godwit_tests::peers::need_root("a private /etc/hosts (a mount namespace)");
    let v = Vcsim::start(false);
    // 127.0.0.9: loopback, where nothing listens on 443 or 902 (connection refused).
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        format!("127.0.0.1 localhost\n127.0.0.9 {}\n", HOSTS.join(" ")),
    )
    .unwrap();
    let (code, results, stderr) = check_with_hosts(&v, &v.fingerprint_arg(), &[], Some(&hosts));
    assert!(stderr.contains("4 ESXi host(s)"), "{stderr}");
    let names = HOSTS;
    for h in names {
        let r = dns(&results, h);
        assert_eq!(r["status"], "pass", "{r:#}");
        assert_eq!(r["value"], "127.0.0.9", "{r:#}");
        for port in [443, 902] {
            let r = one(&results, "tcp", &format!("{h}:{port}"));
            assert_eq!(r["status"], "fail", "{r:#}");
            assert!(
                r["remediation"]
                    .as_str()
                    .is_some_and(|m| m.contains("ESXi host") && m.contains(&port.to_string())),
                "{r:#}"
            );
        }
    }
    assert_eq!(code, 1);
}

/// The privileges a replication needs are reported (HasPrivilegeOnEntity on the root folder,
/// answered by our labelled STUB's deny list: vcsim grants everything), one result each; a
/// missing one fails the check naming the privilege and what needs it.
#[test]
fn the_privileges_a_replication_needs_are_reported() {
    let v = Vcsim::start(false);
    let privileges = |results: &[Value]| -> Vec<Value> {
        results
            .iter()
            .filter(|r| r["check"] == "privilege")
            .cloned()
            .collect()
    };
    let (_, results, stderr) = check(&v, &v.fingerprint_arg(), &[]);
    let p = privileges(&results);
    assert_eq!(p.len(), godwit_vmware::privileges::ALL.len(), "{stderr}");
    for r in &p {
        assert_eq!(r["status"], "pass", "{r:#}");
    }
    assert!(
        p.iter().any(|r| r["target"]
            .as_str()
            .unwrap()
            .starts_with("VirtualMachine.State.CreateSnapshot")),
        "{p:#?}"
    );
    v.stub(
        "/stub/privileges?deny=VirtualMachine.State.RemoveSnapshot",
        Some(""),
    );
    let (code, results, _) = check(&v, &v.fingerprint_arg(), &[]);
    assert_eq!(code, 1);
    let p = privileges(&results);
    let failed: Vec<&Value> = p.iter().filter(|r| r["status"] == "fail").collect();
    assert_eq!(failed.len(), 1, "{p:#?}");
    assert!(
        failed[0]["target"]
            .as_str()
            .unwrap()
            .contains("VirtualMachine.State.RemoveSnapshot")
            && failed[0]["remediation"]
                .as_str()
                .unwrap()
                .contains("RemoveSnapshot_Task"),
        "{:#}",
        failed[0]
    );
}
