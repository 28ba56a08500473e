//! The web layer's guard, tested on the real router over the web layer's test double backend:
//! every route needs a session, state-changing requests need the CSRF token, logins are rate
//! limited per client IP, HTTP Basic works for the API only, cookies and headers are locked down.

mod common;

use axum::http::StatusCode;
use common::{Client, PASSWORD, app, concrete};
use godwit_webui::{route_table, test_backend::TestBackend};
use std::sync::Arc;

/// Reachable without logging in (also checked: everything else is not).
fn is_public(method: &str, path: &str) -> bool {
    matches!(
        (method, path),
        ("GET" | "POST", "/login") | ("GET", "/api/v1/session") | ("POST", "/api/v1/login")
    ) || path.starts_with("/static/")
}

#[tokio::test]
async fn every_route_requires_a_session() {
    let app = app(Arc::new(TestBackend::configured(PASSWORD)));
    let routes = route_table::<TestBackend>();
    assert!(
        routes.len() > 50,
        "route table looks incomplete: {}",
        routes.len()
    );
    let mut checked = 0;
    for r in &routes {
        if is_public(r.method, r.path) {
            continue;
        }
        let mut c = Client::new(&app, "192.0.2.1");
        let path = concrete(r.path, "job-1");
        let resp = c
            .request(
                r.method,
                &path,
                &[("content-type", "application/json")],
                "{}",
            )
            .await;
        let api = path.starts_with("/api/") || path == "/metrics";
        let want = match (r.method, api) {
            ("GET", true) => StatusCode::UNAUTHORIZED,
            ("GET", false) => StatusCode::SEE_OTHER,
            _ => StatusCode::FORBIDDEN,
        };
        assert_eq!(resp.status, want, "{} {} without a session", r.method, path);
        if want == StatusCode::SEE_OTHER {
            assert_eq!(resp.location(), "/login", "{} {}", r.method, path);
        }
        checked += 1;
    }
    assert!(checked > 40);

    // The public ones answer without a session.
    let mut c = Client::new(&app, "192.0.2.1");
    assert_eq!(c.get("/login").await.status, StatusCode::OK);
    assert_eq!(c.get("/static/app.css").await.status, StatusCode::OK);
    // The wizard's password step is public only while no password exists.
    assert_eq!(c.get("/setup/password").await.status, StatusCode::SEE_OTHER);
    let fresh = app_fresh();
    let mut c = Client::new(&fresh, "192.0.2.1");
    assert_eq!(c.get("/setup/password").await.status, StatusCode::OK);
    assert_eq!(c.get("/setup/network").await.status, StatusCode::SEE_OTHER);
}

fn app_fresh() -> axum::Router {
    app(Arc::new(TestBackend::new(common::SETUP_CODE)))
}

#[tokio::test]
async fn state_changing_requests_without_the_csrf_token_are_refused() {
    let app = app(Arc::new(TestBackend::configured(PASSWORD)));
    let mut c = Client::new(&app, "192.0.2.2");
    let r = c.login(PASSWORD).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "login: {}", r.body);
    let token = c.csrf().await;
    let mut checked = 0;
    for r in route_table::<TestBackend>() {
        if r.method == "GET" {
            continue;
        }
        let path = concrete(r.path, "job-1");
        // Form without the field, form with a wrong one, JSON without / with a wrong header.
        let none = c.post_form_method(r.method, &path, &[("x", "1")]).await;
        assert_eq!(
            none.status,
            StatusCode::FORBIDDEN,
            "{} {path} form without csrf",
            r.method
        );
        let wrong = c
            .post_form_method(r.method, &path, &[("csrf", &"0".repeat(64))])
            .await;
        assert_eq!(
            wrong.status,
            StatusCode::FORBIDDEN,
            "{} {path} wrong csrf",
            r.method
        );
        let json = c
            .request(
                r.method,
                &path,
                &[("content-type", "application/json")],
                "{}",
            )
            .await;
        assert_eq!(
            json.status,
            StatusCode::FORBIDDEN,
            "{} {path} json without header",
            r.method
        );
        let bad_header = c
            .request(
                r.method,
                &path,
                &[
                    ("content-type", "application/json"),
                    ("x-csrf-token", "abc"),
                ],
                "{}",
            )
            .await;
        assert_eq!(
            bad_header.status,
            StatusCode::FORBIDDEN,
            "{} {path} bad header",
            r.method
        );
        checked += 1;
    }
    assert!(checked > 20, "only {checked} state-changing routes");
    // Still logged in, and the right token works.
    let ok = c
        .request(
            "POST",
            "/api/v1/checks",
            &[
                ("content-type", "application/json"),
                ("x-csrf-token", &token),
            ],
            "",
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
}

