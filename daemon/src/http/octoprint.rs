//! The part of OctoPrint's REST API that slicers speak, so that
//! PrusaSlicer, OrcaSlicer, SuperSlicer and Cura can "send to printer" and
//! "upload and print" to the factory unchanged (as print-farm managers and
//! Moonraker do): the connection test (`GET /api/version`), the upload
//! (`POST /api/files/local`) and the three status reads Cura's OctoPrint
//! plugin polls for its monitor tab (`/api/job`, `/api/printer`,
//! `/api/settings`).
//!
//! The factory is presented as one OctoPrint printer whose "printing" is
//! queueing: an upload with `print=true` becomes one job, routed by
//! capability like any other. Uploads take the same path as
//! `POST /api/v1/files` (the shared functions in `api`), so limits, text
//! checks and analysis are the same.
//!
//! Errors have OctoPrint's shape, `{"error": "<a sentence>"}`, not the
//! `/api/v1` one: slicers show the raw body to the user (PrusaSlicer as
//! `HTTP 422: <body>`), so the body is one sentence that reads as text and
//! parses as OctoPrint's JSON.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::{Multipart, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth;
use crate::core::model::{Job, JobState, Role};
use crate::factory::{FactoryError, Submission};
use crate::http::api::{
    self, ApiError, AppState, Caller, FileView, multipart_error, receive_upload, upload_name,
};

/// The OctoPrint release whose API this subset follows; PrusaSlicer asks
/// for at least 1.1.0.
const OCTOPRINT_COMPAT: &str = "1.1.0";

/// Longest folder label kept from an upload's `path`, in characters.
const MAX_FOLDER: usize = 100;

/// Longest `print`, `select` or `path` form field, in bytes: they are
/// words, and are read into memory.
const MAX_SMALL_FIELD: usize = 1024;

// ------------------------------------------------------------------ errors

/// OctoPrint's error body.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OctoErrorBody {
    /// One sentence for the person at the slicer.
    pub error: String,
}

/// An error answered in OctoPrint's shape.
#[derive(Debug)]
pub struct OctoError {
    status: StatusCode,
    message: String,
}

impl OctoError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// `message` as a sentence: a capital first letter and a full stop, since
/// slicers show it on its own in a dialog.
fn sentence(message: &str) -> String {
    let message = message.trim();
    let mut chars = message.chars();
    let mut out: String = match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => return "Something went wrong.".into(),
    };
    if !out.ends_with(['.', '!', '?']) {
        out.push('.');
    }
    out
}

