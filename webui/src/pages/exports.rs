//! The exports page: new exports, their state and hashes, a download link for each finished
//! local export (`GET /api/v1/exports/{id}/download`), and deleting an export to free space (a
//! CSRF-protected form; the browser asks first). The data partition's free space is shown.

use super::{
    Layout, error_page,
    forms::{self, DiskChoice, ExportForm, format_value},
    human_bytes, render, see_other,
};
use crate::{
    AppState,
    backend::{Backend, DataSpaceView, ExportView, JobView},
    error::{FormErrors, status_of},
    routes::Routes,
};
use askama::Template;
use axum::{
    Form,
    extract::{Path, State},
    http::StatusCode,
    response::Response,
};
use tower_sessions::Session;

type St<B> = State<AppState<B>>;

pub(super) fn routes<B: Backend>() -> Routes<AppState<B>> {
    Routes::new()
        .get("/exports", exports_page::<B>)
        .post("/exports", create_export::<B>)
        .post("/exports/{id}/delete", delete_export::<B>)
        .post("/exports/{id}/cancel", cancel_export::<B>)
}

#[derive(Template)]
#[template(path = "exports.html")]
struct ExportsPage {
    layout: Layout,
    exports: Vec<ExportView>,
    jobs: Vec<JobView>,
    form: ExportForm,
    errors: FormErrors,
    space: Option<DataSpaceView>,
}

impl ExportsPage {
    fn space_text(&self) -> String {
        self.space.as_ref().map_or_else(String::new, space_text)
    }
}

/// `12.0 GiB free of 15.9 GiB`
pub(crate) fn space_text(s: &DataSpaceView) -> String {
    format!(
        "{} free of {}",
        human_bytes(s.free_bytes),
        human_bytes(s.total_bytes)
    )
}

async fn render_exports<B: Backend>(
    st: &AppState<B>,
    session: &Session,
    mut form: ExportForm,
    errors: FormErrors,
    code: StatusCode,
) -> Response {
    let layout = Layout::new(st, session, "Exports", Some("exports")).await;
    let jobs = st.backend.jobs().await;
    // The disks of each job's VM, from the inventory as last read (no source is asked here).
    let vms = st.backend.inventory(false).await.unwrap_or_default();
    form.disks = jobs
        .iter()
        .flat_map(|j| {
            vms.iter()
                .filter(move |v| v.name == j.vm && v.source_id == j.source_id)
                .flat_map(move |v| {
                    v.disks.iter().map(move |d| DiskChoice {
                        job_id: j.id.clone(),
                        index: d.index,
                        label: format!("{}: {} ({})", j.vm, d.label, human_bytes(d.capacity_bytes)),
                    })
                })
        })
        .collect();
    render(
        code,
        &ExportsPage {
            layout,
            exports: st.backend.exports().await,
            jobs,
            form,
            errors,
            space: st.backend.settings().await.data_space,
        },
    )
}

/// The table's view of `e` (for templates: `{% let r = crate::pages::exports::row(e) %}`).
pub(crate) fn row(e: &ExportView) -> ExportRow {
    ExportRow::from(e.clone())
}

/// An export as the table shows it: figures formatted.
pub(crate) struct ExportRow {
    pub size: String,
    pub percent: u64,
    pub progress: String,
    pub rate: String,
    pub eta: String,
    pub time: String,
}

impl From<ExportView> for ExportRow {
    fn from(e: ExportView) -> Self {
        let pct = if e.state == "done" {
            100
        } else {
            super::percent(e.bytes_done, e.bytes_total)
        };
        ExportRow {
            size: e.size_bytes.map(human_bytes).unwrap_or_default(),
            percent: pct,
            progress: if e.bytes_total > 0 {
                format!(
                    "{pct} % ({} of {})",
                    human_bytes(e.bytes_done),
                    human_bytes(e.bytes_total)
                )
            } else {
                String::new()
            },
            rate: if e.throughput_bps > 0 {
                format!("{}/s", human_bytes(e.throughput_bps))
            } else {
                String::new()
            },
            eta: e.eta_seconds.map(eta_text).unwrap_or_default(),
            time: match (&e.started_at, &e.finished_at) {
                (Some(s), Some(f)) => format!("{s} – {f}"),
                (Some(s), None) => format!("since {s}"),
                _ => String::new(),
            },
        }
    }
}

/// `1 h 02 min`, `3 min 05 s`, `42 s` left.
pub(crate) fn eta_text(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    if h > 0 {
        format!("{h} h {m:02} min left")
    } else if m > 0 {
        format!("{m} min {s:02} s left")
    } else {
        format!("{s} s left")
    }
}

async fn exports_page<B: Backend>(State(st): St<B>, session: Session) -> Response {
    render_exports(
        &st,
        &session,
        ExportForm::default(),
        FormErrors::none(),
        StatusCode::OK,
    )
    .await
}

const EXPORT_FIELDS: &[&str] = &["job_id", "disk", "format", "destination"];

async fn create_export<B: Backend>(
    State(st): St<B>,
    session: Session,
    Form(form): Form<ExportForm>,
) -> Response {
    let result = forms::submit(form.to_command(), EXPORT_FIELDS, |cmd| {
        st.backend.create_export(cmd)
    })
    .await;
    match result {
        Ok(_) => see_other("/exports"),
        Err((code, errors)) => render_exports(&st, &session, form, errors, code).await,
    }
}

async fn delete_export<B: Backend>(
    State(st): St<B>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    match st.backend.delete_export(id).await {
        Ok(()) => see_other("/exports?deleted=1"),
        Err(e @ crate::backend::CommandError::NotFound { .. }) => error_page(&e),
        Err(e) => {
            let code = status_of(&e);
            let errors = FormErrors::from_error(e, &[]);
            render_exports(&st, &session, ExportForm::default(), errors, code).await
        }
    }
}

/// Cancel a running export from the page: it stops at its next write and leaves no file.
async fn cancel_export<B: Backend>(
    State(st): St<B>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    match st.backend.cancel_export(id).await {
        Ok(()) => see_other("/exports?cancelled=1"),
        Err(e @ crate::backend::CommandError::NotFound { .. }) => error_page(&e),
        Err(e) => {
            let code = status_of(&e);
            let errors = FormErrors::from_error(e, &[]);
            render_exports(&st, &session, ExportForm::default(), errors, code).await
        }
    }
}

pub(crate) fn export_format(e: &ExportView) -> &'static str {
    format_value(e.format)
}
