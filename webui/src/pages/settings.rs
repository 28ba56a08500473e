//! The settings page: network and staging summaries, sources (their names, certificates, SCVMM
//! host pins and, issue 18, editing their credentials), transfer settings (bandwidth limit with a
//! business-hours limit, concurrent transfers; issue 18), the last checks with their time and a
//! button to run them again (issue 18), the Hyper-V push URL, the HTTPS certificate and the admin
//! password.

use super::{
    Layout, PasswordRefusal,
    forms::{
        self, CertificateForm, CredentialsForm, HostPinForm, IngestForm, PasswordForm, TransferForm,
    },
    render, see_other,
    wizard::SourceRow,
};
use crate::{
    AppState,
    backend::{Backend, ChecksReport, HttpsCertificateView, SettingsView},
    error::{FormErrors, status_of},
    routes::Routes,
    security::{self, ClientIp},
};
use askama::Template;
use axum::{
    Form,
    extract::{Path, Query, State},
    http::StatusCode,
    response::Response,
};
use serde::Deserialize;
use tower_sessions::Session;

type St<B> = State<AppState<B>>;

pub(super) fn routes<B: Backend>() -> Routes<AppState<B>> {
    Routes::new()
        .get("/settings", settings_page::<B>)
        .post("/settings/password", change_password::<B>)
        .post("/settings/certificate", install_certificate::<B>)
        .post("/settings/ingest", set_ingest::<B>)
        .post("/settings/sources/{id}/hosts", approve_host::<B>)
        .post("/settings/transfer", set_transfer::<B>)
        .post("/settings/sources/{id}/credentials", set_credentials::<B>)
        .post("/settings/sources/{id}/cbt", set_cbt::<B>)
        .post("/settings/checks", run_checks::<B>)
}

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    layout: Layout,
    settings: SettingsView,
    /// None when the backend could not say (shown as such).
    certificate: Option<HttpsCertificateView>,
    /// What was pasted into the certificate field, shown again after a refusal (never the key).
    certificate_pem: String,
    sources: Vec<SourceRow>,
    /// The host pin form that was refused: its source and what was typed.
    pin: Option<(String, HostPinForm)>,
    /// The push URL field: what was typed into a refused form, else the setting.
    ingest_url: String,
    /// The spool limit field (MiB): what was typed into a refused form, else the setting.
    spool_limit_mib: String,
    errors: FormErrors,
    saved: bool,
    /// The password policy in one sentence, shown under the new password field.
    password_hint: &'static str,
    /// Transfer settings as stored, or as typed into a refused form.
    transfer: TransferForm,
    /// The source whose credentials form was refused, and the user name typed.
    credentials: Option<(String, String)>,
    checks: Option<ChecksReport>,
}

impl SettingsPage {
    /// A field error of the host pin form of `source` (only the refused form shows it).
    fn pin_error(&self, source: &str, field: &str) -> Option<&str> {
        match &self.pin {
            Some((id, _)) if id == source => self.errors.get(field),
            _ => None,
        }
    }

    /// What was typed into the refused host pin form of `source` (empty for the others).
    fn pin_value(&self, source: &str, field: &str) -> &str {
        match &self.pin {
            Some((id, f)) if id == source && field == "host" => &f.host,
            Some((id, f)) if id == source => &f.approved_fingerprint,
            _ => "",
        }
    }

    /// A field error of the credentials form of `source` (only the refused form shows it).
    fn cred_error(&self, source: &str, field: &str) -> Option<&str> {
        match &self.credentials {
            Some((id, _)) if id == source => self.errors.get(field),
            _ => None,
        }
    }

    /// The user name in the credentials form of `source`: as typed when refused, else stored.
    fn cred_user(&self, s: &SourceRow) -> String {
        match &self.credentials {
            Some((id, u)) if *id == s.id => u.clone(),
            _ => s.username.clone(),
        }
    }

    fn checks_failed(&self) -> usize {
        self.checks.as_ref().map_or(0, ChecksReport::failed)
    }

    fn address_text(&self) -> String {
        match self.settings.network.as_ref().map(|n| &n.address) {
            None => "not set".into(),
            Some(crate::backend::AddressMode::Dhcp) => "DHCP".into(),
            Some(crate::backend::AddressMode::Static { address, gateway }) => {
                format!("{address}, gateway {gateway}")
            }
        }
    }
}

