//! Production routes under `/api/v1`: products, production orders, units
//! and their QC, ISO 22400 metrics and APC verdicts. Mounted by
//! `api::router` behind the same authentication as every `/api/v1` route:
//! viewers read, operators change.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::api::{ApiError, AppState, Caller, ErrorBody, json_body};
use crate::metering::model::{OrderInput, Product, ProductInput, QcInput, QcState, Unit};
use crate::metering::oee::Window;
use crate::metering::{
    ApcResult, LossReport, MeteringError, Metrics, OrderCreated, OrderView, Scope, UnitFilter,
};

type ApiResult<T> = Result<T, ApiError>;

impl From<MeteringError> for ApiError {
    fn from(e: MeteringError) -> Self {
        match e {
            MeteringError::NotFound(m) => Self::new(StatusCode::NOT_FOUND, "not_found", m),
            MeteringError::Invalid(i) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", i.to_string())
            }
            MeteringError::Conflict(m) => Self::new(StatusCode::CONFLICT, "conflict", m),
            MeteringError::Factory(f) => f.into(),
            MeteringError::Store(s) => crate::factory::FactoryError::Store(s).into(),
        }
    }
}

fn bad_query(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message)
}

fn query<T>(q: Result<Query<T>, axum::extract::rejection::QueryRejection>) -> ApiResult<T> {
    q.map(|Query(q)| q).map_err(|e| bad_query(e.body_text()))
}

fn window(from: Option<u64>, to: Option<u64>) -> ApiResult<Window> {
    let (from_ms, to_ms) = (from.unwrap_or(0), to.unwrap_or(u64::MAX));
    if from_ms > to_ms {
        return Err(bad_query(format!("from ({from_ms}) is after to ({to_ms})")));
    }
    Ok(Window { from_ms, to_ms })
}

// ---------------------------------------------------------------- products

/// Creates a product. Its planned runtime per unit defaults to the file's
/// analysed duration divided by the units per job.
#[utoipa::path(post, path = "/api/v1/products", tag = "production", request_body = ProductInput,
    responses((status = 201, body = Product), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn create_product(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Product>)> {
    let input: ProductInput = json_body(&headers, &body)?;
    let p = s.metering.create_product(input).await?;
    Ok((StatusCode::CREATED, Json(p)))
}

/// Every product, by SKU.
#[utoipa::path(get, path = "/api/v1/products", tag = "production",
    responses((status = 200, body = Vec<Product>)),
    security(("bearer" = [])))]
async fn list_products(State(s): State<AppState>) -> ApiResult<Json<Vec<Product>>> {
    Ok(Json(s.metering.products()?))
}

