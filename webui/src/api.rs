//! The REST API under `/api/v1` (JSON), plus `/metrics`. One route per [`Backend`] method, the
//! same authentication as the pages (session cookie + `X-CSRF-Token`, or HTTP Basic), status
//! codes from [`crate::error::status_of`]. `webui/openapi.json` documents exactly these routes
//! (a test compares the two).

use crate::{
    AppState,
    backend::{
        AddSource, ApproveHost, Backend, CertificateView, CheckView, CommandError, CreateExport,
        CreateJob, ExportView, HttpsCertificateView, IngestSettings, InstallCertificate, JobEvent,
        JobView, LedgerEntryView, NetworkSettings, ProbeSource, Secret, SetAdminPassword,
        SetStagingTarget, SettingsView, SetupStatus, SourceView, ThroughputSample, VmView,
    },
    error::ApiError,
    routes::Routes,
    security::{self, ClientIp},
};
use axum::{
    Json,
    extract::{FromRequest, Path, Query, Request, State, rejection::JsonRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::{Deserialize, de::DeserializeOwned};
use tower_sessions::Session;

/// The OpenAPI 3 document, checked in beside the crate.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// Most log lines one request may ask for.
const MAX_LOG_LINES: usize = 10_000;

type St<B> = State<AppState<B>>;
type ApiResult<T> = Result<T, ApiError>;

/// `Json<T>` whose refusals are JSON too: 422 for a body of the wrong shape (naming the problem),
/// 400 for a body that is not JSON, 415 without `Content-Type: application/json`.
pub(crate) struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(JsonRejection::JsonDataError(e)) => {
                Err(ApiError(CommandError::field("body", e.body_text())).into_response())
            }
            Err(e) => Err(security::refusal(e.status(), "bad_request", &e.body_text())),
        }
    }
}

pub(crate) fn routes<B: Backend>() -> Routes<AppState<B>> {
    Routes::new()
        .get("/api/v1/openapi.json", openapi)
        .get("/api/v1/session", session_info::<B>)
        .post("/api/v1/login", login::<B>)
        .post("/api/v1/logout", logout)
        .get("/api/v1/setup/status", setup_status::<B>)
        .post("/api/v1/setup/password", set_password::<B>)
        .post("/api/v1/setup/finish", finish_wizard::<B>)
        .get("/api/v1/settings", settings::<B>)
        .put("/api/v1/settings/network", set_network::<B>)
        .put("/api/v1/settings/staging", set_staging::<B>)
        .put("/api/v1/settings/ingest", set_ingest::<B>)
        .get("/api/v1/settings/certificate", https_certificate::<B>)
        .put("/api/v1/settings/certificate", install_certificate::<B>)
        .post("/api/v1/sources/probe", probe_source::<B>)
        .post("/api/v1/sources", add_source::<B>)
        .delete("/api/v1/sources/{id}", remove_source::<B>)
        .post("/api/v1/sources/{id}/hosts", approve_source_host::<B>)
        .post("/api/v1/checks", run_checks::<B>)
        .get("/api/v1/inventory", inventory::<B>)
        .get("/api/v1/jobs", jobs::<B>)
        .post("/api/v1/jobs", create_job::<B>)
        .get("/api/v1/jobs/{id}", job::<B>)
        .delete("/api/v1/jobs/{id}", delete_job::<B>)
        .get("/api/v1/jobs/{id}/events", job_events::<B>)
        .post("/api/v1/jobs/{id}/run", run_job_now::<B>)
        .post("/api/v1/jobs/{id}/cancel", cancel_job::<B>)
        .get("/api/v1/throughput", throughput::<B>)
        .get("/api/v1/ledger", ledger::<B>)
        .get("/api/v1/exports", exports::<B>)
        .post("/api/v1/exports", create_export::<B>)
        .post("/api/v1/exports/{id}/cancel", cancel_export::<B>)
        .get("/api/v1/exports/{id}/download", download_export::<B>)
        .delete("/api/v1/exports/{id}", delete_export::<B>)
        // issue 18 (wt-errors): one export, with its typed error.
        .get("/api/v1/exports/{id}", one_export::<B>)
        .get("/api/v1/logs", logs::<B>)
        .get("/api/v1/support-bundle", support_bundle::<B>)
        .get("/metrics", metrics::<B>)
        // replication view (issue #18)
        .get("/api/v1/jobs/{id}/throughput", job_throughput::<B>)
        .merge(operator_routes::<B>())
        .merge(staging_server_routes::<B>())
}

