//! The dashboard after setup: jobs with live progress and the throughput chart, inventory with
//! eligibility, a job's timeline, exports, the snapshot ledger, settings, logs and the support
//! bundle. Small JavaScript (`static/app.js`) polls the JSON API to keep bars and the chart live.

use super::{Layout, error_page, forms::ExportForm, human_bytes, percent, render, see_other};
use crate::{
    AppState,
    backend::{
        Backend, ExportView, JobEvent, JobState, JobView, LedgerEntryView, Schedule, StagingView,
        WizardStep,
    },
    error::{FormErrors, status_of},
    routes::Routes,
};
use askama::Template;
use axum::{
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
        .get("/jobs/{id}", job_page::<B>)
        .post("/jobs/{id}/run", run_job::<B>)
        .post("/jobs/{id}/cancel", cancel_job::<B>)
        .post("/jobs/{id}/delete", delete_job::<B>)
        .get("/ledger", ledger_page::<B>)
        .get("/logs", logs_page::<B>)
        .get("/support-bundle", crate::api::support_bundle::<B>)
        .post("/logout", logout)
}

/// The dashboard is for after setup; before, every dashboard page sends to the wizard.
pub(super) async fn after_setup<B: Backend>(st: &AppState<B>) -> Result<(), Response> {
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
    /// Issue 21: the staging server of the current or last run (`—` when none).
    pub staging_target: String,
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
            staging_target: j.staging_target.unwrap_or_else(|| "—".into()),
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
