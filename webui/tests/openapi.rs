//! The checked-in OpenAPI document (webui/openapi.json, served at /api/v1/openapi.json) lists
//! exactly the API routes the router serves: same paths, same methods, nothing missing or extra;
//! it documents the error answers every operation can give and bounds every string it takes;
//! and the router's error answers really are JSON in the documented shape.

mod common;

use axum::http::StatusCode;
use common::{Client, PASSWORD};
use godwit_webui::{OPENAPI_JSON, route_table, test_backend::TestBackend};
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::Arc;

#[test]
fn openapi_document_matches_the_routes() {
    let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().unwrap() {
            documented.insert((method.to_uppercase(), path.clone()));
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path} documents no response"
            );
            // Every {param} in the path is declared.
            for seg in path.split('/').filter(|s| s.starts_with('{')) {
                let name = seg.trim_matches(|c| c == '{' || c == '}');
                let declared = op["parameters"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["name"] == name && p["in"] == "path"));
                assert!(
                    declared,
                    "{method} {path}: path parameter {name} not declared"
                );
            }
        }
    }
    let served: BTreeSet<(String, String)> = route_table::<TestBackend>()
        .into_iter()
        .filter(|r| r.path.starts_with("/api/") || r.path == "/metrics")
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    let missing: Vec<_> = served.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&served).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "routes not documented: {missing:?}; documented but not served: {extra:?}"
    );
    // Every schema and response reference resolves.
    let text = OPENAPI_JSON;
    for kind in ["schemas", "responses"] {
        let prefix = format!("#/components/{kind}/");
        for (i, _) in text.match_indices(&prefix) {
            let rest = &text[i + prefix.len()..];
            let name = &rest[..rest.find('"').unwrap()];
            assert!(
                doc["components"][kind].get(name).is_some(),
                "unresolved {kind} {name}"
            );
        }
    }
}

/// The schema a `$ref` names (or the schema itself).
fn resolve<'a>(doc: &'a Value, s: &'a Value) -> &'a Value {
    match s["$ref"].as_str() {
        Some(r) => {
            let name = r.rsplit('/').next().unwrap();
            &doc["components"]["schemas"][name]
        }
        None => s,
    }
}

/// Every string a request schema takes, with its place: (place, schema).
fn strings<'a>(doc: &'a Value, s: &'a Value, place: &str, out: &mut Vec<(String, &'a Value)>) {
    let s = resolve(doc, s);
    match s["type"].as_str() {
        Some("string") if s.get("enum").is_none() => out.push((place.to_owned(), s)),
        Some("array") => strings(doc, &s["items"], &format!("{place}[]"), out),
        _ => {}
    }
    if let Some(props) = s["properties"].as_object() {
        for (k, v) in props {
            strings(doc, v, &format!("{place}.{k}"), out);
        }
    }
}

#[test]
fn every_operation_documents_its_errors_and_bounds_its_strings() {
    let doc: Value = serde_json::from_str(OPENAPI_JSON).unwrap();
    // The two error shapes.
    let shapes = doc["components"]["schemas"]["Error"]["oneOf"]
        .as_array()
        .expect("Error is oneOf");
    assert_eq!(shapes.len(), 2);
    let mut taken = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            let mut want = vec!["400", "401", "403", "429", "500"];
            if op.get("requestBody").is_some() {
                want.extend(["413", "415", "422"]);
                let body = &op["requestBody"]["content"]["application/json"]["schema"];
                strings(&doc, body, &format!("{method} {path} body"), &mut taken);
            }
            for code in want {
                assert!(
                    responses.contains_key(code),
                    "{method} {path} does not document {code}"
                );
            }
            for (code, r) in responses {
                if !code.starts_with('2') {
                    let name = r["$ref"].as_str().unwrap_or_else(|| {
                        panic!("{method} {path} {code}: not a shared error response")
                    });
                    let r = &doc["components"]["responses"][name.rsplit('/').next().unwrap()];
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/Error",
                        "{method} {path} {code}"
                    );
                }
            }
            for p in op["parameters"].as_array().into_iter().flatten() {
                strings(
                    &doc,
                    &p["schema"],
                    &format!("{method} {path} {}", p["name"]),
                    &mut taken,
                );
            }
        }
    }
    assert!(taken.len() > 40, "only {} strings found", taken.len());
    for (place, s) in &taken {
        assert!(s["maxLength"].is_u64(), "{place} has no maxLength");
    }
    // Ids in paths and the password policy are spelled out.
    let new_pw = &doc["components"]["schemas"]["SetAdminPassword"]["properties"]["new_password"];
    assert_eq!(new_pw["minLength"], 12);
    assert_eq!(new_pw["maxLength"], 128);
    assert!(
        taken
            .iter()
            .any(|(place, s)| place.contains("{id}") && s["pattern"].is_string())
    );
}

