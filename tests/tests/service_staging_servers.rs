//! Several staging servers in the service (issue 21), with the real service, two real
//! `godwit staging serve` over one `file://` store and vcsim as the source:
//!
//! - a second server is added through the API after its certificate was probed and approved
//!   (an approval of another certificate is refused, and so is removing the last server);
//! - a job replicating at a limited bandwidth goes through one of them; that server is killed
//!   with SIGKILL mid-run; the job completes through the other, its `staging_target` changes,
//!   it sends no more than the disk (what the store held was not sent again, beyond the chunks
//!   in flight at the kill), the export is byte-equal to `qemu-img convert -O raw` of the source
//!   and `godwit staging verify` finds the store clean;
//! - the killed server shows unreachable with its error, and reachable again once restarted
//!   on the same address.

use godwit_tests::peers::{godwit_bin, need, run};
use godwit_tests::{service, staging, vcsim};
use serde_json::{Value, json};
use service::{Service, export_and_wait, random_disk, setup_vsphere};
use staging::{Server, files_equal, last_json, reference_raw};
use std::process::Command;
use vcsim::Vcsim;

const VM: &str = "DC0_H0_VM0";
const DISK_MIB: u64 = 12;

fn servers(svc: &Service) -> Vec<Value> {
    svc.ok("GET", "/settings/staging/servers", None)
        .as_array()
        .expect("a list")
        .clone()
}

fn server<'a>(list: &'a [Value], addr: &str) -> &'a Value {
    list.iter()
        .find(|s| s["address"] == addr)
        .unwrap_or_else(|| panic!("{addr} not listed: {list:?}"))
}

/// Bytes sent as the run's "disk 0 replicated ..." event says (`X MiB sent`).
fn sent_mib(svc: &Service, job: &str) -> f64 {
    let ev = svc.ok("GET", &format!("/jobs/{job}/events"), None);
    let msg = ev
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["message"].as_str())
        .find(|m| m.contains("replicated as sync"))
        .unwrap_or_else(|| panic!("no replicated event: {ev}"))
        .to_string();
    let before = msg.split(" MiB sent").next().unwrap();
    before
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no sent figure in {msg:?}"))
}