impl IntoResponse for OctoError {
    fn into_response(self) -> Response {
        let body = OctoErrorBody {
            error: sentence(&self.message),
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<ApiError> for OctoError {
    fn from(e: ApiError) -> Self {
        let (status, _, message) = e.into_parts();
        Self::new(status, message)
    }
}

impl From<FactoryError> for OctoError {
    fn from(e: FactoryError) -> Self {
        ApiError::from(e).into()
    }
}

type OctoResult<T> = Result<T, OctoError>;

// -------------------------------------------------------------------- auth

/// The API key as OctoPrint clients send it: `X-Api-Key` (PrusaSlicer,
/// Cura), `Authorization: Bearer`, or `?apikey=`. Blank counts as absent:
/// PrusaSlicer sends an empty header when the field is left empty.
pub(crate) fn api_key(req: &Request) -> Option<String> {
    let headers = req.headers();
    let from_header = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let from_bearer = || crate::http::api::bearer(headers).map(str::to_string);
    let from_query = || {
        Query::<HashMap<String, String>>::try_from_uri(req.uri())
            .ok()
            .and_then(|Query(q)| q.get("apikey").cloned())
    };
    [from_header, from_bearer(), from_query()]
        .into_iter()
        .flatten()
        .map(|k| k.trim().to_string())
        .find(|k| !k.is_empty())
}

/// Checks the OctoPrint key of a request against the route's row of the
/// policy table (`Who::ApiKey`): a known key of an admitted role, or the
/// 401/403 the slicer shows. Called by the API's one guard.
pub(crate) fn authorize(
    s: &AppState,
    req: &Request,
    rule: &crate::http::policy::Rule,
) -> Result<Caller, OctoError> {
    let Some(key) = api_key(req) else {
        return Err(OctoError::new(
            StatusCode::UNAUTHORIZED,
            "no API key was sent: paste a microfactoryd token into the slicer's API key field \
             (it is sent as X-Api-Key, or Authorization: Bearer); create one with \
             'microfactoryd token create --role slicer --name <who>'",
        ));
    };
    let record = match auth::lookup(s.factory.store(), &key) {
        Ok(Some(r)) => r,
        Ok(None) => {
            return Err(OctoError::new(
                StatusCode::UNAUTHORIZED,
                "this API key is not known to microfactoryd: check that it was pasted whole, \
                 or create a new one with 'microfactoryd token create --role slicer --name <who>'",
            ));
        }
        Err(e) => return Err(OctoError::from(FactoryError::Store(e))),
    };
    if !rule.admits(record.role) {
        let role = crate::http::policy::role_name(record.role);
        let what = if record.role == Role::Viewer {
            "may only read the factory's status, not send files"
        } else {
            "may not use the OctoPrint API"
        };
        return Err(OctoError::new(
            StatusCode::FORBIDDEN,
            format!("a {role} key {what}; use a slicer or operator token"),
        ));
    }
    Ok(Caller {
        name: record.name,
        role: record.role,
        token_hash: crate::factory::files::sha256_hex(key.as_bytes()),
    })
}

// ----------------------------------------------------------------- version

/// `GET /api/version`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VersionInfo {
    /// OctoPrint API version.
    pub api: String,
    /// The OctoPrint release this API subset follows.
    pub server: String,
    /// Starts with `OctoPrint`, which PrusaSlicer requires of an OctoPrint
    /// host, then names this daemon.
    pub text: String,
}

/// The slicers' connection test: checks the API key and that this is an
/// OctoPrint-compatible host.
#[utoipa::path(get, path = "/api/version", tag = "octoprint",
    responses((status = 200, body = VersionInfo),
        (status = 401, description = "No key, or a key not known", body = OctoErrorBody),
        (status = 403, description = "A role that may not use these routes", body = OctoErrorBody)),
    security(("apikey" = []), ("bearer" = [])))]
async fn version() -> Json<VersionInfo> {
    Json(VersionInfo {
        api: "0.1".into(),
        server: OCTOPRINT_COMPAT.into(),
        text: format!("OctoPrint (microfactoryd {})", env!("CARGO_PKG_VERSION")),
    })
}

// ------------------------------------------------------------------ upload

/// The multipart form slicers send.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
struct OctoUploadForm {
    /// The G-code file, with its file name.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// `true` queues a job ("upload and print"); default `false`.
    print: Option<String>,
    /// Accepted and ignored: there is no single printer to load it into.
    select: Option<String>,
    /// The folder typed in the slicer: a label in the file's and job's
    /// name, never a filesystem path; `..` is refused.
    path: Option<String>,
}

/// Where the upload went, in OctoPrint's shape.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UploadAnswer {
    /// Always `true`: the file is stored and analysed when this is sent.
    pub done: bool,
    /// The stored file.
    pub files: UploadedFiles,
    /// Always `false` (no printer is selected).
    #[serde(rename = "effectiveSelect")]
    pub effective_select: bool,
    /// A job was queued.
    #[serde(rename = "effectivePrint")]
    pub effective_print: bool,
    /// This daemon's own records of the upload.
    pub microfactory: Receipt,
}

/// OctoPrint's `files` object: only local storage.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UploadedFiles {
    /// The file.
    pub local: UploadedFile,
}

/// A stored file as OctoPrint names it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UploadedFile {
    /// File name.
    pub name: String,
    /// Folder label and name, `/`-separated.
    pub path: String,
    /// Always `local`.
    pub origin: String,
    /// Links.
    pub refs: Refs,
}

/// OctoPrint's links of a file.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Refs {
    /// OctoPrint's location of the file, `/api/files/local/<path>`, which
    /// clients parse for the name; this daemon serves the file's record at
    /// `microfactory`.
    pub resource: String,
    /// The file's record in this daemon's API.
    pub microfactory: String,
}

