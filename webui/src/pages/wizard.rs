//! Login and the first-run wizard: password → network → staging → sources → checks → done.
//! The backend's `setup_status().next_step` decides how far the operator may go: a step after
//! it redirects back to it; earlier steps can be revisited and changed.

use super::{
    Layout, PasswordRefusal,
    forms::{
        self, AddSourceForm, LoginForm, NetworkForm, PasswordForm, ProbeForm, StagingForm,
        kind_label,
    },
    render, see_other, step_path,
};
use crate::{
    AppState,
    backend::{
        Backend, CertificateView, ChecksReport, HostPinView, SetupStatus, SourceKind, SourceView,
        WizardStep,
    },
    error::{FormErrors, status_of},
    routes::Routes,
    security::{self, ClientIp},
};
use askama::Template;
use axum::{
    Form,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::Response,
};
use serde::{Deserialize, Serialize};
use tower_sessions::Session;

type St<B> = State<AppState<B>>;

/// Session key: the certificate shown for approval after a probe.
const SESSION_PROBE: &str = "probe";

pub(super) fn routes<B: Backend>() -> Routes<AppState<B>> {
    Routes::new()
        .get("/login", login_page::<B>)
        .post("/login", login::<B>)
        .get("/setup", setup_start::<B>)
        .get("/setup/password", password_page::<B>)
        .post("/setup/password", set_password::<B>)
        .get("/setup/network", network_page::<B>)
        .post("/setup/network", set_network::<B>)
        .get("/setup/staging", staging_page::<B>)
        .post("/setup/staging", set_staging::<B>)
        .get("/setup/sources", sources_page::<B>)
        .post("/setup/sources/probe", probe_source::<B>)
        .post("/setup/sources/add", add_source::<B>)
        .post("/setup/sources/cancel", cancel_probe)
        .post("/setup/sources/{id}/remove", remove_source::<B>)
        .get("/setup/checks", checks_page::<B>)
        .post("/setup/checks", run_checks::<B>)
        .post("/setup/finish", finish::<B>)
        .get("/setup/done", done_page::<B>)
}

/// One entry of the step list at the top of every wizard page.
pub(crate) struct StepItem {
    pub label: &'static str,
    pub href: &'static str,
    /// `done`, `current` or `todo`
    pub state: &'static str,
    /// Reachable now (not after the backend's next step).
    pub reachable: bool,
}

fn steps(current: WizardStep, next: WizardStep) -> Vec<StepItem> {
    [
        (WizardStep::Password, "Admin password"),
        (WizardStep::Network, "Network"),
        (WizardStep::Staging, "Staging target"),
        (WizardStep::Sources, "Sources"),
        (WizardStep::Checks, "Checks"),
        (WizardStep::Done, "Done"),
    ]
    .into_iter()
    .map(|(step, label)| StepItem {
        label,
        href: step_path(step),
        state: if step == current {
            "current"
        } else if step < next {
            "done"
        } else {
            "todo"
        },
        reachable: step <= next,
    })
    .collect()
}

/// `Err(redirect)` when `step` lies after the backend's next step.
async fn gate<B: Backend>(st: &AppState<B>, step: WizardStep) -> Result<SetupStatus, Response> {
    let status = st.backend.setup_status().await;
    if step > status.next_step {
        return Err(see_other(step_path(status.next_step)));
    }
    Ok(status)
}

// ---------------------------------------------------------------------------------------------
// Login
// ---------------------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    layout: Layout,
    status: SetupStatus,
    errors: FormErrors,
}

async fn login_page<B: Backend>(State(st): St<B>, session: Session) -> Response {
    let status = st.backend.setup_status().await;
    if !status.password_set {
        return see_other("/setup/password");
    }
    if security::is_logged_in(&st, &session).await {
        return see_other("/");
    }
    let layout = Layout::new(&st, &session, "Log in", None).await;
    render(
        StatusCode::OK,
        &LoginPage {
            layout,
            status,
            errors: FormErrors::none(),
        },
    )
}