#[test]
fn a_job_fails_over_to_another_staging_server_of_the_store_when_its_server_is_killed() {
    need(&["qemu-img", "cmp"]);
    let work = tempfile::tempdir().unwrap();
    let store = format!("file://{}", work.path().join("store").display());
    let mut a = Server::start(&work.path().join("a"), "127.0.0.1:0", &["--store", &store]);
    let mut b = Server::start(&work.path().join("b"), "127.0.0.1:0", &["--store", &store]);
    let v = Vcsim::start(false);
    let disk = random_disk(&v, VM, DISK_MIB);
    // 1 MiB/s for 12 MiB of random data: ~12 s, time enough to kill the server mid-run.
    let svc = Service::start_as_admin(
        work.path(),
        &["--chunk-size", "256K", "--bwlimit", "1M", "--no-cbt"],
    );
    // The wizard's one server; the token A issued is in the store, so B takes it too.
    let source = setup_vsphere(
        &svc,
        &v,
        json!({"kind": "server", "address": a.addr, "fingerprint": a.fingerprint,
               "token": a.token}),
    );

    // Add B: its certificate is shown first, then approved.
    let cert = svc.ok(
        "POST",
        "/settings/staging/servers/probe",
        Some(json!({"address": b.addr})),
    );
    let hex = |f: &str| f.replace(':', "").to_ascii_uppercase();
    assert_eq!(
        hex(cert["fingerprint"].as_str().unwrap()),
        hex(&b.fingerprint),
        "{cert}"
    );
    // Approving another certificate than the one B shows is refused, and nothing is added.
    let (code, body) = svc.api(
        "POST",
        "/settings/staging/servers",
        Some(json!({"address": b.addr, "approved_fingerprint": a.fingerprint})),
    );
    assert_eq!(code, 502, "{body}");
    assert!(
        body.to_string().contains("does not match"),
        "the refusal names the certificate: {body}"
    );
    assert_eq!(servers(&svc).len(), 1);
    let added = svc.api(
        "POST",
        "/settings/staging/servers",
        Some(json!({"address": b.addr, "approved_fingerprint": cert["fingerprint"]})),
    );
    assert_eq!(added.0, 201, "{}", added.1);
    let list = servers(&svc);
    assert_eq!(list.len(), 2, "{list:?}");
    for s in [&a, &b] {
        assert_eq!(server(&list, &s.addr)["reachable"], true, "{list:?}");
    }
    // The same server twice is refused.
    let (code, _) = svc.api(
        "POST",
        "/settings/staging/servers",
        Some(json!({"address": b.addr, "approved_fingerprint": b.fingerprint})),
    );
    assert_eq!(code, 409);

    let job = svc.ok(
        "POST",
        "/jobs",
        Some(json!({"source_id": source, "vm": VM, "schedule": {"kind": "once"}})),
    );
    let id = job["id"].as_str().unwrap().to_string();
    // Mid-run: a few MiB through, well before the end.
    let running = svc.wait_job(&id, 90, |j| {
        j["staging_target"].is_string()
            && j["progress"]["bytes_done"].as_u64().unwrap_or(0) >= 3 << 20
    });
    let first = running["staging_target"].as_str().unwrap().to_string();
    assert_ne!(running["state"], "completed", "{running}");
    let (killed, other) = if first == a.addr {
        (&mut a, &b)
    } else {
        assert_eq!(first, b.addr, "{running}");
        (&mut b, &a)
    };
    killed.kill9();
    eprintln!(
        "killed {first} at {} bytes",
        running["progress"]["bytes_done"]
    );

    let done = svc.wait_job(&id, 120, |j| {
        j["state"] == "completed" || j["state"] == "failed"
    });
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["staging_target"], other.addr.as_str(), "{done}");
    let sent = sent_mib(&svc, &id);
    // Random data does not compress: a run that sent again what the store held would send
    // about twice as much. Allowed: the chunks in flight when the server died.
    #[allow(clippy::cast_precision_loss)]
    let limit = DISK_MIB as f64 + 2.0;
    assert!(sent <= limit, "{sent} MiB sent for a {DISK_MIB} MiB disk");
    eprintln!("sent {sent} MiB for {DISK_MIB} MiB");

    // The killed server shows unreachable, with what went wrong.
    let list = servers(&svc);
    let k = server(&list, &first);
    assert_eq!(k["reachable"], false, "{list:?}");
    assert!(k["last_error"].is_string(), "{list:?}");
    assert_eq!(server(&list, &other.addr)["reachable"], true, "{list:?}");
    assert!(
        server(&list, &other.addr)["last_used"].is_string(),
        "{list:?}"
    );

    // The checks reach every server of the store: the killed one's TCP check fails, the other's
    // passes, and the store's free space is answered by the one still up.
    let checks = svc.ok("POST", "/checks", None);
    let rows = checks
        .as_array()
        .unwrap_or_else(|| panic!("checks: {checks}"));
    let tcp = |addr: &str| -> &Value {
        rows.iter()
            .find(|c| c["check"] == "tcp" && c["target"].as_str().unwrap().starts_with(addr))
            .unwrap_or_else(|| panic!("no tcp check of {addr}: {checks}"))
    };
    assert_eq!(tcp(&first)["status"], "fail", "{checks}");
    assert_eq!(tcp(&other.addr)["status"], "pass", "{checks}");
    let space = rows
        .iter()
        .find(|c| c["check"] == "staging free space")
        .unwrap_or_else(|| panic!("no free-space check: {checks}"));
    assert!(
        space["value"].as_str().unwrap().contains(" free of "),
        "{space}"
    );

    // The export goes through the server still up, and equals the source.
    let out = work.path().join("export.raw");
    export_and_wait(&svc, &id, "raw", out.to_str().unwrap());
    let reference = work.path().join("reference.raw");
    reference_raw(&disk, "vmdk", &reference);
    assert!(
        files_equal(&out, &reference),
        "export differs from the source"
    );

    // The store is clean.
    let o =
        run(Command::new(godwit_bin()).args(["staging", "verify", "--json", "--store", &store]));
    let verify = last_json(&String::from_utf8_lossy(&o.stdout));
    assert!(o.status.success(), "staging verify: {verify}");
    assert_eq!(verify["chunks_bad"], json!([]), "{verify}");
    assert_eq!(verify["indexes_bad"], json!([]), "{verify}");

    // Restarted on the same address (same data: same certificate), it is reachable again.
    let killed_data = killed.data.clone();
    let again = Server::start(&killed_data, &first, &["--store", &store]);
    assert_eq!(again.addr, first);
    let list = servers(&svc);
    assert_eq!(server(&list, &first)["reachable"], true, "{list:?}");
    assert!(server(&list, &first)["last_error"].is_null(), "{list:?}");

    // Removing: one is fine, the last one is refused.
    let path = format!("/settings/staging/servers/{}", other.addr);
    assert_eq!(svc.api("DELETE", &path, None).0, 204);
    let list = servers(&svc);
    assert_eq!(list.len(), 1, "{list:?}");
    let path = format!("/settings/staging/servers/{first}");
    assert_eq!(svc.api("DELETE", &path, None).0, 409);
}
