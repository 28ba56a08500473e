//! Pages and API over the web layer's test double backend: the wizard walked with forms, field
//! errors next to their fields, step order enforced, status codes from the backend's refusals,
//! and no secret in any page or API answer.

mod common;

use axum::http::StatusCode;
use common::{Client, PASSWORD, SETUP_CODE, app, concrete};
use godwit_webui::{route_table, test_backend::TestBackend};
use std::sync::Arc;

const TOKEN: &str = "pairing-token-0123456789";
const SOURCE_PASSWORD: &str = "vsphere-pass-987654";
const FP: &str = "SHA256:abababababababababababababababababababababababababababababababab";

async fn form(c: &mut Client, path: &str, fields: &[(&str, &str)]) -> common::Resp {
    let t = c.csrf().await;
    let mut all = vec![("csrf", t.as_str())];
    all.extend_from_slice(fields);
    c.post_form(path, &all).await
}

/// The error paragraph right after the field, and the field pointing at it.
fn assert_field_error(body: &str, field: &str, message_part: &str) {
    let marker = format!("<p class=\"error\" id=\"{field}-error\">");
    let at = body
        .find(&marker)
        .unwrap_or_else(|| panic!("no error for {field} in page:\n{body}"));
    let text = &body[at + marker.len()..];
    let text = &text[..text.find("</p>").unwrap()];
    assert!(
        text.contains(message_part),
        "{field}: error {text:?} lacks {message_part:?}"
    );
    if !matches!(field, "approve" | "approved_fingerprint" | "mode" | "kind") {
        let input = body
            .find(&format!("id=\"{field}\""))
            .unwrap_or_else(|| panic!("no input {field}"));
        let input_end = input + body[input..].find('>').unwrap();
        assert!(
            body[input..input_end].contains(&format!("aria-describedby=\"{field}-error\"")),
            "{field} input not linked to its error"
        );
        assert!(input < at, "error for {field} is not after its input");
    }
}

