//! The dashboard after setup: jobs with live progress and the throughput chart, inventory with
//! eligibility, a job's timeline, exports, the snapshot ledger, settings, logs and the support
//! bundle. Small JavaScript (`static/app.js`) polls the JSON API to keep bars and the chart live.

use super::{Layout, error_page, forms::ExportForm, human_bytes, percent, render, see_other};
use crate::{
    AppState,
    backend::{
        Backend, ExportView, JobEvent, JobState, JobView, LedgerEntryView, Schedule, StagingView,
        ThroughputSample, WizardStep,
    },
    error::{FormErrors, status_of},
    routes::Routes,
};
use askama::Template;
use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::Response,
};
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
}

impl JobRow {
    fn from_view(j: JobView) -> Self {
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
        }
    }
}

/// The throughput chart as SVG geometry (drawn server-side, redrawn by app.js).
pub(crate) struct Chart {
    pub points: String,
    pub peak: String,
    pub latest: String,
    pub empty: bool,
}

pub(crate) const CHART_W: u64 = 600;
pub(crate) const CHART_H: u64 = 150;

pub(crate) fn chart(samples: &[ThroughputSample]) -> Chart {
    let peak = samples
        .iter()
        .map(|s| s.bytes_per_second)
        .max()
        .unwrap_or(0);
    let n = u64::try_from(samples.len()).unwrap_or(u64::MAX);
    let points = samples
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let i = u64::try_from(i).unwrap_or(0);
            let x = if n > 1 { i * CHART_W / (n - 1) } else { 0 };
            let y = if peak == 0 {
                CHART_H
            } else {
                let scaled =
                    u128::from(s.bytes_per_second) * u128::from(CHART_H) / u128::from(peak);
                CHART_H - u64::try_from(scaled).unwrap_or(CHART_H)
            };
            format!("{x},{y}")
        })
        .collect::<Vec<_>>()
        .join(" ");
    Chart {
        points,
        peak: format!("{}/s", human_bytes(peak)),
        latest: format!(
            "{}/s",
            human_bytes(samples.last().map_or(0, |s| s.bytes_per_second))
        ),
        empty: samples.is_empty(),
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
    chart: Chart,
}

async fn dashboard<B: Backend>(State(st): St<B>, session: Session) -> Response {
    if let Err(r) = after_setup(&st).await {
        return r;
    }
    let jobs = st
        .backend
        .jobs()
        .await
        .into_iter()
        .map(JobRow::from_view)
        .collect();
    let chart = chart(&st.backend.throughput().await);
    let layout = Layout::new(&st, &session, "Jobs", Some("dashboard")).await;
    render(
        StatusCode::OK,
        &DashboardPage {
            layout,
            jobs,
            chart,
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
}

async fn logs_page<B: Backend>(State(st): St<B>, session: Session) -> Response {
    let layout = Layout::new(&st, &session, "Logs", Some("logs")).await;
    let lines = st.backend.logs(500).await;
    render(StatusCode::OK, &LogsPage { layout, lines })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_scales_to_the_peak() {
        let s = |at, bps| ThroughputSample {
            at,
            bytes_per_second: bps,
        };
        let c = chart(&[s(0, 0), s(1, 50), s(2, 100)]);
        assert_eq!(c.points, "0,150 300,75 600,0");
        assert!(!c.empty);
        assert!(chart(&[]).empty);
        assert_eq!(chart(&[s(0, 0)]).points, "0,150");
    }
}
