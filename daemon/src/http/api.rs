//! The HTTP API under `/api/v1`, its OpenAPI document and its error shape.
//!
//! Every handler parses its own input (bodies as bytes, paths as strings)
//! so that each mistake gets the one error shape with a message a person
//! can act on, instead of a framework default.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth;
use crate::core::events::LogRecord;
use crate::core::machine::StateChange;
use crate::core::model::{
    Attempt, Event, FileRecord, Job, JobState, Kind, MachineView, Role, TokenRecord,
};
use crate::factory::files::{IngestError, Upload};
use crate::factory::temps::TemperatureHistory;
use crate::factory::{Factory, FactoryError, JobAction, Submission};

/// What handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The factory.
    pub factory: Arc<Factory>,
    /// Production metering (products, orders, units, metrics, APC).
    pub metering: Arc<crate::metering::Metering>,
}

// ------------------------------------------------------------------ errors

/// The body of every error response.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// A machine-readable code and a message for people.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable identifier, e.g. `not_found`, `invalid_json`.
    pub code: String,
    /// What went wrong and what to do about it.
    pub message: String,
}

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// Status, code and message, for routes that must answer in another
    /// API's error shape (`http::octoprint`).
    pub(crate) fn into_parts(self) -> (StatusCode, &'static str, String) {
        (self.status, self.code, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<FactoryError> for ApiError {
    fn from(e: FactoryError) -> Self {
        use microfactory_machines::driver::DriverError as D;
        let msg = e.to_string();
        let (status, code) = match &e {
            FactoryError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            FactoryError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            FactoryError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            FactoryError::Driver { source, .. } => match source {
                D::Offline => (StatusCode::CONFLICT, "machine_offline"),
                D::Busy(_) => (StatusCode::CONFLICT, "machine_busy"),
                D::NoJob => (StatusCode::CONFLICT, "no_job"),
                D::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_command"),
                D::Firmware(_) => (StatusCode::UNPROCESSABLE_ENTITY, "firmware_error"),
                D::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "machine_timeout"),
                D::Stopped => (StatusCode::SERVICE_UNAVAILABLE, "driver_stopped"),
            },
            FactoryError::Ingest(i) => match i {
                IngestError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
                IngestError::Binary { .. } | IngestError::NotText { .. } => {
                    (StatusCode::UNSUPPORTED_MEDIA_TYPE, "not_text")
                }
                IngestError::Empty | IngestError::Invalid(_) => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "invalid_gcode")
                }
                IngestError::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
            },
            FactoryError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
        };
        if status.is_server_error() {
            tracing::error!(error = %msg, "request failed");
        }
        Self::new(status, code, msg)
    }
}

type ApiResult<T> = Result<T, ApiError>;

pub(crate) fn json_body<T: for<'de> Deserialize<'de>>(
    headers: &HeaderMap,
    body: &Bytes,
) -> ApiResult<T> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected_json",
            format!("send the body as application/json (got '{ct}')"),
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        let status = if e.is_data() {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(status, "invalid_json", format!("request body: {e}"))
    })
}

/// An optional JSON body: empty means all defaults.
fn opt_json_body<T: for<'de> Deserialize<'de> + Default>(
    headers: &HeaderMap,
    body: &Bytes,
) -> ApiResult<T> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        Ok(T::default())
    } else {
        json_body(headers, body)
    }
}

fn job_id(raw: &str) -> ApiResult<u64> {
    raw.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!("job id must be a positive integer, got '{raw}'"),
        )
    })
}

// ------------------------------------------------------------------- auth

/// Who is calling; handlers may take it as an `Extension`.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Token name.
    pub name: String,
    /// Its role.
    pub role: Role,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ").map(str::trim)
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The caller's token record, from the bearer token or the session cookie
/// (which must carry the CSRF header to change anything), or the 401/403
/// to answer.
fn authenticate(s: &AppState, req: &Request) -> Result<TokenRecord, ApiError> {
    let store = s.factory.store();
    let found = if let Some(token) = bearer(req.headers()) {
        auth::lookup(store, token)
    } else if let Some(session) = cookie(req.headers(), auth::SESSION_COOKIE) {
        let safe = req.method() == Method::GET || req.method() == Method::HEAD;
        if !safe && !req.headers().contains_key(auth::CSRF_HEADER) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "csrf",
                format!(
                    "a request signed in by cookie must send the {} header",
                    auth::CSRF_HEADER
                ),
            ));
        }
        auth::lookup_session(store, session)
    } else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "send 'Authorization: Bearer <token>'; create a token with 'microfactoryd token create'",
        ));
    };
    match found {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the token or session is not known to this daemon; sign in again",
        )),
        Err(e) => Err(ApiError::from(FactoryError::Store(e))),
    }
}

