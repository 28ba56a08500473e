//! The operator pages of issue 18 against the web layer's test double: source names instead of
//! ids, the inventory's search and folder/host tree, bulk job creation (one schedule, each VM's
//! outcome), export progress and cancel, an unknown disk refused on the field, checks kept with
//! their time, "Finish setup" asking to confirm with a failed check and the banner until the
//! checks pass, transfer settings and a source's credentials, and one fingerprint format.

mod common;

use axum::http::StatusCode;
use common::{Client, PASSWORD, app};
use godwit_webui::test_backend::{FULL_STAGING_PREFIX, TEST_FINGERPRINT, TestBackend};
use serde_json::json;
use std::{sync::Arc, time::Duration};

async fn logged_in(backend: TestBackend) -> Client {
    let app = app(Arc::new(backend));
    let mut c = Client::new(&app, "198.51.100.7");
    let r = c.login(PASSWORD).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    c
}

async fn form(c: &mut Client, path: &str, fields: &[(&str, &str)]) -> common::Resp {
    let token = c.csrf().await;
    let mut all = vec![("csrf", token.as_str())];
    all.extend_from_slice(fields);
    c.post_form(path, &all).await
}

#[tokio::test]
async fn inventory_shows_names_searches_filters_by_tree_and_creates_jobs_in_bulk() {
    let mut c = logged_in(TestBackend::configured(PASSWORD)).await;
    let page = c.get("/inventory").await;
    assert_eq!(page.status, StatusCode::OK);
    // The source by its name, not its id.
    assert!(page.body.contains("vcenter.example"), "{}", page.body);
    assert!(!page.body.contains(">src-1<"), "{}", page.body);
    // The tree: folders and hosts with counts.
    assert!(page.body.contains("DC0/vm/Web (3)"), "{}", page.body);
    assert!(page.body.contains("esx-02.example (2)"), "{}", page.body);
    // Disks with sizes, eligibility reasons inline.
    assert!(page.body.contains("Hard disk 2 (4.0 GiB)"));
    assert!(
        page.body
            .contains("physical-mode RDM disk cannot be snapshotted")
    );

    let rows = |b: &str| b.matches("<tr data-vm=").count();
    let found = c.get("/inventory?q=WEB-0").await;
    assert_eq!(rows(&found.body), 3, "{}", found.body);
    let folder = c
        .get("/inventory?source=src-1&folder=DC0%2Fvm%2FDatabases")
        .await;
    assert_eq!(rows(&folder.body), 1);
    assert!(folder.body.contains("data-vm=\"db-01\""));
    let none = c.get("/inventory?q=nothing-like-this").await;
    assert!(none.body.contains("id=\"no-match\""));

    // Bulk: three VMs, one schedule; the ineligible one and a made-up one are refused with
    // their reasons, the others created.
    let r = form(
        &mut c,
        "/jobs/bulk",
        &[
            ("vm", "src-1/web-01"),
            ("vm", "src-1/web-02"),
            ("vm", "src-1/web-03"),
            ("vm", "src-1/legacy-rdm"),
            ("schedule", "every"),
            ("hours", "6"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("3 of 4 jobs created"), "{}", r.body);
    assert!(
        r.body
            .contains("data-vm=\"legacy-rdm\" data-outcome=\"refused\"")
    );
    assert!(r.body.contains("not eligible"));
    let jobs = c.get("/api/v1/jobs").await.json();
    let mut vms: Vec<_> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            assert_eq!(j["schedule"], json!({"kind": "every_hours", "hours": 6}));
            assert_eq!(j["source_name"], "vcenter.example");
            j["vm"].as_str().unwrap().to_string()
        })
        .collect();
    vms.sort();
    assert_eq!(vms, ["web-01", "web-02", "web-03"]);

    // A bad schedule refuses the whole form on its field; nothing ticked is a field error.
    let r = form(
        &mut c,
        "/jobs/bulk",
        &[("vm", "src-1/db-01"), ("schedule", "every"), ("hours", "x")],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("whole number of hours"));
    let r = form(&mut c, "/jobs/bulk", &[("schedule", "once")]).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("select at least one VM"), "{}", r.body);

    // The API: each VM's outcome, the job ids real.
    let r = c
        .json(
            "POST",
            "/api/v1/jobs/bulk",
            r#"{"vms":[{"source_id":"src-1","vm":"db-01"},{"source_id":"src-1","vm":"web-01"},{"source_id":"src-9","vm":"x"}],"schedule":{"kind":"once"}}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let out = r.json();
    assert_eq!(out[0]["outcome"], "created");
    let id = out[0]["job_id"].as_str().unwrap();
    assert_eq!(
        c.get(&format!("/api/v1/jobs/{id}")).await.status,
        StatusCode::OK
    );
    assert_eq!(out[1]["outcome"], "refused");
    assert!(
        out[1]["reason"]
            .as_str()
            .unwrap()
            .contains("has a job already")
    );
    assert_eq!(out[2]["outcome"], "refused");
    assert!(
        out[2]["reason"]
            .as_str()
            .unwrap()
            .contains("no source src-9")
    );
    let r = c
        .json(
            "POST",
            "/api/v1/jobs/bulk",
            r#"{"vms":[{"source_id":"src-1","vm":"a"},{"source_id":"src-1","vm":"a"}],"schedule":{"kind":"once"}}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("selected twice"));
}

/// A finished job on a backend whose exports take `d`; returns the client and the job id.
async fn job_with_replica(d: Duration) -> (Client, String) {
    let mut c = logged_in(
        TestBackend::configured(PASSWORD)
            .with_job_duration(Duration::from_millis(50))
            .with_export_duration(d),
    )
    .await;
    let r = c
        .json(
            "POST",
            "/api/v1/jobs",
            r#"{"source_id":"src-1","vm":"db-01","schedule":{"kind":"once"}}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(500)).await;
    (c, id)
}

#[tokio::test]
async fn exports_show_progress_can_be_cancelled_and_refuse_an_unknown_disk() {
    let (mut c, job) = job_with_replica(Duration::from_secs(4)).await;
    // The form offers the VM's disks with sizes.
    let page = c.get("/exports").await.body;
    assert!(page.contains("db-01: Hard disk 2 (4.0 GiB)"), "{page}");
    assert!(page.contains("db-01 on vcenter.example"), "{page}");

    // An unknown disk: 422 on the field, when the form is posted.
    let r = form(
        &mut c,
        "/exports",
        &[
            ("job_id", &job),
            ("disk", "7"),
            ("format", "vmdk"),
            ("destination", "db.vmdk"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("id=\"disk-error\""), "{}", r.body);
    assert!(r.body.contains("has no disk 7"));
    let r = c
        .json(
            "POST",
            "/api/v1/exports",
            &json!({"job_id": job, "disk": 2, "format": "raw", "destination": "x.raw"}).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json()["fields"][0]["field"], "disk");

    // Progress changes while it runs; cancel stops it and leaves nothing to download.
    let r = c
        .json(
            "POST",
            "/api/v1/exports",
            &json!({"job_id": job, "disk": 1, "format": "vmdk", "destination": "db-1.vmdk"})
                .to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let one = |list: serde_json::Value| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id.as_str())
            .cloned()
            .unwrap()
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    let a = one(c.get("/api/v1/exports").await.json());
    tokio::time::sleep(Duration::from_millis(600)).await;
    let b = one(c.get("/api/v1/exports").await.json());
    assert_eq!(a["state"], "running");
    assert_eq!(a["vm"], "db-01");
    assert!(a["bytes_total"].as_u64().unwrap() > 0);
    assert!(
        b["bytes_done"].as_u64() > a["bytes_done"].as_u64(),
        "{a} then {b}"
    );
    assert!(b["eta_seconds"].as_u64().is_some() && b["throughput_bps"].as_u64() > Some(0));
    let page = c.get("/exports").await.body;
    assert!(page.contains(&format!("action=\"/exports/{id}/cancel\"")));
    let r = form(&mut c, &format!("/exports/{id}/cancel"), &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let e = one(c.get("/api/v1/exports").await.json());
    assert_eq!(e["state"], "cancelled", "{e}");
    assert_eq!(e["downloadable"], false);
    assert_eq!(
        c.get(&format!("/api/v1/exports/{id}/download"))
            .await
            .status,
        StatusCode::CONFLICT
    );
    let r = c
        .json("POST", &format!("/api/v1/exports/{id}/cancel"), "")
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn checks_are_kept_finish_asks_to_confirm_and_the_banner_stays_until_they_pass() {
    let app = app(Arc::new(TestBackend::with_password(PASSWORD, "1111-2222")));
    let mut c = Client::new(&app, "198.51.100.8");
    assert_eq!(c.login(PASSWORD).await.status, StatusCode::SEE_OTHER);
    let r = c
        .json(
            "PUT",
            "/api/v1/settings/network",
            r#"{"hostname":"godwit","mode":"dhcp","dns_servers":[],"ntp_servers":[],"proxy":null}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let staging = json!({"kind": "server", "address": format!("{FULL_STAGING_PREFIX}staging.example:1500"),
        "fingerprint": TEST_FINGERPRINT.trim_start_matches("SHA256:").to_ascii_lowercase().replace(':', ""), "token": "tok-123456"});
    let r = c
        .json("PUT", "/api/v1/settings/staging", &staging.to_string())
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    // One format: typed lower case without colons, shown as vCenter shows it.
    let s = c.get("/api/v1/settings").await.json();
    assert_eq!(s["staging"]["fingerprint"], TEST_FINGERPRINT);
    let r = c
        .json(
            "POST",
            "/api/v1/sources",
            &json!({"kind": "vsphere", "address": "vc.example:443", "username": "u",
                "password": "p-123", "approved_fingerprint": TEST_FINGERPRINT.to_ascii_lowercase()})
            .to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.json()["name"], "vc.example");
    assert_eq!(r.json()["fingerprint"], TEST_FINGERPRINT);

    assert_eq!(
        c.get("/api/v1/checks").await.status,
        StatusCode::NOT_FOUND,
        "no checks yet"
    );
    let r = form(&mut c, "/setup/checks", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    // Revisiting shows the results again, with their time.
    let again = c.get("/setup/checks").await.body;
    assert!(again.contains("id=\"checks-summary\""), "{again}");
    assert!(again.contains("1 failed"), "{again}");
    assert!(again.contains("data-check=\"staging-space\""));
    let report = c.get("/api/v1/checks").await.json();
    assert!(report["at"].as_str().unwrap().ends_with('Z'));
    // Finish with a failed check: asked to confirm, not finished.
    let r = form(&mut c, "/setup/finish", &[]).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.body.contains("id=\"finish-confirm\""), "{}", r.body);
    assert_ne!(
        c.get("/api/v1/setup/status").await.json()["next_step"],
        "done"
    );
    let r = form(&mut c, "/setup/finish", &[("confirm", "yes")]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    // The banner on every dashboard page until the checks pass.
    for page in ["/", "/inventory", "/exports", "/settings"] {
        let b = c.get(page).await.body;
        assert!(b.contains("id=\"checks-banner\""), "{page}: {b}");
    }
    let mut fixed = staging.clone();
    fixed["address"] = json!("staging.example:1500");
    let r = c
        .json("PUT", "/api/v1/settings/staging", &fixed.to_string())
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = form(&mut c, "/settings/checks", &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let b = c.get("/").await.body;
    assert!(!b.contains("id=\"checks-banner\""), "{b}");
    let b = c.get("/settings").await.body;
    assert!(b.contains("0 failed"), "{b}");
}

#[tokio::test]
async fn transfer_settings_and_source_credentials() {
    let mut c = logged_in(TestBackend::configured(PASSWORD)).await;
    let r = form(
        &mut c,
        "/settings/transfer",
        &[
            ("bandwidth_limit_mbps", "250"),
            ("business_hours_limit_mbps", "50"),
            ("business_hours_start", "8"),
            ("business_hours_end", "18"),
            ("max_concurrent_jobs", "4"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let t = c.get("/api/v1/settings/transfer").await.json();
    assert_eq!(t["bandwidth_limit_mbps"], 250);
    assert_eq!(t["business_hours_limit_mbps"], 50);
    assert_eq!(
        c.get("/api/v1/settings").await.json()["max_concurrent_jobs"],
        4
    );
    let page = c.get("/settings").await.body;
    assert!(page.contains("value=\"250\""), "{page}");
    let r = form(
        &mut c,
        "/settings/transfer",
        &[
            ("bandwidth_limit_mbps", "0"),
            ("business_hours_start", "18"),
            ("business_hours_end", "8"),
            ("max_concurrent_jobs", "4"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("id=\"bandwidth_limit_mbps-error\""));
    assert!(r.body.contains("id=\"business_hours_end-error\""));
    let r = c
        .json(
            "PUT",
            "/api/v1/settings/transfer",
            r#"{"bandwidth_limit_mbps":null,"max_concurrent_jobs":65}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);

    // Credentials: a refused login keeps the stored ones; a good one replaces them.
    let r = form(
        &mut c,
        "/settings/sources/src-1/credentials",
        &[
            ("username", "other@vsphere.local"),
            ("password", "wrong-password"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        r.body.contains("id=\"cred-src-1-password-error\""),
        "{}",
        r.body
    );
    let s = c.get("/api/v1/settings").await.json();
    assert_eq!(s["sources"][0]["username"], "administrator@vsphere.local");
    let r = form(
        &mut c,
        "/settings/sources/src-1/credentials",
        &[
            ("username", "other@vsphere.local"),
            ("password", "new-secret-1"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let s = c.get("/api/v1/settings").await.json();
    assert_eq!(s["sources"][0]["username"], "other@vsphere.local");
    assert!(!c.get("/settings").await.body.contains("new-secret-1"));
}

/// The limit in force: the business-hours one Monday to Friday in its hours (the lower of the
/// two), the all-day one otherwise; Mbit/s to bytes/s.
#[test]
fn bandwidth_limit_follows_business_hours() {
    use godwit_webui::backend::TransferSettings;
    let t = TransferSettings {
        bandwidth_limit_mbps: Some(800),
        business_hours_limit_mbps: Some(100),
        business_hours_start: 8,
        business_hours_end: 18,
        max_concurrent_jobs: 2,
    };
    // 2026-12-07T00:00:00Z, a Monday.
    let monday = 1_796_601_600;
    assert_eq!(
        t.limit_bytes_per_sec_at(monday + 9 * 3600 + 1800),
        Some(12_500_000)
    );
    assert_eq!(
        t.limit_bytes_per_sec_at(monday + 20 * 3600),
        Some(100_000_000)
    );
    // Saturday 09:00.
    assert_eq!(
        t.limit_bytes_per_sec_at(monday - 2 * 86_400 + 9 * 3600),
        Some(100_000_000)
    );
    assert_eq!(
        t.limit_bytes_per_sec_at(monday + 18 * 3600),
        Some(100_000_000)
    );
    let none = TransferSettings {
        bandwidth_limit_mbps: None,
        business_hours_limit_mbps: None,
        ..t.clone()
    };
    assert_eq!(none.limit_bytes_per_sec_at(monday + 10 * 3600), None);
    let only_day = TransferSettings {
        bandwidth_limit_mbps: None,
        ..t
    };
    assert_eq!(
        only_day.limit_bytes_per_sec_at(monday + 10 * 3600),
        Some(12_500_000)
    );
    assert_eq!(only_day.limit_bytes_per_sec_at(monday + 22 * 3600), None);
}

#[test]
fn source_names_are_the_host_of_the_address() {
    use godwit_webui::backend::source_name;
    assert_eq!(source_name("vcenter.example"), "vcenter.example");
    assert_eq!(source_name("vcenter.example:443"), "vcenter.example");
    assert_eq!(source_name("10.0.0.5:5986"), "10.0.0.5");
    assert_eq!(source_name("[2001:db8::1]:443"), "2001:db8::1");
    assert_eq!(source_name("2001:db8::1"), "2001:db8::1");
}

/// CBT per source (issue 18, settings): the sources list shows it and switches it; the API
/// answers the same; anything but on/off is refused on the field.
#[tokio::test]
async fn changed_block_tracking_is_switched_per_source() {
    let mut c = logged_in(TestBackend::configured(PASSWORD)).await;
    let page = c.get("/settings").await;
    assert!(
        page.body
            .contains("Changed block tracking: <strong data-field=\"cbt\">on</strong>"),
        "{}",
        page.body
    );
    let r = form(&mut c, "/settings/sources/src-1/cbt", &[("enabled", "off")]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let s = c.get("/api/v1/settings").await.json();
    assert_eq!(s["sources"][0]["cbt"], false, "{s}");
    let page = c.get("/settings").await;
    assert!(
        page.body
            .contains("Changed block tracking: <strong data-field=\"cbt\">off</strong>"),
        "{}",
        page.body
    );
    let r = form(
        &mut c,
        "/settings/sources/src-1/cbt",
        &[("enabled", "maybe")],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("must be on or off"), "{}", r.body);
    let r = c
        .json("PUT", "/api/v1/sources/src-1/cbt", r#"{"enabled":true}"#)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["cbt"], true);
    let r = c
        .json("PUT", "/api/v1/sources/src-9/cbt", r#"{"enabled":true}"#)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
