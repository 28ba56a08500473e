//! A small HTTP client for router tests: drives the real `godwit_webui::router` in process
//! (tower `oneshot`), keeps the session cookie like a browser, and can pose as any client IP.

#![allow(dead_code)] // each test file uses a different part

pub mod browser;

use axum::{
    Router,
    body::{Body, to_bytes},
    extract::ConnectInfo,
    http::{HeaderMap, Method, Request, StatusCode, header},
};
use godwit_webui::{WebConfig, router, test_backend::TestBackend};
use std::{net::SocketAddr, sync::Arc};
use tower::ServiceExt;

pub const PASSWORD: &str = "correct-horse-battery";
pub const SETUP_CODE: &str = "4821-1937";

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One browser (one cookie jar) at one client address.
pub struct Client {
    pub app: Router,
    /// The session cookie (`godwit_session=...`).
    pub cookie: Option<String>,
    /// The device cookie a correct login leaves (`godwit_device=...`).
    pub device: Option<String>,
    pub ip: SocketAddr,
}

pub fn app(backend: Arc<TestBackend>) -> Router {
    router(
        backend,
        WebConfig {
            secure_cookies: true,
            ..WebConfig::default()
        },
    )
}

impl Client {
    pub fn new(app: &Router, ip: &str) -> Client {
        Client {
            app: app.clone(),
            cookie: None,
            device: None,
            ip: format!("{ip}:40000").parse().unwrap(),
        }
    }

    pub async fn send(&mut self, mut req: Request<Body>) -> Resp {
        req.extensions_mut().insert(ConnectInfo(self.ip));
        let jar: Vec<&str> = [&self.cookie, &self.device]
            .into_iter()
            .filter_map(|c| c.as_deref())
            .collect();
        if !jar.is_empty() {
            req.headers_mut()
                .insert(header::COOKIE, jar.join("; ").parse().unwrap());
        }
        let resp = self.app.clone().oneshot(req).await.unwrap();
        for sc in resp.headers().get_all(header::SET_COOKIE) {
            let sc = sc.to_str().unwrap();
            let pair = sc.split(';').next().unwrap().to_owned();
            let slot = if pair.starts_with("godwit_device=") {
                &mut self.device
            } else {
                &mut self.cookie
            };
            if sc.contains("Max-Age=0") {
                *slot = None;
            } else {
                *slot = Some(pair);
            }
        }
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = to_bytes(resp.into_body(), 16 * 1024 * 1024).await.unwrap();
        Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    pub async fn get(&mut self, path: &str) -> Resp {
        self.send(Request::get(path).body(Body::empty()).unwrap())
            .await
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Resp {
        let mut b = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(b.body(Body::from(body.to_owned())).unwrap())
            .await
    }

    /// A form POST as a browser sends it (`fields` are URL-encoded here).
    pub async fn post_form(&mut self, path: &str, fields: &[(&str, &str)]) -> Resp {
        let body = fields
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        self.request(
            "POST",
            path,
            &[("content-type", "application/x-www-form-urlencoded")],
            &body,
        )
        .await
    }

    /// A form sent with any method (the guard must refuse it the same way).
    pub async fn post_form_method(
        &mut self,
        method: &str,
        path: &str,
        fields: &[(&str, &str)],
    ) -> Resp {
        let body = fields
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        self.request(
            method,
            path,
            &[("content-type", "application/x-www-form-urlencoded")],
            &body,
        )
        .await
    }

    /// The CSRF token of the current session, as the pages carry it.
    pub async fn csrf(&mut self) -> String {
        let r = self.get("/api/v1/session").await;
        assert_eq!(r.status, StatusCode::OK);
        r.json()["csrf_token"].as_str().unwrap().to_owned()
    }

    pub async fn json(&mut self, method: &str, path: &str, body: &str) -> Resp {
        let token = self.csrf().await;
        self.request(
            method,
            path,
            &[
                ("content-type", "application/json"),
                ("x-csrf-token", &token),
            ],
            body,
        )
        .await
    }

    pub async fn login(&mut self, password: &str) -> Resp {
        let token = self.csrf().await;
        self.post_form("/login", &[("csrf", &token), ("password", password)])
            .await
    }
}

pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The route's path with `{id}` replaced.
pub fn concrete(path: &str, id: &str) -> String {
    path.replace("{id}", id)
}