#[tokio::test]
async fn a_token_from_another_session_is_refused() {
    let app = app(Arc::new(TestBackend::configured(PASSWORD)));
    let mut a = Client::new(&app, "192.0.2.3");
    let mut b = Client::new(&app, "192.0.2.4");
    a.login(PASSWORD).await;
    b.login(PASSWORD).await;
    let b_token = b.csrf().await;
    let r = a.post_form("/jobs/job-1/run", &[("csrf", &b_token)]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Login renews the session id and the token (no fixation).
    let mut c = Client::new(&app, "192.0.2.5");
    let before_token = c.csrf().await;
    let before_cookie = c.cookie.clone();
    c.login(PASSWORD).await;
    assert_ne!(c.cookie, before_cookie);
    assert_ne!(c.csrf().await, before_token);
}

#[tokio::test]
async fn logins_are_rate_limited_per_client_and_per_account() {
    let app = app(Arc::new(TestBackend::configured(PASSWORD)));
    let mut c = Client::new(&app, "192.0.2.10");
    for i in 0..5 {
        let r = c.login("wrong-password").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "attempt {i}");
        assert!(r.body.contains("id=\"password-error\""));
    }
    let r = c.login(PASSWORD).await;
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "6th attempt, even right"
    );
    let locked: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((55..=60).contains(&locked), "locked for {locked} s");
    // JSON login and HTTP Basic from the same address are limited too.
    let r = c.json("POST", "/api/v1/login", r#"{"password":"x"}"#).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.json()["kind"], "rate_limited");
    let r = c
        .request(
            "GET",
            "/api/v1/jobs",
            &[("authorization", &basic(PASSWORD))],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    // Another address: the account's back-off makes it wait its turn (a second here), then
    // the right password gets in.
    let mut other = Client::new(&app, "192.0.2.11");
    let r = other.login(PASSWORD).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "account back-off");
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(wait <= 2, "waits {wait} s");
    tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
    assert_eq!(other.login(PASSWORD).await.status, StatusCode::SEE_OTHER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_simultaneous_wrong_logins_checks_at_most_five_passwords() {
    // Each check takes 50 ms, like a hash: the 100 requests overlap.
    let backend = Arc::new(
        TestBackend::configured(PASSWORD).with_verify_delay(std::time::Duration::from_millis(50)),
    );
    let app = app(backend.clone());
    let mut tasks = Vec::new();
    for i in 0..100 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::new(&app, "192.0.2.40");
            if i % 2 == 0 {
                let auth = basic("wrong-password");
                c.request("GET", "/api/v1/jobs", &[("authorization", &auth)], "")
                    .await
                    .status
            } else {
                c.login("wrong-password").await.status
            }
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let checked = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(
        backend.verifications() <= 5,
        "{} checked",
        backend.verifications()
    );
    assert_eq!(checked, backend.verifications());
    assert_eq!(checked + limited, 100, "{statuses:?}");

    // The same from 100 addresses: the account limit holds just as well.
    let before = backend.verifications();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::new(&app, &format!("198.51.100.{i}"));
            c.login("wrong-password").await.status
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        backend.verifications() - before <= 1,
        "{} more checked",
        backend.verifications() - before
    );
}

#[tokio::test]
async fn a_known_browser_is_not_locked_out_by_an_attacker_at_its_address() {
    let app = app(Arc::new(TestBackend::configured(PASSWORD)));
    // The admin logged in from this office address before: the browser keeps a device cookie.
    let mut admin = Client::new(&app, "192.0.2.60");
    assert_eq!(admin.login(PASSWORD).await.status, StatusCode::SEE_OTHER);
    let device = admin.device.clone().expect("a device cookie");
    let set = admin.get("/").await;
    assert_eq!(set.status, StatusCode::OK);
    let t = admin.csrf().await;
    admin.post_form("/logout", &[("csrf", &t)]).await;
    // Someone else behind the same address guesses until locked out, then keeps trying.
    let mut attacker = Client::new(&app, "192.0.2.60");
    for _ in 0..20 {
        attacker.login("guess-guess-guess").await;
    }
    assert_eq!(
        attacker.login(PASSWORD).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The admin's browser gets in at once, and a forged device cookie is just the address.
    assert_eq!(admin.device.as_deref(), Some(device.as_str()));
    assert_eq!(admin.login(PASSWORD).await.status, StatusCode::SEE_OTHER);
    attacker.device = Some("godwit_device=0123".into());
    assert_eq!(
        attacker.login(PASSWORD).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn changing_the_password_ends_every_other_session() {
    let app = app(Arc::new(TestBackend::configured(PASSWORD)));
    let mut a = Client::new(&app, "192.0.2.70");
    let mut b = Client::new(&app, "192.0.2.71");
    a.login(PASSWORD).await;
    b.login(PASSWORD).await;
    assert_eq!(b.get("/api/v1/jobs").await.status, StatusCode::OK);
    const NEW: &str = "tangerine-orbit-cello";
    let t = a.csrf().await;
    let r = a
        .post_form(
            "/settings/password",
            &[
                ("csrf", &t),
                ("current_password", PASSWORD),
                ("new_password", NEW),
                ("confirm_password", NEW),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    // The other browser is logged out; the one that changed it is not.
    assert_eq!(b.get("/api/v1/jobs").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(b.get("/").await.location(), "/login");
    assert_eq!(a.get("/api/v1/jobs").await.status, StatusCode::OK);
    let r = a.get("/api/v1/session").await;
    assert_eq!(r.json()["authenticated"], true);
    // The old password no longer works over Basic; the new one does.
    let r = b
        .request(
            "GET",
            "/api/v1/jobs",
            &[("authorization", &basic(PASSWORD))],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = b
        .request("GET", "/api/v1/jobs", &[("authorization", &basic(NEW))], "")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // A change through the API (Basic, no session) ends the browser's session too.
    const NEWER: &str = "purple elephants juggle quietly";
    let r = b
        .request(
            "POST",
            "/api/v1/setup/password",
            &[
                ("authorization", &basic(NEW)),
                ("content-type", "application/json"),
            ],
            &serde_json::json!({"current_password": NEW, "new_password": NEWER,
                                "confirm_password": NEWER})
            .to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(a.get("/api/v1/jobs").await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_login_ends_at_its_absolute_lifetime_however_busy() {
    let app = godwit_webui::router(
        Arc::new(TestBackend::configured(PASSWORD)),
        godwit_webui::WebConfig {
            session_max_age: std::time::Duration::from_secs(2),
            ..Default::default()
        },
    );
    let mut c = Client::new(&app, "192.0.2.80");
    c.login(PASSWORD).await;
    let start = std::time::Instant::now();
    // The dashboard polls: the idle expiry keeps moving, the absolute one does not.
    while start.elapsed() < std::time::Duration::from_millis(1500) {
        let r = c.get("/api/v1/jobs").await;
        assert_eq!(r.status, StatusCode::OK);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(c.get("/api/v1/jobs").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(c.get("/").await.location(), "/login");
    assert_eq!(
        c.get("/api/v1/session").await.json()["authenticated"],
        false
    );
}

#[tokio::test]
async fn wrong_setup_codes_count_as_failed_logins() {
    let app = app_fresh();
    let mut c = Client::new(&app, "192.0.2.12");
    for _ in 0..5 {
        let t = c.csrf().await;
        let r = c
            .post_form(
                "/setup/password",
                &[
                    ("csrf", &t),
                    ("setup_code", "0000-0000"),
                    ("new_password", PASSWORD),
                    ("confirm_password", PASSWORD),
                ],
            )
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    }
    let t = c.csrf().await;
    let r = c
        .post_form(
            "/setup/password",
            &[
                ("csrf", &t),
                ("setup_code", common::SETUP_CODE),
                ("new_password", PASSWORD),
                ("confirm_password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
}

fn basic(password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("admin:{password}"))
    )
}

#[tokio::test]
async fn http_basic_works_for_the_api_without_csrf_but_not_for_pages() {
    let app = app(Arc::new(TestBackend::configured(PASSWORD)));
    let mut c = Client::new(&app, "192.0.2.20");
    let auth = basic(PASSWORD);
    let r = c
        .request("GET", "/api/v1/jobs", &[("authorization", &auth)], "")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = c
        .request(
            "POST",
            "/api/v1/jobs",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            r#"{"source_id":"src-1","vm":"web-01","schedule":{"kind":"once"}}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = c
        .request("GET", "/metrics", &[("authorization", &auth)], "")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("godwit_jobs 1"));
    let r = c.request("GET", "/", &[("authorization", &auth)], "").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "pages need a session");
    let r = c
        .request(
            "GET",
            "/api/v1/jobs",
            &[("authorization", &basic("nope"))],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        !r.headers.contains_key("www-authenticate"),
        "no Basic challenge: browsers must not cache Basic credentials for this site"
    );
}

#[tokio::test]
async fn cookie_and_security_headers() {
    let app = app(Arc::new(TestBackend::configured(PASSWORD)));
    let mut c = Client::new(&app, "192.0.2.30");
    let r = c.get("/login").await;
    let cookie = r.headers.get("set-cookie").unwrap().to_str().unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(cookie.contains(attr), "cookie lacks {attr}: {cookie}");
    }
    assert!(cookie.starts_with("godwit_session="));
    let csp = r
        .headers
        .get("content-security-policy")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(r.headers.get("x-frame-options").unwrap(), "DENY");
    assert_eq!(r.headers.get("cache-control").unwrap(), "no-store");
    assert!(r.headers.contains_key("strict-transport-security"));
    c.login(PASSWORD).await;
    let r = c.get("/api/v1/jobs").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers.get("cache-control").unwrap(), "no-store");
    assert_eq!(r.headers.get("x-content-type-options").unwrap(), "nosniff");
    // Pages reference only local assets (no CDN).
    let page = c.get("/").await;
    assert!(!page.body.contains("http://") && !page.body.contains("https://"));
    // Logging out ends the session.
    let t = c.csrf().await;
    let r = c.post_form("/logout", &[("csrf", &t)]).await;
    assert_eq!(r.location(), "/login");
    assert_eq!(c.get("/").await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn insecure_cookies_only_when_configured() {
    let app = godwit_webui::router(
        Arc::new(TestBackend::configured(PASSWORD)),
        godwit_webui::WebConfig {
            secure_cookies: false,
            ..Default::default()
        },
    );
    let mut c = Client::new(&app, "192.0.2.31");
    let r = c.get("/login").await;
    let cookie = r.headers.get("set-cookie").unwrap().to_str().unwrap();
    assert!(!cookie.contains("Secure"));
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    assert!(!r.headers.contains_key("strict-transport-security"));
}
