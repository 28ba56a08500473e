//! Exports over the API and the exports page, against the test double: destinations outside
//! the export folder refused on the field (422), downloads with Content-Length, the file's
//! SHA-256 in `Digest` / `Repr-Digest` / `X-Checksum-SHA256`, ranges that resume a broken
//! download (206, `If-Range`, 416), the download link and delete form on the page, and
//! deleting an export (CSRF-protected, its file gone).

mod common;

use axum::{
    body::{Body, to_bytes},
    extract::ConnectInfo,
    http::{Request, StatusCode, header},
};
use base64::Engine as _;
use common::{Client, PASSWORD, app};
use godwit_webui::test_backend::{EXPORT_FILE_BYTES, TestBackend, export_bytes};
use sha2::{Digest, Sha256};
use std::{sync::Arc, time::Duration};
use tower::ServiceExt;

/// A request as the admin with HTTP Basic; the raw body.
async fn basic(
    app: &axum::Router,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("admin:{PASSWORD}"));
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Basic {auth}"))
        .header(header::CONTENT_TYPE, "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let mut req = b.body(Body::from(body.to_owned())).unwrap();
    req.extensions_mut()
        .insert(ConnectInfo::<std::net::SocketAddr>(
            "192.0.2.9:4000".parse().unwrap(),
        ));
    let resp = app.clone().oneshot(req).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = to_bytes(resp.into_body(), 64 << 20).await.unwrap().to_vec();
    (status, headers, bytes)
}

fn hv(h: &axum::http::HeaderMap, name: &str) -> String {
    h.get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// A configured test backend with one finished job; returns the app and the job id.
async fn with_job() -> (axum::Router, String) {
    let backend =
        Arc::new(TestBackend::configured(PASSWORD).with_job_duration(Duration::from_millis(50)));
    let app = app(backend);
    let (s, _, b) = basic(
        &app,
        "POST",
        "/api/v1/jobs",
        &[],
        r#"{"source_id":"src-1","vm":"web-01","schedule":{"kind":"once"}}"#,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let job: serde_json::Value = serde_json::from_slice(&b).unwrap();
    // The double "snapshots" for 300 ms, then "transfers" for the job duration.
    tokio::time::sleep(Duration::from_millis(600)).await;
    (app, job["id"].as_str().unwrap().to_owned())
}

async fn export(app: &axum::Router, job: &str, dest: &str) -> (StatusCode, serde_json::Value) {
    let body = serde_json::json!({"job_id": job, "disk": 0, "format": "raw", "destination": dest});
    let (s, _, b) = basic(app, "POST", "/api/v1/exports", &[], &body.to_string()).await;
    (s, serde_json::from_slice(&b).unwrap_or_default())
}

#[tokio::test]
async fn destinations_outside_the_export_folder_are_refused_on_the_field() {
    let (app, job) = with_job().await;
    for bad in [
        "/etc/x",
        "../x",
        "a/../../b",
        "/var/lib/godwit/exportsX/a",
        "",
    ] {
        let (s, v) = export(&app, &job, bad).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}: {v}");
        assert_eq!(v["fields"][0]["field"], "destination", "{bad:?}: {v}");
    }
    let (s, v) = export(&app, &job, "web-01.raw").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["destination"], "/var/lib/godwit/exports/web-01.raw");
    // Never over an existing file.
    let (s, v) = export(&app, &job, "/var/lib/godwit/exports/web-01.raw").await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["fields"][0]["message"]
            .as_str()
            .unwrap()
            .contains("exists"),
        "{v}"
    );
}

