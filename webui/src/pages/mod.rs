//! Server-rendered HTML pages: login, the first-run wizard and the dashboard. Handlers parse
//! forms into the backend's commands, render askama templates, and redirect after a successful
//! POST (so a reload never sends a form twice).

mod dashboard;
pub(crate) mod exports;
mod forms;
mod inventory;
mod settings;
mod wizard;
// replication view (issue #18)
mod chart;
mod job;
mod staging_servers; // issue 21

use crate::{
    AppState,
    backend::{Backend, CommandError, SetAdminPassword, WizardStep},
    routes::Routes,
    security,
};
use askama::Template;
use axum::{
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{Html, IntoResponse, Redirect, Response},
};
use std::{net::IpAddr, time::Duration};
use tower_sessions::Session;

pub(crate) fn routes<B: Backend>() -> Routes<AppState<B>> {
    wizard::routes::<B>()
        .merge(dashboard::routes::<B>())
        .merge(exports::routes::<B>())
        .merge(inventory::routes::<B>())
        .merge(settings::routes::<B>())
        .merge(job::routes::<B>())
        .merge(staging_servers::routes::<B>()) // issue 21
}

/// What every page's frame needs.
pub(crate) struct Layout {
    pub title: String,
    /// The session's CSRF token, for the forms on the page (and the logout button).
    pub csrf: String,
    pub logged_in: bool,
    /// The dashboard navigation, with this entry marked current; `None` in the wizard.
    pub nav: Option<&'static str>,
    pub version: String,
    /// Dashboard pages: how many of the last checks failed, while any does (issue 18: a banner
    /// until the checks pass).
    pub checks_failed: usize,
}

impl Layout {
    pub(crate) async fn new<B: Backend>(
        st: &AppState<B>,
        session: &Session,
        title: &str,
        nav: Option<&'static str>,
    ) -> Layout {
        let logged_in = security::is_logged_in(st, session).await;
        let checks_failed = if logged_in && nav.is_some() {
            st.backend.last_checks().await.map_or(0, |r| r.failed())
        } else {
            0
        };
        Layout {
            title: title.to_owned(),
            csrf: security::csrf_token(session).await,
            logged_in,
            nav,
            version: st.version().await,
            checks_failed,
        }
    }

    /// The dashboard's entries: (key, label, href).
    pub fn nav_items(&self) -> &'static [(&'static str, &'static str, &'static str)] {
        &[
            ("dashboard", "Jobs", "/"),
            ("inventory", "Inventory", "/inventory"),
            ("exports", "Exports", "/exports"),
            ("ledger", "Snapshots", "/ledger"),
            ("settings", "Settings", "/settings"),
            ("logs", "Logs", "/logs"),
        ]
    }

    pub fn is_current(&self, key: &str) -> bool {
        self.nav == Some(key)
    }
}

/// Renders `t` with `status`; a template error (a bug) becomes a plain 500.
pub(crate) fn render<T: Template>(status: StatusCode, t: &T) -> Response {
    match t.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "template failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error: a page failed to render",
            )
                .into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    layout: Layout,
    heading: String,
    message: String,
}

/// A page with just a heading and a message (refusals, not-found, errors).
pub(crate) fn message_page(status: StatusCode, heading: &str, message: &str) -> Response {
    render(
        status,
        &MessagePage {
            layout: Layout {
                title: heading.to_owned(),
                csrf: String::new(),
                logged_in: false,
                nav: None,
                version: String::new(),
                checks_failed: 0,
            },
            heading: heading.to_owned(),
            message: message.to_owned(),
        },
    )
}

/// A refusal from the backend shown as a page (for GETs; forms show errors in place).
pub(crate) fn error_page(err: &CommandError) -> Response {
    let heading = match err {
        CommandError::Invalid { .. } => "Invalid request",
        CommandError::NotFound { .. } => "Not found",
        CommandError::Conflict { .. } => "Not possible now",
        CommandError::Remote { .. } => "A remote system failed",
        CommandError::Internal { .. } => "Internal error",
    };
    message_page(crate::error::status_of(err), heading, &err.to_string())
}