async fn run_as(record: TokenRecord, mut req: Request, next: Next) -> Response {
    let span = tracing::info_span!("request", caller = %record.name);
    req.extensions_mut().insert(Caller {
        name: record.name,
        role: record.role,
    });
    tracing::Instrument::instrument(next.run(req), span).await
}

/// Any known caller whose role may use the method.
async fn require_auth(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let record = match authenticate(&s, &req) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    if !crate::http::policy::allowed(record.role, req.method()) {
        let role = format!("{:?}", record.role).to_lowercase();
        let what = if req.method() == Method::GET {
            "read this"
        } else {
            "change anything"
        };
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("a {role} token may not {what}; use an operator token"),
        )
        .into_response();
    }
    run_as(record, req, next).await
}

/// Any known caller, whatever its role: for ending one's own session,
/// which a read-only viewer must be able to do too.
async fn require_signed_in(State(s): State<AppState>, req: Request, next: Next) -> Response {
    match authenticate(&s, &req) {
        Ok(record) => run_as(record, req, next).await,
        Err(e) => e.into_response(),
    }
}

// ------------------------------------------------------------------ system

/// `GET /health`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the daemon answers.
    pub status: String,
    /// Daemon version.
    pub version: String,
    /// Configured machines.
    pub machines: usize,
}

/// Liveness for monitoring; needs no token.
#[utoipa::path(get, path = "/api/v1/health", tag = "system",
    responses((status = 200, description = "The daemon is up", body = Health)))]
async fn health(State(s): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        machines: s.factory.machines().len(),
    })
}

/// This OpenAPI document; needs no token.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "system",
    responses((status = 200, description = "The OpenAPI 3.1 document of every route",
        content_type = "application/json")))]
async fn openapi_json(
    axum::Extension(doc): axum::Extension<Arc<utoipa::openapi::OpenApi>>,
) -> Json<utoipa::openapi::OpenApi> {
    Json(doc.as_ref().clone())
}

// ----------------------------------------------------------------- session

/// `POST /session` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// An API token.
    pub token: String,
}

/// Who is signed in.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// The token's name.
    pub name: String,
    /// Its role.
    pub role: Role,
}

fn session_cookie(value: &str, max_age: u64) -> String {
    format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}",
        auth::SESSION_COOKIE
    )
}

/// Signs a browser in with a token: sets an `HttpOnly`, `SameSite=Strict`
/// session cookie, so that `EventSource` (which cannot send headers) works.
#[utoipa::path(post, path = "/api/v1/session", tag = "session", request_body = SignIn,
    responses((status = 201, body = WhoAmI), (status = 401, body = ErrorBody),
        (status = 415, body = ErrorBody)))]
async fn sign_in(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let b: SignIn = json_body(&headers, &body)?;
    let (id, rec) = auth::open_session(s.factory.store(), b.token.trim())
        .map_err(FactoryError::Store)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "that token is not known to this daemon",
            )
        })?;
    s.factory
        .store()
        .flush()
        .await
        .map_err(FactoryError::Store)?;
    let who = WhoAmI {
        name: rec.name,
        role: rec.role,
    };
    Ok((
        StatusCode::CREATED,
        [(header::SET_COOKIE, session_cookie(&id, 30 * 24 * 3600))],
        Json(who),
    )
        .into_response())
}

/// Who the caller is.
#[utoipa::path(get, path = "/api/v1/session", tag = "session",
    responses((status = 200, body = WhoAmI), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
async fn who_am_i(axum::Extension(c): axum::Extension<Caller>) -> Json<WhoAmI> {
    Json(WhoAmI {
        name: c.name,
        role: c.role,
    })
}

/// Signs the browser out (ends the session, clears the cookie). Any role
/// may, a viewer too.
#[utoipa::path(delete, path = "/api/v1/session", tag = "session",
    responses((status = 204), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
async fn sign_out(State(s): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    if let Some(session) = cookie(&headers, auth::SESSION_COOKIE) {
        auth::close_session(s.factory.store(), session).map_err(FactoryError::Store)?;
        s.factory
            .store()
            .flush()
            .await
            .map_err(FactoryError::Store)?;
    }
    Ok((
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, session_cookie("", 0))],
    )
        .into_response())
}

