//! The dashboard after setup: jobs with live progress and the throughput chart, inventory with
//! eligibility, a job's timeline, exports, the snapshot ledger, settings, logs and the support
//! bundle. Small JavaScript (`static/app.js`) polls the JSON API to keep bars and the chart live.

use super::{
    Layout, PasswordRefusal, error_page,
    forms::{self, CertificateForm, ExportForm, HostPinForm, IngestForm, JobForm, PasswordForm},
    human_bytes, percent, render, see_other,
    wizard::SourceRow,
};
use crate::{
    AppState,
    backend::{
        Backend, ExportView, HttpsCertificateView, JobEvent, JobState, JobView, LedgerEntryView,
        Schedule, SettingsView, StagingView, VmView, WizardStep,
    },
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
        .get("/", dashboard::<B>)
        .get("/inventory", inventory_page::<B>)
        .post("/jobs", create_job::<B>)
        .get("/jobs/{id}", job_page::<B>)
        .post("/jobs/{id}/run", run_job::<B>)
        .post("/jobs/{id}/cancel", cancel_job::<B>)
        .post("/jobs/{id}/delete", delete_job::<B>)
        .get("/ledger", ledger_page::<B>)
        .get("/settings", settings_page::<B>)
        .post("/settings/password", change_password::<B>)
        .post("/settings/certificate", install_certificate::<B>)
        .post("/settings/ingest", set_ingest::<B>)
        .post("/settings/sources/{id}/hosts", approve_host::<B>)
        .get("/logs", logs_page::<B>)
        .get("/support-bundle", crate::api::support_bundle::<B>)
        .post("/logout", logout)
}

/// The dashboard is for after setup; before, every dashboard page sends to the wizard.
async fn after_setup<B: Backend>(st: &AppState<B>) -> Result<(), Response> {
    let next = st.backend.setup_status().await.next_step;
    if next == WizardStep::Done {
        Ok(())
    } else {
        Err(see_other("/setup"))
    }
}

// ---------------------------------------------------------------------------------------------
// View models: numbers already formatted, so templates stay plain.
// ---------------------------------------------------------------------------------------------