pub(crate) fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// `resp` with a `Set-Cookie` added, when there is one.
pub(crate) fn with_cookie(mut resp: Response, cookie: Option<HeaderValue>) -> Response {
    if let Some(v) = cookie {
        resp.headers_mut().append(axum::http::header::SET_COOKIE, v);
    }
    resp
}

/// Where each wizard step lives.
pub(crate) fn step_path(step: WizardStep) -> &'static str {
    match step {
        WizardStep::Password => "/setup/password",
        WizardStep::Network => "/setup/network",
        WizardStep::Staging => "/setup/staging",
        WizardStep::Sources => "/setup/sources",
        WizardStep::Checks => "/setup/checks",
        WizardStep::Done => "/setup/done",
    }
}

pub(crate) enum PasswordRefusal {
    Limited(Duration),
    Refused(CommandError),
}

/// Sets or changes the admin password (shared by the wizard, the settings page and the API).
/// Counted by the login limiter before the backend checks the setup code or the current
/// password (a wrong one counts as a failed login; a refused new password checks nothing and
/// is not counted). A success ends every login made before (other browsers, other sessions)
/// and forgets the device cookies; this session is logged in afresh. Returns the response
/// headers' device cookie for this browser.
pub(crate) async fn apply_password<B: Backend>(
    st: &AppState<B>,
    ip: IpAddr,
    headers: &HeaderMap,
    session: &Session,
    cmd: SetAdminPassword,
) -> Result<Option<HeaderValue>, PasswordRefusal> {
    let key = security::client_key(st, ip, headers);
    let attempt = st.limiter.begin(key).map_err(|wait| {
        st.audit.note(&crate::audit::REFUSED_LOGIN, ip);
        PasswordRefusal::Limited(wait)
    })?;
    match st.backend.set_admin_password(cmd).await {
        Ok(()) => {
            attempt.succeeded();
            st.sessions.revoke_all();
            st.basic_cache.clear();
            st.limiter.forget_devices();
            tracing::info!("admin password changed: every other session was logged out");
            security::log_in(session).await.map_err(|e| {
                PasswordRefusal::Refused(CommandError::Internal {
                    message: format!("session store: {e}"),
                })
            })?;
            Ok(security::device_cookie(st))
        }
        Err(e) => {
            if let CommandError::Invalid { fields } = &e
                && fields
                    .iter()
                    .any(|f| f.field == "setup_code" || f.field == "current_password")
            {
                attempt.failed();
                st.audit.note(&crate::audit::FAILED_LOGIN, ip);
            } else {
                attempt.abandoned();
            }
            Err(PasswordRefusal::Refused(e))
        }
    }
}

/// Byte counts as people read them (binary units).
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    let mut whole = n;
    let mut rem = 0;
    while whole >= 1024 && unit < UNITS.len() - 1 {
        rem = whole % 1024;
        whole /= 1024;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        // One decimal from the remainder, without floating point.
        let tenth = rem * 10 / 1024;
        format!("{whole}.{tenth} {}", UNITS[unit])
    }
}

/// `done` of `total` as a whole percentage, 0 when the total is unknown.
pub(crate) fn percent(done: u64, total: u64) -> u64 {
    if total == 0 {
        0
    } else {
        let p = u128::from(done.min(total)) * 100 / u128::from(total);
        u64::try_from(p).unwrap_or(100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_percent() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(10 * 1024 * 1024 * 1024), "10.0 GiB");
        assert_eq!(percent(0, 0), 0);
        assert_eq!(percent(5, 10), 50);
        assert_eq!(percent(20, 10), 100);
        assert_eq!(percent(u64::MAX, u64::MAX), 100);
    }
}
