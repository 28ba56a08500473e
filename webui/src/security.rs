//! Who may call what: sessions, the CSRF token, HTTP Basic for scripts, login rate limiting and
//! the security headers. One middleware ([`guard`]) sits in front of every route, so no handler
//! can forget a check.
//!
//! - Every route needs a logged-in session (or, for `/api/v1/*` and `/metrics`, HTTP Basic with
//!   the admin password) except the few in [`public_route`].
//! - Every state-changing request (POST, PUT, PATCH, DELETE) that comes with a session must carry
//!   the session's CSRF token: the `csrf` field of a form, or the `X-CSRF-Token` header. Requests
//!   authenticated by HTTP Basic carry no cookie and need no token (browsers never cache Basic
//!   credentials for this site because it never sends a Basic challenge).
//! - Failed logins (form, JSON, Basic, a wrong setup code) count per client IP; over the limit
//!   every further attempt from that IP is answered 429 until the window has passed.

use crate::{AppState, backend::Backend};
use axum::{
    body::{Body, Bytes},
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Redirect, Response},
};
use base64::Engine as _;
use rand::RngCore as _;
use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Mutex,
    time::{Duration, Instant},
};
use tower_sessions::Session;

/// Session key: `true` once the admin logged in.
pub(crate) const SESSION_AUTH: &str = "auth";
/// Session key: the synchronizer CSRF token (64 hex digits).
pub(crate) const SESSION_CSRF: &str = "csrf";
/// Request header that carries the CSRF token for API calls.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Form field that carries the CSRF token.
pub const CSRF_FIELD: &str = "csrf";
/// Largest form body read while looking for the CSRF field.
const MAX_FORM_BYTES: usize = 256 * 1024;
/// Client IPs tracked by the login limiter at most; beyond, new clients are refused (fail closed).
const MAX_TRACKED_CLIENTS: usize = 100_000;

/// The client's IP as the connection reported it (`ConnectInfo<SocketAddr>`), or 0.0.0.0 when
/// the router was served without connect info (then all clients share one rate-limit bucket).
pub(crate) fn client_ip(req_ext: &axum::http::Extensions) -> IpAddr {
    req_ext
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ci| ci.0.ip())
}

/// Extractor for [`client_ip`].
pub(crate) struct ClientIp(pub IpAddr);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(&parts.extensions)))
    }
}