async fn login<B: Backend>(
    State(st): St<B>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    session: Session,
    Form(form): Form<LoginForm>,
) -> Response {
    let key = security::client_key(&st, ip, &headers);
    let (status_code, errors) = match security::check_login(&st, key, ip, &form.password).await {
        Ok(()) => match security::log_in(&session).await {
            Ok(_) => return security::with_device_cookie(&st, see_other("/")),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                FormErrors::general(format!("could not start a session: {e}")),
            ),
        },
        Err(security::Denied::Wait(wait)) => return security::too_many_attempts(wait, false),
        Err(security::Denied::Wrong) => (
            StatusCode::UNAUTHORIZED,
            FormErrors::field("password", "wrong password"),
        ),
    };
    let layout = Layout::new(&st, &session, "Log in", None).await;
    let status = st.backend.setup_status().await;
    render(
        status_code,
        &LoginPage {
            layout,
            status,
            errors,
        },
    )
}

async fn setup_start<B: Backend>(State(st): St<B>) -> Response {
    see_other(step_path(st.backend.setup_status().await.next_step))
}

// ---------------------------------------------------------------------------------------------
// Password
// ---------------------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "setup_password.html")]
struct PasswordPage {
    layout: Layout,
    steps: Vec<StepItem>,
    password_set: bool,
    /// The password policy in one sentence, shown under the field.
    password_hint: &'static str,
    errors: FormErrors,
}

async fn password_page<B: Backend>(State(st): St<B>, session: Session) -> Response {
    let status = st.backend.setup_status().await;
    render_password(&st, &session, &status, FormErrors::none(), StatusCode::OK).await
}

async fn render_password<B: Backend>(
    st: &AppState<B>,
    session: &Session,
    status: &SetupStatus,
    errors: FormErrors,
    code: StatusCode,
) -> Response {
    let layout = Layout::new(st, session, "Admin password", None).await;
    render(
        code,
        &PasswordPage {
            layout,
            steps: steps(WizardStep::Password, status.next_step),
            password_set: status.password_set,
            password_hint: crate::password::REQUIREMENTS,
            errors,
        },
    )
}

const PASSWORD_FIELDS: &[&str] = &[
    "setup_code",
    "current_password",
    "new_password",
    "confirm_password",
];

