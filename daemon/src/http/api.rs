//! The HTTP API under `/api/v1`, its OpenAPI document and its error shape.
//!
//! Every handler parses its own input (bodies as bytes, paths as strings)
//! so that each mistake gets the one error shape with a message a person
//! can act on, instead of a framework default.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, MatchedPath, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{self, Identity};
use crate::clock::now_ms;
use crate::core::events::LogRecord;
use crate::core::machine::StateChange;
use crate::core::model::{Attempt, Event, FileRecord, Job, JobState, Kind, MachineView, Role};
use crate::factory::files::{IngestError, Upload};
use crate::factory::temps::TemperatureHistory;
use crate::factory::{Factory, FactoryError, JobAction, Submission};
use crate::http::envelope::Envelope;
use crate::http::limits::{Failures, Settings, Streams};
use crate::http::policy::{self, BodyLimit, Who};

/// What handlers share, behind one `Arc`: axum clones the state for every
/// middleware and extractor of every request, and one reference count to
/// move is cheaper than nine.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
#[derive(Debug, Clone)]
pub struct Shared {
    /// The factory.
    pub factory: Arc<Factory>,
    /// Production metering (products, orders, units, metrics, APC).
    pub metering: Arc<crate::metering::Metering>,
    /// Finished goods, sales orders, fulfillment and shipments.
    pub commerce: Arc<crate::commerce::service::Commerce>,
    /// The `[http]` settings.
    pub settings: Arc<Settings>,
    /// Open event streams per token.
    pub streams: Arc<Streams>,
    /// Recent failed sign-ins per client address.
    pub failures: Arc<Failures>,
    /// The MQTT client, when `[mqtt]` is configured.
    pub mqtt: Option<Arc<crate::mqtt::Mqtt>>,
    /// The webhook outbox and its receivers.
    pub webhooks: Option<Arc<crate::commerce::webhooks::Webhooks>>,
    /// Shopify's fulfillment-service callbacks.
    pub shopify: Option<Arc<crate::commerce::shopify::Shopify>>,
}

impl AppState {
    /// State for a factory with these settings.
    pub fn new(
        factory: Arc<Factory>,
        metering: Arc<crate::metering::Metering>,
        commerce: Arc<crate::commerce::service::Commerce>,
        settings: Settings,
    ) -> Self {
        Self(Arc::new(Shared {
            factory,
            metering,
            commerce,
            settings: Arc::new(settings),
            streams: Arc::default(),
            failures: Arc::default(),
            mqtt: None,
            webhooks: None,
            shopify: None,
        }))
    }

    /// With the webhook outbox and the Shopify callbacks.
    #[must_use]
    pub fn with_commerce(
        mut self,
        webhooks: Arc<crate::commerce::webhooks::Webhooks>,
        shopify: Arc<crate::commerce::shopify::Shopify>,
    ) -> Self {
        let shared = Arc::make_mut(&mut self.0);
        shared.webhooks = Some(webhooks);
        shared.shopify = Some(shopify);
        self
    }

    /// With the MQTT client, whose link `GET /health` shows.
    #[must_use]
    pub fn with_mqtt(mut self, mqtt: Option<Arc<crate::mqtt::Mqtt>>) -> Self {
        Arc::make_mut(&mut self.0).mqtt = mqtt;
        self
    }
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
    retry_after: Option<u64>,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Status, code and message, for routes that must answer in another
    /// API's error shape (`http::octoprint`).
    pub(crate) fn into_parts(self) -> (StatusCode, &'static str, String) {
        (self.status, self.code, self.message)
    }

    /// Adds `Retry-After` (seconds) to the answer.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
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
        let mut res = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
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
                D::Halted(_) => (StatusCode::CONFLICT, "machine_halted"),
                D::Superseded => (StatusCode::CONFLICT, "superseded"),
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
    /// sha256 of its token: names the caller in per-token limits.
    pub token_hash: String,
}

/// The client's address, for the failed sign-in limit (unspecified when
/// the request did not come through [`crate::http::server::serve`]).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::IpAddr);