/// What the daemon made of the upload.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Receipt {
    /// The stored file with its analysis and the machines that can run it.
    pub file: FileView,
    /// The job queued by `print=true`, else empty.
    pub jobs: Vec<Job>,
}

/// Reads a short text field (`print`, `select`, `path`) whole.
async fn small_field(
    field: &mut axum::extract::multipart::Field<'_>,
    name: &str,
    limit: u64,
) -> OctoResult<String> {
    let mut buf = Vec::new();
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|e| OctoError::from(multipart_error(e, limit)))?
    {
        buf.extend_from_slice(&chunk);
        if buf.len() > MAX_SMALL_FIELD {
            return Err(OctoError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "the form field '{name}' is longer than {MAX_SMALL_FIELD} bytes; it should be a word or a folder name"
                ),
            ));
        }
    }
    String::from_utf8(buf).map_err(|_| {
        OctoError::new(
            StatusCode::BAD_REQUEST,
            format!("the form field '{name}' is not UTF-8 text"),
        )
    })
}

/// OctoPrint's booleans in form fields.
fn yes_no(name: &str, value: &str) -> OctoResult<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "y" | "1" | "on" => Ok(true),
        "false" | "no" | "n" | "0" | "off" | "" => Ok(false),
        _ => Err(OctoError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "the form field '{name}' must be true or false, not '{}'",
                value.trim()
            ),
        )),
    }
}

/// `folder/name`, shortened in the folder so that it stays a valid job
/// name (at most `MAX_NAME_CHARS`): the file name is what people look for.
fn labelled(folder: Option<&str>, name: &str) -> String {
    let room = crate::core::factory::MAX_NAME_CHARS
        .saturating_sub(name.chars().count())
        .saturating_sub(1);
    match folder {
        Some(f) if room > 0 => {
            let f: String = f.chars().take(room).collect();
            format!("{}/{name}", f.trim_end_matches('/'))
        }
        _ => name.to_string(),
    }
}

/// The folder a slicer sent as a label: `/` or `\` separated, empty and
/// `.` parts dropped, control characters removed. `None` for no folder.
/// It only ever becomes part of a name, but `..` is refused rather than
/// silently dropped, so the person sees the label they will get.
fn folder_label(raw: &str) -> OctoResult<Option<String>> {
    let mut parts = Vec::new();
    for part in raw.split(['/', '\\']) {
        let part: String = part.chars().filter(|c| !c.is_control()).collect();
        match part.trim() {
            "" | "." => {}
            ".." => {
                return Err(OctoError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the folder '{}' contains '..'; folders here are labels, so give one without '..'",
                        raw.trim()
                    ),
                ));
            }
            p => parts.push(p.to_string()),
        }
    }
    let label = parts.join("/");
    if label.chars().count() > MAX_FOLDER {
        return Err(OctoError::new(
            StatusCode::BAD_REQUEST,
            format!("the folder name is longer than {MAX_FOLDER} characters; give a shorter one"),
        ));
    }
    Ok((!label.is_empty()).then_some(label))
}

/// Percent-encodes each `/`-separated part of a path for a URL.
fn encode_path(path: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Stores a G-code file sent by a slicer, as `POST /api/v1/files` does, and
/// with `print=true` queues one job for it, routed like any other. A file
/// no machine could run is refused, with each machine's reason, and not
/// kept.
#[utoipa::path(post, path = "/api/files/local", tag = "octoprint",
    request_body(content = OctoUploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Stored (and queued with print=true); Location is OctoPrint's path of the file",
            body = UploadAnswer),
        (status = 200, description = "The same content was already stored and print=false", body = UploadAnswer),
        (status = 400, description = "A form field is malformed, or there is no file field", body = OctoErrorBody),
        (status = 401, description = "No key, or a key not known", body = OctoErrorBody),
        (status = 403, description = "A role that may not upload", body = OctoErrorBody),
        (status = 413, description = "Larger than max_upload_bytes", body = OctoErrorBody),
        (status = 415, description = "Not multipart, or binary / non-UTF-8", body = OctoErrorBody),
        (status = 422, description = "Not G-code, or no machine can run it", body = OctoErrorBody)),
    security(("apikey" = []), ("bearer" = [])))]
