//! HTTP Basic on the API (issue 21): a poller sending Basic credentials with every request costs
//! one password verification (Argon2 in the service), not one per request; a wrong password is
//! verified (and counted) every time; a password change ends the remembered verification at once.

mod common;

use axum::http::StatusCode;
use common::{Client, PASSWORD, app};
use godwit_webui::test_backend::TestBackend;
use std::sync::Arc;

fn basic(password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("admin:{password}"))
    )
}

async fn poll(app: &axum::Router, password: &str) -> StatusCode {
    // A fresh client each time: no session cookie, Basic alone authenticates.
    let mut c = Client::new(app, "192.0.2.30");
    c.request(
        "GET",
        "/api/v1/jobs",
        &[("authorization", &basic(password))],
        "",
    )
    .await
    .status
}

#[tokio::test]
async fn basic_polls_verify_the_password_once_until_it_changes() {
    let backend = Arc::new(TestBackend::configured(PASSWORD));
    let app = app(backend.clone());
    for _ in 0..20 {
        assert_eq!(poll(&app, PASSWORD).await, StatusCode::OK);
    }
    assert_eq!(
        backend.verifications(),
        1,
        "20 Basic polls with the same password verified it {} times",
        backend.verifications()
    );

    // Wrong passwords are never remembered: each is verified (and counted by the limiter).
    assert_eq!(
        poll(&app, "not-the-password").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        poll(&app, "not-the-password").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(backend.verifications(), 3);

    // The password changes (through the API, with Basic): the old one is refused at once.
    const NEW: &str = "tangerine-orbit-cello";
    let mut c = Client::new(&app, "192.0.2.31");
    let r = c
        .request(
            "POST",
            "/api/v1/setup/password",
            &[
                ("authorization", &basic(PASSWORD)),
                ("content-type", "application/json"),
            ],
            &serde_json::json!({"current_password": PASSWORD, "new_password": NEW,
                                "confirm_password": NEW})
            .to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let before = backend.verifications();
    assert_eq!(poll(&app, PASSWORD).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        backend.verifications(),
        before + 1,
        "the old password was answered from memory after the change"
    );
    for _ in 0..5 {
        assert_eq!(poll(&app, NEW).await, StatusCode::OK);
    }
    assert_eq!(backend.verifications(), before + 2);
}