/// The token of an `Authorization: Bearer` header; the scheme is
/// case-insensitive (RFC 7235).
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
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

/// 429 when `peer` has failed to sign in too often this minute. Checked
/// before the credential, so a guesser learns nothing while it waits.
fn check_failures(s: &AppState, peer: Peer) -> Result<(), ApiError> {
    let max = s.settings.max_failures;
    match s
        .failures
        .retry_after(peer.0, max, std::time::Instant::now())
    {
        None => Ok(()),
        Some(wait) => {
            let secs = wait.as_secs().max(1);
            Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_failures",
                format!(
                    "{max} failed sign-ins from this address within a minute; try again in {secs} s"
                ),
            )
            .retry_after(secs))
        }
    }
}

/// Counts and logs a failed sign-in.
fn record_failure(s: &AppState, peer: Peer, how: &str) {
    tracing::warn!(client = %peer.0, how, "failed sign-in: unknown token or session");
    s.failures
        .record(peer.0, s.settings.max_failures, std::time::Instant::now());
}

/// The caller, from the bearer token or the session cookie (which must
/// carry a non-empty CSRF header to change anything), or the 401, 403 or
/// 429 to answer.
fn authenticate(s: &AppState, req: &Request, peer: Peer) -> Result<Identity, ApiError> {
    let store = s.factory.store();
    let (found, how) = if let Some(token) = bearer(req.headers()) {
        check_failures(s, peer)?;
        (auth::identify(store, token), "bearer token")
    } else if let Some(session) = cookie(req.headers(), auth::SESSION_COOKIE) {
        let safe = req.method() == Method::GET || req.method() == Method::HEAD;
        let csrf = req
            .headers()
            .get(auth::CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| !v.trim().is_empty());
        if !safe && !csrf {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "csrf",
                format!(
                    "a request signed in by cookie must send a non-empty {} header",
                    auth::CSRF_HEADER
                ),
            ));
        }
        // Not counted against the sign-in limit: a session id is 256
        // random bits (nothing to guess), and an expired one is re-sent by
        // every open tab, which would lock its operator out of signing in.
        let lifetime = s.settings.session_lifetime_ms;
        (
            auth::lookup_session(store, session, lifetime, now_ms()),
            "session cookie",
        )
    } else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "send 'Authorization: Bearer <token>'; create a token with 'microfactoryd token create'",
        ));
    };
    match found {
        Ok(Some(id)) => Ok(id),
        Ok(None) => {
            if how != "session cookie" {
                record_failure(s, peer, how);
            }
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the token or session is not known to this daemon (or has expired); sign in again",
            ))
        }
        Err(e) => Err(ApiError::from(FactoryError::Store(e))),
    }
}