async fn upload(
    State(s): State<AppState>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> OctoResult<Response> {
    let mut multipart = multipart.map_err(|e| {
        OctoError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("send the file as multipart/form-data with a field named 'file' ({e})"),
        )
    })?;
    let limit = s.factory.max_upload();
    let mut print = false;
    let mut folder = None;
    let mut received = None;
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| OctoError::from(multipart_error(e, limit)))?
    {
        // Cura sends `print` after the file, PrusaSlicer before it: the
        // file waits in its scratch file until the whole form is read.
        match field.name() {
            Some("file") if received.is_none() => {
                let name = upload_name(field.file_name());
                let up = receive_upload(&s.factory, &mut field)
                    .await
                    .map_err(|e| binary_gcode_hint(e, &name))?;
                received = Some((name, up));
            }
            Some("print") => {
                print = yes_no("print", &small_field(&mut field, "print", limit).await?)?
            }
            Some("select") => {
                yes_no("select", &small_field(&mut field, "select", limit).await?)?;
            }
            Some("path") => folder = folder_label(&small_field(&mut field, "path", limit).await?)?,
            // Anything else (OctoPrint's `userdata`, a second file) is
            // ignored, as OctoPrint does.
            _ => {}
        }
    }
    let Some((name, up)) = received else {
        return Err(OctoError::new(
            StatusCode::BAD_REQUEST,
            "the form has no field named 'file' with the G-code in it",
        ));
    };
    let path = labelled(folder.as_deref(), &name);
    let (rec, created) = s.factory.add_file(up, path.clone()).await?;

    let fits = s.factory.file_fit(&rec, false);
    if !fits.iter().any(|(_, fit)| fit.is_ok()) {
        if created {
            // Nobody asked for this file but this slicer, which is told
            // no; keeping it would leave a file nothing can run.
            if let Err(e) = s.factory.delete_file(&rec.id).await {
                tracing::warn!(file = %rec.id, error = %e, "could not remove a refused upload");
            }
        }
        let reasons: Vec<String> = fits.into_iter().filter_map(|(_, r)| r.err()).collect();
        return Err(OctoError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            if reasons.is_empty() {
                format!("{name} was not kept: this factory has no machines configured")
            } else {
                format!(
                    "no machine in this factory can run {name}, so it was not kept: {}",
                    reasons.join("; ")
                )
            },
        ));
    }

    let jobs = if print {
        s.factory
            .submit(Submission {
                file_id: rec.id.clone(),
                copies: None,
                priority: None,
                machine_id: None,
                kind: None,
                tags: Vec::new(),
                name: Some(path.clone()),
                expand_canned_cycles: false,
                any_material: false,
            })
            .await?
    } else {
        Vec::new()
    };
    let status = if created || !jobs.is_empty() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let resource = format!("/api/files/local/{}", encode_path(&path));
    let answer = UploadAnswer {
        done: true,
        files: UploadedFiles {
            local: UploadedFile {
                name,
                path,
                origin: "local".into(),
                refs: Refs {
                    resource: resource.clone(),
                    microfactory: format!("/api/v1/files/{}", rec.id),
                },
            },
        },
        effective_select: false,
        effective_print: !jobs.is_empty(),
        microfactory: Receipt {
            file: api::file_view(&s.factory, rec),
            jobs,
        },
    };
    Ok((status, [(header::LOCATION, resource)], Json(answer)).into_response())
}

/// PrusaSlicer writes binary G-code (`.bgcode`) for printers that accept
/// it; say where to turn it off rather than only that the file is binary.
fn binary_gcode_hint(e: ApiError, name: &str) -> OctoError {
    let (status, code, message) = e.into_parts();
    if code == "not_text" && name.to_ascii_lowercase().ends_with(".bgcode") {
        return OctoError::new(
            status,
            format!(
                "{name} is binary G-code, which microfactoryd does not take; in PrusaSlicer \
                 turn off Printer Settings > General > Firmware > Supports binary G-code and send it again"
            ),
        );
    }
    OctoError::new(status, message)
}