#[derive(Deserialize)]
struct SavedQuery {
    saved: Option<String>,
}

async fn render_settings<B: Backend>(
    st: &AppState<B>,
    session: &Session,
    errors: FormErrors,
    saved: bool,
    code: StatusCode,
) -> Response {
    render_settings_with(st, session, errors, saved, code, SettingsEcho::default()).await
}

/// What a refused settings form typed, shown again (never a key or password).
#[derive(Default)]
struct SettingsEcho {
    certificate_pem: String,
    pin: Option<(String, HostPinForm)>,
    /// What was typed into a refused push URL form (empty: show the setting as stored).
    ingest_url: String,
    /// What was typed into the spool limit of a refused form.
    spool_limit_mib: Option<String>,
    transfer: Option<TransferForm>,
    credentials: Option<(String, String)>,
}

async fn render_settings_with<B: Backend>(
    st: &AppState<B>,
    session: &Session,
    errors: FormErrors,
    saved: bool,
    code: StatusCode,
    echo: SettingsEcho,
) -> Response {
    let settings = st.backend.settings().await;
    let transfer = match echo.transfer {
        Some(t) => t,
        None => TransferForm::from_settings(&st.backend.transfer_settings().await),
    };
    let checks = st.backend.last_checks().await;
    let certificate = st.backend.https_certificate().await.ok();
    let sources = settings
        .sources
        .iter()
        .cloned()
        .map(SourceRow::from_view)
        .collect();
    let layout = Layout::new(st, session, "Settings", Some("settings")).await;
    let ingest_url = if echo.ingest_url.is_empty() {
        settings.ingest.url.clone().unwrap_or_default()
    } else {
        echo.ingest_url
    };
    let spool_limit_mib = echo.spool_limit_mib.unwrap_or_else(|| {
        settings
            .ingest
            .spool_limit_mib
            .map(|m| m.to_string())
            .unwrap_or_default()
    });
    render(
        code,
        &SettingsPage {
            layout,
            settings,
            certificate,
            certificate_pem: echo.certificate_pem,
            sources,
            pin: echo.pin,
            ingest_url,
            spool_limit_mib,
            errors,
            saved,
            password_hint: crate::password::REQUIREMENTS,
            transfer,
            credentials: echo.credentials,
            checks,
        },
    )
}

async fn settings_page<B: Backend>(
    State(st): St<B>,
    session: Session,
    Query(q): Query<SavedQuery>,
) -> Response {
    render_settings(
        &st,
        &session,
        FormErrors::none(),
        q.saved.is_some(),
        StatusCode::OK,
    )
    .await
}

async fn change_password<B: Backend>(
    State(st): St<B>,
    ClientIp(ip): ClientIp,
    headers: axum::http::HeaderMap,
    session: Session,
    Form(form): Form<PasswordForm>,
) -> Response {
    match super::apply_password(&st, ip, &headers, &session, form.into_command()).await {
        Ok(device) => super::with_cookie(see_other("/settings?saved=password"), device),
        Err(PasswordRefusal::Limited(wait)) => security::too_many_attempts(wait, false),
        Err(PasswordRefusal::Refused(e)) => {
            let code = status_of(&e);
            let errors = FormErrors::from_error(
                e,
                &["current_password", "new_password", "confirm_password"],
            );
            render_settings(&st, &session, errors, false, code).await
        }
    }
}

/// Paste a PEM chain and key; the new certificate is served at once. The browser's next
/// request meets the new certificate, which it trusts only if the operator's CA is trusted.
async fn install_certificate<B: Backend>(
    State(st): St<B>,
    session: Session,
    Form(form): Form<CertificateForm>,
) -> Response {
    let pem = form.certificate_pem.clone();
    match st.backend.install_certificate(form.into_command()).await {
        Ok(_) => see_other("/settings?saved=certificate"),
        Err(e) => {
            let code = status_of(&e);
            let errors = FormErrors::from_error(e, &["certificate_pem", "private_key_pem"]);
            let echo = SettingsEcho {
                certificate_pem: pem,
                ..SettingsEcho::default()
            };
            render_settings_with(&st, &session, errors, false, code, echo).await
        }
    }
}