/// Every API route passes here after routing: it finds the route's row in
/// [`policy::TABLE`] (no row: refused), checks the caller's role, and only
/// then reads the body, up to the route's limit.
async fn guard(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let Some(rule) = matched
        .as_ref()
        .and_then(|p| policy::rule(req.method(), p.as_str()))
    else {
        tracing::error!(method = %req.method(), path = ?matched.as_ref().map(MatchedPath::as_str), "route has no access rule: refused");
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "no_policy",
            format!(
                "{} {} has no access rule in this daemon, so nobody may call it; please report this",
                req.method(),
                req.uri().path()
            ),
        )
        .into_response();
    };
    let peer = Peer(
        crate::http::server::peer(req.extensions())
            .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |a| a.ip()),
    );
    req.extensions_mut().insert(peer);
    let mut span = None;
    if let Who::ApiKey(_) = rule.who {
        // The same failed sign-in limit as bearer tokens, in OctoPrint's
        // error shape: a key guesser gains nothing by using these routes.
        if let Err(e) = check_failures(&s, peer) {
            return crate::http::octoprint::OctoError::from(e).into_response();
        }
        match crate::http::octoprint::authorize(&s, &req, rule) {
            Ok(caller) => {
                span = Some(tracing::info_span!("octoprint", caller = %caller.name));
                req.extensions_mut().insert(caller);
            }
            Err(refused) => {
                let res = refused.into_response();
                if res.status() == StatusCode::UNAUTHORIZED
                    && crate::http::octoprint::api_key(&req).is_some()
                {
                    record_failure(&s, peer, "api key");
                }
                return res;
            }
        }
    }
    if let Who::Roles(_) = rule.who {
        let id = match authenticate(&s, &req, peer) {
            Ok(id) => id,
            Err(e) => return e.into_response(),
        };
        let role = id.record.role;
        if !rule.admits(role) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "a {} token may not call {} {}; that needs a token of role {}",
                    policy::role_name(role),
                    rule.method,
                    rule.path,
                    rule.role_names().join(" or ")
                ),
            )
            .into_response();
        }
        span = Some(tracing::info_span!("request", caller = %id.record.name));
        req.extensions_mut().insert(Caller {
            name: id.record.name,
            role,
            token_hash: id.token_hash,
        });
    }
    let req = match limit_body(&s, rule, req).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let reads = req.method() == Method::GET || req.method() == Method::HEAD;
    let res = match span {
        Some(span) => tracing::Instrument::instrument(next.run(req), span).await,
        None => next.run(req).await,
    };
    // Handlers read the state in memory, which a commit changes before its
    // flush: a read answers only once what it could have shown is durable
    // (writes answer after their own flush already).
    if reads && let Err(e) = s.factory.store().settle().await {
        tracing::error!(error = %e, "could not make the store durable before answering a read");
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            format!("the store could not be written to disk ({e}); try again, and check the data directory's disk"),
        )
        .into_response();
    }
    res
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("this route takes a request body of at most {limit} bytes"),
    )
}

/// Bounds the request body to the route's limit (a declared
/// `Content-Length` over it is refused before reading anything) and to
/// the idle timeout between its pieces. Small bodies are read here, so
/// their errors get the one shape; uploads stream on to the handler.
/// A declared body over a route's limit but at most this large is read and
/// dropped before the 413, so the client sees the answer; a larger one is
/// refused at once (the client may see its connection reset instead).
const LINGER_BYTES: u64 = 4 << 20;

async fn limit_body(s: &AppState, rule: &policy::Rule, req: Request) -> Result<Request, ApiError> {
    let limit = rule.body_bytes(s.factory.max_upload());
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let idle = s.settings.idle_timeout;
    if let Some(n) = declared.filter(|n| *n > limit) {
        if n <= LINGER_BYTES {
            // Read and drop what the client is still sending (never kept),
            // so that it reads the 413 instead of a reset connection.
            let mut rest = req.into_body().into_data_stream();
            let _ =
                tokio::time::timeout(idle, async { while let Some(Ok(_)) = rest.next().await {} })
                    .await;
        }
        return Err(too_large(limit));
    }
    let stalled = move || {
        tracing::info!(
            secs = idle.as_secs(),
            "request body stalled (http.idle_timeout_secs)"
        );
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body stopped arriving for {} s; send it again",
                idle.as_secs()
            ),
        )
    };
    let (parts, body) = req.into_parts();
    let mut stream = body.into_data_stream();
    if rule.body == BodyLimit::Upload {
        let chunks = futures_util::stream::unfold(Some(stream), move |st| async move {
            let mut st = st?;
            match tokio::time::timeout(idle, st.next()).await {
                Ok(Some(Ok(b))) => Some((Ok(b), Some(st))),
                Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), None)),
                Ok(None) => None,
                Err(_) => {
                    tracing::info!(
                        secs = idle.as_secs(),
                        "upload stalled (http.idle_timeout_secs)"
                    );
                    Some((
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the upload stopped arriving",
                        )),
                        None,
                    ))
                }
            }
        });
        return Ok(Request::from_parts(parts, Body::from_stream(chunks)));
    }
    // A small body nearly always comes in one piece: kept as it came,
    // copied only when a second one follows.
    let mut one: Option<Bytes> = None;
    let mut many = Vec::new();
    loop {
        match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => return Err(stalled()),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    format!("could not read the request body: {e}"),
                ));
            }
            Ok(Some(Ok(chunk))) => {
                let held = one.as_ref().map_or(many.len(), Bytes::len);
                if (held + chunk.len()) as u64 > limit {
                    return Err(too_large(limit));
                }
                match one.take() {
                    None if many.is_empty() => one = Some(chunk),
                    None => many.extend_from_slice(&chunk),
                    Some(first) => {
                        many.extend_from_slice(&first);
                        many.extend_from_slice(&chunk);
                    }
                }
            }
        }
    }
    let body = match one {
        Some(b) => Body::from(b),
        None => Body::from(many),
    };
    Ok(Request::from_parts(parts, body))
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
    /// The MQTT broker link, when `[mqtt]` is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<crate::mqtt::MqttHealth>,
}

