//! # godwit-webui
//!
//! The HTTPS setup wizard and dashboard: axum routes, askama templates, static assets, and the
//! REST API. Handlers turn forms and JSON bodies into the typed commands of [`backend`] and hold
//! no business rules; the appliance core implements [`backend::Backend`].
//!
//! The service serves [`router`] over HTTPS. Login rate limiting is per client IP, so serve it
//! with `router.into_make_service_with_connect_info::<std::net::SocketAddr>()`; without that,
//! every client shares one rate-limit bucket.
//!
//! Layout: [`security`] (sessions, CSRF, HTTP Basic, rate limit, headers: one middleware in front
//! of every route), `pages` (HTML: login, wizard, dashboard), `api` (JSON under `/api/v1`,
//! documented by `openapi.json`), `assets` (one CSS and one JS file, compiled in).

mod api;
mod assets;
pub mod audit;
pub mod backend;
mod basic_cache;
pub mod download;
pub mod error;
mod limiter;
mod pages;
pub mod password;
mod routes;
pub mod security;
mod session_store;
pub use session_store::SessionVault;
#[cfg(feature = "test-backend")]
pub mod test_backend;
pub mod validate;

pub use api::OPENAPI_JSON;
pub use routes::RouteInfo;

use axum::{
    Router,
    http::{StatusCode, Uri},
    middleware,
    response::Response,
};
use backend::Backend;
use std::{sync::Arc, time::Duration};
use tower_sessions::{Expiry, SessionManagerLayer, cookie::SameSite, cookie::time};

/// How the web layer is set up by the service that serves it.
#[derive(Clone)]
pub struct WebConfig {
    /// Mark the session cookie `Secure` and send `Strict-Transport-Security`. The real server is
    /// HTTPS only and keeps this on; only tests over plain loopback HTTP turn it off.
    pub secure_cookies: bool,
    /// Failed logins (form, JSON, HTTP Basic, wrong setup code) allowed per client per minute,
    /// counted before the password is checked; further attempts get 429 for a minute, then
    /// longer (see the `limiter` module).
    pub login_failures_per_minute: u32,
    /// Idle time after which a session expires.
    pub session_idle_minutes: u32,
    /// Absolute lifetime of a login, however busy the session (polling does not extend it).
    pub session_max_age: Duration,
    /// Where logged-in sessions are also kept (hashed ids) so that they survive a restart;
    /// `None`: memory only.
    pub session_vault: Option<Arc<dyn SessionVault>>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("secure_cookies", &self.secure_cookies)
            .field("login_failures_per_minute", &self.login_failures_per_minute)
            .field("session_idle_minutes", &self.session_idle_minutes)
            .field("session_max_age", &self.session_max_age)
            .field("session_vault", &self.session_vault.is_some())
            .finish()
    }
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            secure_cookies: true,
            login_failures_per_minute: 5,
            session_idle_minutes: 30,
            session_max_age: Duration::from_secs(12 * 3600),
            session_vault: None,
        }
    }
}

/// Sessions kept at most (anonymous ones are dropped first when full).
const MAX_SESSIONS: usize = 10_000;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "godwit_session";

/// What every handler gets: the backend, the login limiter, the sessions, the event log.
pub(crate) struct AppState<B> {
    pub(crate) backend: Arc<B>,
    pub(crate) limiter: Arc<limiter::LoginLimiter>,
    pub(crate) sessions: session_store::BoundedMemoryStore,
    pub(crate) audit: Arc<audit::EventLog>,
    pub(crate) secure_cookies: bool,
    /// Recent successful HTTP Basic verifications (issue 21: no Argon2 per polled request).
    pub(crate) basic_cache: Arc<basic_cache::BasicCache>,
}

impl<B> Clone for AppState<B> {
    fn clone(&self) -> Self {
        AppState {
            backend: Arc::clone(&self.backend),
            limiter: Arc::clone(&self.limiter),
            sessions: self.sessions.clone(),
            audit: Arc::clone(&self.audit),
            secure_cookies: self.secure_cookies,
            basic_cache: Arc::clone(&self.basic_cache),
        }
    }
}

impl<B: Backend> AppState<B> {
    pub(crate) async fn version(&self) -> String {
        self.backend.setup_status().await.version
    }
}

fn app_routes<B: Backend>() -> routes::Routes<AppState<B>> {
    pages::routes::<B>()
        .merge(api::routes::<B>())
        .merge(assets::routes::<B>())
}

/// Every (method, path) the router serves, pages and API alike.
pub fn route_table<B: Backend>() -> Vec<RouteInfo> {
    let mut t = app_routes::<B>().table;
    t.sort();
    t
}

async fn not_found(uri: Uri) -> Response {
    if uri.path().starts_with("/api/") {
        security::refusal(StatusCode::NOT_FOUND, "not_found", "no such API route")
    } else {
        pages::message_page(
            StatusCode::NOT_FOUND,
            "Page not found",
            "There is no page at this address.",
        )
    }
}

/// The whole web application: pages, `/api/v1`, `/metrics`, static assets, with sessions, CSRF
/// checks, login rate limiting and security headers applied.
pub fn router<B: Backend>(backend: Arc<B>, cfg: WebConfig) -> Router {
    let store = session_store::BoundedMemoryStore::new(
        MAX_SESSIONS,
        cfg.session_vault.clone(),
        cfg.session_max_age,
    );
    let audit = audit::EventLog::new(Duration::from_secs(60));
    audit.spawn_flusher();
    let state = AppState {
        backend,
        limiter: Arc::new(limiter::LoginLimiter::new(cfg.login_failures_per_minute)),
        sessions: store.clone(),
        audit,
        secure_cookies: cfg.secure_cookies,
        basic_cache: Arc::default(),
    };
    let sessions = SessionManagerLayer::new(store)
        .with_name(SESSION_COOKIE)
        .with_secure(cfg.secure_cookies)
        .with_http_only(true)
        .with_same_site(SameSite::Strict)
        .with_path("/")
        .with_expiry(Expiry::OnInactivity(time::Duration::minutes(i64::from(
            cfg.session_idle_minutes.max(1),
        ))));
    let router = app_routes::<B>()
        .router
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            security::guard::<B>,
        ))
        .with_state(state)
        .layer(middleware::from_fn(api::json_errors))
        .layer(sessions)
        .layer(middleware::from_fn(security::catch_panics))
        .layer(middleware::from_fn(security::headers));
    if cfg.secure_cookies {
        router.layer(middleware::from_fn(security::hsts))
    } else {
        router
    }
}