// ---------------------------------------------------------------------------------------------
// Staging servers (issue 21): several servers of one store, each pinned on approval.
// ---------------------------------------------------------------------------------------------

fn staging_server_routes<B: Backend>() -> Routes<AppState<B>> {
    Routes::new()
        .get("/api/v1/settings/staging/servers", staging_servers::<B>)
        .post("/api/v1/settings/staging/servers", add_staging_server::<B>)
        .post(
            "/api/v1/settings/staging/servers/probe",
            probe_staging_server::<B>,
        )
        .delete(
            "/api/v1/settings/staging/servers/{address}",
            remove_staging_server::<B>,
        )
}

async fn staging_servers<B: Backend>(
    State(st): St<B>,
) -> Json<Vec<crate::backend::StagingServerView>> {
    Json(st.backend.staging_servers().await)
}

async fn probe_staging_server<B: Backend>(
    State(st): St<B>,
    JsonBody(cmd): JsonBody<crate::backend::ProbeStagingServer>,
) -> ApiResult<Json<CertificateView>> {
    Ok(Json(st.backend.probe_staging_server(cmd).await?))
}

async fn add_staging_server<B: Backend>(
    State(st): St<B>,
    JsonBody(cmd): JsonBody<crate::backend::AddStagingServer>,
) -> ApiResult<(StatusCode, Json<crate::backend::StagingServerView>)> {
    Ok((
        StatusCode::CREATED,
        Json(st.backend.add_staging_server(cmd).await?),
    ))
}

/// `{address}` is `host:port`, percent-encoded where it must be (`%5B::1%5D:1500`).
async fn remove_staging_server<B: Backend>(
    State(st): St<B>,
    Path(address): Path<String>,
) -> ApiResult<StatusCode> {
    no_content(st.backend.remove_staging_server(address).await)
}

// --- end staging servers ---------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Operator pages (issue 18): bulk jobs, last checks, transfer settings, source credentials.
// ---------------------------------------------------------------------------------------------

fn operator_routes<B: Backend>() -> Routes<AppState<B>> {
    Routes::new()
        .post("/api/v1/jobs/bulk", create_jobs::<B>)
        .get("/api/v1/checks", last_checks::<B>)
        .get("/api/v1/settings/transfer", transfer_settings::<B>)
        .put("/api/v1/settings/transfer", set_transfer_settings::<B>)
        .put(
            "/api/v1/sources/{id}/credentials",
            set_source_credentials::<B>,
        )
        .put("/api/v1/sources/{id}/cbt", set_source_cbt::<B>)
        .post("/api/v1/update", upload_update::<B>)
}

/// One job per VM with one schedule: 200 with every VM's outcome (created or refused, with the
/// reason); 422 only when the list itself is refused.
async fn create_jobs<B: Backend>(
    State(st): St<B>,
    JsonBody(cmd): JsonBody<crate::backend::CreateJobs>,
) -> ApiResult<Json<Vec<crate::backend::BulkJobResult>>> {
    Ok(Json(st.backend.create_jobs(cmd).await?))
}

/// The last checks run and when (404 before any ran).
async fn last_checks<B: Backend>(
    State(st): St<B>,
) -> ApiResult<Json<crate::backend::ChecksReport>> {
    st.backend.last_checks().await.map(Json).ok_or_else(|| {
        ApiError(CommandError::NotFound {
            message: "no checks have run yet: POST /api/v1/checks".into(),
        })
    })
}

async fn transfer_settings<B: Backend>(State(st): St<B>) -> Json<crate::backend::TransferSettings> {
    Json(st.backend.transfer_settings().await)
}

async fn set_transfer_settings<B: Backend>(
    State(st): St<B>,
    JsonBody(cmd): JsonBody<crate::backend::TransferSettings>,
) -> ApiResult<Json<crate::backend::TransferSettings>> {
    Ok(Json(st.backend.set_transfer_settings(cmd).await?))
}