/// Liveness for monitoring; needs no token.
#[utoipa::path(get, path = "/api/v1/health", tag = "system",
    responses((status = 200, description = "The daemon is up", body = Health)))]
async fn health(State(s): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        machines: s.factory.machines().len(),
        mqtt: s.mqtt.as_ref().map(|m| m.health()),
    })
}

/// This OpenAPI document; needs no token.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "system",
    responses((status = 200, description = "The OpenAPI 3.1 document of every route",
        content_type = "application/json")))]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(OPENAPI.get_or_init(openapi).clone())
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

/// The session cookie; `Secure` when configured (behind TLS).
fn session_cookie(value: &str, max_age_secs: u64, secure: bool) -> String {
    format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{}",
        auth::SESSION_COOKIE,
        if secure { "; Secure" } else { "" }
    )
}

/// Signs a browser in with a token: sets an `HttpOnly`, `SameSite=Strict`
/// session cookie, so that `EventSource` (which cannot send headers) works.
/// The session ends on the server after `http.session_lifetime_days`.
/// Too many failures from one address within a minute get 429.
#[utoipa::path(post, path = "/api/v1/session", tag = "session", request_body = SignIn,
    responses((status = 201, body = WhoAmI), (status = 401, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 429, description = "Too many failed sign-ins from this address; see Retry-After",
            body = ErrorBody)))]
async fn sign_in(
    State(s): State<AppState>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let b: SignIn = json_body(&headers, &body)?;
    check_failures(&s, peer)?;
    let Some((id, rec)) =
        auth::open_session(s.factory.store(), b.token.trim()).map_err(FactoryError::Store)?
    else {
        record_failure(&s, peer, "sign-in");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "that token is not known to this daemon",
        ));
    };
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
        [(
            header::SET_COOKIE,
            session_cookie(
                &id,
                s.settings.session_lifetime_ms / 1000,
                s.settings.cookie_secure,
            ),
        )],
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
        [(
            header::SET_COOKIE,
            session_cookie("", 0, s.settings.cookie_secure),
        )],
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

/// A stored file in a list: what picks it out, not its whole analysis
/// (that, with the findings and which machines fit, is
/// `GET /files/{id}`: a list of every analysis was 368 KB for six files).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FileSummary {
    /// sha256 of the content.
    pub id: String,
    /// Name given at upload.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Upload time.
    pub uploaded_ms: u64,
    /// The analysis's estimate, seconds.
    pub estimated_seconds: f64,
    /// Layers, for prints.
    pub layers: u64,
    /// The machine kind the program needs, when it says (extrudes: a
    /// printer; turns a spindle: a mill).
    pub needs: Option<Kind>,
    /// The material the slicer states.
    pub material: Option<String>,
    /// The nozzle the slicer states, mm.
    pub nozzle_diameter_mm: Option<f64>,
}

impl From<&FileRecord> for FileSummary {
    fn from(f: &FileRecord) -> Self {
        let slicer = f.analysis.slicer.as_ref();
        Self {
            id: f.id.clone(),
            name: f.name.clone(),
            size: f.size,
            uploaded_ms: f.uploaded_ms,
            estimated_seconds: f.analysis.estimated_seconds,
            layers: f.analysis.layers,
            needs: crate::core::routing::needed_kind(f),
            material: slicer.and_then(|s| s.material.clone()),
            nozzle_diameter_mm: slicer.and_then(|s| s.nozzle_diameter_mm),
        }
    }
}

