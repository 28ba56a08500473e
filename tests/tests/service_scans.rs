//! Tools nobody here wrote, against the real listeners:
//! - testssl.sh (Debian's `testssl.sh`) on `godwit serve`'s HTTPS port and on
//!   `godwit staging serve`'s TCP 1500 port: TLS 1.2 and 1.3 only, only AEAD cipher suites
//!   (testssl's "strong" category; NULL, export, low, 3DES/IDEA and CBC "average" ones not
//!   offered), forward secrecy, and no vulnerability flagged (every finding OK or INFO).
//! - schemathesis (PyPI) against `godwit serve` logged in (session cookie and CSRF token),
//!   bounded by `--max-examples`, in a network namespace of its own
//!   (tests/security/schemathesis.sh): no 5xx, every answer as the OpenAPI document says.
//!
//! Each runs about a minute (measured on 2 cores: testssl 40-70 s per port, schemathesis
//! 15-30 s); they run in parallel with the other tests.

use godwit_tests::peers::godwit_bin;
use godwit_tests::{service, staging};
use serde_json::Value;
use service::Service;
use std::path::Path;
use std::process::Command;

/// Run testssl.sh on `hostport` (protocols, cipher categories, forward secrecy,
/// vulnerabilities) and return its findings (the flat JSON file).
fn testssl(hostport: &str, dir: &Path) -> Vec<Value> {
    let json = dir.join("testssl.json");
    let out = Command::new("testssl")
        .args([
            "--quiet",
            "--color",
            "0",
            "--nodns",
            "none",
            "--warnings",
            "off",
            "--connect-timeout",
            "10",
            "--openssl-timeout",
            "10",
            "--jsonfile",
        ])
        .arg(&json)
        .args(["-p", "-s", "-f", "-U", hostport])
        .output()
        .expect("testssl is not installed: run `make deps` (Debian package testssl.sh)");
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "testssl wrote no findings ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    serde_json::from_str(&text).expect("testssl JSON")
}

fn finding<'a>(findings: &'a [Value], id: &str) -> &'a str {
    findings
        .iter()
        .find(|f| f["id"] == id)
        .and_then(|f| f["finding"].as_str())
        .unwrap_or_else(|| panic!("testssl reported nothing for {id}"))
}

fn assert_tls_is_sound(what: &str, findings: &[Value]) {
    let all = || {
        findings
            .iter()
            .map(|f| format!("{} {} {}", f["id"], f["severity"], f["finding"]))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for id in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        assert!(
            finding(findings, id).starts_with("not offered"),
            "{what}: {id} offered:\n{}",
            all()
        );
    }
    for id in ["TLS1_2", "TLS1_3"] {
        assert!(
            finding(findings, id).starts_with("offered"),
            "{what}: {id} not offered:\n{}",
            all()
        );
    }
    // testssl's categories: only "strong" (AEAD) ciphers are offered.
    for id in [
        "cipherlist_NULL",
        "cipherlist_aNULL",
        "cipherlist_EXPORT",
        "cipherlist_LOW",
        "cipherlist_3DES_IDEA",
        "cipherlist_AVERAGE",
    ] {
        assert!(
            finding(findings, id).starts_with("not offered"),
            "{what}: {id} offered:\n{}",
            all()
        );
    }
    assert!(finding(findings, "cipherlist_STRONG").starts_with("offered"));
    // Forward secrecy: offered, and no RSA key transport at all.
    assert!(
        finding(findings, "PFS").starts_with("offered"),
        "{what}:\n{}",
        all()
    );
    assert!(
        finding(findings, "ROBOT").contains("no RSA key transport"),
        "{what}:\n{}",
        all()
    );
    // No vulnerability (or anything else) flagged, and the scan completed.
    let flagged: Vec<String> = findings
        .iter()
        .filter(|f| {
            let sev = f["severity"].as_str().unwrap_or("");
            let id = f["id"].as_str().unwrap_or("");
            let local = id == "engine_problem"; // the scanning openssl lacks GOST: not the server
            !local && !matches!(sev, "OK" | "INFO" | "DEBUG") || id.starts_with("scanProblem")
        })
        .map(|f| format!("{} {} {}", f["id"], f["severity"], f["finding"]))
        .collect();
    assert!(
        flagged.is_empty(),
        "{what}: flagged:\n{}",
        flagged.join("\n")
    );
    for id in [
        "heartbleed",
        "CCS",
        "secure_renego",
        "CRIME_TLS",
        "POODLE_SSL",
        "SWEET32",
        "FREAK",
        "DROWN",
        "LOGJAM",
        "BEAST",
        "LUCKY13",
        "RC4",
    ] {
        finding(findings, id);
    }
}

#[test]
fn testssl_finds_the_web_port_sound() {
    let work = tempfile::tempdir().unwrap();
    let svc = Service::start_as_admin(work.path(), &[]);
    let hostport = svc.url.trim_start_matches("https://").to_string();
    let t0 = std::time::Instant::now();
    let findings = testssl(&hostport, work.path());
    println!(
        "testssl on godwit serve: {} findings in {:?}",
        findings.len(),
        t0.elapsed()
    );
    assert_tls_is_sound("godwit serve", &findings);
    // It survived the scan.
    assert_eq!(svc.api("GET", "/jobs", None).0, 200);
}

#[test]
fn testssl_finds_the_staging_port_sound() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("staging");
    std::fs::create_dir_all(&data).unwrap();
    let srv = staging::Server::start(&data, "127.0.0.1:0", &[]);
    let t0 = std::time::Instant::now();
    let findings = testssl(&srv.addr, work.path());
    println!(
        "testssl on godwit staging serve: {} findings in {:?}",
        findings.len(),
        t0.elapsed()
    );
    assert_tls_is_sound("godwit staging serve", &findings);
}

#[test]
fn schemathesis_finds_no_server_error_and_no_answer_off_the_document() {
    let work = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let t0 = std::time::Instant::now();
    let out = Command::new("unshare")
        .arg("--net")
        .arg("--")
        .arg("bash")
        .arg(root.join("security/schemathesis.sh"))
        .arg(work.path().join("run"))
        .arg(godwit_bin())
        .arg(root.join("../webui/openapi.json"))
        .arg("20")
        .output()
        .expect("unshare runs");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("schemathesis ran {:?}", t0.elapsed());
    assert!(
        out.status.success(),
        "schemathesis found problems (needs root for `unshare --net`, and `make deps` for schemathesis):\n{text}\n--- godwit serve stderr:\n{}",
        std::fs::read_to_string(work.path().join("run/serve.err")).unwrap_or_default()
    );
    assert!(text.contains("No issues found"), "{text}");
    let cases = text
        .lines()
        .find(|l| l.contains(" generated, "))
        .unwrap_or_default();
    println!("schemathesis: {}", cases.trim());
}