async fn set_source_credentials<B: Backend>(
    State(st): St<B>,
    Path(id): Path<String>,
    JsonBody(cmd): JsonBody<crate::backend::SetSourceCredentials>,
) -> ApiResult<Json<SourceView>> {
    Ok(Json(st.backend.set_source_credentials(id, cmd).await?))
}

/// An update bundle as the raw request body (streamed by the backend, which caps its size and
/// verifies it before anything is installed).
async fn upload_update<B: Backend>(
    State(st): St<B>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> ApiResult<Json<crate::backend::UpdateView>> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    Ok(Json(st.backend.upload_update(body, declared).await?))
}

/// Changed block tracking on or off for one source (`{"enabled": bool}`).
async fn set_source_cbt<B: Backend>(
    State(st): St<B>,
    Path(id): Path<String>,
    JsonBody(cmd): JsonBody<crate::backend::SetSourceCbt>,
) -> ApiResult<Json<SourceView>> {
    Ok(Json(st.backend.set_source_cbt(id, cmd).await?))
}

/// Every error answer under `/api/` and `/metrics` is JSON in the documented shape (`{"kind",
/// "message"}`), also the ones axum's extractors and router answer in plain text: 400 for a
/// query string or path segment that does not parse, 405, 413, 415.
pub(crate) async fn json_errors(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let api = path.starts_with("/api/") || path == "/metrics";
    let resp = next.run(req).await;
    let status = resp.status();
    if !api || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = match axum::body::to_bytes(body, 16 * 1024).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_owned(),
        Err(_) => String::new(),
    };
    // Only text is worth passing on (an HTML page's markup is not a message).
    let message = if text.is_empty() || text.starts_with('<') {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let mut out = security::refusal(status, error_kind(status), &message);
    // Headers that carry meaning for the status: 405's Allow, 429/503's Retry-After, 416's
    // Content-Range (`bytes */LEN`, RFC 9110 §15.5.17), 401's WWW-Authenticate.
    for name in [
        header::ALLOW,
        header::RETRY_AFTER,
        header::CONTENT_RANGE,
        header::WWW_AUTHENTICATE,
    ] {
        if let Some(v) = parts.headers.get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}

/// The `kind` of an error answer made from a bare status.
fn error_kind(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        409 => "conflict",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        429 => "rate_limited",
        502 => "remote",
        503 => "unavailable",
        s if s >= 500 => "internal",
        _ => "bad_request",
    }
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI_JSON,
    )
        .into_response()
}

#[derive(serde::Serialize)]
struct SessionInfo {
    authenticated: bool,
    csrf_token: String,
}

/// The caller's session state and CSRF token (creates an anonymous session if none).
async fn session_info<B: Backend>(State(st): St<B>, session: Session) -> Json<SessionInfo> {
    Json(SessionInfo {
        authenticated: security::is_logged_in(&st, &session).await,
        csrf_token: security::csrf_token(&session).await,
    })
}

#[derive(Deserialize)]
struct LoginBody {
    password: Secret,
}

async fn login<B: Backend>(
    State(st): St<B>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    session: Session,
    JsonBody(body): JsonBody<LoginBody>,
) -> Response {
    let key = security::client_key(&st, ip, &headers);
    match security::check_login(&st, key, ip, &body.password).await {
        Ok(()) => {}
        Err(security::Denied::Wait(wait)) => return security::too_many_attempts(wait, true),
        Err(security::Denied::Wrong) => {
            return security::refusal(StatusCode::UNAUTHORIZED, "unauthorized", "wrong password");
        }
    }
    match security::log_in(&session).await {
        Ok(csrf_token) => security::with_device_cookie(
            &st,
            Json(SessionInfo {
                authenticated: true,
                csrf_token,
            })
            .into_response(),
        ),
        Err(e) => ApiError(CommandError::Internal {
            message: format!("session store: {e}"),
        })
        .into_response(),
    }
}