// ----------------------------------------------------------------- status

/// `GET /api/job`, in OctoPrint's shape.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobStatus {
    /// The job shown.
    pub job: JobInfo,
    /// Its progress.
    pub progress: ProgressInfo,
    /// `Printing`, `Starting`, `Paused`, `Operational` (no job running) or
    /// `Offline` (no machine in service).
    pub state: String,
    /// The factory beyond the one job OctoPrint can show.
    pub microfactory: FactoryJobs,
}

/// OctoPrint's `job` object.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobInfo {
    /// The job's file.
    pub file: JobFile,
    /// Seconds, from the analysis.
    #[serde(rename = "estimatedPrintTime")]
    pub estimated_print_time: Option<u64>,
}

/// OctoPrint's `job.file` object; all `null` without a job.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobFile {
    /// The job's name.
    pub name: Option<String>,
    /// Always `local` with a job.
    pub origin: Option<String>,
    /// Bytes.
    pub size: Option<u64>,
    /// Upload time, seconds since the Unix epoch.
    pub date: Option<u64>,
}

/// OctoPrint's `progress` object.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProgressInfo {
    /// Percent of commands acknowledged.
    pub completion: Option<f64>,
    /// Always `null`: progress is counted in lines, not bytes.
    pub filepos: Option<u64>,
    /// Seconds streaming.
    #[serde(rename = "printTime")]
    pub print_time: Option<u64>,
    /// Estimated seconds left.
    #[serde(rename = "printTimeLeft")]
    pub print_time_left: Option<u64>,
}

/// What OctoPrint's single job cannot say.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FactoryJobs {
    /// The job shown, if any.
    pub job_id: Option<u64>,
    /// Its machine.
    pub machine_id: Option<String>,
    /// Jobs holding a machine.
    pub active_jobs: usize,
    /// Jobs waiting for one.
    pub queued_jobs: usize,
}

fn secs(x: f64) -> u64 {
    // Seconds as whole numbers, as OctoPrint gives them (Cura passes them
    // on as integers).
    if x.is_finite() && x > 0.0 {
        x.round() as u64
    } else {
        0
    }
}

fn in_service(s: &AppState) -> usize {
    s.factory.machines().iter().filter(|m| !m.disabled).count()
}

/// The factory as OctoPrint's one current job: the active job that
/// started first (the dashboard shows all of them), with counts of the
/// others.
#[utoipa::path(get, path = "/api/job", tag = "octoprint",
    responses((status = 200, body = JobStatus),
        (status = 401, description = "No key, or a key not known", body = OctoErrorBody),
        (status = 403, description = "A role that may not use these routes", body = OctoErrorBody)),
    security(("apikey" = []), ("bearer" = [])))]
async fn job(State(s): State<AppState>) -> OctoResult<Json<JobStatus>> {
    let active = s.factory.jobs(
        &[JobState::Assigned, JobState::Running, JobState::Paused],
        None,
        None,
    )?;
    let queued = s.factory.jobs(&[JobState::Queued], None, None)?.len();
    let shown = active
        .iter()
        .min_by_key(|j| (j.started_ms.unwrap_or(u64::MAX), j.id));
    let state = match shown.map(|j| j.state) {
        Some(JobState::Running) => "Printing",
        Some(JobState::Assigned) => "Starting",
        Some(JobState::Paused) => "Paused",
        _ if in_service(&s) == 0 => "Offline",
        _ => "Operational",
    };
    let file = shown.and_then(|j| s.factory.file(&j.file_id).ok());
    Ok(Json(JobStatus {
        job: JobInfo {
            file: JobFile {
                name: shown.map(|j| j.name.clone()),
                origin: shown.map(|_| "local".into()),
                size: file.as_ref().map(|f| f.size),
                date: file.as_ref().map(|f| f.uploaded_ms / 1000),
            },
            estimated_print_time: file.as_ref().map(|f| secs(f.analysis.estimated_seconds)),
        },
        progress: ProgressInfo {
            completion: shown.map(|j| j.progress.percent),
            filepos: None,
            print_time: shown.map(|j| secs(j.progress.elapsed_seconds)),
            print_time_left: shown.and_then(|j| j.progress.eta_seconds.map(secs)),
        },
        state: state.into(),
        microfactory: FactoryJobs {
            job_id: shown.map(|j| j.id),
            machine_id: shown.and_then(|j| j.assigned_machine.clone()),
            active_jobs: active.len(),
            queued_jobs: queued,
        },
    }))
}