pub(crate) fn state_label(s: JobState) -> &'static str {
    match s {
        JobState::Scheduled => "scheduled",
        JobState::Snapshotting => "taking snapshot",
        JobState::Transferring => "transferring",
        JobState::RemovingSnapshot => "removing snapshot",
        JobState::RetryWait => "waiting to retry",
        JobState::Completed => "completed",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

fn schedule_label(s: &Schedule) -> String {
    match s {
        Schedule::Once => "once".into(),
        Schedule::EveryHours { hours: 1 } => "every hour".into(),
        Schedule::EveryHours { hours } => format!("every {hours} hours"),
    }
}

pub(crate) struct JobRow {
    pub id: String,
    pub vm: String,
    pub source_id: String,
    pub schedule: String,
    pub state: &'static str,
    /// CSS class: `ok`, `busy`, `bad` or `idle`
    pub tone: &'static str,
    pub done: u64,
    pub total: u64,
    pub percent: u64,
    pub progress_text: String,
    pub throughput: String,
    pub runs_completed: u32,
    pub last_error: String,
    pub next_run: String,
    pub last_sync: String,
    /// Lifecycle state, ETA, lag, disks, phases, typed error (issue #18).
    pub repl: super::job::ReplRow,
}

/// Whether a run is active in this state.
pub(crate) fn in_flight(s: JobState) -> bool {
    matches!(
        s,
        JobState::Snapshotting | JobState::Transferring | JobState::RemovingSnapshot
    )
}

impl JobRow {
    fn from_view(j: JobView) -> Self {
        let repl = super::job::ReplRow::from_view(&j);
        let (done, total, bps) = j.progress.as_ref().map_or((0, 0, 0), |p| {
            (p.bytes_done, p.bytes_total, p.throughput_bps)
        });
        let pct = if j.state == JobState::Completed && total == 0 {
            100
        } else {
            percent(done, total)
        };
        let tone = match j.state {
            JobState::Completed => "ok",
            JobState::Failed | JobState::RetryWait => "bad",
            JobState::Snapshotting | JobState::Transferring | JobState::RemovingSnapshot => "busy",
            JobState::Scheduled | JobState::Cancelled => "idle",
        };
        JobRow {
            progress_text: if total > 0 {
                format!("{pct} % ({} of {})", human_bytes(done), human_bytes(total))
            } else {
                format!("{pct} %")
            },
            throughput: if bps > 0 {
                format!("{}/s", human_bytes(bps))
            } else {
                String::new()
            },
            id: j.id,
            vm: j.vm,
            source_id: j.source_id,
            schedule: schedule_label(&j.schedule),
            state: state_label(j.state),
            tone,
            done,
            total: total.max(1),
            percent: pct,
            runs_completed: j.runs_completed,
            last_error: j.last_error.unwrap_or_default(),
            next_run: j.next_run.unwrap_or_else(|| "—".into()),
            last_sync: j.last_sync.unwrap_or_else(|| "never".into()),
            repl,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Jobs dashboard
// ---------------------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage {
    layout: Layout,
    jobs: Vec<JobRow>,
    /// The job whose throughput the chart shows (empty: all transfers).
    chart_job: String,
}

#[derive(Deserialize)]
struct DashboardQuery {
    #[serde(default)]
    chart: Option<String>,
}

async fn dashboard<B: Backend>(
    State(st): St<B>,
    session: Session,
    Query(q): Query<DashboardQuery>,
) -> Response {
    if let Err(r) = after_setup(&st).await {
        return r;
    }
    let jobs = st
        .backend
        .jobs()
        .await
        .into_iter()
        .map(JobRow::from_view)
        .collect::<Vec<_>>();
    let chart_job = q
        .chart
        .filter(|c| jobs.iter().any(|j| &j.id == c))
        .unwrap_or_default();
    let layout = Layout::new(&st, &session, "Jobs", Some("dashboard")).await;
    render(
        StatusCode::OK,
        &DashboardPage {
            layout,
            jobs,
            chart_job,
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Inventory and job creation
// ---------------------------------------------------------------------------------------------

pub(crate) struct VmRow {
    pub vm: VmView,
    pub disks: String,
    /// A job exists for this VM already.
    pub job_id: Option<String>,
}

#[derive(Template)]
#[template(path = "inventory.html")]
struct InventoryPage {
    layout: Layout,
    vms: Vec<VmRow>,
    eligible: usize,
    /// The VM whose job form failed, with its values and errors.
    failed: Option<(JobForm, FormErrors)>,
    errors: FormErrors,
}

impl InventoryPage {
    fn row_errors(&self, vm: &VmView) -> Option<&FormErrors> {
        self.failed
            .as_ref()
            .filter(|(f, _)| f.vm == vm.name && f.source_id == vm.source_id)
            .map(|(_, e)| e)
    }

    fn row_form(&self, vm: &VmView) -> JobForm {
        self.failed
            .as_ref()
            .filter(|(f, _)| f.vm == vm.name && f.source_id == vm.source_id)
            .map_or_else(JobForm::default, |(f, _)| f.clone())
    }
}

#[derive(Deserialize)]
struct InventoryQuery {
    #[serde(default)]
    refresh: Option<String>,
}

async fn render_inventory<B: Backend>(
    st: &AppState<B>,
    session: &Session,
    refresh: bool,
    failed: Option<(JobForm, FormErrors)>,
    code: StatusCode,
) -> Response {
    let layout = Layout::new(st, session, "Inventory", Some("inventory")).await;
    let jobs = st.backend.jobs().await;
    let (vms, mut errors) = match st.backend.inventory(refresh).await {
        Ok(vms) => (vms, FormErrors::none()),
        Err(e) => (Vec::new(), FormErrors::from_error(e, &[])),
    };
    // A refused job for a VM not on the page: its errors go to the top, not lost.
    let failed = match failed {
        Some((f, e))
            if !vms
                .iter()
                .any(|v| v.name == f.vm && v.source_id == f.source_id) =>
        {
            errors.general.extend(e.general.iter().cloned());
            errors.general.extend(
                JOB_FIELDS
                    .iter()
                    .filter_map(|name| e.get(name).map(|m| format!("{name}: {m}"))),
            );
            None
        }
        other => other,
    };
    let eligible = vms.iter().filter(|v| v.eligible).count();
    let vms = vms
        .into_iter()
        .map(|vm| VmRow {
            disks: vm
                .disks
                .iter()
                .map(|d| format!("{} ({})", d.label, human_bytes(d.capacity_bytes)))
                .collect::<Vec<_>>()
                .join(", "),
            job_id: jobs
                .iter()
                .find(|j| j.vm == vm.name && j.source_id == vm.source_id)
                .map(|j| j.id.clone()),
            vm,
        })
        .collect();
    render(
        code,
        &InventoryPage {
            layout,
            vms,
            eligible,
            failed,
            errors,
        },
    )
}

async fn inventory_page<B: Backend>(
    State(st): St<B>,
    session: Session,
    Query(q): Query<InventoryQuery>,
) -> Response {
    if let Err(r) = after_setup(&st).await {
        return r;
    }
    render_inventory(&st, &session, q.refresh.is_some(), None, StatusCode::OK).await
}

const JOB_FIELDS: &[&str] = &["schedule", "hours"];

async fn create_job<B: Backend>(
    State(st): St<B>,
    session: Session,
    Form(form): Form<JobForm>,
) -> Response {
    let result = forms::submit(form.to_command(), JOB_FIELDS, |cmd| {
        st.backend.create_job(cmd)
    })
    .await;
    match result {
        Ok(job) => see_other(&format!("/jobs/{}", job.id)),
        Err((code, errors)) => {
            render_inventory(&st, &session, false, Some((form, errors)), code).await
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One job: timeline, actions, exports
// ---------------------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    layout: Layout,
    job: JobRow,
    events: Vec<JobEvent>,
    exports: Vec<ExportView>,
    export_form: ExportForm,
    errors: FormErrors,
}

async fn render_job<B: Backend>(
    st: &AppState<B>,
    session: &Session,
    id: String,
    export_form: Option<ExportForm>,
    errors: FormErrors,
    code: StatusCode,
) -> Response {
    let job = match st.backend.job(id.clone()).await {
        Ok(j) => j,
        Err(e) => return error_page(&e),
    };
    let events = st.backend.job_events(id.clone()).await.unwrap_or_default();
    let exports = st
        .backend
        .exports()
        .await
        .into_iter()
        .filter(|e| e.job_id == id)
        .collect();
    let layout = Layout::new(st, session, &format!("Job {}", job.vm), Some("dashboard")).await;
    render(
        code,
        &JobPage {
            layout,
            job: JobRow::from_view(job),
            events,
            exports,
            export_form: export_form.unwrap_or_else(|| ExportForm {
                job_id: id,
                ..ExportForm::default()
            }),
            errors,
        },
    )
}

async fn job_page<B: Backend>(
    State(st): St<B>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    render_job(&st, &session, id, None, FormErrors::none(), StatusCode::OK).await
}

async fn job_action<B: Backend>(
    st: &AppState<B>,
    session: &Session,
    id: String,
    result: Result<(), crate::backend::CommandError>,
    after: String,
) -> Response {
    match result {
        Ok(()) => see_other(&after),
        Err(e) => {
            let code = status_of(&e);
            render_job(st, session, id, None, FormErrors::from_error(e, &[]), code).await
        }
    }
}

async fn run_job<B: Backend>(
    State(st): St<B>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    let r = st.backend.run_job_now(id.clone()).await;
    job_action(&st, &session, id.clone(), r, format!("/jobs/{id}")).await
}

async fn cancel_job<B: Backend>(
    State(st): St<B>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    let r = st.backend.cancel_job(id.clone()).await;
    job_action(&st, &session, id.clone(), r, format!("/jobs/{id}")).await
}

async fn delete_job<B: Backend>(
    State(st): St<B>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    let r = st.backend.delete_job(id.clone()).await;
    job_action(&st, &session, id, r, "/".into()).await
}

// ---------------------------------------------------------------------------------------------
// Ledger, settings, logs, logout
// ---------------------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "ledger.html")]
struct LedgerPage {
    layout: Layout,
    entries: Vec<LedgerEntryView>,
}

async fn ledger_page<B: Backend>(State(st): St<B>, session: Session) -> Response {
    let layout = Layout::new(&st, &session, "Snapshot ledger", Some("ledger")).await;
    let entries = st.backend.ledger().await;
    render(StatusCode::OK, &LedgerPage { layout, entries })
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

#[derive(Template)]
#[template(path = "logs.html")]
struct LogsPage {
    layout: Layout,
    lines: Vec<String>,
    /// The warning and error lines among them.
    failures: Vec<String>,
}

async fn logs_page<B: Backend>(State(st): St<B>, session: Session) -> Response {
    let layout = Layout::new(&st, &session, "Logs", Some("logs")).await;
    let lines = st.backend.logs(500).await;
    // Failures first (issue #18): failed logins, refused certificates, failed job runs.
    let failures = lines
        .iter()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .cloned()
        .collect();
    render(
        StatusCode::OK,
        &LogsPage {
            layout,
            lines,
            failures,
        },
    )
}

async fn logout(session: Session) -> Response {
    session.clear().await;
    let _ = session.flush().await;
    see_other("/login")
}

/// For templates.
pub(crate) fn staging_text(v: &StagingView) -> String {
    match v {
        StagingView::None => "not set".into(),
        StagingView::Server {
            address,
            fingerprint,
        } => format!("staging server {address} (certificate {fingerprint}); token set"),
        StagingView::S3 {
            endpoint,
            region,
            bucket,
            prefix,
            access_key_id,
        } => format!(
            "S3 bucket {bucket}/{prefix} in {region} at {}; access key {access_key_id}, secret key set",
            endpoint.as_deref().unwrap_or("AWS")
        ),
    }
}
