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
//! - Every password check (form, JSON, Basic, the setup code, the current password of a change)
//!   is counted by [`crate::limiter`] before it runs, per client and per account; over the
//!   limit the attempt is answered 429 (with `Retry-After`) without checking anything. Failed
//!   ones are logged through [`crate::audit`] (aggregated per address and minute).
//! - A login lasts while the session is used (idle expiry) but never longer than its absolute
//!   lifetime, and a password change ends every login made before it (see
//!   [`crate::session_store`]).

use crate::{
    AppState,
    backend::{Backend, PasswordCheck, Secret},
    limiter::{ClientKey, DEVICE_COOKIE},
};
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
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};
use tower_sessions::Session;

/// Session key: `true` once the admin logged in.
pub(crate) const SESSION_AUTH: &str = "auth";
/// Session key: when the admin logged in (ms since the Unix epoch), for the absolute lifetime.
pub(crate) const SESSION_AUTH_AT: &str = "auth_at";
/// Session key: the synchronizer CSRF token (64 hex digits).
pub(crate) const SESSION_CSRF: &str = "csrf";
/// Request header that carries the CSRF token for API calls.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Form field that carries the CSRF token.
pub const CSRF_FIELD: &str = "csrf";
/// Largest form body read while looking for the CSRF field.
const MAX_FORM_BYTES: usize = 256 * 1024;
/// How long the device cookie is kept by the browser (one year).
const DEVICE_COOKIE_MAX_AGE: u64 = 365 * 24 * 3600;

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

/// After a successful login: a new session id (no fixation), the time of the login and a new
/// CSRF token (returned).
pub(crate) async fn log_in(session: &Session) -> Result<String, tower_sessions::session::Error> {
    session.cycle_id().await?;
    session.insert(SESSION_AUTH, true).await?;
    session
        .insert(SESSION_AUTH_AT, crate::session_store::now_ms())
        .await?;
    let token = new_token();
    session.insert(SESSION_CSRF, &token).await?;
    Ok(token)
}

/// Logged in, and the login still holds (not past its absolute lifetime, not from before a
/// password change).
pub(crate) async fn is_logged_in<B>(st: &AppState<B>, session: &Session) -> bool {
    if !matches!(session.get::<bool>(SESSION_AUTH).await, Ok(Some(true))) {
        return false;
    }
    match session.get::<i64>(SESSION_AUTH_AT).await {
        Ok(Some(at)) => st.sessions.login_valid(at),
        _ => false,
    }
}

/// The value of a cookie in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// Whom a password check from this request is counted against (see [`crate::limiter`]).
pub(crate) fn client_key<B>(st: &AppState<B>, ip: IpAddr, headers: &HeaderMap) -> ClientKey {
    st.limiter.client_key(ip, cookie(headers, DEVICE_COOKIE))
}

/// Why a login was not let in.
pub(crate) enum Denied {
    /// The password was checked and is wrong.
    Wrong,
    /// Not checked: the client or the account must wait this long (or the backend was busy).
    Wait(Duration),
}

/// Check `password` as a login: counted first, then checked; a failure is logged (aggregated).
pub(crate) async fn check_login<B: Backend>(
    st: &AppState<B>,
    key: ClientKey,
    ip: IpAddr,
    password: &Secret,
) -> Result<(), Denied> {
    let attempt = st.limiter.begin(key).map_err(|wait| {
        st.audit.note(&crate::audit::REFUSED_LOGIN, ip);
        Denied::Wait(wait)
    })?;
    match st.backend.verify_admin_password(password).await {
        PasswordCheck::Correct => {
            attempt.succeeded();
            Ok(())
        }
        PasswordCheck::Wrong => {
            attempt.failed();
            st.audit.note(&crate::audit::FAILED_LOGIN, ip);
            Err(Denied::Wrong)
        }
        PasswordCheck::Busy => {
            attempt.abandoned();
            st.audit.note(&crate::audit::REFUSED_LOGIN, ip);
            Err(Denied::Wait(Duration::from_secs(1)))
        }
    }
}