/// The Hyper-V push URL; the same backend command as `PUT /api/v1/settings/ingest`.
async fn set_ingest<B: Backend>(
    State(st): St<B>,
    session: Session,
    Form(form): Form<IngestForm>,
) -> Response {
    let typed = form.url.clone();
    let typed_limit = form.spool_limit_mib.clone();
    let result = match form.into_command() {
        Ok(cmd) => st.backend.set_ingest(cmd).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => see_other("/settings?saved=ingest"),
        Err(e) => {
            let code = status_of(&e);
            let errors = FormErrors::from_error(e, &["url", "spool_limit_mib"]);
            let echo = SettingsEcho {
                ingest_url: typed,
                spool_limit_mib: Some(typed_limit),
                ..SettingsEcho::default()
            };
            render_settings_with(&st, &session, errors, false, code, echo).await
        }
    }
}

/// Approve the certificate of one Hyper-V host of an SCVMM source (the host and fingerprint a
/// refused job named); the same backend command as `POST /api/v1/sources/{id}/hosts`.
async fn approve_host<B: Backend>(
    State(st): St<B>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<HostPinForm>,
) -> Response {
    match st
        .backend
        .approve_source_host(id.clone(), form.clone().into_command())
        .await
    {
        Ok(_) => see_other("/settings?saved=host"),
        Err(e) => {
            let code = status_of(&e);
            let errors = FormErrors::from_error(e, &["host", "approved_fingerprint"]);
            let echo = SettingsEcho {
                pin: Some((id, form)),
                ..SettingsEcho::default()
            };
            render_settings_with(&st, &session, errors, false, code, echo).await
        }
    }
}

const TRANSFER_FIELDS: &[&str] = &[
    "bandwidth_limit_mbps",
    "business_hours_limit_mbps",
    "business_hours_start",
    "business_hours_end",
    "max_concurrent_jobs",
];

/// Bandwidth limit, business-hours limit and concurrency; the same backend command as
/// `PUT /api/v1/settings/transfer`.
async fn set_transfer<B: Backend>(
    State(st): St<B>,
    session: Session,
    Form(form): Form<TransferForm>,
) -> Response {
    let result = forms::submit(form.to_command(), TRANSFER_FIELDS, |cmd| {
        st.backend.set_transfer_settings(cmd)
    })
    .await;
    match result {
        Ok(_) => see_other("/settings?saved=transfer#transfer"),
        Err((code, errors)) => {
            let echo = SettingsEcho {
                transfer: Some(form),
                ..SettingsEcho::default()
            };
            render_settings_with(&st, &session, errors, false, code, echo).await
        }
    }
}

/// New credentials for a source, checked by a login before they are stored; the same backend
/// command as `PUT /api/v1/sources/{id}/credentials`.
async fn set_credentials<B: Backend>(
    State(st): St<B>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<CredentialsForm>,
) -> Response {
    let user = form.username.clone();
    match st
        .backend
        .set_source_credentials(id.clone(), form.into_command())
        .await
    {
        Ok(_) => see_other("/settings?saved=credentials"),
        Err(e) => {
            let code = status_of(&e);
            let errors = FormErrors::from_error(e, &["username", "password"]);
            let echo = SettingsEcho {
                credentials: Some((id, user)),
                ..SettingsEcho::default()
            };
            render_settings_with(&st, &session, errors, false, code, echo).await
        }
    }
}

/// Run the checks again; their results are kept and shown here (and end the dashboard's banner
/// once none fails).
async fn run_checks<B: Backend>(State(st): St<B>, session: Session) -> Response {
    match st.backend.run_checks().await {
        Ok(_) => see_other("/settings?saved=checks#checks"),
        Err(e) => {
            let code = status_of(&e);
            render_settings(&st, &session, FormErrors::from_error(e, &[]), false, code).await
        }
    }
}

/// Changed block tracking on or off for one source (issue 18).
async fn set_cbt<B: Backend>(
    State(st): St<B>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<forms::CbtForm>,
) -> Response {
    match forms::submit(form.into_command(), &[], |cmd| {
        st.backend.set_source_cbt(id, cmd)
    })
    .await
    {
        Ok(_) => see_other("/settings?saved=cbt#sources"),
        Err((code, errors)) => render_settings(&st, &session, errors, false, code).await,
    }
}