/// `body` is one of the two documented error shapes, with a kind the document lists.
fn assert_error_shape(doc: &Value, what: &str, status: StatusCode, ct: &str, body: &str) {
    assert!(
        ct.starts_with("application/json"),
        "{what}: {status} is {ct}: {body}"
    );
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: {e}: {body}"));
    let kind = v["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no kind: {body}"));
    let obj = v.as_object().unwrap();
    let schemas = &doc["components"]["schemas"];
    if kind == "invalid" {
        assert!(
            v["fields"].as_array().is_some_and(|f| !f.is_empty()),
            "{what}: {body}"
        );
        assert_eq!(obj.len(), 2, "{what}: {body}");
    } else {
        let kinds = schemas["Refusal"]["properties"]["kind"]["enum"]
            .as_array()
            .unwrap();
        assert!(
            kinds.iter().any(|k| k == kind),
            "{what}: undocumented kind {kind}"
        );
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {body}"
        );
        assert_eq!(obj.len(), 2, "{what}: {body}");
    }
}

#[tokio::test]
async fn every_api_error_is_json_in_the_documented_shape() {
    let doc: Value = serde_json::from_str(OPENAPI_JSON).unwrap();
    let app = common::app(Arc::new(TestBackend::configured(PASSWORD)));
    let mut c = Client::new(&app, "192.0.2.90");
    c.login(PASSWORD).await;
    let token = c.csrf().await;
    let json = [
        ("content-type", "application/json"),
        ("x-csrf-token", token.as_str()),
    ];
    let big = format!("{{\"vm\":\"{}\"}}", "x".repeat(3 << 20));
    // (what, method, path, headers, body, expected status)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        String,
        StatusCode,
    );
    let cases: Vec<Case> = vec![
        (
            "bad query",
            "GET",
            "/api/v1/inventory?refresh=maybe",
            vec![],
            String::new(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "bad query number",
            "GET",
            "/api/v1/logs?lines=-1",
            vec![],
            String::new(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "bad path",
            "GET",
            "/api/v1/jobs/%FF%FE",
            vec![],
            String::new(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "wrong method",
            "PATCH",
            "/api/v1/jobs",
            json.to_vec(),
            "{}".into(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "not json",
            "POST",
            "/api/v1/jobs",
            vec![("content-type", "text/plain"), ("x-csrf-token", &token)],
            "x".into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "broken json",
            "POST",
            "/api/v1/jobs",
            json.to_vec(),
            "{".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "wrong shape",
            "POST",
            "/api/v1/jobs",
            json.to_vec(),
            "{\"vm\":1}".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "too large",
            "POST",
            "/api/v1/jobs",
            json.to_vec(),
            big,
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "no route",
            "GET",
            "/api/v1/nothing",
            vec![],
            String::new(),
            StatusCode::NOT_FOUND,
        ),
        (
            "not found",
            "GET",
            "/api/v1/jobs/job-404",
            vec![],
            String::new(),
            StatusCode::NOT_FOUND,
        ),
        (
            "weak password",
            "POST",
            "/api/v1/setup/password",
            json.to_vec(),
            serde_json::json!({"current_password": PASSWORD, "new_password": "aaaaaaaaaaaa",
                            "confirm_password": "aaaaaaaaaaaa"})
            .to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (what, method, path, headers, body, want) in cases {
        let r = c.request(method, path, &headers, &body).await;
        assert_eq!(r.status, want, "{what}: {}", r.body);
        let ct = r
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        assert_error_shape(&doc, what, r.status, &ct, &r.body);
        if what == "wrong method" {
            assert!(r.headers.contains_key("allow"), "405 keeps Allow");
        }
        if what == "weak password" {
            let v = r.json();
            assert_eq!(v["fields"][0]["field"], "new_password");
            assert!(
                v["fields"][0]["message"]
                    .as_str()
                    .unwrap()
                    .contains("too easy to guess"),
                "{v}"
            );
        }
    }
    // Without a session: 401, JSON; over the login limit: 429, JSON, Retry-After.
    let mut anon = Client::new(&app, "192.0.2.91");
    let r = anon.get("/api/v1/jobs").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    for _ in 0..6 {
        anon.json("POST", "/api/v1/login", r#"{"password":"nope"}"#)
            .await;
    }
    let r = anon
        .json("POST", "/api/v1/login", r#"{"password":"nope"}"#)
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers.contains_key("retry-after"));
    let ct = r.headers["content-type"].to_str().unwrap().to_owned();
    assert_error_shape(&doc, "rate limited", r.status, &ct, &r.body);
}

#[tokio::test]
async fn the_document_is_served() {
    use axum::{body::Body, http::Request};
    use tower::ServiceExt;
    let backend = std::sync::Arc::new(TestBackend::configured("correct-horse-battery"));
    let app = godwit_webui::router(backend, godwit_webui::WebConfig::default());
    let auth = "Basic YWRtaW46Y29ycmVjdC1ob3JzZS1iYXR0ZXJ5"; // admin:correct-horse-battery
    let resp = app
        .oneshot(
            Request::get("/api/v1/openapi.json")
                .header("authorization", auth)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    assert_eq!(body, OPENAPI_JSON.as_bytes());
}
