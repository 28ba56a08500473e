//! Replacing the connector's HTTPS certificate by upload, end to end: an operator's CA and a
//! leaf for 127.0.0.1 made with `openssl` (not our code), uploaded through the REST API; `curl`
//! trusting only that CA then reaches the service at once (no restart) and again after a
//! restart, whose console line shows the new fingerprint; the old pin no longer matches. A key
//! of another certificate, an expired certificate and a CA certificate are refused naming the
//! field, and nothing is installed; the key is never echoed or logged.

use godwit_tests::{pki, service};
use pki::{make_ca, make_leaf, read};
use serde_json::json;
use service::{Service, pinned_client};
use std::path::Path;
use std::process::Command;

fn curl_status(dir: &Path, url: &str) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(dir.join("ca.pem"))
        .arg(format!("{url}/api/v1/session"))
        .output()
        .expect("curl runs");
    (
        out.status.success(),
        format!(
            "{} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn an_uploaded_certificate_is_served_at_once_and_after_a_restart() {
    let work = tempfile::tempdir().unwrap();
    let pki = work.path().join("pki");
    make_ca(&pki);
    make_leaf(&pki, "leaf", 30, None);
    make_leaf(&pki, "other", 30, None);
    make_leaf(&pki, "expired", 365, Some("2020-01-01 00:00:00"));
    let mut svc = Service::start_as_admin(work.path(), &[]);
    let data = svc.data.clone();

    // The generated certificate: curl with the operator's CA refuses it.
    let (ok, detail) = curl_status(&pki, &svc.url);
    assert!(!ok, "curl trusted the self-signed certificate: {detail}");
    let (code, before) = svc.api("GET", "/settings/certificate", None);
    assert_eq!(code, 200, "{before}");
    assert_eq!(before["uploaded"], false);
    assert_eq!(before["fingerprint"], svc.fingerprint.as_str());

    let chain = format!("{}{}", read(&pki, "leaf.pem"), read(&pki, "ca.pem"));
    let leaf_key = read(&pki, "leaf.key");
    // Refusals: another certificate's key, an expired certificate, the CA first.
    for (cert, key, field, words) in [
        (
            chain.clone(),
            read(&pki, "other.key"),
            "private_key_pem",
            "does not belong",
        ),
        (
            read(&pki, "expired.pem"),
            read(&pki, "expired.key"),
            "certificate_pem",
            "expired",
        ),
        (
            format!("{}{}", read(&pki, "ca.pem"), read(&pki, "leaf.pem")),
            leaf_key.clone(),
            "certificate_pem",
            "CA certificate",
        ),
    ] {
        let (code, body) = svc.api(
            "PUT",
            "/settings/certificate",
            Some(json!({"certificate_pem": cert, "private_key_pem": key})),
        );
        assert_eq!(code, 422, "{body}");
        assert_eq!(body["fields"][0]["field"], field, "{body}");
        let msg = body["fields"][0]["message"].as_str().unwrap();
        assert!(msg.contains(words), "{msg}");
        assert!(!body.to_string().contains("PRIVATE KEY"), "{body}");
    }
    assert!(
        !data.join("tls/installed.pem").exists(),
        "nothing installed"
    );

    // The good one: served at once, to a client that trusts only the operator's CA.
    let (code, view) = svc.api(
        "PUT",
        "/settings/certificate",
        Some(json!({"certificate_pem": chain, "private_key_pem": leaf_key})),
    );
    assert_eq!(code, 200, "{view}");
    assert_eq!(view["uploaded"], true);
    assert_eq!(view["chain_length"], 2);
    let new_fp = view["fingerprint"].as_str().unwrap().to_string();
    assert_ne!(new_fp, svc.fingerprint);
    let (ok, detail) = curl_status(&pki, &svc.url);
    assert!(ok, "curl with the operator's CA: {detail}");
    // The old pin no longer matches; the new one does.
    assert!(
        pinned_client(&svc.fingerprint, false)
            .get(format!("{}/api/v1/session", svc.url))
            .send()
            .is_err(),
        "the old certificate is still served"
    );
    let r = pinned_client(&new_fp, false)
        .get(format!("{}/api/v1/session", svc.url))
        .send()
        .unwrap();
    assert!(r.status().is_success());
    let mode = std::fs::metadata(data.join("tls/installed.pem"))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap();
    assert_eq!(mode, 0o600);

    // After a restart: the console shows the uploaded certificate's fingerprint.
    svc.kill9();
    let svc = svc.restart();
    assert_eq!(svc.fingerprint, new_fp, "the console line after a restart");
    let (ok, detail) = curl_status(&pki, &svc.url);
    assert!(ok, "after a restart: {detail}");
    let log = svc.log_text() + &svc.stderr_text();
    assert!(
        log.contains("HTTPS certificate replaced by upload"),
        "the replacement is logged"
    );
    for secret in [
        read(&pki, "leaf.key"),
        read(&pki, "other.key"),
        read(&pki, "expired.key"),
    ] {
        let body = secret.lines().nth(1).unwrap();
        assert!(!log.contains(body), "a private key reached the log");
    }
}