/// Lists stored files, newest first, as summaries.
#[utoipa::path(get, path = "/api/v1/files", tag = "files",
    responses((status = 200, body = Vec<FileSummary>)), security(("bearer" = [])))]
async fn list_files(State(s): State<AppState>) -> ApiResult<Json<Vec<FileSummary>>> {
    let files = s.factory.files()?;
    Ok(Json(files.iter().map(FileSummary::from).collect()))
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
    /// Copies, each a job: 1 to 1000 per request (default 1).
    pub copies: Option<u32>,
    /// Higher runs first: -1000000 to 1000000 (default 0).
    pub priority: Option<i32>,
    /// Run only on this machine.
    pub machine_id: Option<String>,
    /// Run only on this kind.
    pub kind: Option<Kind>,
    /// Run only on machines with these tags.
    pub tags: Option<Vec<String>>,
    /// Name shown to operators: at most 120 characters, no control
    /// characters (default: the file's name).
    pub name: Option<String>,
    /// GRBL: expand canned cycles, pause at tool changes.
    pub expand_canned_cycles: Option<bool>,
    /// Run on machines whose `material:` or `nozzle:` tags differ from
    /// what the file states (default false: such machines are skipped).
    pub any_material: Option<bool>,
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
    // Priority, name and copies are checked by the core, once for every
    // way a job is submitted.
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
            any_material: b.any_material.unwrap_or(false),
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
job_action!(
    acknowledge_job,
    "/api/v1/jobs/{id}/acknowledge",
    "Says the operator has seen that an ended job failed or was interrupted: it leaves the attention list (a machine holding for it still waits for its own confirmation). Idempotent.",
    acknowledge
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
    /// New priority: -1000000 to 1000000.
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

// --------------------------------------------------------------- operator

/// What needs the operator now, most urgent first: machines faulted,
/// paused for a tool change or the program, waiting after a failed or
/// interrupted job, waiting for bed clearance or a look, offline; and
/// units awaiting inspection, per product. Derived from state the daemon
/// keeps, so it never disagrees with the machines: a failed job leaves
/// the list when its machine is confirmed ready.
#[utoipa::path(get, path = "/api/v1/attention", tag = "operator",
    responses((status = 200, body = Vec<crate::core::attention::AttentionItem>),
        (status = 500, body = ErrorBody)),
    security(("bearer" = [])))]
async fn attention(
    State(s): State<AppState>,
) -> ApiResult<Json<Vec<crate::core::attention::AttentionItem>>> {
    use crate::core::model::QcState;
    let mut qc: Vec<crate::core::attention::QcWaiting> = Vec::new();
    let units = s.metering.units(&crate::metering::UnitFilter::default())?;
    for u in units
        .iter()
        .filter(|u| matches!(u.qc, QcState::Pending | QcState::Rework))
    {
        match qc.iter_mut().find(|q| q.sku == u.sku) {
            Some(q) => {
                q.units += 1;
                q.oldest_ms = q.oldest_ms.min(u.ended_ms);
            }
            None => qc.push(crate::core::attention::QcWaiting {
                sku: u.sku.clone(),
                units: 1,
                oldest_ms: u.ended_ms,
            }),
        }
    }
    Ok(Json(s.factory.attention(&qc)))
}

/// Each machine's next job (the scheduler's routing played forward on the
/// estimates and the running jobs' ETAs) with its expected start and end.
/// Machines down, and machines no queued job fits, are not listed.
#[utoipa::path(get, path = "/api/v1/forecast", tag = "operator",
    responses((status = 200, body = Vec<crate::core::forecast::NextJob>)),
    security(("bearer" = [])))]
async fn forecast(State(s): State<AppState>) -> Json<Vec<crate::core::forecast::NextJob>> {
    Json(s.factory.forecast())
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

/// A recovery action.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecoverAction {
    /// Close the serial port and open it again (boards that reset on DTR
    /// reboot): any firmware.
    Reconnect,
    /// Marlin: `M999`, then a reconnect.
    FirmwareRestart,
    /// GRBL: `$X`, out of an alarm.
    Unlock,
    /// GRBL: soft reset (0x18).
    SoftReset,
}