async fn logout(session: Session) -> StatusCode {
    // A failed flush leaves nothing behind that grants access: the session is cleared first.
    session.clear().await;
    let _ = session.flush().await;
    StatusCode::NO_CONTENT
}

async fn setup_status<B: Backend>(State(st): St<B>) -> Json<SetupStatus> {
    Json(st.backend.setup_status().await)
}

/// Sets (first time, with the setup code) or changes (logged in, with the current password) the
/// admin password. Wrong setup codes and current passwords count as failed logins.
async fn set_password<B: Backend>(
    State(st): St<B>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    session: Session,
    JsonBody(cmd): JsonBody<SetAdminPassword>,
) -> Response {
    match crate::pages::apply_password(&st, ip, &headers, &session, cmd).await {
        Ok(device) => crate::pages::with_cookie(
            Json(SessionInfo {
                authenticated: security::is_logged_in(&st, &session).await,
                csrf_token: security::csrf_token(&session).await,
            })
            .into_response(),
            device,
        ),
        Err(crate::pages::PasswordRefusal::Limited(wait)) => {
            security::too_many_attempts(wait, true)
        }
        Err(crate::pages::PasswordRefusal::Refused(e)) => ApiError(e).into_response(),
    }
}

fn no_content(r: Result<(), CommandError>) -> ApiResult<StatusCode> {
    r.map(|()| StatusCode::NO_CONTENT).map_err(ApiError)
}

async fn finish_wizard<B: Backend>(State(st): St<B>) -> ApiResult<StatusCode> {
    no_content(st.backend.finish_wizard().await)
}

async fn settings<B: Backend>(State(st): St<B>) -> Json<SettingsView> {
    Json(st.backend.settings().await)
}

async fn set_network<B: Backend>(
    State(st): St<B>,
    JsonBody(cmd): JsonBody<NetworkSettings>,
) -> ApiResult<StatusCode> {
    no_content(st.backend.set_network(cmd).await)
}

async fn set_staging<B: Backend>(
    State(st): St<B>,
    JsonBody(cmd): JsonBody<SetStagingTarget>,
) -> ApiResult<StatusCode> {
    no_content(st.backend.set_staging(cmd).await)
}

async fn set_ingest<B: Backend>(
    State(st): St<B>,
    JsonBody(cmd): JsonBody<IngestSettings>,
) -> ApiResult<Json<IngestSettings>> {
    Ok(Json(st.backend.set_ingest(cmd).await?))
}

async fn https_certificate<B: Backend>(State(st): St<B>) -> ApiResult<Json<HttpsCertificateView>> {
    Ok(Json(st.backend.https_certificate().await?))
}

async fn install_certificate<B: Backend>(
    State(st): St<B>,
    JsonBody(cmd): JsonBody<InstallCertificate>,
) -> ApiResult<Json<HttpsCertificateView>> {
    Ok(Json(st.backend.install_certificate(cmd).await?))
}

async fn probe_source<B: Backend>(
    State(st): St<B>,
    JsonBody(cmd): JsonBody<ProbeSource>,
) -> ApiResult<Json<CertificateView>> {
    Ok(Json(st.backend.probe_source(cmd).await?))
}

async fn add_source<B: Backend>(
    State(st): St<B>,
    JsonBody(cmd): JsonBody<AddSource>,
) -> ApiResult<(StatusCode, Json<SourceView>)> {
    Ok((StatusCode::CREATED, Json(st.backend.add_source(cmd).await?)))
}

async fn remove_source<B: Backend>(
    State(st): St<B>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    no_content(st.backend.remove_source(id).await)
}

async fn approve_source_host<B: Backend>(
    State(st): St<B>,
    Path(id): Path<String>,
    JsonBody(cmd): JsonBody<ApproveHost>,
) -> ApiResult<Json<SourceView>> {
    Ok(Json(st.backend.approve_source_host(id, cmd).await?))
}

async fn run_checks<B: Backend>(State(st): St<B>) -> ApiResult<Json<Vec<CheckView>>> {
    Ok(Json(st.backend.run_checks().await?))
}

#[derive(Deserialize)]
struct InventoryQuery {
    #[serde(default)]
    refresh: bool,
}

