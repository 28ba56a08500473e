//! How the command line tells a failure (issue 18, "Errors with remediation"): `godwit
//! replicate`, `export`, `disk convert` and `staging verify` print one `error:` line saying what
//! happened and one `what to do:` line, then the component's own text for support; with
//! `--json`, an `{"event":"error","error":{code,message,remediation,detail}}` line on stdout.
//! Real failures: a staging server that is not there, one whose certificate is not the pinned
//! one (a real `godwit staging serve`), a file that does not exist, a file that is not a disk
//! image, an export of a VM the store has no replica of.

use godwit_tests::peers::{godwit_bin, run};
use godwit_tests::staging::{Server, token_file};
use serde_json::Value;
use std::process::{Command, Output};

/// The `error:` and `what to do:` lines, and the exit code (2).
fn told(o: &Output) -> (String, String) {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(2), "{err}");
    let line = |p: &str| {
        err.lines()
            .find_map(|l| l.strip_prefix(p))
            .unwrap_or_else(|| panic!("no {p:?} line in: {err}"))
            .to_string()
    };
    let (what, todo) = (line("godwit: error: "), line("godwit: what to do: "));
    // One of each, in that order, and neither repeats the other's words nor a Rust debug form.
    assert_eq!(err.matches("godwit: error: ").count(), 1, "{err}");
    assert_eq!(err.matches("godwit: what to do: ").count(), 1, "{err}");
    for t in [&what, &todo] {
        assert!(!t.contains(" { ") && !t.contains("Os {"), "{t}");
    }
    (what, todo)
}

/// The `--json` error object on stdout.
fn json_error(o: &Output) -> Value {
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out
        .lines()
        .find(|l| l.contains("\"event\":\"error\""))
        .unwrap_or_else(|| panic!("no error event in: {out}"));
    let v: Value = serde_json::from_str(line).unwrap();
    v["error"].clone()
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn unreachable_staging_says_so_and_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let tf = token_file(tmp.path(), "not-a-real-token-but-long-enough");
    let port = free_port();
    let o = run(Command::new(godwit_bin())
        .args(["export", "--json", "--vm", "web", "--format", "raw"])
        .args(["--target", &format!("staging://127.0.0.1:{port}")])
        .args(["--target-fingerprint", &"ab".repeat(32), "--token-file"])
        .arg(&tf)
        .arg("--out")
        .arg(tmp.path().join("web.raw")));
    let (what, todo) = told(&o);
    assert_eq!(
        what,
        format!("The staging server 127.0.0.1:{port} could not be reached.")
    );
    assert!(todo.contains("`godwit staging serve` runs there"), "{todo}");
    assert!(todo.contains("TCP port 1500"), "{todo}");
    let e = json_error(&o);
    assert_eq!(e["code"], "staging.unreachable", "{e}");
    assert_eq!(e["message"], what.as_str());
    assert_eq!(e["remediation"], todo.as_str());
    assert!(e["detail"].as_str().unwrap().contains("refused"), "{e}");
    assert!(!tmp.path().join("web.raw").exists());
}

#[test]
fn a_certificate_other_than_the_pinned_one_is_told_with_its_remedy() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("staging");
    let srv = Server::start(&data, "127.0.0.1:0", &[]);
    let src = tmp.path().join("disk.raw");
    std::fs::write(&src, vec![7u8; 1 << 20]).unwrap();
    let tf = token_file(tmp.path(), &srv.token);
    let wrong = format!("SHA256:{}", "AB:".repeat(31) + "AB");
    let o = run(Command::new(godwit_bin())
        .args(["replicate", "--vm", "web", "--target", &srv.url()])
        .args(["--target-fingerprint", &wrong, "--token-file"])
        .arg(&tf)
        .arg("--source")
        .arg(format!("file://{}", src.display())));
    let (what, todo) = told(&o);
    assert_eq!(
        what,
        "The staging server presented a certificate other than the one given."
    );
    assert!(todo.contains("--target-fingerprint"), "{todo}");
    let err = String::from_utf8_lossy(&o.stderr);
    // The detail names both fingerprints, in the one format.
    assert!(err.contains(&srv.fingerprint), "{err}");
    assert!(err.contains(&wrong), "{err}");
}

#[test]
fn missing_files_and_files_that_are_not_disks_are_told_with_their_remedy() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.vmdk");
    let out = tmp.path().join("out.raw");
    let o = run(Command::new(godwit_bin())
        .args(["disk", "convert", "--json", "-O", "raw"])
        .arg(&missing)
        .arg(&out));
    let (what, todo) = told(&o);
    assert_eq!(what, format!("{} does not exist.", missing.display()));
    assert!(todo.starts_with("Check the path"), "{todo}");
    assert_eq!(json_error(&o)["code"], "input.not_found");

    let text = tmp.path().join("notes.txt");
    std::fs::write(&text, "These are my notes, not a disk.\n").unwrap();
    let o = run(Command::new(godwit_bin())
        .args(["disk", "convert", "-O", "vmdk"])
        .arg(&text)
        .arg(&out));
    let (what, todo) = told(&o);
    assert_eq!(what, "The input file is not a disk image this tool reads.");
    assert!(todo.contains("`-f raw`"), "{todo}");
    assert!(!out.exists());
}

#[test]
fn an_export_of_a_vm_without_a_replica_and_a_missing_store_are_told() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let o = run(Command::new(godwit_bin())
        .args(["export", "--json", "--vm", "web", "--format", "raw"])
        .args(["--target", &format!("file://{}", store.display())])
        .arg("--out")
        .arg(tmp.path().join("web.raw")));
    let (what, todo) = told(&o);
    assert_eq!(
        what,
        "The staging target holds no replica of this VM's disk."
    );
    assert!(todo.contains("godwit replicate"), "{todo}");
    assert_eq!(json_error(&o)["code"], "export.sync_not_found");

    let o = run(Command::new(godwit_bin())
        .args(["staging", "verify", "--json", "--data"])
        .arg(tmp.path().join("no-such-dir")));
    let (what, todo) = told(&o);
    assert_eq!(what, "There is no staging store where the command looked.");
    assert!(todo.contains("--data of `godwit staging serve`"), "{todo}");
    let e = json_error(&o);
    assert_eq!(e["code"], "staging.store_not_found", "{e}");
    assert!(e["detail"].as_str().unwrap().contains("no-such-dir"), "{e}");
}
