//! The service's Hyper-V push URL setting (issue 15): `PUT /api/v1/settings/ingest` refuses a URL
//! that is not https://HOST[:PORT] naming `url`; a URL the host cannot reach makes the next job
//! fail at once (no retry) naming the URL, the host and the port, with no checkpoint left; the
//! settings page shows the value; cleared again (null: the WinRM connection's local address),
//! the same job runs to completion without a restart.

use godwit_tests::hyperv::{PASSWORD, fixture, start_sim};
use godwit_tests::{service, staging};
use serde_json::json;
use service::Service;
use staging::Server;

fn metric(svc: &Service, name: &str) -> u64 {
    let (s, m) = svc.get_bytes("/metrics");
    assert_eq!(s, 200);
    let m = String::from_utf8_lossy(&m).into_owned();
    m.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in the metrics:\n{m}"))
}

#[test]
fn the_ingest_url_setting_is_honoured_at_once() {
    let work = tempfile::tempdir().unwrap();
    let f = fixture(&work.path().join("host"));
    let sim = start_sim(&f, 0);
    let staging = work.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let srv = Server::start(&staging, "127.0.0.1:0", &[]);
    let svc = Service::start_as_admin(work.path(), &["--retry-base-secs", "1"]);
    svc.ok(
        "PUT",
        "/settings/network",
        Some(json!({"hostname": "godwit-hv", "mode": "dhcp",
                    "dns_servers": [], "ntp_servers": [], "proxy": null})),
    );
    svc.use_staging_server(&srv.addr, &srv.fingerprint, &srv.token);
    let address = format!("127.0.0.1:{}", sim.addr.port());
    let cert = svc.ok(
        "POST",
        "/sources/probe",
        Some(json!({"kind": "hyperv", "address": address})),
    );
    let src = svc.ok(
        "POST",
        "/sources",
        Some(
            json!({"kind": "hyperv", "address": address, "username": "Administrator",
                    "password": PASSWORD, "approved_fingerprint": cert["fingerprint"]}),
        ),
    );
    // A URL that is not https://HOST[:PORT]: 422 naming the field.
    let (s, v) = svc.api(
        "PUT",
        "/settings/ingest",
        Some(json!({"url": "http://10.0.0.5"})),
    );
    assert_eq!(s, 422, "{v}");
    assert!(v.to_string().contains("url"), "{v}");
    // A port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let url = format!("https://127.0.0.1:{port}");
    let set = svc.ok("PUT", "/settings/ingest", Some(json!({ "url": url })));
    assert_eq!(set["url"], json!(url));
    assert_eq!(
        svc.ok("GET", "/settings", None)["ingest"]["url"],
        json!(url)
    );
    // The settings page, as a logged-in browser sees it (askama escapes the slashes).
    let cookie = svc.login_cookie(service::ADMIN_PASSWORD);
    let html = service::pinned_client(&svc.fingerprint, false)
        .get(format!("{}/settings", svc.url))
        .header("cookie", &cookie)
        .send()
        .and_then(|r| r.text())
        .unwrap();
    assert!(
        html.contains(&format!("127.0.0.1:{port}")) && html.contains("Hyper-V push URL"),
        "the settings page does not show the push URL: {}",
        html.lines()
            .filter(|l| l.contains("<h1") || l.contains("<h2") || l.contains("<title"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let job = svc.ok(
        "POST",
        "/jobs",
        Some(json!({"source_id": src["id"], "vm": "web-gen2", "schedule": {"kind": "once"}})),
    );
    let id = job["id"].as_str().unwrap().to_string();
    let failed = svc.wait_job(&id, 60, |j| j["state"] == "failed");
    let err = failed["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        err.contains(&format!("cannot reach the connector's ingest URL {url}"))
            && err.contains(&format!("TCP port {port}"))
            && err.contains(&address),
        "{failed}"
    );
    assert!(sim.checkpoints().is_empty(), "{:?}", sim.checkpoints());
    // The spool limit: below two pushes is refused on its field; 8 MiB is kept.
    let (s, v) = svc.api(
        "PUT",
        "/settings/ingest",
        Some(json!({"url": null, "spool_limit_mib": 4})),
    );
    assert_eq!(s, 422, "{v}");
    assert!(v.to_string().contains("spool_limit_mib"), "{v}");
    assert_eq!(metric(&svc, "godwit_ingest_spool_limit_bytes"), 256 << 20);
    // Cleared URL: the next run (no restart) pushes to the WinRM connection's local address,
    // holding at most 8 MiB of pushed data (the 24 MiB disk does not fit at once).
    let cleared = svc.ok(
        "PUT",
        "/settings/ingest",
        Some(json!({ "url": null, "spool_limit_mib": 8 })),
    );
    assert!(cleared["url"].is_null(), "{cleared}");
    assert_eq!(
        svc.ok("GET", "/settings", None)["ingest"]["spool_limit_mib"],
        json!(8)
    );
    assert_eq!(metric(&svc, "godwit_ingest_spool_limit_bytes"), 8 << 20);
    // The settings page shows it in its field.
    let html = service::pinned_client(&svc.fingerprint, false)
        .get(format!("{}/settings", svc.url))
        .header("cookie", &cookie)
        .send()
        .and_then(|r| r.text())
        .unwrap();
    assert!(
        html.contains(r#"id="spool_limit_mib" name="spool_limit_mib" type="text" value="8""#),
        "the settings page does not show the spool limit"
    );
    svc.ok("POST", &format!("/jobs/{id}/run"), None);
    let done = svc.wait_job(&id, 120, |j| j["state"] == "completed");
    assert_eq!(done["runs_completed"], json!(1), "{done}");
    let events = svc
        .ok("GET", &format!("/jobs/{id}/events"), None)
        .to_string();
    assert!(events.contains("host push:"), "{events}");
    assert!(events.contains("limit 8.0 MiB"), "{events}");
    let peak = metric(&svc, "godwit_ingest_spool_peak_bytes");
    eprintln!("spool peak {peak} bytes under an 8 MiB limit");
    assert!(peak > 0 && peak <= 8 << 20, "spool peak {peak}");
    assert_eq!(metric(&svc, "godwit_ingest_spool_bytes"), 0);
    assert!(sim.checkpoints().is_empty(), "{:?}", sim.checkpoints());
}