async fn inventory<B: Backend>(
    State(st): St<B>,
    Query(q): Query<InventoryQuery>,
) -> ApiResult<Json<Vec<VmView>>> {
    Ok(Json(st.backend.inventory(q.refresh).await?))
}

async fn jobs<B: Backend>(State(st): St<B>) -> Json<Vec<JobView>> {
    Json(st.backend.jobs().await)
}

async fn create_job<B: Backend>(
    State(st): St<B>,
    JsonBody(cmd): JsonBody<CreateJob>,
) -> ApiResult<(StatusCode, Json<JobView>)> {
    Ok((StatusCode::CREATED, Json(st.backend.create_job(cmd).await?)))
}

async fn job<B: Backend>(State(st): St<B>, Path(id): Path<String>) -> ApiResult<Json<JobView>> {
    Ok(Json(st.backend.job(id).await?))
}

async fn delete_job<B: Backend>(State(st): St<B>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    no_content(st.backend.delete_job(id).await)
}

async fn job_events<B: Backend>(
    State(st): St<B>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<JobEvent>>> {
    Ok(Json(st.backend.job_events(id).await?))
}

async fn run_job_now<B: Backend>(
    State(st): St<B>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    no_content(st.backend.run_job_now(id).await)
}

async fn cancel_job<B: Backend>(State(st): St<B>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    no_content(st.backend.cancel_job(id).await)
}

async fn throughput<B: Backend>(State(st): St<B>) -> Json<Vec<ThroughputSample>> {
    Json(st.backend.throughput().await)
}

async fn ledger<B: Backend>(State(st): St<B>) -> Json<Vec<LedgerEntryView>> {
    Json(st.backend.ledger().await)
}

async fn exports<B: Backend>(State(st): St<B>) -> Json<Vec<ExportView>> {
    Json(st.backend.exports().await)
}

// --- issue 18, typed export errors (wt-errors) ---
async fn one_export<B: Backend>(
    State(st): St<B>,
    Path(id): Path<String>,
) -> ApiResult<Json<ExportView>> {
    match st.backend.exports().await.into_iter().find(|e| e.id == id) {
        Some(e) => Ok(Json(e)),
        None => Err(ApiError(CommandError::NotFound {
            message: format!("export {id}"),
        })),
    }
}
// --- end typed export errors ---

async fn create_export<B: Backend>(
    State(st): St<B>,
    JsonBody(cmd): JsonBody<CreateExport>,
) -> ApiResult<(StatusCode, Json<ExportView>)> {
    Ok((
        StatusCode::CREATED,
        Json(st.backend.create_export(cmd).await?),
    ))
}

async fn cancel_export<B: Backend>(
    State(st): St<B>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    no_content(st.backend.cancel_export(id).await)
}

/// A finished local export's file (Range, If-Range, Digest; see `download.rs`).
async fn download_export<B: Backend>(
    State(st): St<B>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    match st.backend.export_file(id).await {
        Ok(f) => crate::download::respond(f, &headers).await,
        Err(e) => ApiError(e).into_response(),
    }
}

async fn delete_export<B: Backend>(
    State(st): St<B>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    no_content(st.backend.delete_export(id).await)
}

#[derive(Deserialize)]
struct LogsQuery {
    lines: Option<usize>,
}

async fn logs<B: Backend>(State(st): St<B>, Query(q): Query<LogsQuery>) -> Json<Vec<String>> {
    let lines = q.lines.unwrap_or(200).min(MAX_LOG_LINES);
    Json(st.backend.logs(lines).await)
}

/// The support bundle as a download (shared with the page route `/support-bundle`).
pub(crate) async fn support_bundle<B: Backend>(State(st): St<B>) -> Response {
    match st.backend.support_bundle().await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, "application/gzip"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"godwit-support.tar.gz\"",
                ),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => ApiError(e).into_response(),
    }
}

async fn metrics<B: Backend>(State(st): St<B>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.backend.metrics().await,
    )
        .into_response()
}

// ---- replication view (issue #18) ----------------------------------------------------------

async fn job_throughput<B: Backend>(
    State(st): St<B>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<ThroughputSample>>> {
    Ok(Json(st.backend.job_throughput(id).await?))
}