// ------------------------------------------------------------------- files

/// Whether a machine can run a file as it is.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Fit {
    /// The machine.
    pub machine_id: String,
    /// It can.
    pub ok: bool,
    /// Why not.
    pub reason: Option<String>,
    /// It can with canned-cycle expansion.
    pub ok_with_expansion: bool,
}

/// A file with the machines that can run it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FileView {
    /// The file.
    #[serde(flatten)]
    pub file: FileRecord,
    /// Per machine.
    pub machines: Vec<Fit>,
}

pub(crate) fn file_view(f: &Factory, file: FileRecord) -> FileView {
    let plain = f.file_fit(&file, false);
    let expanded = f.file_fit(&file, true);
    let machines = plain
        .into_iter()
        .zip(expanded)
        .map(|((id, r), (_, e))| Fit {
            machine_id: id,
            ok: r.is_ok(),
            reason: r.err(),
            ok_with_expansion: e.is_ok(),
        })
        .collect();
    FileView { file, machines }
}

/// Multipart upload form.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
struct UploadForm {
    /// The G-code file.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// Uploads a G-code file (multipart field `file`); the same content again
/// returns the stored file with 200.
#[utoipa::path(post, path = "/api/v1/files", tag = "files",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Stored and analysed", body = FileView),
        (status = 200, description = "Already stored", body = FileView),
        (status = 413, description = "Larger than max_upload_bytes", body = ErrorBody),
        (status = 415, description = "Not multipart, or binary / non-UTF-8", body = ErrorBody),
        (status = 422, description = "Not G-code (no commands, overlong line)", body = ErrorBody)),
    security(("bearer" = [])))]
async fn upload_file(
    State(s): State<AppState>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> ApiResult<(StatusCode, Json<FileView>)> {
    let mut multipart = multipart.map_err(|e| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected_multipart",
            format!("send multipart/form-data with a field named 'file' ({e})"),
        )
    })?;
    let limit = s.factory.max_upload();
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(e, limit))?
    {
        if field.name() != Some("file") {
            continue;
        }
        let name = upload_name(field.file_name());
        let up = receive_upload(&s.factory, &mut field).await?;
        let (rec, created) = s.factory.add_file(up, name).await?;
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        return Ok((status, Json(file_view(&s.factory, rec))));
    }
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "missing_file",
        "the form has no field named 'file'",
    ))
}

/// A broken multipart body as an error: 413 when it outgrew the body
/// limit (the upload limit plus room for the form), else 400.
pub(crate) fn multipart_error(e: axum::extract::multipart::MultipartError, limit: u64) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("file is larger than the limit of {limit} bytes"),
        )
    } else {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_multipart", e.body_text())
    }
}

/// The name an upload is shown under: the last component of what the
/// client sent (never a path), without control characters, at most 120
/// characters, since it is shown on every card and job.
pub(crate) fn upload_name(sent: Option<&str>) -> String {
    sent.map(|n| n.rsplit(['/', '\\']).next().unwrap_or(n))
        .map(|n| {
            n.chars()
                .filter(|c| !c.is_control())
                .take(120)
                .collect::<String>()
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "upload.gcode".into())
}

/// Streams one multipart field into a scratch file, refusing it as soon
/// as it passes the upload limit or stops being text; shared by every
/// upload route so that all take the same files.
pub(crate) async fn receive_upload(
    factory: &Factory,
    field: &mut axum::extract::multipart::Field<'_>,
) -> ApiResult<Upload> {
    let limit = factory.max_upload();
    let mut up = factory.upload().map_err(ApiError::from)?;
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, limit))? {
        up.push(&chunk)
            .map_err(|e| ApiError::from(FactoryError::from(e)))?;
    }
    Ok(up)
}

/// Lists stored files, newest first.
#[utoipa::path(get, path = "/api/v1/files", tag = "files",
    responses((status = 200, body = Vec<FileView>)), security(("bearer" = [])))]
async fn list_files(State(s): State<AppState>) -> ApiResult<Json<Vec<FileView>>> {
    let files = s.factory.files()?;
    Ok(Json(
        files
            .into_iter()
            .map(|f| file_view(&s.factory, f))
            .collect(),
    ))
}

