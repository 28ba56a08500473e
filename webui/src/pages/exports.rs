//! The exports page: new exports, their state and hashes, a download link for each finished
//! local export (`GET /api/v1/exports/{id}/download`), and deleting an export to free space (a
//! CSRF-protected form; the browser asks first). The data partition's free space is shown.

use super::{
    Layout, error_page,
    forms::{self, ExportForm, format_value},
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
    form: ExportForm,
    errors: FormErrors,
    code: StatusCode,
) -> Response {
    let layout = Layout::new(st, session, "Exports", Some("exports")).await;
    render(
        code,
        &ExportsPage {
            layout,
            exports: st.backend.exports().await,
            jobs: st.backend.jobs().await,
            form,
            errors,
            space: st.backend.settings().await.data_space,
        },
    )
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

pub(crate) fn export_format(e: &ExportView) -> &'static str {
    format_value(e.format)
}