/// `GET /api/printer`, in OctoPrint's shape.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PrinterStatus {
    /// The factory's state as one printer.
    pub state: PrinterState,
    /// Always empty: there is no one printer whose heaters to show.
    #[schema(value_type = Object)]
    pub temperature: BTreeMap<String, serde_json::Value>,
    /// No SD card.
    pub sd: SdState,
}

/// OctoPrint's `state` object.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PrinterState {
    /// The machines by state and the queue, in words.
    pub text: String,
    /// OctoPrint's flags.
    pub flags: Flags,
}

/// OctoPrint's state flags, as the factory takes work: operational and
/// ready while a machine is in service; never printing, since a job sent
/// now is queued, not refused.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[allow(missing_docs)]
pub struct Flags {
    pub operational: bool,
    pub ready: bool,
    pub printing: bool,
    pub pausing: bool,
    pub paused: bool,
    pub cancelling: bool,
    pub finishing: bool,
    pub resuming: bool,
    pub error: bool,
    #[serde(rename = "closedOrError")]
    pub closed_or_error: bool,
    #[serde(rename = "sdReady")]
    pub sd_ready: bool,
}

/// OctoPrint's `sd` object.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SdState {
    /// Always `false`.
    pub ready: bool,
}

/// The factory as one OctoPrint printer that takes jobs while any machine
/// is in service. `printing` is never set: a farm queues a new job rather
/// than refusing it, and Cura will not "print" to a printer that says it
/// is printing. The machines' own states are counted in `state.text`.
#[utoipa::path(get, path = "/api/printer", tag = "octoprint",
    responses((status = 200, body = PrinterStatus),
        (status = 401, description = "No key, or a key not known", body = OctoErrorBody),
        (status = 403, description = "A role that may not use these routes", body = OctoErrorBody),
        (status = 409, description = "No machine is in service (OctoPrint: printer not operational)",
            body = OctoErrorBody)),
    security(("apikey" = []), ("bearer" = [])))]
async fn printer(State(s): State<AppState>) -> OctoResult<Json<PrinterStatus>> {
    let machines = s.factory.machines();
    if machines.is_empty() {
        return Err(OctoError::new(
            StatusCode::CONFLICT,
            "no machine is configured in microfactoryd",
        ));
    }
    if machines.iter().all(|m| m.disabled) {
        return Err(OctoError::new(
            StatusCode::CONFLICT,
            "no machine is in service (all are disabled); enable one in the dashboard, \
             and files sent meanwhile wait in the queue",
        ));
    }
    let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
    for m in &machines {
        *by_state.entry(m.state.as_str()).or_default() += 1;
    }
    let queued = s.factory.jobs(&[JobState::Queued], None, None)?.len();
    let counts: Vec<String> = by_state.iter().map(|(st, n)| format!("{n} {st}")).collect();
    let text = format!(
        "Operational: {} machine{} ({}), {queued} job{} queued",
        machines.len(),
        if machines.len() == 1 { "" } else { "s" },
        counts.join(", "),
        if queued == 1 { "" } else { "s" },
    );
    Ok(Json(PrinterStatus {
        state: PrinterState {
            text,
            flags: Flags {
                operational: true,
                ready: true,
                printing: false,
                pausing: false,
                paused: false,
                cancelling: false,
                finishing: false,
                resuming: false,
                error: false,
                closed_or_error: false,
                sd_ready: false,
            },
        },
        temperature: BTreeMap::new(),
        sd: SdState { ready: false },
    }))
}

/// `GET /api/settings`: the settings OctoPrint clients look for.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Settings {
    /// Features.
    pub feature: Features,
    /// No webcam.
    pub webcam: Webcam,
    /// No OctoPrint plugins.
    #[schema(value_type = Object)]
    pub plugins: BTreeMap<String, serde_json::Value>,
}