/// One file with its analysis and pre-flight findings.
#[utoipa::path(get, path = "/api/v1/files/{id}", tag = "files",
    params(("id" = String, Path, description = "sha256 of the content")),
    responses((status = 200, body = FileView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_file(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<FileView>> {
    let f = s.factory.file(&id)?;
    Ok(Json(file_view(&s.factory, f)))
}

/// Deletes a file; refused while a queued or running job uses it.
#[utoipa::path(delete, path = "/api/v1/files/{id}", tag = "files",
    params(("id" = String, Path, description = "sha256 of the content")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
async fn delete_file(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    s.factory.delete_file(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// -------------------------------------------------------------------- jobs

/// `POST /jobs` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitJob {
    /// The file to run.
    pub file_id: String,
    /// Copies, each a job (default 1).
    pub copies: Option<u32>,
    /// Higher runs first (default 0).
    pub priority: Option<i32>,
    /// Run only on this machine.
    pub machine_id: Option<String>,
    /// Run only on this kind.
    pub kind: Option<Kind>,
    /// Run only on machines with these tags.
    pub tags: Option<Vec<String>>,
    /// Name shown to operators.
    pub name: Option<String>,
    /// GRBL: expand canned cycles, pause at tool changes.
    pub expand_canned_cycles: Option<bool>,
}

/// `POST /jobs` answer: one job per copy.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Submitted {
    /// The new jobs.
    pub jobs: Vec<Job>,
}

/// Queues a job (one per copy). A job no machine could run is refused with
/// each machine's reason.
#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs", request_body = SubmitJob,
    responses((status = 201, body = Submitted), (status = 400, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn submit_job(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Submitted>)> {
    let b: SubmitJob = json_body(&headers, &body)?;
    let jobs = s
        .factory
        .submit(Submission {
            file_id: b.file_id,
            copies: b.copies,
            priority: b.priority,
            machine_id: b.machine_id,
            kind: b.kind,
            tags: b.tags.unwrap_or_default(),
            name: b.name,
            expand_canned_cycles: b.expand_canned_cycles.unwrap_or(false),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(Submitted { jobs })))
}

/// `GET /jobs` filter.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct JobsQuery {
    /// Comma-separated states, e.g. `queued,running`.
    pub state: Option<String>,
    /// At most this many ended jobs (completed, failed, cancelled,
    /// interrupted), the most recent; active and queued jobs always come.
    /// Default: all.
    pub ended_limit: Option<usize>,
    /// Only the ended jobs listed after this one (older), and no live
    /// jobs: pages back through the history with `ended_limit`, passing
    /// the last id of the previous page.
    pub ended_after: Option<u64>,
}

/// Jobs in queue order: active, then queued (by priority, then order),
/// then ended (newest first).
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(JobsQuery),
    responses((status = 200, body = Vec<Job>), (status = 400, body = ErrorBody),
        (status = 404, description = "ended_after names no job", body = ErrorBody),
        (status = 422, description = "ended_after names a job that has not ended", body = ErrorBody)),
    security(("bearer" = [])))]
async fn list_jobs(
    State(s): State<AppState>,
    q: Result<Query<JobsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<Job>>> {
    let q =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let mut states = Vec::new();
    for name in q
        .state
        .iter()
        .flat_map(|s| s.split(','))
        .filter(|s| !s.is_empty())
    {
        let st = JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == name)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_state",
                    format!(
                        "unknown state '{name}' (expected one of {})",
                        JobState::ALL.map(JobState::as_str).join(", ")
                    ),
                )
            })?;
        states.push(st);
    }
    Ok(Json(s.factory.jobs(
        &states,
        q.ended_limit,
        q.ended_after,
    )?))
}