/// One product.
#[utoipa::path(get, path = "/api/v1/products/{sku}", tag = "production",
    params(("sku" = String, Path, description = "SKU")),
    responses((status = 200, body = Product), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_product(
    State(s): State<AppState>,
    Path(sku): Path<String>,
) -> ApiResult<Json<Product>> {
    Ok(Json(s.metering.product(&sku)?))
}

/// Replaces a product's description; the SKU never changes. Orders keep
/// what they were made with.
#[utoipa::path(put, path = "/api/v1/products/{sku}", tag = "production",
    params(("sku" = String, Path, description = "SKU")), request_body = ProductInput,
    responses((status = 200, body = Product), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn put_product(
    State(s): State<AppState>,
    Path(sku): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Product>> {
    let input: ProductInput = json_body(&headers, &body)?;
    Ok(Json(s.metering.put_product(&sku, input).await?))
}

/// Deletes a product no production order or unit refers to (409 if one
/// does: their records keep it).
#[utoipa::path(delete, path = "/api/v1/products/{sku}", tag = "production",
    params(("sku" = String, Path, description = "SKU")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
async fn delete_product(
    State(s): State<AppState>,
    Path(sku): Path<String>,
) -> ApiResult<StatusCode> {
    s.metering.delete_product(&sku).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------ orders

fn order_id(raw: &str) -> ApiResult<u64> {
    raw.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!("production order id must be a positive integer, got '{raw}'"),
        )
    })
}

/// Creates a production order and queues ⌈quantity ÷ units per job⌉
/// jobs; more are queued as units fail QC, until the good quantity is
/// reached or the order is stopped.
#[utoipa::path(post, path = "/api/v1/production-orders", tag = "production",
    request_body = OrderInput,
    responses((status = 201, body = OrderCreated), (status = 400, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn create_order(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<OrderCreated>)> {
    let input: OrderInput = json_body(&headers, &body)?;
    let created = s.metering.create_order(input).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Every production order with its progress, oldest first.
#[utoipa::path(get, path = "/api/v1/production-orders", tag = "production",
    responses((status = 200, body = Vec<OrderView>)),
    security(("bearer" = [])))]
async fn list_orders(State(s): State<AppState>) -> ApiResult<Json<Vec<OrderView>>> {
    Ok(Json(s.metering.orders()?))
}

/// One production order: ordered, produced, good, scrap, awaiting QC and
/// in progress.
#[utoipa::path(get, path = "/api/v1/production-orders/{id}", tag = "production",
    params(("id" = String, Path, description = "Production order id")),
    responses((status = 200, body = OrderView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_order(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<OrderView>> {
    Ok(Json(s.metering.order(order_id(&id)?)?))
}

/// Stops an order: no more jobs are queued for it. Jobs already queued
/// stay; cancel them in the queue.
#[utoipa::path(post, path = "/api/v1/production-orders/{id}/stop", tag = "production",
    params(("id" = String, Path, description = "Production order id")),
    responses((status = 200, body = OrderView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn stop_order(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<OrderView>> {
    Ok(Json(s.metering.stop_order(order_id(&id)?).await?))
}

// ------------------------------------------------------------------- units

/// `GET /units` filters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UnitsQuery {
    /// Of this product.
    pub sku: Option<String>,
    /// In this QC state: pending, pass, fail, rework or scrap.
    pub state: Option<String>,
    /// Made at or after, ms since the Unix epoch.
    pub from: Option<u64>,
    /// Made before.
    pub to: Option<u64>,
}

/// Units, in the order they were made.
#[utoipa::path(get, path = "/api/v1/units", tag = "production", params(UnitsQuery),
    responses((status = 200, body = Vec<Unit>), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
async fn list_units(
    State(s): State<AppState>,
    q: Result<Query<UnitsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<Unit>>> {
    let q = query(q)?;
    let state = match q.state.as_deref() {
        None => None,
        Some(raw) => Some(QcState::parse(raw).ok_or_else(|| {
            bad_query(format!(
                "state '{raw}' is not one of pending, pass, fail, rework, scrap"
            ))
        })?),
    };
    let w = window(q.from, q.to)?;
    let filter = UnitFilter {
        sku: q.sku,
        state,
        from_ms: Some(w.from_ms),
        to_ms: q.to,
    };
    Ok(Json(s.metering.units(&filter)?))
}

/// One unit with its QC history.
#[utoipa::path(get, path = "/api/v1/units/{serial}", tag = "production",
    params(("serial" = String, Path, description = "Unit serial")),
    responses((status = 200, body = Unit), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_unit(State(s): State<AppState>, Path(serial): Path<String>) -> ApiResult<Json<Unit>> {
    Ok(Json(s.metering.unit(&serial)?))
}

/// Records a unit's inspection: `pending` or `rework` units may be
/// inspected (a reason code is needed unless it passes); pass, fail and
/// scrap are final (409). A fail or scrap that leaves its order short
/// queues another job.
#[utoipa::path(post, path = "/api/v1/units/{serial}/qc", tag = "production",
    params(("serial" = String, Path, description = "Unit serial")), request_body = QcInput,
    responses((status = 200, body = Unit), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn inspect_unit(
    State(s): State<AppState>,
    Path(serial): Path<String>,
    axum::Extension(caller): axum::Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Unit>> {
    let input: QcInput = json_body(&headers, &body)?;
    Ok(Json(
        s.metering.inspect(&serial, input, &caller.name).await?,
    ))
}

// ----------------------------------------------------------------- metrics

/// `GET /metrics` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct MetricsQuery {
    /// `machine` (default) or `sku`.
    pub scope: Option<String>,
    /// The machine id or the SKU; without it, every machine (the whole
    /// factory) or every product.
    pub id: Option<String>,
    /// From, ms since the Unix epoch (default 0).
    pub from: Option<u64>,
    /// To, excluded (default: now).
    pub to: Option<u64>,
}

/// ISO 22400 figures of a machine or a product over a window, with every
/// input: time only from the machine state log, quantities from units.
#[utoipa::path(get, path = "/api/v1/metrics", tag = "production", params(MetricsQuery),
    responses((status = 200, body = Metrics), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn metrics(
    State(s): State<AppState>,
    q: Result<Query<MetricsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Metrics>> {
    let q = query(q)?;
    let w = window(q.from, q.to)?;
    Ok(Json(s.metering.metrics(
        scope(q.scope.as_deref())?,
        q.id.as_deref(),
        w,
    )?))
}

fn scope(raw: Option<&str>) -> ApiResult<Scope> {
    match raw.unwrap_or("machine") {
        "machine" => Ok(Scope::Machine),
        "sku" => Ok(Scope::Sku),
        other => Err(bad_query(format!(
            "scope '{other}' is not one of machine, sku"
        ))),
    }
}

/// Where the time and the units went: downtime by machine state and
/// reason (from the state log, clipped to the window; its total is setup
/// + delay + down time) and scrap by QC reason code, each sorted largest
/// first with its share and cumulative share (a Pareto). Same scopes as
/// `GET /metrics`.
#[utoipa::path(get, path = "/api/v1/metrics/losses", tag = "production", params(MetricsQuery),
    responses((status = 200, body = LossReport), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn losses(
    State(s): State<AppState>,
    q: Result<Query<MetricsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<LossReport>> {
    let q = query(q)?;
    let w = window(q.from, q.to)?;
    Ok(Json(s.metering.losses(
        scope(q.scope.as_deref())?,
        q.id.as_deref(),
        w,
    )?))
}

/// `GET /apc` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ApcQuery {
    /// From, ms since the Unix epoch (default 0).
    pub from: Option<u64>,
    /// To, excluded (default: now).
    pub to: Option<u64>,
}

/// The Admissible Performance Criteria verdict of every configured
/// (SKU, machine class): pass, fail or insufficient data, each criterion
/// with its threshold and measured value, and the inputs.
#[utoipa::path(get, path = "/api/v1/apc", tag = "production", params(ApcQuery),
    responses((status = 200, body = Vec<ApcResult>), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
async fn apc(
    State(s): State<AppState>,
    q: Result<Query<ApcQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<ApcResult>>> {
    let q = query(q)?;
    let w = window(q.from, q.to)?;
    Ok(Json(s.metering.apc(w)?))
}

/// `GET /apc/{sku}/{class}/report` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    /// From, ms since the Unix epoch (default: the product's creation).
    pub from: Option<u64>,
    /// To, excluded (default: now).
    pub to: Option<u64>,
    /// `json` (default), `html` (the printable page) or `pdf` (the same,
    /// as an A4 PDF with the font embedded).
    pub format: Option<String>,
}

/// The certification report of one (SKU, machine class): the verdict with
/// every input and the full-cost accounts, the two halves of the window
/// as the consecutive windows the rule asks for, a series for the charts,
/// and the evidence (unit serials, attempts, state-log spans). As JSON, or
/// with `format=html` as a printable page with inline SVG charts, or with
/// `format=pdf` as the same on A4 pages of vector PDF.
#[utoipa::path(get, path = "/api/v1/apc/{sku}/{class}/report", tag = "production",
    params(("sku" = String, Path, description = "SKU"),
        ("class" = String, Path, description = "Machine class"), ReportQuery),
    responses((status = 200, body = crate::metering::report::Report),
        (status = 200, description = "printable page", content_type = "text/html", body = String),
        (status = 200, description = "printable PDF", content_type = "application/pdf", body = Vec<u8>),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn apc_report(
    State(s): State<AppState>,
    Path((sku, class)): Path<(String, String)>,
    q: Result<Query<ReportQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let q = query(q)?;
    let w = window(q.from, q.to)?;
    let format = match q.format.as_deref() {
        None | Some("json") => ReportFormat::Json,
        Some("html") => ReportFormat::Html,
        Some("pdf") => ReportFormat::Pdf,
        Some(other) => {
            return Err(bad_query(format!(
                "format '{other}' is not one of json, html, pdf"
            )));
        }
    };
    let report = s.metering.report(&sku, &class, w)?;
    let (content_type, body) = match format {
        ReportFormat::Json => return Ok(Json(report).into_response()),
        ReportFormat::Html => (
            "text/html; charset=utf-8",
            crate::metering::report::html(&report).into_bytes(),
        ),
        ReportFormat::Pdf => {
            let pdf =
                tokio::task::spawn_blocking(move || crate::metering::report_pdf::pdf(&report))
                    .await
                    .map_err(|e| internal(&e.to_string()))?
                    .map_err(|e| internal(&e.to_string()))?;
            ("application/pdf", pdf)
        }
    };
    Ok(([(axum::http::header::CONTENT_TYPE, content_type)], body).into_response())
}

/// How `GET /apc/{sku}/{class}/report` answers.
enum ReportFormat {
    Json,
    Html,
    Pdf,
}

/// A 500 for what is a bug here, not the caller's doing.
fn internal(message: &str) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("the report could not be drawn: {message}"),
    )
}

/// Prometheus metrics (OpenMetrics text): units by SKU and QC state,
/// attempt durations, serial resends, machine states, OEE per machine
/// class over the last day, APC verdicts, queue depth and how far each
/// log reader lags. For a scraper holding a token of the `metrics` role
/// (operators and viewers may read it too).
#[utoipa::path(get, path = "/metrics", tag = "production",
    responses((status = 200, description = "OpenMetrics text exposition",
        content_type = "application/openmetrics-text", body = String)),
    security(("bearer" = [])))]
async fn prometheus_metrics(State(s): State<AppState>) -> ApiResult<axum::response::Response> {
    use crate::metering::exposition;
    use axum::response::IntoResponse;
    let queued = s
        .factory
        .jobs(&[crate::core::model::JobState::Queued], None, None)?
        .len() as u64;
    let mut readers = vec![crate::metering::reader::CURSOR];
    if s.mqtt.is_some() {
        readers.push(crate::mqtt::client::CURSOR);
    }
    let mut scrape = s.metering.scrape(queued, &readers)?;
    // With `[mqtt]`, the broker link too.
    scrape.broker = s.mqtt.as_ref().map(|m| m.health().exposition());
    let body = tokio::task::spawn_blocking(move || exposition::render(scrape))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .unwrap_or_else(|e| exposition::failure(&e));
    Ok((
        [(axum::http::header::CONTENT_TYPE, exposition::CONTENT_TYPE)],
        body,
    )
        .into_response())
}

/// The production routes, to merge into the authenticated `/api/v1`
/// router.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_product, list_products))
        .routes(routes!(get_product, put_product, delete_product))
        .routes(routes!(create_order, list_orders))
        .routes(routes!(get_order))
        .routes(routes!(stop_order))
        .routes(routes!(list_units))
        .routes(routes!(get_unit))
        .routes(routes!(inspect_unit))
        .routes(routes!(metrics))
        .routes(routes!(losses))
        .routes(routes!(apc))
        .routes(routes!(prometheus_metrics))
        .routes(routes!(apc_report))
}