/// OctoPrint's `feature` settings.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Features {
    /// No SD card upload.
    #[serde(rename = "sdSupport")]
    pub sd_support: bool,
}

/// OctoPrint's `webcam` settings.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Webcam {
    /// No webcam (so no stream URL).
    #[serde(rename = "webcamEnabled")]
    pub webcam_enabled: bool,
}

/// What Cura's plugin reads at connection: no SD card, no webcam, no
/// plugins, and no G-code analysis to wait for (it is done before the
/// upload is answered).
#[utoipa::path(get, path = "/api/settings", tag = "octoprint",
    responses((status = 200, body = Settings),
        (status = 401, description = "No key, or a key not known", body = OctoErrorBody),
        (status = 403, description = "A role that may not use these routes", body = OctoErrorBody)),
    security(("apikey" = []), ("bearer" = [])))]
async fn settings() -> Json<Settings> {
    Json(Settings {
        feature: Features { sd_support: false },
        webcam: Webcam {
            webcam_enabled: false,
        },
        plugins: BTreeMap::new(),
    })
}

// ------------------------------------------------------------------ router

#[derive(OpenApi)]
#[openapi(modifiers(&ApiKeyAuth), components(schemas(OctoErrorBody)))]
struct OctoDoc;

struct ApiKeyAuth;

impl Modify for ApiKeyAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "apikey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Api-Key",
                "A microfactoryd token, as OctoPrint clients send their API key \
                 (also accepted as ?apikey=)",
            ))),
        );
    }
}

/// The OctoPrint routes, merged into `api::router` (which adds the body
/// limit and the JSON fallbacks).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(OctoDoc::openapi())
        .routes(routes!(version))
        .routes(routes!(upload))
        .routes(routes!(job))
        .routes(routes!(printer))
        .routes(routes!(settings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_become_labels_and_parent_steps_are_refused() {
        assert_eq!(folder_label("").ok().flatten(), None);
        assert_eq!(folder_label(" / ./ ").ok().flatten(), None);
        assert_eq!(
            folder_label("/customer 42\\brackets/")
                .ok()
                .flatten()
                .as_deref(),
            Some("customer 42/brackets")
        );
        assert_eq!(
            folder_label("a\u{7}b/c").ok().flatten().as_deref(),
            Some("ab/c")
        );
        let e = folder_label("jobs/../../etc").expect_err("..");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("'..'"), "{}", e.message);
        assert!(folder_label(&"x".repeat(MAX_FOLDER + 1)).is_err());
    }

    #[test]
    fn a_long_folder_is_shortened_so_the_job_name_stays_valid() {
        let name = "n".repeat(110);
        let label = labelled(Some(&"f".repeat(MAX_FOLDER)), &name);
        assert_eq!(label.chars().count(), crate::core::factory::MAX_NAME_CHARS);
        assert!(label.ends_with(&format!("/{name}")), "{label}");
        assert_eq!(labelled(Some("a"), &"n".repeat(120)), "n".repeat(120));
        assert_eq!(labelled(Some("jobs/x"), "p.gcode"), "jobs/x/p.gcode");
    }

    #[test]
    fn print_takes_octoprints_booleans_and_names_a_wrong_one() {
        assert!(yes_no("print", "true").unwrap_or(false));
        assert!(yes_no("print", " Yes ").unwrap_or(false));
        assert!(!yes_no("print", "false").unwrap_or(true));
        assert!(!yes_no("print", "").unwrap_or(true));
        let e = yes_no("print", "maybe").expect_err("maybe");
        assert!(e.message.contains("'maybe'") && e.message.contains("print"));
    }

    #[test]
    fn locations_percent_encode_everything_but_unreserved_characters_and_slashes() {
        assert_eq!(
            encode_path("Kunde 7/Zahnrad ø20.gcode"),
            "Kunde%207/Zahnrad%20%C3%B820.gcode"
        );
    }

    #[test]
    fn messages_become_sentences() {
        assert_eq!(sentence("file is empty"), "File is empty.");
        assert_eq!(sentence("Done."), "Done.");
        assert_eq!(sentence("  "), "Something went wrong.");
    }
}