#[tokio::test]
async fn a_download_has_its_length_and_digest_and_resumes_with_a_range() {
    let (app, job) = with_job().await;
    let (s, v) = export(&app, &job, "dl.raw").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(v["downloadable"], true, "{v}");
    let want = export_bytes(&id);
    assert_eq!(want.len(), EXPORT_FILE_BYTES);
    let sha = Sha256::digest(&want);
    let url = format!("/api/v1/exports/{id}/download");

    let (s, h, body) = basic(&app, "GET", &url, &[], "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(hv(&h, "content-length"), want.len().to_string());
    assert!(body == want, "the download is not the file");
    assert_eq!(hv(&h, "x-checksum-sha256"), hex::encode(sha));
    let b64 = base64::engine::general_purpose::STANDARD.encode(sha);
    assert_eq!(hv(&h, "digest"), format!("SHA-256={b64}"));
    assert_eq!(hv(&h, "repr-digest"), format!("sha-256=:{b64}:"));
    assert_eq!(hv(&h, "accept-ranges"), "bytes");
    assert!(hv(&h, "content-disposition").contains("filename=\"dl.raw\""));
    let etag = hv(&h, "etag");
    assert_eq!(etag, format!("\"{}\"", hex::encode(sha)));

    // A broken download: the first MiB and a bit, then the rest by Range + If-Range.
    let cut = (1 << 20) + 12_345;
    let (s, h, rest) = basic(
        &app,
        "GET",
        &url,
        &[("range", &format!("bytes={cut}-")), ("if-range", &etag)],
        "",
    )
    .await;
    assert_eq!(s, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        hv(&h, "content-range"),
        format!("bytes {cut}-{}/{}", want.len() - 1, want.len())
    );
    assert_eq!(hv(&h, "content-length"), (want.len() - cut).to_string());
    let mut joined = want[..cut].to_vec();
    joined.extend_from_slice(&rest);
    assert!(
        joined == want,
        "first part + resumed part differ from the file"
    );
    let (s, _, tail) = basic(&app, "GET", &url, &[("range", "bytes=-100")], "").await;
    assert_eq!(s, StatusCode::PARTIAL_CONTENT);
    assert_eq!(tail, want[want.len() - 100..]);
    // Another file than the one partly downloaded: all of it again.
    let (s, _, all) = basic(
        &app,
        "GET",
        &url,
        &[("range", "bytes=10-"), ("if-range", "\"0000\"")],
        "",
    )
    .await;
    assert_eq!((s, all.len()), (StatusCode::OK, want.len()));
    let (s, h, _) = basic(
        &app,
        "GET",
        &url,
        &[("range", &format!("bytes={}-", want.len()))],
        "",
    )
    .await;
    assert_eq!(s, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(hv(&h, "content-range"), format!("bytes */{}", want.len()));
    // Unknown export; an S3 export has no file here.
    let (s, _, _) = basic(&app, "GET", "/api/v1/exports/nope/download", &[], "").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, s3) = export(&app, &job, "s3://bucket/web.raw").await;
    let (s, _, _) = basic(
        &app,
        "GET",
        &format!("/api/v1/exports/{}/download", s3["id"].as_str().unwrap()),
        &[],
        "",
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
}

#[tokio::test]
async fn the_page_links_the_download_and_deletes_with_the_csrf_token() {
    let (app, job) = with_job().await;
    let (_, v) = export(&app, &job, "page.raw").await;
    let id = v["id"].as_str().unwrap().to_owned();
    let mut c = Client::new(&app, "192.0.2.10");
    assert_eq!(c.login(PASSWORD).await.status, StatusCode::SEE_OTHER);
    let page = c.get("/exports").await.body;
    assert!(
        page.contains(&format!("href=\"/api/v1/exports/{id}/download\" download>")),
        "no download link:\n{page}"
    );
    assert!(page.contains(&format!("action=\"/exports/{id}/delete\"")));
    assert!(
        page.contains("12.0 GiB free of 16.0 GiB"),
        "no data space:\n{page}"
    );
    let settings = c.get("/settings").await.body;
    assert!(
        settings.contains("12.0 GiB free of 16.0 GiB"),
        "no data space in settings"
    );
    // The session downloads it too (a GET needs no CSRF token).
    let r = c.get(&format!("/api/v1/exports/{id}/download")).await;
    assert_eq!(r.status, StatusCode::OK);
    // Deleting without the token is refused; with it, the export and its file are gone.
    let r = c.post_form(&format!("/exports/{id}/delete"), &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let token = c.csrf().await;
    let r = c
        .post_form(&format!("/exports/{id}/delete"), &[("csrf", &token)])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let r = c.get(&format!("/api/v1/exports/{id}/download")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let (_, v) = export(&app, &job, "page2.raw").await;
    let (s, _, _) = basic(
        &app,
        "DELETE",
        &format!("/api/v1/exports/{}", v["id"].as_str().unwrap()),
        &[],
        "",
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, b) = basic(&app, "GET", "/api/v1/exports", &[], "").await;
    assert_eq!(s, StatusCode::OK);
    let list: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert!(list.as_array().unwrap().is_empty(), "{list}");
}