/// Walks the wizard through its forms; returns the logged-in client.
async fn walk_wizard(c: &mut Client) {
    let r = c.get("/").await;
    assert_eq!(r.location(), "/login");
    let r = c.get("/login").await;
    assert_eq!(
        r.location(),
        "/setup/password",
        "no password yet: wizard first"
    );

    let r = form(
        c,
        "/setup/password",
        &[
            ("setup_code", SETUP_CODE),
            ("new_password", PASSWORD),
            ("confirm_password", PASSWORD),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(c.get("/setup").await.location(), "/setup/network");

    let r = form(
        c,
        "/setup/network",
        &[
            ("hostname", "godwit-01"),
            ("mode", "static"),
            ("address", "192.0.2.10/24"),
            ("gateway", "192.0.2.1"),
            ("dns_servers", "192.0.2.53, 192.0.2.54"),
            ("ntp_servers", "ntp.example"),
            ("proxy", ""),
        ],
    )
    .await;
    assert_eq!(r.location(), "/setup/staging", "{}", r.body);

    let r = form(
        c,
        "/setup/staging",
        &[
            ("kind", "server"),
            ("address", "192.0.2.20"),
            ("fingerprint", FP),
            ("token", TOKEN),
        ],
    )
    .await;
    assert_eq!(r.location(), "/setup/sources", "{}", r.body);

    let r = form(
        c,
        "/setup/sources/probe",
        &[("kind", "vsphere"), ("address", "vcenter.example")],
    )
    .await;
    assert_eq!(r.location(), "/setup/sources");
    let page = c.get("/setup/sources").await.body;
    assert!(page.contains(godwit_webui::test_backend::TEST_FINGERPRINT));
    assert!(page.contains("CN=vcenter.example"));
    let r = form(
        c,
        "/setup/sources/add",
        &[
            ("kind", "vsphere"),
            ("address", "vcenter.example"),
            (
                "approved_fingerprint",
                godwit_webui::test_backend::TEST_FINGERPRINT,
            ),
            ("approve", "yes"),
            ("username", "administrator@vsphere.local"),
            ("password", SOURCE_PASSWORD),
        ],
    )
    .await;
    assert_eq!(r.location(), "/setup/sources", "{}", r.body);
    let r = form(c, "/setup/checks", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("offset 2.4 s") && r.body.contains("Clock offset over 1 s"));
    let r = form(c, "/setup/finish", &[]).await;
    assert_eq!(r.location(), "/setup/done");
    assert_eq!(c.get("/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn wizard_walk_then_every_page_renders_without_a_secret() {
    let backend =
        Arc::new(TestBackend::new(SETUP_CODE).with_job_duration(std::time::Duration::ZERO));
    let app = app(backend.clone());
    let mut c = Client::new(&app, "198.51.100.1");
    walk_wizard(&mut c).await;

    // A job and an export so that every page has content.
    let r = form(
        &mut c,
        "/jobs",
        &[
            ("source_id", "src-404"),
            ("vm", "web-01"),
            ("schedule", "once"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(
        r.body.contains("no source src-404"),
        "refusal shown: {}",
        r.body
    );
    let r = form(
        &mut c,
        "/jobs",
        &[
            ("source_id", "src-1"),
            ("vm", "web-01"),
            ("schedule", "once"),
            ("hours", ""),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let job_path = r.location().to_owned();
    let job_id = job_path.trim_start_matches("/jobs/").to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let r = form(
        &mut c,
        "/exports",
        &[
            ("job_id", &job_id),
            ("disk", "0"),
            ("format", "vhdx"),
            ("destination", "x.vhdx"),
        ],
    )
    .await;
    assert_eq!(r.location(), "/exports", "{}", r.body);

    let export_id = c.get("/api/v1/exports").await.json()[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secrets = backend.secrets_seen();
    assert!(secrets.contains(&TOKEN.to_owned()) && secrets.contains(&SOURCE_PASSWORD.to_owned()));
    let mut pages = 0;
    for r in route_table::<TestBackend>() {
        if r.method != "GET" || r.path == "/api/v1/support-bundle" || r.path == "/support-bundle" {
            continue;
        }
        // Export routes take the export's id.
        let path = if r.path.contains("/exports/{id}") {
            concrete(r.path, &export_id)
        } else {
            concrete(r.path, &job_id)
        };
        let resp = c.get(&path).await;
        assert!(
            resp.status.is_success() || resp.status.is_redirection(),
            "GET {path}: {}",
            resp.status
        );
        for s in &secrets {
            assert!(
                !resp.body.contains(s.as_str()),
                "a secret appears in GET {path}"
            );
        }
        assert!(!resp.body.contains(SETUP_CODE), "setup code in GET {path}");
        // Password inputs never carry a value.
        for (i, _) in resp.body.match_indices("type=\"password\"") {
            let tag_end = i + resp.body[i..].find('>').unwrap();
            let tag_start = resp.body[..i].rfind('<').unwrap();
            assert!(
                !resp.body[tag_start..tag_end].contains("value="),
                "password input with a value in {path}"
            );
        }
        pages += 1;
    }
    assert!(pages > 25, "{pages}");
    let settings = c.get("/settings").await.body;
    assert!(settings.contains("token set"), "token shown as set");
    assert!(settings.contains("password set"));
    // Whether the network settings were applied or only stored is said.
    assert!(
        settings.contains("data-network-state=\"stored\"") && settings.contains("Stored only"),
        "no network status on the settings page"
    );
}

#[tokio::test]
async fn field_errors_are_shown_next_to_their_fields() {
    let app = app(Arc::new(TestBackend::new(SETUP_CODE)));
    let mut c = Client::new(&app, "198.51.100.2");
    let r = form(
        &mut c,
        "/setup/password",
        &[
            ("setup_code", "nope"),
            ("new_password", "short"),
            ("confirm_password", "short"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    // The policy is checked first: a refused new password checks no setup code.
    assert_field_error(&r.body, "new_password", "at least 12");
    assert!(!r.body.contains("nope"), "setup code echoed");
    // The requirements are on the page before anything is typed.
    assert!(r.body.contains(godwit_webui::password::REQUIREMENTS));
    // A long but common password: refused, saying why.
    let r = form(
        &mut c,
        "/setup/password",
        &[
            ("setup_code", "nope"),
            ("new_password", "password1234"),
            ("confirm_password", "password1234"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_field_error(&r.body, "new_password", "too easy to guess");
    assert_field_error(&r.body, "new_password", "common");
    let r = form(
        &mut c,
        "/setup/password",
        &[
            ("setup_code", "nope"),
            ("new_password", PASSWORD),
            ("confirm_password", PASSWORD),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_field_error(&r.body, "setup_code", "wrong setup code");

    let r = form(
        &mut c,
        "/setup/password",
        &[
            ("setup_code", SETUP_CODE),
            ("new_password", PASSWORD),
            ("confirm_password", PASSWORD),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);

    let r = form(
        &mut c,
        "/setup/network",
        &[
            ("hostname", "bad host"),
            ("mode", "static"),
            ("address", "192.0.2.300"),
            ("gateway", "x"),
            ("dns_servers", "dns.example"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_field_error(&r.body, "hostname", "letters, digits");
    assert_field_error(&r.body, "address", "prefix length");
    assert_field_error(&r.body, "gateway", "IPv4");
    assert_field_error(&r.body, "dns_servers", "not an IP address");
    assert!(
        r.body.contains("value=\"bad host\""),
        "typed values are kept"
    );

    let r = form(
        &mut c,
        "/setup/network",
        &[
            ("hostname", "ok"),
            ("mode", "dhcp"),
            ("dns_servers", "192.0.2.53"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let r = form(
        &mut c,
        "/setup/staging",
        &[
            ("kind", "server"),
            ("address", "h"),
            ("fingerprint", "SHA256:12"),
            ("token", TOKEN),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_field_error(&r.body, "fingerprint", "64 hex digits");
    assert!(!r.body.contains(TOKEN), "token echoed back");

    // The API reports the same as 422 with field names.
    let r = c
        .json(
            "PUT",
            "/api/v1/settings/network",
            r#"{"hostname":"bad host","mode":"dhcp","dns_servers":[],"ntp_servers":[],"proxy":null}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let j = r.json();
    assert_eq!(j["kind"], "invalid");
    let fields: Vec<&str> = j["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    // DHCP brings its own DNS servers: an empty list is fine (the service's rule, now the test
    // backend's too), so only the host name is named.
    assert_eq!(fields, ["hostname"]);
    // A body of the wrong shape is a 422 naming the problem, not JSON at all a 400.
    let r = c
        .json("PUT", "/api/v1/settings/network", r#"{"hostname":1}"#)
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json()["fields"][0]["field"], "body");
    let r = c.json("PUT", "/api/v1/settings/network", "{").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_wizard_enforces_step_order() {
    let app = app(Arc::new(TestBackend::with_password(PASSWORD, SETUP_CODE)));
    let mut c = Client::new(&app, "198.51.100.3");
    assert_eq!(c.login(PASSWORD).await.location(), "/");
    assert_eq!(
        c.get("/").await.location(),
        "/setup",
        "dashboard waits for setup"
    );
    assert_eq!(c.get("/setup").await.location(), "/setup/network");
    for later in [
        "/setup/staging",
        "/setup/sources",
        "/setup/checks",
        "/setup/done",
    ] {
        assert_eq!(c.get(later).await.location(), "/setup/network", "{later}");
    }
    let r = form(&mut c, "/setup/finish", &[]).await;
    assert_eq!(r.location(), "/setup/network", "finish before the steps");
    let r = c.json("POST", "/api/v1/setup/finish", "").await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    // The password step stays reachable (to change it) and shows "current password".
    let r = c.get("/setup/password").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("id=\"current_password\"") && !r.body.contains("id=\"setup_code\""));
}

#[tokio::test]
async fn api_status_codes_follow_the_backend_refusals() {
    let app = app(Arc::new(TestBackend::configured(PASSWORD)));
    let mut c = Client::new(&app, "198.51.100.4");
    c.login(PASSWORD).await;
    let r = c.get("/api/v1/jobs/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["kind"], "not_found");
    let r = c
        .json(
            "POST",
            "/api/v1/jobs",
            r#"{"source_id":"src-1","vm":"legacy-rdm","schedule":{"kind":"once"}}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    let r = c
        .json(
            "POST",
            "/api/v1/sources/probe",
            r#"{"kind":"vsphere","address":"unreachable.example"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.json()["kind"], "remote");
    let r = c
        .json(
            "POST",
            "/api/v1/jobs",
            r#"{"source_id":"src-1","vm":"web-01","schedule":{"kind":"every_hours","hours":0}}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = c
        .json(
            "POST",
            "/api/v1/jobs",
            r#"{"source_id":"src-1","vm":"web-01","schedule":{"kind":"every_hours","hours":6}}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let r = c
        .json("POST", &format!("/api/v1/jobs/{id}/cancel"), "")
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        c.get(&format!("/api/v1/jobs/{id}")).await.json()["state"],
        "cancelled"
    );
    let r = c.json("DELETE", &format!("/api/v1/jobs/{id}"), "").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = c.json("DELETE", &format!("/api/v1/jobs/{id}"), "").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = c.get("/api/v1/nonexistent").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Pages show refusals in place: a 409 from the backend on the inventory form.
    let r = form(
        &mut c,
        "/jobs",
        &[
            ("source_id", "src-1"),
            ("vm", "legacy-rdm"),
            ("schedule", "once"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.body.contains("not eligible"), "{}", r.body);
    let r = c.get("/support-bundle").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers.get("content-type").unwrap(), "application/gzip");
}

#[tokio::test]
async fn a_source_is_added_only_after_explicit_approval() {
    let app = app(Arc::new(TestBackend::configured(PASSWORD)));
    let mut c = Client::new(&app, "198.51.100.5");
    c.login(PASSWORD).await;
    form(
        &mut c,
        "/setup/sources/probe",
        &[("kind", "hyperv"), ("address", "hv1.example:5986")],
    )
    .await;
    let fields = [
        ("kind", "hyperv"),
        ("address", "hv1.example:5986"),
        (
            "approved_fingerprint",
            godwit_webui::test_backend::TEST_FINGERPRINT,
        ),
        ("username", "CORP\\svc"),
        ("password", SOURCE_PASSWORD),
    ];
    let r = form(&mut c, "/setup/sources/add", &fields).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_field_error(&r.body, "approve", "tick this box");
    assert!(r.body.contains("CORP\\svc"), "user name kept");
    assert!(!r.body.contains(SOURCE_PASSWORD));
    let settings = c.get("/api/v1/settings").await.json();
    assert_eq!(
        settings["sources"].as_array().unwrap().len(),
        1,
        "not added"
    );
    // A wrong login is the remote's refusal (502), shown above the form.
    let mut bad = fields.to_vec();
    bad.push(("approve", "yes"));
    bad[4] = ("password", "wrong-password");
    let r = form(&mut c, "/setup/sources/add", &bad).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(r.body.contains("login refused"));
    let mut good = fields.to_vec();
    good.push(("approve", "yes"));
    let r = form(&mut c, "/setup/sources/add", &good).await;
    assert_eq!(r.location(), "/setup/sources");
    let settings = c.get("/api/v1/settings").await.json();
    assert_eq!(settings["sources"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn the_settings_page_shows_the_https_certificate_and_takes_an_upload() {
    let backend = Arc::new(TestBackend::configured(PASSWORD));
    let app = app(backend.clone());
    let mut c = Client::new(&app, "198.51.100.9");
    c.login(PASSWORD).await;
    let page = c.get("/settings").await.body;
    assert!(page.contains("HTTPS certificate"), "{page}");
    assert!(page.contains("generated at first start"), "{page}");
    let before = c.get("/api/v1/settings/certificate").await.json();
    assert_eq!(before["uploaded"], false);
    assert!(page.contains(before["fingerprint"].as_str().unwrap()));
    // The test double's generated certificate ends in 12 days: the page says what happens.
    assert!(page.contains("id=\"https-renewal-due\""), "{page}");
    assert!(page.contains("expires in 12 days"), "{page}");
    assert!(page.contains("generated automatically"), "{page}");
    // The password policy is stated under the field.
    assert!(
        page.contains(godwit_webui::password::REQUIREMENTS),
        "{page}"
    );

    let cert = "-----BEGIN CERTIFICATE-----\nQUJDREVG\n-----END CERTIFICATE-----\n";
    let bad_key =
        "-----BEGIN PRIVATE KEY-----\nMISMATCH-secret-key-material\n-----END PRIVATE KEY-----\n";
    // A key of another certificate: the error sits next to the key field, the pasted chain is
    // shown again, the key is not.
    let r = form(
        &mut c,
        "/settings/certificate",
        &[("certificate_pem", cert), ("private_key_pem", bad_key)],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_field_error(&r.body, "private_key_pem", "does not belong");
    assert!(
        r.body.contains("QUJDREVG"),
        "the chain is kept in its field"
    );
    assert!(
        !r.body.contains("MISMATCH-secret-key-material"),
        "key echoed"
    );
    // An expired certificate: its field.
    let expired = "-----BEGIN CERTIFICATE-----\nEXPIRED\n-----END CERTIFICATE-----\n";
    let good_key = "-----BEGIN PRIVATE KEY-----\ngood-secret-key\n-----END PRIVATE KEY-----\n";
    let r = form(
        &mut c,
        "/settings/certificate",
        &[("certificate_pem", expired), ("private_key_pem", good_key)],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_field_error(&r.body, "certificate_pem", "expired");

    // Accepted: back to the settings, which now show the uploaded certificate.
    let r = form(
        &mut c,
        "/settings/certificate",
        &[("certificate_pem", cert), ("private_key_pem", good_key)],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.location(), "/settings?saved=certificate");
    let after = c.get("/api/v1/settings/certificate").await.json();
    assert_eq!(after["uploaded"], true);
    assert_ne!(after["fingerprint"], before["fingerprint"]);
    let page = c.get("/settings?saved=certificate").await.body;
    assert!(page.contains(after["fingerprint"].as_str().unwrap()));
    assert!(page.contains("Example Test CA"));
    assert!(!page.contains("good-secret-key"), "key shown");

    // The API refuses with 422 naming the field; without CSRF it is refused outright.
    let r = c
        .json(
            "PUT",
            "/api/v1/settings/certificate",
            r#"{"certificate_pem":"not pem","private_key_pem":"nor this"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json()["fields"][0]["field"], "certificate_pem");
    let r = c
        .request(
            "PUT",
            "/api/v1/settings/certificate",
            &[("content-type", "application/json")],
            r#"{"certificate_pem":"x","private_key_pem":"y"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        backend
            .secrets_seen()
            .iter()
            .any(|s| s.contains("good-secret-key")),
        "the key reached the backend as a secret"
    );
}

#[tokio::test]
async fn an_scvmm_host_certificate_is_approved_on_the_settings_page() {
    let app = app(Arc::new(TestBackend::configured(PASSWORD)));
    let mut c = Client::new(&app, "198.51.100.11");
    c.login(PASSWORD).await;
    form(
        &mut c,
        "/setup/sources/probe",
        &[("kind", "scvmm"), ("address", "vmm.example")],
    )
    .await;
    let r = form(
        &mut c,
        "/setup/sources/add",
        &[
            ("kind", "scvmm"),
            ("address", "vmm.example"),
            (
                "approved_fingerprint",
                godwit_webui::test_backend::TEST_FINGERPRINT,
            ),
            ("approve", "yes"),
            ("username", "CORP\\vmmsvc"),
            ("password", SOURCE_PASSWORD),
        ],
    )
    .await;
    assert_eq!(r.location(), "/setup/sources", "{}", r.body);
    let settings = c.get("/api/v1/settings").await.json();
    let id = settings["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "scvmm")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let action = format!("/settings/sources/{id}/hosts");
    let page = c.get("/settings").await.body;
    assert!(page.contains(&format!("action=\"{action}\"")), "{page}");
    assert!(
        !page.contains("action=\"/settings/sources/src-1/hosts\""),
        "a vSphere source has no host pins"
    );

    // A malformed fingerprint: the error sits next to that source's fingerprint field, with
    // what was typed kept; nothing is pinned.
    let host = "hv7.corp.example";
    let r = form(
        &mut c,
        &action,
        &[("host", host), ("approved_fingerprint", "SHA256:12zz")],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    let field = format!("pin-{id}-approved_fingerprint");
    let err = r
        .body
        .find(&format!("<p class=\"error\" id=\"{field}-error\">"))
        .unwrap_or_else(|| panic!("no fingerprint error:\n{}", r.body));
    assert!(r.body[err..].contains("64 hex digits"));
    let input = r.body.find(&format!("id=\"{field}\"")).unwrap();
    let input_tag = &r.body[input..input + r.body[input..].find('>').unwrap()];
    assert!(input_tag.contains(&format!("aria-describedby=\"{field}-error\"")));
    assert!(input_tag.contains("value=\"SHA256:12zz\""), "{input_tag}");
    assert!(input < err, "the error follows its field");
    assert!(r.body.contains(&format!("value=\"{host}\"")), "host kept");
    let settings = c.get("/api/v1/settings").await.json();
    assert!(
        !settings.to_string().contains("host_pins"),
        "nothing pinned"
    );

    // Without the CSRF token: refused outright.
    let fp = "SHA256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let r = c
        .post_form(&action, &[("host", host), ("approved_fingerprint", fp)])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(!c.get("/settings").await.body.contains(host));

    // Accepted: back to the settings, which list the pin; the API shows the same pin.
    let r = form(
        &mut c,
        &action,
        &[("host", host), ("approved_fingerprint", fp)],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.location(), "/settings?saved=host");
    let page = c.get("/settings?saved=host").await.body;
    // Shown in the one fingerprint format (issue 18): upper-case pairs with colons.
    let upper = godwit_webui::validate::Fingerprint::display(fp).replace("SHA256:", "");
    assert!(page.contains(&format!("<td>{host}</td>")), "{page}");
    assert!(page.contains(&upper), "{page}");
    let settings = c.get("/api/v1/settings").await.json();
    let src = settings["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(src["host_pins"][0]["host"], host);
    assert_eq!(
        src["host_pins"][0]["fingerprint"],
        format!("SHA256:{upper}")
    );

    // The same command over the API on a vSphere source is a conflict, shown above the form.
    let r = form(
        &mut c,
        "/settings/sources/src-1/hosts",
        &[("host", host), ("approved_fingerprint", fp)],
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.body.contains("not an SCVMM source"), "{}", r.body);
}
