//! The staging servers page (issue 21): the servers of the store with their state, adding one
//! (its certificate shown first, then approved) and removing one. The same backend commands as
//! `/api/v1/settings/staging/servers`.

use super::{Layout, render, see_other};
use crate::{
    AppState,
    backend::{AddStagingServer, Backend, CertificateView, ProbeStagingServer, StagingServerView},
    error::{FormErrors, status_of},
    routes::Routes,
};
use askama::Template;
use axum::{
    Form,
    extract::{Query, State},
    http::StatusCode,
    response::Response,
};
use serde::Deserialize;
use tower_sessions::Session;

type St<B> = State<AppState<B>>;

pub(super) fn routes<B: Backend>() -> Routes<AppState<B>> {
    Routes::new()
        .get("/settings/staging", page::<B>)
        .post("/settings/staging/probe", probe::<B>)
        .post("/settings/staging/add", add::<B>)
        .post("/settings/staging/remove", remove::<B>)
}

#[derive(Template)]
#[template(path = "staging_servers.html")]
struct StagingServersPage {
    layout: Layout,
    servers: Vec<StagingServerView>,
    /// The certificate shown for approval.
    probed: Option<CertificateView>,
    /// The address field, as typed into a refused form.
    address: String,
    errors: FormErrors,
    saved: Option<&'static str>,
}

#[derive(Deserialize)]
struct SavedQuery {
    saved: Option<String>,
}

#[derive(Deserialize)]
struct AddressForm {
    address: String,
}

#[derive(Deserialize)]
struct ApproveForm {
    address: String,
    approved_fingerprint: String,
}

async fn show<B: Backend>(
    st: &AppState<B>,
    session: &Session,
    code: StatusCode,
    probed: Option<CertificateView>,
    address: String,
    errors: FormErrors,
    saved: Option<&'static str>,
) -> Response {
    let servers = st.backend.staging_servers().await;
    let layout = Layout::new(st, session, "Staging servers", Some("settings")).await;
    render(
        code,
        &StagingServersPage {
            layout,
            servers,
            probed,
            address,
            errors,
            saved,
        },
    )
}

async fn page<B: Backend>(
    State(st): St<B>,
    session: Session,
    Query(q): Query<SavedQuery>,
) -> Response {
    let saved = match q.saved.as_deref() {
        Some("added") => Some("Server added."),
        Some("removed") => Some("Server removed."),
        _ => None,
    };
    show(
        &st,
        &session,
        StatusCode::OK,
        None,
        String::new(),
        FormErrors::none(),
        saved,
    )
    .await
}

async fn probe<B: Backend>(
    State(st): St<B>,
    session: Session,
    Form(form): Form<AddressForm>,
) -> Response {
    let typed = form.address.clone();
    match st
        .backend
        .probe_staging_server(ProbeStagingServer {
            address: form.address,
        })
        .await
    {
        Ok(c) => {
            show(
                &st,
                &session,
                StatusCode::OK,
                Some(c),
                typed,
                FormErrors::none(),
                None,
            )
            .await
        }
        Err(e) => {
            let code = status_of(&e);
            let errors = FormErrors::from_error(e, &["address"]);
            show(&st, &session, code, None, typed, errors, None).await
        }
    }
}

async fn add<B: Backend>(
    State(st): St<B>,
    session: Session,
    Form(form): Form<ApproveForm>,
) -> Response {
    let typed = form.address.clone();
    match st
        .backend
        .add_staging_server(AddStagingServer {
            address: form.address,
            approved_fingerprint: form.approved_fingerprint,
        })
        .await
    {
        Ok(_) => see_other("/settings/staging?saved=added"),
        Err(e) => {
            let code = status_of(&e);
            let errors = FormErrors::from_error(e, &["address"]);
            show(&st, &session, code, None, typed, errors, None).await
        }
    }
}

async fn remove<B: Backend>(
    State(st): St<B>,
    session: Session,
    Form(form): Form<AddressForm>,
) -> Response {
    match st.backend.remove_staging_server(form.address).await {
        Ok(()) => see_other("/settings/staging?saved=removed"),
        Err(e) => {
            let code = status_of(&e);
            let errors = FormErrors::from_error(e, &[]);
            show(&st, &session, code, None, String::new(), errors, None).await
        }
    }
}