/// One job: state, machine, progress, failure and history.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = u64, Path, description = "Job id")),
    responses((status = 200, body = Job), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_job(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Job>> {
    Ok(Json(s.factory.job(job_id(&id)?)?))
}

macro_rules! job_action {
    ($name:ident, $path:literal, $doc:literal, $method:ident) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "jobs",
                            params(("id" = u64, Path, description = "Job id")),
                            responses((status = 200, body = Job), (status = 400, body = ErrorBody),
                                (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
                            security(("bearer" = [])))]
        async fn $name(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Job>> {
            Ok(Json(s.factory.$method(job_id(&id)?).await?))
        }
    };
}

job_action!(
    pause_job,
    "/api/v1/jobs/{id}/pause",
    "Pauses a running job.",
    pause_job
);
job_action!(
    resume_job,
    "/api/v1/jobs/{id}/resume",
    "Resumes a paused job.",
    resume_job
);
job_action!(
    cancel_job,
    "/api/v1/jobs/{id}/cancel",
    "Cancels a queued or running job (a running one runs the cancel script).",
    cancel_job
);

/// `POST /jobs/{id}/requeue` body (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequeueBody {
    /// Restart from this source line, with the profile's resume preamble
    /// (default 1: from the start).
    pub from_line: Option<u64>,
}

/// Puts an ended job back in the queue, optionally from a line.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/requeue", tag = "jobs",
    params(("id" = u64, Path, description = "Job id")), request_body = Option<RequeueBody>,
    responses((status = 200, body = Job), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn requeue_job(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Job>> {
    let id = job_id(&id)?;
    let b: RequeueBody = opt_json_body(&headers, &body)?;
    Ok(Json(s.factory.requeue(id, b.from_line).await?))
}

/// `POST /jobs/{id}/reorder` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReorderBody {
    /// Move just before this queued job; absent moves to the end.
    pub before: Option<u64>,
    /// New priority.
    pub priority: Option<i32>,
}

/// Moves a queued job in the queue.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/reorder", tag = "jobs",
    params(("id" = u64, Path, description = "Job id")), request_body = ReorderBody,
    responses((status = 200, body = Job), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn reorder_job(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Job>> {
    let id = job_id(&id)?;
    let b: ReorderBody = opt_json_body(&headers, &body)?;
    Ok(Json(s.factory.reorder(id, b.before, b.priority).await?))
}

// ---------------------------------------------------------------- machines

/// Every machine with its live status.
#[utoipa::path(get, path = "/api/v1/machines", tag = "machines",
    responses((status = 200, body = Vec<MachineView>)), security(("bearer" = [])))]
async fn list_machines(State(s): State<AppState>) -> Json<Vec<MachineView>> {
    Json(s.factory.machines())
}

/// One machine.
#[utoipa::path(get, path = "/api/v1/machines/{id}", tag = "machines",
    params(("id" = String, Path, description = "Machine id")),
    responses((status = 200, body = MachineView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_machine(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<MachineView>> {
    Ok(Json(s.factory.machine(&id)?))
}

macro_rules! machine_action {
    ($name:ident, $path:literal, $doc:literal, |$f:ident, $id:ident| $body:expr) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "machines",
                    params(("id" = String, Path, description = "Machine id")),
                    responses((status = 200, body = MachineView), (status = 404, body = ErrorBody),
                        (status = 409, body = ErrorBody)),
                    security(("bearer" = [])))]
        async fn $name(
            State(s): State<AppState>,
            Path($id): Path<String>,
        ) -> ApiResult<Json<MachineView>> {
            let $f = &s.factory;
            Ok(Json($body))
        }
    };
}

machine_action!(
    machine_pause,
    "/api/v1/machines/{id}/pause",
    "Pauses the machine's job.",
    |f, id| f.machine_job(&id, JobAction::Pause).await?
);
machine_action!(
    machine_resume,
    "/api/v1/machines/{id}/resume",
    "Resumes the machine's job.",
    |f, id| f.machine_job(&id, JobAction::Resume).await?
);
machine_action!(
    machine_cancel,
    "/api/v1/machines/{id}/cancel",
    "Cancels the machine's job.",
    |f, id| f.machine_job(&id, JobAction::Cancel).await?
);
machine_action!(
    machine_estop,
    "/api/v1/machines/{id}/estop",
    "Emergency stop (`M112` / GRBL reset), ahead of anything queued.",
    |f, id| f.estop(&id).await?
);
machine_action!(
    machine_clear,
    "/api/v1/machines/{id}/clear",
    "Confirms the bed is clear so the machine takes the next job.",
    |f, id| f.set_machine(&id, Some(true), None).await?
);
machine_action!(
    machine_enable,
    "/api/v1/machines/{id}/enable",
    "Puts the machine back in service.",
    |f, id| f.set_machine(&id, None, Some(false)).await?
);
machine_action!(
    machine_disable,
    "/api/v1/machines/{id}/disable",
    "Takes the machine out of service (it finishes its current job).",
    |f, id| f.set_machine(&id, None, Some(true)).await?
);

/// The firmware's answer to a command.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConsoleReply {
    /// The command sent.
    pub command: String,
    /// Lines the firmware answered.
    pub response: Vec<String>,
}

/// Homes an idle machine (`G28` / `$H`).
#[utoipa::path(post, path = "/api/v1/machines/{id}/home", tag = "machines",
    params(("id" = String, Path, description = "Machine id")),
    responses((status = 200, body = ConsoleReply), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
async fn machine_home(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<ConsoleReply>> {
    let response = s.factory.home(&id).await?;
    Ok(Json(ConsoleReply {
        command: "home".into(),
        response,
    }))
}

/// The last 20 minutes of a machine's heater readings, one sample a
/// second, oldest first (empty for a machine without heaters or never
/// connected; kept in memory, so a restart starts afresh).
#[utoipa::path(get, path = "/api/v1/machines/{id}/temperatures", tag = "machines",
    params(("id" = String, Path, description = "Machine id")),
    responses((status = 200, body = TemperatureHistory), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn machine_temperatures(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<TemperatureHistory>> {
    Ok(Json(s.factory.temperatures(&id)?))
}

/// One line of serial traffic.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SerialLineView {
    /// ms since the Unix epoch.
    pub at_ms: u64,
    /// Sent by the daemon (else received from the firmware).
    pub sent: bool,
    /// The line.
    pub text: String,
}

/// The recent serial traffic of a machine (last 200 lines, oldest first;
/// GRBL status polls left out), for the console view.
#[utoipa::path(get, path = "/api/v1/machines/{id}/serial", tag = "machines",
    params(("id" = String, Path, description = "Machine id")),
    responses((status = 200, body = Vec<SerialLineView>), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn machine_serial(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<SerialLineView>>> {
    Ok(Json(
        s.factory
            .serial_log(&id)?
            .into_iter()
            .map(|l| SerialLineView {
                at_ms: l.at_ms,
                sent: l.sent,
                text: l.text,
            })
            .collect(),
    ))
}

/// `POST /machines/{id}/console` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleBody {
    /// One G-code or firmware command.
    pub command: String,
}

/// Sends one command and returns the firmware's answer.
#[utoipa::path(post, path = "/api/v1/machines/{id}/console", tag = "machines",
    params(("id" = String, Path, description = "Machine id")), request_body = ConsoleBody,
    responses((status = 200, body = ConsoleReply), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn machine_console(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<ConsoleReply>> {
    let b: ConsoleBody = json_body(&headers, &body)?;
    let response = s.factory.console(&id, &b.command).await?;
    Ok(Json(ConsoleReply {
        command: b.command,
        response,
    }))
}

// ------------------------------------------------------------------ events

/// Server-Sent Events: `job` (state changes), `progress` (a few per second
/// per running job) and `machine` (status changes). Data is JSON.
#[utoipa::path(get, path = "/api/v1/events", tag = "events",
    responses((status = 200, description = "text/event-stream of Event", body = Event,
        content_type = "text/event-stream")),
    security(("bearer" = [])))]
async fn events(
    State(s): State<AppState>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = s.factory.subscribe();
    let closing = s.factory.closing();
    let stream = futures_util::stream::unfold((rx, closing), |(mut rx, mut closing)| async move {
        let next = tokio::select! {
            r = rx.recv() => r,
            // The daemon is stopping: end the stream so the server can.
            _ = closing.wait_for(|c| *c) => return None,
        };
        let ev = match next {
            Ok(e) => {
                let name = match &e {
                    Event::Job { .. } => "job",
                    Event::Progress { .. } => "progress",
                    Event::Machine { .. } => "machine",
                };
                let data = serde_json::to_string(&e).unwrap_or_default();
                SseEvent::default().event(name).data(data)
            }
            // Tell the client to refetch instead of dropping silently.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                SseEvent::default().event("lagged").data(n.to_string())
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(ev), (rx, closing)))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// `GET /log` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct LogQuery {
    /// Return entries after this sequence number (default 0).
    pub after: Option<u64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// The durable domain log, oldest first: every change of a file, a job,
/// an attempt and a machine's state, in commit order, surviving restarts
/// (`GET /events` is live only). Read it by cursor: pass the last `seq`
/// you handled as `after`.
#[utoipa::path(get, path = "/api/v1/log", tag = "events", params(LogQuery),
    responses((status = 200, body = Vec<LogRecord>), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
async fn event_log(
    State(s): State<AppState>,
    q: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<LogRecord>>> {
    let q =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let entries = s
        .factory
        .store()
        .log_after(q.after.unwrap_or(0), q.limit.unwrap_or(100).min(1000))
        .map_err(FactoryError::Store)?;
    Ok(Json(entries))
}

/// `GET /machines/{id}/states` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct StatesQuery {
    /// From this time, ms since the Unix epoch (default 0).
    pub from: Option<u64>,
    /// Up to this time (default: now and on).
    pub to: Option<u64>,
}

/// A machine's state log: each change with its reason and job, oldest
/// first; the first entry is the state in force at `from`. The only
/// source of time for metering.
#[utoipa::path(get, path = "/api/v1/machines/{id}/states", tag = "machines",
    params(("id" = String, Path, description = "Machine id"), StatesQuery),
    responses((status = 200, body = Vec<StateChange>), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn machine_states(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<StatesQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<StateChange>>> {
    let q =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let (from, to) = (q.from.unwrap_or(0), q.to.unwrap_or(u64::MAX));
    if from > to {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("from ({from}) is after to ({to})"),
        ));
    }
    Ok(Json(s.factory.machine_states(&id, from, to)?))
}

/// A job's attempts: each run on a machine with its start, end, outcome,
/// lines and the link's counters. A requeue starts a new attempt.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/attempts", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = Vec<Attempt>), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn job_attempts(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<Attempt>>> {
    Ok(Json(s.factory.attempts(job_id(&id)?)?))
}

// ------------------------------------------------------------------ router

#[derive(OpenApi)]
#[openapi(
    info(title = "microfactoryd", description = "Job queue, machines and events of a microfactory."),
    modifiers(&BearerAuth),
    components(schemas(ErrorBody, Event, LogRecord))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The API router and its OpenAPI document.
pub fn router(state: AppState) -> Router {
    let max_upload = state.factory.max_upload();
    let protected = OpenApiRouter::new()
        .routes(routes!(upload_file, list_files))
        .routes(routes!(get_file, delete_file))
        .routes(routes!(submit_job, list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(pause_job))
        .routes(routes!(resume_job))
        .routes(routes!(cancel_job))
        .routes(routes!(requeue_job))
        .routes(routes!(reorder_job))
        .routes(routes!(list_machines))
        .routes(routes!(get_machine))
        .routes(routes!(machine_pause))
        .routes(routes!(machine_resume))
        .routes(routes!(machine_cancel))
        .routes(routes!(machine_estop))
        .routes(routes!(machine_home))
        .routes(routes!(machine_clear))
        .routes(routes!(machine_enable))
        .routes(routes!(machine_disable))
        .routes(routes!(machine_console))
        .routes(routes!(machine_serial))
        .routes(routes!(machine_temperatures))
        .routes(routes!(events))
        .routes(routes!(event_log))
        .routes(routes!(machine_states))
        .routes(routes!(job_attempts))
        .routes(routes!(who_am_i))
        .merge(crate::http::production::routes())
        .layer(middleware::from_fn_with_state(state.clone(), require_auth));
    // Signing out needs a known caller but no particular role.
    let signed_in =
        OpenApiRouter::new()
            .routes(routes!(sign_out))
            .layer(middleware::from_fn_with_state(
                state.clone(),
                require_signed_in,
            ));
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(openapi_json))
        .routes(routes!(sign_in))
        .merge(protected)
        .merge(signed_in)
        // Slicers' "send to printer": OctoPrint's paths, outside /api/v1.
        .merge(crate::http::octoprint::router(state.clone()))
        .split_for_parts();
    router
        .layer(axum::Extension(Arc::new(api)))
        // The dashboard at `/`; everything else, `/api` included, stays a
        // JSON 404.
        .merge(crate::http::web::router())
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        // Uploads stream to disk; the limit also bounds multipart overhead.
        .layer(DefaultBodyLimit::max(
            usize::try_from(max_upload)
                .unwrap_or(usize::MAX)
                .saturating_add(64 * 1024),
        ))
        .with_state(state)
}

/// A known path called with a method it does not have; axum's default is
/// an empty body, which breaks the one error shape. `Allow` is still set.
async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} does not take {method}; see the Allow header or /api/v1/openapi.json",
            uri.path()
        ),
    )
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        format!(
            "no route for {method} {}; see /api/v1/openapi.json",
            uri.path()
        ),
    )
}
