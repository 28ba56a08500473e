//! The checked-in OpenAPI document (webui/openapi.json, served at /api/v1/openapi.json) lists
//! exactly the API routes the router serves: same paths, same methods, nothing missing or extra.

use godwit_webui::{OPENAPI_JSON, route_table, test_backend::TestBackend};
use std::collections::BTreeSet;

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
    // Every schema reference resolves.
    let text = OPENAPI_JSON;
    for (i, _) in text.match_indices("#/components/schemas/") {
        let rest = &text[i + "#/components/schemas/".len()..];
        let name = &rest[..rest.find('"').unwrap()];
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "unresolved schema {name}"
        );
    }
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