/// `Set-Cookie` for a fresh device cookie (a browser that just logged in correctly).
pub(crate) fn device_cookie<B>(st: &AppState<B>) -> Option<HeaderValue> {
    let token = st.limiter.issue_device();
    let secure = if st.secure_cookies { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{DEVICE_COOKIE}={token}; Max-Age={DEVICE_COOKIE_MAX_AGE}; Path=/; HttpOnly; SameSite=Strict{secure}"
    ))
    .ok()
}

/// `resp` with a device cookie added.
pub(crate) fn with_device_cookie<B>(st: &AppState<B>, mut resp: Response) -> Response {
    if let Some(v) = device_cookie(st) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
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
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let retry_after = Duration::from_secs(secs.max(1));
    let message = format!(
        "too many login attempts; try again in {} s",
        retry_after.as_secs()
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

    let mut authed = is_logged_in(&st, &session).await;
    if !authed && matches!(session.get::<bool>(SESSION_AUTH).await, Ok(Some(true))) {
        // A login past its absolute lifetime or from before a password change: forget it.
        let _ = session.flush().await;
    }
    let mut via_basic = false;
    if !authed
        && api
        && let Some(password) = basic_password(req.headers())
    {
        // A verification remembered for a minute (basic_cache.rs): one Argon2 per poller.
        let now = crate::session_store::now_ms();
        if st
            .basic_cache
            .hit(&password, now, |at| st.sessions.login_valid(at))
        {
            authed = true;
            via_basic = true;
        } else {
            let key = client_key(&st, ip, req.headers());
            match check_login(&st, key, ip, &password).await {
                Ok(()) => {
                    st.basic_cache.remember(&password, now);
                    authed = true;
                    via_basic = true;
                }
                Err(Denied::Wait(wait)) => return too_many_attempts(wait, true),
                Err(Denied::Wrong) => {
                    return refusal(StatusCode::UNAUTHORIZED, "unauthorized", "wrong password");
                }
            }
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

/// A handler (or a library under it) that panics answers 500 — JSON under `/api/` — instead of
/// the connection being dropped without an answer; the panic is logged.
pub(crate) async fn catch_panics(req: Request, next: Next) -> Response {
    let api = is_api(req.uri().path());
    match (CatchUnwind(Box::pin(next.run(req)))).await {
        Ok(resp) => resp,
        Err(()) => {
            tracing::error!("a request handler panicked; answered 500");
            let message = "internal error: the request could not be completed";
            if api {
                refusal(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
            } else {
                crate::pages::message_page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal error",
                    message,
                )
            }
        }
    }
}

/// A future whose panic becomes `Err(())`.
struct CatchUnwind<F>(std::pin::Pin<Box<F>>);

impl<F: std::future::Future> std::future::Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let fut = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(_) => std::task::Poll::Ready(Err(())),
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
    fn cookies_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; godwit_device=abc"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, DEVICE_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "godwit"), None);
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_json() {
        use tower::ServiceExt as _;
        async fn boom() -> &'static str {
            panic!("a library under the handler panicked")
        }
        let app = axum::Router::new()
            .route("/api/v1/boom", axum::routing::get(boom))
            .route("/boom", axum::routing::get(boom))
            .layer(axum::middleware::from_fn(catch_panics));
        for (path, ct) in [("/api/v1/boom", "application/json"), ("/boom", "text/html")] {
            let resp = app
                .clone()
                .oneshot(Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
            let got = resp.headers()[header::CONTENT_TYPE].to_str().unwrap();
            assert!(got.starts_with(ct), "{path}: {got}");
        }
    }

    #[test]
    fn token_compare() {
        assert!(tokens_equal("abcd", "abcd"));
        assert!(!tokens_equal("abcd", "abce"));
        assert!(!tokens_equal("abc", "abcd"));
    }
}