impl From<RecoverAction> for microfactory_machines::driver::Recovery {
    fn from(a: RecoverAction) -> Self {
        match a {
            RecoverAction::Reconnect => Self::Reconnect,
            RecoverAction::FirmwareRestart => Self::FirmwareRestart,
            RecoverAction::Unlock => Self::Unlock,
            RecoverAction::SoftReset => Self::SoftReset,
        }
    }
}

/// `POST /machines/{id}/recover` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoverBody {
    /// What to do.
    pub action: RecoverAction,
}

/// What a recovery action did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RecoverReply {
    /// The action.
    pub action: RecoverAction,
    /// The firmware's answer (`unlock`); empty for the others, whose
    /// effect shows in the machine's status as the firmware comes back.
    pub response: Vec<String>,
    /// The machine right after.
    pub machine: MachineView,
}

/// Brings a machine back without restarting the daemon: reconnect (any
/// firmware), firmware restart (Marlin), unlock and soft reset (GRBL).
/// 409 when the action does not fit the firmware, a job holds the
/// machine, or (unlock) GRBL reports no alarm.
#[utoipa::path(post, path = "/api/v1/machines/{id}/recover", tag = "machines",
    params(("id" = String, Path, description = "Machine id")), request_body = RecoverBody,
    responses((status = 200, body = RecoverReply), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn machine_recover(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<RecoverReply>> {
    let b: RecoverBody = json_body(&headers, &body)?;
    let response = s.factory.recover(&id, b.action.into()).await?;
    Ok(Json(RecoverReply {
        action: b.action,
        response,
        machine: s.factory.machine(&id)?,
    }))
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
/// per running job) and `machine` (status changes). Data is JSON. A token
/// may hold `http.max_event_streams_per_token` streams at once.
#[utoipa::path(get, path = "/api/v1/events", tag = "events",
    responses((status = 200, description = "text/event-stream of Event", body = Event,
        content_type = "text/event-stream"),
        (status = 429, description = "This token has as many streams open as allowed",
            body = ErrorBody)),
    security(("bearer" = [])))]
async fn events(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let max = s.settings.max_streams_per_token;
    let Some(slot) = s.streams.open(&caller.token_hash, max) else {
        tracing::warn!(caller = %caller.name, max,
            "event stream refused (http.max_event_streams_per_token)");
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_streams",
            format!(
                "this token already has {max} event streams open (http.max_event_streams_per_token); close a dashboard tab or use another token"
            ),
        )
        .retry_after(15));
    };
    let rx = s.factory.subscribe();
    let closing = s.factory.closing();
    // The slot lives as long as the stream: dropping the stream frees it.
    let stream = futures_util::stream::unfold(
        (rx, closing, slot),
        |(mut rx, mut closing, slot)| async move {
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
            Some((Ok(ev), (rx, closing, slot)))
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// `GET /log` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct LogQuery {
    /// Return entries after this sequence number (default 0).
    pub after: Option<u64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
    /// With nothing after `after` yet, wait up to this many seconds (at
    /// most 30) for the next durable entry instead of answering at once:
    /// a reader follows the log without polling.
    pub wait: Option<u64>,
}

/// Longest `GET /log?wait=`.
const LOG_WAIT_MAX: Duration = Duration::from_secs(30);

/// The durable domain log, oldest first: every change of a file, a job,
/// an attempt and a machine's state, in commit order, surviving restarts
/// (`GET /events` is live only). Read it by cursor: pass the last `seq`
/// you handled as `after`, and `wait` to be answered when there is more.
/// Only durable entries are shown: a sequence number once seen is never
/// given to another entry, even after a crash. Every answer says the last
/// durable sequence number in `X-Log-Tip`, so a reader that wants only the
/// newest entries asks for `after = tip - n` instead of searching for it.
#[utoipa::path(get, path = "/api/v1/log", tag = "events", params(LogQuery),
    responses((status = 200, body = Vec<LogRecord>,
        headers(("X-Log-Tip" = u64, description = "The last durable sequence number"))),
        (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
async fn event_log(
    State(s): State<AppState>,
    q: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<([(&'static str, String); 1], Json<Records>)> {
    let q =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let after = q.after.unwrap_or(0);
    let store = s.factory.store();
    let mut tip = store.log_tip();
    if let Some(secs) = q.wait.filter(|&w| w > 0) {
        let wait = Duration::from_secs(secs).min(LOG_WAIT_MAX);
        // Timing out is an answer too: nothing new yet.
        let _ = tokio::time::timeout(wait, tip.wait_for(|&t| t > after)).await;
    }
    let durable = *tip.borrow();
    // `after = u64::MAX` is the end: `Store::log_after` never wraps.
    let entries = store
        .log_after(after, q.limit.unwrap_or(100).min(1000))
        .map_err(FactoryError::Store)?
        .into_iter()
        .take_while(|r| r.seq <= durable)
        .collect();
    Ok((
        [(LOG_TIP_HEADER, durable.to_string())],
        Json(Records(entries)),
    ))
}

/// Log records as the store shares them, written as a plain array.
struct Records(Vec<Arc<LogRecord>>);

impl Serialize for Records {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|r| &**r))
    }
}

/// The header of `GET /log` that names the last durable sequence number.
pub const LOG_TIP_HEADER: &str = "x-log-tip";

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

/// Every route, unguarded; [`router`] adds the guard, [`openapi`] reads
/// the document.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(openapi_json))
        .routes(routes!(sign_in, who_am_i, sign_out))
        .routes(routes!(upload_file, list_files))
        .routes(routes!(get_file, delete_file))
        .routes(routes!(submit_job, list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(pause_job))
        .routes(routes!(resume_job))
        .routes(routes!(cancel_job))
        .routes(routes!(acknowledge_job))
        .routes(routes!(requeue_job))
        .routes(routes!(reorder_job))
        .routes(routes!(attention))
        .routes(routes!(forecast))
        .routes(routes!(list_machines))
        .routes(routes!(get_machine))
        .routes(routes!(machine_pause))
        .routes(routes!(machine_resume))
        .routes(routes!(machine_cancel))
        .routes(routes!(machine_estop))
        .routes(routes!(machine_recover))
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
        // Production metering: products, orders, units, metrics, APC.
        .merge(crate::http::production::routes())
        // Commerce: inventory, sales orders, fulfillment, shipments.
        .merge(crate::http::commerce::routes())
        // Webhook receivers, and Shopify's callbacks outside /api/v1.
        .merge(crate::http::webhooks::routes())
        // Slicers' "send to printer": OctoPrint's paths, outside /api/v1.
        .merge(crate::http::octoprint::routes())
}

/// The OpenAPI document, each operation marked with who may call it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    annotated(routes().split_for_parts().1)
}

fn annotated(mut doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    policy::annotate(&mut doc);
    doc
}

/// The document `GET /openapi.json` serves, made once.
static OPENAPI: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();

/// The whole application: the API (each route behind the route guard) and the
/// dashboard, inside the [`Envelope`] every answer gets.
pub fn router(state: AppState) -> Envelope {
    let max_upload = state.factory.max_upload();
    let (router, api) = routes().split_for_parts();
    // Identical for every router (it is made from the code alone).
    let _ = OPENAPI.set(annotated(api));
    let router = router
        // After routing, so the guard sees the matched route; 404 and 405
        // fallbacks are answered without it.
        .route_layer(middleware::from_fn_with_state(state.clone(), guard))
        // The dashboard at `/`; everything else, `/api` included, stays a
        // JSON 404.
        .merge(crate::http::web::router())
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(state);
    // The guard bounds each body to its route's limit; this only lifts
    // axum's own 2 MB default for the one route that streams more.
    let body_limit = DefaultBodyLimit::max(
        usize::try_from(max_upload.saturating_add(policy::MULTIPART_OVERHEAD))
            .unwrap_or(usize::MAX),
    );
    Envelope::new(router, body_limit)
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