/// Counts failed logins per client IP over a sliding window.
pub(crate) struct LoginLimiter {
    max_failures: usize,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl LoginLimiter {
    pub(crate) fn new(max_failures_per_minute: u32) -> Self {
        LoginLimiter {
            max_failures: usize::try_from(max_failures_per_minute.max(1)).unwrap_or(usize::MAX),
            window: Duration::from_secs(60),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry_after)` while `ip` has used up its failures in the window.
    pub(crate) fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(times) = map.get_mut(&ip) {
            while times
                .front()
                .is_some_and(|t| now.duration_since(*t) >= self.window)
            {
                times.pop_front();
            }
            if times.len() >= self.max_failures {
                let oldest = times.front().copied().unwrap_or(now);
                let wait = self.window.saturating_sub(now.duration_since(oldest));
                return Err(wait.max(Duration::from_secs(1)));
            }
        } else if map.len() >= MAX_TRACKED_CLIENTS {
            map.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < self.window)
            });
            if map.len() >= MAX_TRACKED_CLIENTS {
                return Err(self.window);
            }
        }
        Ok(())
    }

    pub(crate) fn record_failure(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let times = map.entry(ip).or_default();
        times.push_back(now);
        while times.len() > self.max_failures {
            times.pop_front();
        }
    }
}

/// A fresh random token: 32 bytes as hex.
fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The session's CSRF token, created (and the session saved) on first use.
pub(crate) async fn csrf_token(session: &Session) -> String {
    if let Ok(Some(token)) = session.get::<String>(SESSION_CSRF).await {
        return token;
    }
    let token = new_token();
    // A store error leaves the session without a token; the next state-changing request is
    // then refused (403), which is the safe outcome.
    if let Err(e) = session.insert(SESSION_CSRF, &token).await {
        tracing::warn!(error = %e, "could not store the CSRF token in the session");
    }
    token
}

/// After a successful login: a new session id (no fixation) and a new CSRF token.
pub(crate) async fn log_in(session: &Session) -> Result<String, tower_sessions::session::Error> {
    session.cycle_id().await?;
    session.insert(SESSION_AUTH, true).await?;
    let token = new_token();
    session.insert(SESSION_CSRF, &token).await?;
    Ok(token)
}

pub(crate) async fn is_logged_in(session: &Session) -> bool {
    matches!(session.get::<bool>(SESSION_AUTH).await, Ok(Some(true)))
}

/// Constant-time comparison of two tokens.
fn tokens_equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The value of the `csrf` field in a URL-encoded form body (tokens are hex: no decoding needed).
fn form_csrf_field(body: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == CSRF_FIELD).then_some(v)
    })
}

/// The password of an `Authorization: Basic` header (any user name; the appliance has one admin).
fn basic_password(headers: &HeaderMap) -> Option<crate::backend::Secret> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_user, password) = text.split_once(':')?;
    Some(crate::backend::Secret::new(password))
}

/// Routes reachable without logging in.
fn public_route(method: &Method, path: &str) -> Public {
    match (method.as_str(), path) {
        ("GET" | "POST", "/login") => Public::Always,
        ("GET", "/api/v1/session") | ("POST", "/api/v1/login") => Public::Always,
        ("GET", p) if p.starts_with("/static/") => Public::Always,
        ("GET" | "POST", "/setup/password") | ("POST", "/api/v1/setup/password") => {
            Public::UntilPasswordSet
        }
        _ => Public::No,
    }
}

#[derive(PartialEq, Eq)]
enum Public {
    Always,
    UntilPasswordSet,
    No,
}

fn is_api(path: &str) -> bool {
    path.starts_with("/api/") || path == "/metrics"
}

fn state_changing(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// A JSON error body for refusals made here (not from the backend).
pub(crate) fn refusal(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = serde_json::json!({ "kind": kind, "message": message });
    (status, axum::Json(body)).into_response()
}

pub(crate) fn too_many_attempts(retry_after: Duration, api: bool) -> Response {
    let message = format!(
        "too many failed logins from this address; try again in {} s",
        retry_after.as_secs().max(1)
    );
    let mut resp = if api {
        refusal(StatusCode::TOO_MANY_REQUESTS, "rate_limited", &message)
    } else {
        crate::pages::message_page(StatusCode::TOO_MANY_REQUESTS, "Too many attempts", &message)
    };
    if let Ok(v) = HeaderValue::from_str(&retry_after.as_secs().max(1).to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// Authentication and CSRF for every request; see the module docs.
pub(crate) async fn guard<B: Backend>(
    State(st): State<AppState<B>>,
    session: Session,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let api = is_api(&path);
    let ip = client_ip(req.extensions());

    let mut authed = is_logged_in(&session).await;
    let mut via_basic = false;
    if !authed
        && api
        && let Some(password) = basic_password(req.headers())
    {
        if let Err(wait) = st.limiter.check(ip) {
            return too_many_attempts(wait, true);
        }
        if st.backend.verify_admin_password(&password).await {
            authed = true;
            via_basic = true;
        } else {
            st.limiter.record_failure(ip);
            return refusal(StatusCode::UNAUTHORIZED, "unauthorized", "wrong password");
        }
    }

    let public = match public_route(&method, &path) {
        Public::Always => true,
        Public::UntilPasswordSet => !st.backend.setup_status().await.password_set,
        Public::No => false,
    };

    if !authed && !public {
        if state_changing(&method) {
            return if api {
                refusal(StatusCode::FORBIDDEN, "forbidden", "log in first")
            } else {
                crate::pages::message_page(
                    StatusCode::FORBIDDEN,
                    "Not logged in",
                    "Your session has expired or you are not logged in. Log in and try again.",
                )
            };
        }
        return if api {
            refusal(StatusCode::UNAUTHORIZED, "unauthorized", "log in first")
        } else {
            Redirect::to("/login").into_response()
        };
    }

    if !state_changing(&method) || via_basic {
        return next.run(req).await;
    }

    // State-changing with a (possibly anonymous) session: the CSRF token must match.
    let expected = session.get::<String>(SESSION_CSRF).await.ok().flatten();
    let header_token = req
        .headers()
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));

    let (req, provided) = if header_token.is_some() || !is_form {
        (req, header_token)
    } else {
        let (parts, body) = req.into_parts();
        let bytes: Bytes = match axum::body::to_bytes(body, MAX_FORM_BYTES).await {
            Ok(b) => b,
            Err(_) => {
                return crate::pages::message_page(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Form too large",
                    "The form sent more data than this page accepts.",
                );
            }
        };
        let provided = form_csrf_field(&bytes).map(str::to_owned);
        (Request::from_parts(parts, Body::from(bytes)), provided)
    };

    match (expected, provided) {
        (Some(e), Some(p)) if tokens_equal(&e, &p) => next.run(req).await,
        _ => {
            if api {
                refusal(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "missing or wrong CSRF token (X-CSRF-Token header)",
                )
            } else {
                crate::pages::message_page(
                    StatusCode::FORBIDDEN,
                    "Form expired",
                    "This form is no longer valid (missing or old security token). \
                     Reload the page and send it again.",
                )
            }
        }
    }
}

/// Security headers on every response; `no-store` on everything but the static assets.
pub(crate) async fn headers(req: Request, next: Next) -> Response {
    let cacheable = req.uri().path().starts_with("/static/");
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; \
             form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !cacheable {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    } else if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, max-age=3600"),
        );
    }
    resp
}

/// `Strict-Transport-Security` when the server is HTTPS (cookies Secure).
pub(crate) async fn hsts(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_refuses_after_max_failures_and_only_that_ip() {
        let l = LoginLimiter::new(3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check(a).is_ok());
            l.record_failure(a);
        }
        assert!(l.check(a).is_err());
        assert!(l.check(b).is_ok());
    }

    #[test]
    fn csrf_field_found_among_others() {
        assert_eq!(form_csrf_field(b"a=1&csrf=abc&b=2"), Some("abc"));
        assert_eq!(form_csrf_field(b"a=1&b=2"), None);
        assert_eq!(form_csrf_field(b"xcsrf=1"), None);
        assert_eq!(form_csrf_field(&[0xff, 0xfe]), None);
    }

    #[test]
    fn basic_header_decoded() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YWRtaW46czNjcmV0OmE="),
        );
        assert_eq!(basic_password(&h).unwrap().expose(), "s3cret:a");
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert!(basic_password(&h).is_none());
    }

    #[test]
    fn token_compare() {
        assert!(tokens_equal("abcd", "abcd"));
        assert!(!tokens_equal("abcd", "abce"));
        assert!(!tokens_equal("abc", "abcd"));
    }
}