async fn set_password<B: Backend>(
    State(st): St<B>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    session: Session,
    Form(form): Form<PasswordForm>,
) -> Response {
    match super::apply_password(&st, ip, &headers, &session, form.into_command()).await {
        Ok(device) => super::with_cookie(see_other("/setup"), device),
        Err(PasswordRefusal::Limited(wait)) => security::too_many_attempts(wait, false),
        Err(PasswordRefusal::Refused(e)) => {
            let code = status_of(&e);
            let status = st.backend.setup_status().await;
            let errors = FormErrors::from_error(e, PASSWORD_FIELDS);
            render_password(&st, &session, &status, errors, code).await
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Network
// ---------------------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "setup_network.html")]
struct NetworkPage {
    layout: Layout,
    steps: Vec<StepItem>,
    form: NetworkForm,
    errors: FormErrors,
}

const NETWORK_FIELDS: &[&str] = &[
    "hostname",
    "mode",
    "address",
    "gateway",
    "dns_servers",
    "ntp_servers",
    "proxy",
];

async fn network_page<B: Backend>(State(st): St<B>, session: Session) -> Response {
    let status = match gate(&st, WizardStep::Network).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let form = match st.backend.settings().await.network {
        Some(n) => NetworkForm::from_settings(&n),
        None => NetworkForm {
            hostname: status.hostname.clone(),
            ..NetworkForm::default()
        },
    };
    let layout = Layout::new(&st, &session, "Network", None).await;
    render(
        StatusCode::OK,
        &NetworkPage {
            layout,
            steps: steps(WizardStep::Network, status.next_step),
            form,
            errors: FormErrors::none(),
        },
    )
}

async fn set_network<B: Backend>(
    State(st): St<B>,
    session: Session,
    Form(form): Form<NetworkForm>,
) -> Response {
    let status = match gate(&st, WizardStep::Network).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let result = forms::submit(form.to_command(), NETWORK_FIELDS, |cmd| {
        st.backend.set_network(cmd)
    })
    .await;
    match result {
        Ok(()) => see_other("/setup/staging"),
        Err((code, errors)) => {
            let layout = Layout::new(&st, &session, "Network", None).await;
            render(
                code,
                &NetworkPage {
                    layout,
                    steps: steps(WizardStep::Network, status.next_step),
                    form,
                    errors,
                },
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Staging target
// ---------------------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "setup_staging.html")]
struct StagingPage {
    layout: Layout,
    steps: Vec<StepItem>,
    form: StagingForm,
    /// A target is stored already: its token/secret key is "set" (never shown).
    configured: bool,
    errors: FormErrors,
}

const STAGING_FIELDS: &[&str] = &[
    "kind",
    "address",
    "fingerprint",
    "token",
    "endpoint",
    "region",
    "bucket",
    "prefix",
    "access_key_id",
    "secret_access_key",
];

async fn staging_page<B: Backend>(State(st): St<B>, session: Session) -> Response {
    let status = match gate(&st, WizardStep::Staging).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let view = st.backend.settings().await.staging;
    let configured = view != crate::backend::StagingView::None;
    let layout = Layout::new(&st, &session, "Staging target", None).await;
    render(
        StatusCode::OK,
        &StagingPage {
            layout,
            steps: steps(WizardStep::Staging, status.next_step),
            form: StagingForm::from_view(&view),
            configured,
            errors: FormErrors::none(),
        },
    )
}

async fn set_staging<B: Backend>(
    State(st): St<B>,
    session: Session,
    Form(form): Form<StagingForm>,
) -> Response {
    let status = match gate(&st, WizardStep::Staging).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let result = forms::submit(form.to_command(), STAGING_FIELDS, |cmd| {
        st.backend.set_staging(cmd)
    })
    .await;
    match result {
        Ok(()) => see_other("/setup/sources"),
        Err((code, errors)) => {
            let configured =
                st.backend.settings().await.staging != crate::backend::StagingView::None;
            let layout = Layout::new(&st, &session, "Staging target", None).await;
            render(
                code,
                &StagingPage {
                    layout,
                    steps: steps(WizardStep::Staging, status.next_step),
                    form,
                    configured,
                    errors,
                },
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sources
// ---------------------------------------------------------------------------------------------

/// A probed certificate waiting for the operator's approval (kept in the session).
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct PendingProbe {
    kind: String,
    cert: CertificateView,
}

#[derive(Template)]
#[template(path = "setup_sources.html")]
struct SourcesPage {
    layout: Layout,
    steps: Vec<StepItem>,
    sources: Vec<SourceRow>,
    probe_form: ProbeForm,
    pending: Option<PendingProbe>,
    /// The user name typed before an error (never the password).
    username: String,
    can_continue: bool,
    errors: FormErrors,
}

pub(crate) struct SourceRow {
    pub id: String,
    /// The source's name (its host), shown instead of the id.
    pub name: String,
    pub kind: &'static str,
    pub address: String,
    pub username: String,
    pub fingerprint: String,
    /// SCVMM: its Hyper-V hosts' certificates are approved one by one (`host_pins`).
    pub scvmm: bool,
    pub host_pins: Vec<HostPinView>,
    /// vSphere: changed block tracking is switched per source on the settings page (issue 18).
    pub vsphere: bool,
    pub cbt: bool,
}

impl SourceRow {
    pub(crate) fn from_view(s: SourceView) -> Self {
        SourceRow {
            name: if s.name.is_empty() {
                crate::backend::source_name(&s.address)
            } else {
                s.name
            },
            id: s.id,
            kind: kind_label(s.kind),
            address: s.address,
            username: s.username,
            fingerprint: s.fingerprint,
            scvmm: s.kind == SourceKind::Scvmm,
            host_pins: s.host_pins,
            vsphere: s.kind == SourceKind::Vsphere,
            cbt: s.cbt,
        }
    }
}

impl PendingProbe {
    pub fn kind_label(&self) -> &'static str {
        super::forms::parse_kind(&self.kind).map_or("source", kind_label)
    }
}

const SOURCE_FIELDS: &[&str] = &[
    "kind",
    "address",
    "approve",
    "username",
    "password",
    "approved_fingerprint",
];

async fn render_sources<B: Backend>(
    st: &AppState<B>,
    session: &Session,
    code: StatusCode,
    probe_form: ProbeForm,
    username: String,
    errors: FormErrors,
) -> Response {
    let status = st.backend.setup_status().await;
    let sources = st.backend.settings().await.sources;
    let pending = session
        .get::<PendingProbe>(SESSION_PROBE)
        .await
        .ok()
        .flatten();
    let layout = Layout::new(st, session, "Sources", None).await;
    render(
        code,
        &SourcesPage {
            layout,
            steps: steps(WizardStep::Sources, status.next_step),
            can_continue: status.next_step > WizardStep::Sources,
            sources: sources.into_iter().map(SourceRow::from_view).collect(),
            probe_form,
            pending,
            username,
            errors,
        },
    )
}

async fn sources_page<B: Backend>(State(st): St<B>, session: Session) -> Response {
    if let Err(r) = gate(&st, WizardStep::Sources).await {
        return r;
    }
    let probe_form = ProbeForm {
        kind: "vsphere".into(),
        address: String::new(),
    };
    render_sources(
        &st,
        &session,
        StatusCode::OK,
        probe_form,
        String::new(),
        FormErrors::none(),
    )
    .await
}

async fn probe_source<B: Backend>(
    State(st): St<B>,
    session: Session,
    Form(form): Form<ProbeForm>,
) -> Response {
    if let Err(r) = gate(&st, WizardStep::Sources).await {
        return r;
    }
    let result = forms::submit(form.to_command(), SOURCE_FIELDS, |cmd| {
        st.backend.probe_source(cmd)
    })
    .await;
    match result {
        Ok(cert) => {
            let pending = PendingProbe {
                kind: form.kind.clone(),
                cert,
            };
            if let Err(e) = session.insert(SESSION_PROBE, &pending).await {
                tracing::warn!(error = %e, "could not keep the probed certificate in the session");
            }
            see_other("/setup/sources")
        }
        Err((code, errors)) => {
            let _ = session.remove_value(SESSION_PROBE).await;
            render_sources(&st, &session, code, form, String::new(), errors).await
        }
    }
}

async fn add_source<B: Backend>(
    State(st): St<B>,
    session: Session,
    Form(form): Form<AddSourceForm>,
) -> Response {
    if let Err(r) = gate(&st, WizardStep::Sources).await {
        return r;
    }
    let result = forms::submit(form.to_command(), SOURCE_FIELDS, |cmd| {
        st.backend.add_source(cmd)
    })
    .await;
    match result {
        Ok(_) => {
            let _ = session.remove_value(SESSION_PROBE).await;
            see_other("/setup/sources")
        }
        Err((code, errors)) => {
            let probe_form = ProbeForm {
                kind: form.kind.clone(),
                address: form.address.clone(),
            };
            render_sources(
                &st,
                &session,
                code,
                probe_form,
                form.username.clone(),
                errors,
            )
            .await
        }
    }
}

async fn cancel_probe(session: Session) -> Response {
    let _ = session.remove_value(SESSION_PROBE).await;
    see_other("/setup/sources")
}

async fn remove_source<B: Backend>(
    State(st): St<B>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    match st.backend.remove_source(id).await {
        Ok(()) => see_other("/setup/sources"),
        Err(e) => {
            let code = status_of(&e);
            let errors = FormErrors::from_error(e, &[]);
            let probe_form = ProbeForm {
                kind: "vsphere".into(),
                address: String::new(),
            };
            render_sources(&st, &session, code, probe_form, String::new(), errors).await
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checks, finish
// ---------------------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "setup_checks.html")]
struct ChecksPage {
    layout: Layout,
    steps: Vec<StepItem>,
    /// The last checks run (kept across visits), with when they ran.
    report: Option<ChecksReport>,
    errors: FormErrors,
    /// "Finish setup" was pressed while a check fails: ask to confirm.
    confirm: bool,
}

impl ChecksPage {
    fn failures(&self) -> usize {
        self.report.as_ref().map_or(0, ChecksReport::failed)
    }
}

async fn render_checks<B: Backend>(
    st: &AppState<B>,
    session: &Session,
    code: StatusCode,
    confirm: bool,
    errors: FormErrors,
) -> Response {
    let status = st.backend.setup_status().await;
    let layout = Layout::new(st, session, "Checks", None).await;
    let report = st.backend.last_checks().await;
    render(
        code,
        &ChecksPage {
            layout,
            steps: steps(WizardStep::Checks, status.next_step),
            report,
            errors,
            confirm,
        },
    )
}

async fn checks_page<B: Backend>(State(st): St<B>, session: Session) -> Response {
    if let Err(r) = gate(&st, WizardStep::Checks).await {
        return r;
    }
    render_checks(&st, &session, StatusCode::OK, false, FormErrors::none()).await
}

async fn run_checks<B: Backend>(State(st): St<B>, session: Session) -> Response {
    if let Err(r) = gate(&st, WizardStep::Checks).await {
        return r;
    }
    match st.backend.run_checks().await {
        Ok(_) => render_checks(&st, &session, StatusCode::OK, false, FormErrors::none()).await,
        Err(e) => {
            let code = status_of(&e);
            render_checks(&st, &session, code, false, FormErrors::from_error(e, &[])).await
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct FinishForm {
    /// `yes` once the operator confirmed finishing with failed checks.
    confirm: String,
}

/// Finish the wizard. With a failed check among the last results, the operator is asked to
/// confirm first (the dashboard then keeps a banner until the checks pass).
async fn finish<B: Backend>(
    State(st): St<B>,
    session: Session,
    Form(form): Form<FinishForm>,
) -> Response {
    if let Err(r) = gate(&st, WizardStep::Checks).await {
        return r;
    }
    let failed = st
        .backend
        .last_checks()
        .await
        .is_some_and(|r| r.failed() > 0);
    if failed && form.confirm != "yes" {
        return render_checks(
            &st,
            &session,
            StatusCode::CONFLICT,
            true,
            FormErrors::none(),
        )
        .await;
    }
    match st.backend.finish_wizard().await {
        Ok(()) => see_other("/setup/done"),
        Err(e) => {
            let code = status_of(&e);
            render_checks(&st, &session, code, false, FormErrors::from_error(e, &[])).await
        }
    }
}

#[derive(Template)]
#[template(path = "setup_done.html")]
struct DonePage {
    layout: Layout,
    steps: Vec<StepItem>,
    status: SetupStatus,
    sources: usize,
}

async fn done_page<B: Backend>(State(st): St<B>, session: Session) -> Response {
    let status = match gate(&st, WizardStep::Done).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let sources = st.backend.settings().await.sources.len();
    let layout = Layout::new(&st, &session, "Setup complete", None).await;
    render(
        StatusCode::OK,
        &DonePage {
            layout,
            steps: steps(WizardStep::Done, status.next_step),
            status,
            sources,
        },
    )
}
