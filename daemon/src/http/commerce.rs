//! Commerce routes under `/api/v1`: the storefront's inventory and orders,
//! fulfillment (pick, pack, hold, cancel, return), shipments, pick lists,
//! stock adjustments and return inspections. Mounted by `api::router`
//! behind the same guard as every route; who may call which is in
//! `policy::TABLE` (the `storefront` role reads inventory and places and
//! cancels orders; operators do everything).

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::commerce::inventory::FgUnit;
use crate::commerce::labels::{
    LabelError, Paper, packing_slip_pdf, shipping_label_pdf, shipping_label_zpl, unit_label_pdf,
    unit_label_zpl,
};
use crate::commerce::orders::{Action, OrderInput, SalesState, Shipment, ShipmentInput};
use crate::commerce::service::{
    AdjustmentInput, CommerceError, InventoryItem, InventoryList, OrderView, PickList,
    ReturnInspection, body_digest,
};
use crate::http::api::{ApiError, AppState, Caller, ErrorBody, json_body};

type ApiResult<T> = Result<T, ApiError>;

/// Longest `Idempotency-Key` accepted.
const IDEMPOTENCY_KEY_MAX: usize = 255;

impl From<CommerceError> for ApiError {
    fn from(e: CommerceError) -> Self {
        let msg = e.to_string();
        match e {
            CommerceError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, "not_found", msg),
            CommerceError::Invalid(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", msg)
            }
            CommerceError::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", msg),
            CommerceError::Short(_) => Self::new(StatusCode::CONFLICT, "short", msg),
            CommerceError::Store(s) => crate::factory::FactoryError::Store(s).into(),
            CommerceError::Label(LabelError::Invalid { .. }) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", msg)
            }
            CommerceError::Label(_) => {
                tracing::error!(error = %msg, "document failed");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "document", msg)
            }
        }
    }
}

fn bad_query(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message)
}

fn id_of(what: &str, raw: &str) -> ApiResult<u64> {
    raw.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!("{what} id must be a positive integer, got '{raw}'"),
        )
    })
}

fn json_response(status: StatusCode, body: impl Into<Body>, etag: Option<&str>) -> Response {
    let mut res = (status, body.into()).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(tag) = etag.and_then(|t| HeaderValue::from_str(t).ok()) {
        h.insert(header::ETAG, tag);
    }
    res
}

/// Whether `If-None-Match` names this ETag (or is `*`).
fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t == etag || t.strip_prefix("W/") == Some(etag))
}

// --------------------------------------------------------------- inventory

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InventoryQuery {
    changed_since: Option<u64>,
}

/// Finished-goods levels per SKU, from a snapshot made once per change:
/// a strong `ETag` (send it back as `If-None-Match` for a 304), and
/// `cursor`, to pass as `?changed_since=` for only what changed since.
#[utoipa::path(get, path = "/api/v1/inventory", tag = "commerce",
    params(("changed_since" = Option<u64>, Query, description = "A cursor from an earlier answer")),
    responses((status = 200, body = InventoryList), (status = 304),
        (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
async fn inventory(
    State(s): State<AppState>,
    q: Result<Query<InventoryQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(|e| bad_query(e.body_text()))?;
    let snap = s.commerce.snapshot();
    let (body, etag): (Body, String) = match q.changed_since {
        None => (
            Body::from(Bytes::from_owner(SharedBody(snap.body.clone()))),
            snap.etag.clone(),
        ),
        Some(since) => {
            let (b, e) = snap.changed_since(since);
            (Body::from(b), e)
        }
    };
    if not_modified(&headers, &etag) {
        let mut res = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(v) = HeaderValue::from_str(&etag) {
            res.headers_mut().insert(header::ETAG, v);
        }
        return Ok(res);
    }
    Ok(json_response(StatusCode::OK, body, Some(&etag)))
}

/// A snapshot's body, handed to hyper without a copy.
struct SharedBody(std::sync::Arc<[u8]>);

impl AsRef<[u8]> for SharedBody {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// One product's levels (zero for a product that never had stock).
#[utoipa::path(get, path = "/api/v1/inventory/{sku}", tag = "commerce",
    params(("sku" = String, Path, description = "SKU")),
    responses((status = 200, body = InventoryItem), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn inventory_item(
    State(s): State<AppState>,
    Path(sku): Path<String>,
) -> ApiResult<Json<InventoryItem>> {
    Ok(Json(s.commerce.inventory_item(&sku)?))
}

/// A manual adjustment with a reason code: a `count` (on hand becomes
/// `counted`; missing units are marked, found ones restored), `damage`
/// (these `serials` become unavailable) or `found` (these missing or
/// damaged `serials` are available again).
#[utoipa::path(post, path = "/api/v1/inventory/{sku}/adjustments", tag = "commerce",
    params(("sku" = String, Path, description = "SKU")), request_body = AdjustmentInput,
    responses((status = 200, body = InventoryItem), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn adjust(
    State(s): State<AppState>,
    Path(sku): Path<String>,
    axum::Extension(caller): axum::Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<InventoryItem>> {
    let input: AdjustmentInput = json_body(&headers, &body)?;
    Ok(Json(s.commerce.adjust(&sku, input, &caller.name).await?))
}

/// Inspects a returned unit: `pass` puts it back on the shelf (and to
/// back-orders), `fail` or `scrap` (with a reason) rejects it.
#[utoipa::path(post, path = "/api/v1/returns/{serial}/inspection", tag = "commerce",
    params(("serial" = String, Path, description = "Unit serial")), request_body = ReturnInspection,
    responses((status = 200, body = FgUnit), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn inspect_return(
    State(s): State<AppState>,
    Path(serial): Path<String>,
    axum::Extension(caller): axum::Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<FgUnit>> {
    let input: ReturnInspection = json_body(&headers, &body)?;
    Ok(Json(
        s.commerce
            .inspect_return(&serial, input, &caller.name)
            .await?,
    ))
}

// ------------------------------------------------------------------ orders

/// Takes a storefront order. Send an `Idempotency-Key`: a retry with the
/// same key and body gets the first answer again (`Idempotent-Replayed:
/// true`), the same key with another body is a 409. An order is unique per
/// (channel, external_id). Units are reserved at once, oldest first; when
/// short, `when_short: reject` refuses the order (409 naming the SKUs) and
/// `backorder` accepts it to wait for production.
#[utoipa::path(post, path = "/api/v1/orders", tag = "commerce", request_body = OrderInput,
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 printable ASCII characters")),
    responses((status = 201, body = OrderView), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn create_order(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v.to_str().ok().map(str::trim).unwrap_or("");
            if k.is_empty()
                || k.len() > IDEMPOTENCY_KEY_MAX
                || !k.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_idempotency_key",
                    format!(
                        "Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII \
                         characters without spaces"
                    ),
                ));
            }
            Some(k.to_string())
        }
    };
    let input: OrderInput = json_body(&headers, &body)?;
    let intake = s
        .commerce
        .create_order(input, key, body_digest(&body), &caller.name)
        .await?;
    let status = StatusCode::from_u16(intake.status).unwrap_or(StatusCode::CREATED);
    let mut res = json_response(status, intake.body, None);
    if intake.replay {
        res.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(res)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrdersQuery {
    state: Option<String>,
}

/// Sales orders, oldest first, optionally in one `state`.
#[utoipa::path(get, path = "/api/v1/orders", tag = "commerce",
    params(("state" = Option<String>, Query, description = "received, allocated, picked, packed, labelled, shipped, on_hold, cancelled or returned")),
    responses((status = 200, body = Vec<OrderView>), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
async fn list_orders(
    State(s): State<AppState>,
    q: Result<Query<OrdersQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<OrderView>>> {
    let Query(q) = q.map_err(|e| bad_query(e.body_text()))?;
    let state = match q.state.as_deref() {
        None => None,
        Some(raw) => Some(SalesState::parse(raw).ok_or_else(|| {
            bad_query(format!(
                "state '{raw}' is not one of {}",
                SalesState::ALL.map(SalesState::as_str).join(", ")
            ))
        })?),
    };
    Ok(Json(s.commerce.orders(state)))
}

/// One sales order: state, reserved and shipped serials, history,
/// shipments.
#[utoipa::path(get, path = "/api/v1/orders/{id}", tag = "commerce",
    params(("id" = u64, Path, description = "Sales order id")),
    responses((status = 200, body = OrderView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_order(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<OrderView>> {
    Ok(Json(s.commerce.order(id_of("sales order", &id)?)?))
}

async fn act(
    s: &AppState,
    id: &str,
    action: Action,
    caller: &Caller,
) -> ApiResult<Json<OrderView>> {
    let id = id_of("sales order", id)?;
    Ok(Json(s.commerce.act(id, action, &caller.name, None).await?))
}

macro_rules! action_route {
    ($name:ident, $path:literal, $action:expr, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "commerce",
                    params(("id" = u64, Path, description = "Sales order id")),
                    responses((status = 200, body = OrderView), (status = 400, body = ErrorBody),
                        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
                    security(("bearer" = [])))]
        async fn $name(
            State(s): State<AppState>,
            Path(id): Path<String>,
            axum::Extension(caller): axum::Extension<Caller>,
        ) -> ApiResult<Json<OrderView>> {
            act(&s, &id, $action, &caller).await
        }
    };
}

action_route!(
    cancel_order,
    "/api/v1/orders/{id}/cancel",
    Action::Cancel,
    "Cancels an order that has not fully shipped: its unshipped units go back to stock (to back-orders first), its unshipped shipments are voided."
);
action_route!(
    pick_order,
    "/api/v1/orders/{id}/pick",
    Action::Pick,
    "Records that an allocated order's units were taken from the shelf."
);
action_route!(
    pack_order,
    "/api/v1/orders/{id}/pack",
    Action::Pack,
    "Records that a picked order was packed."
);
action_route!(
    hold_order,
    "/api/v1/orders/{id}/hold",
    Action::Hold,
    "Puts an open order on hold: nothing is allocated to it or shipped until it is released."
);
action_route!(
    release_order,
    "/api/v1/orders/{id}/release",
    Action::Release,
    "Releases a held order to the state it was in."
);
action_route!(
    return_order,
    "/api/v1/orders/{id}/return",
    Action::Return,
    "Records that a shipped order came back: its units are unavailable until inspected (POST /returns/{serial}/inspection)."
);

/// Creates a labelled shipment of the order's allocated units not yet in
/// one (or of `lines`, a subset), numbered by the carrier (the local
/// carrier: `MF-` and ten digits, no postage).
#[utoipa::path(post, path = "/api/v1/orders/{id}/shipments", tag = "commerce",
    params(("id" = u64, Path, description = "Sales order id")), request_body = ShipmentInput,
    responses((status = 201, body = Shipment), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn create_shipment(
    State(s): State<AppState>,
    Path(id): Path<String>,
    axum::Extension(caller): axum::Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Shipment>)> {
    let id = id_of("sales order", &id)?;
    let input: ShipmentInput = if body.iter().all(u8::is_ascii_whitespace) {
        ShipmentInput::default()
    } else {
        json_body(&headers, &body)?
    };
    let sh = s.commerce.create_shipment(id, input, &caller.name).await?;
    Ok((StatusCode::CREATED, Json(sh)))
}

/// One shipment.
#[utoipa::path(get, path = "/api/v1/shipments/{id}", tag = "commerce",
    params(("id" = u64, Path, description = "Shipment id")),
    responses((status = 200, body = Shipment), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_shipment(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Shipment>> {
    Ok(Json(s.commerce.shipment(id_of("shipment", &id)?)?))
}

/// Marks a labelled shipment shipped: its units leave finished goods; the
/// order is shipped when all its units are.
#[utoipa::path(post, path = "/api/v1/shipments/{id}/ship", tag = "commerce",
    params(("id" = u64, Path, description = "Shipment id")),
    responses((status = 200, body = Shipment), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
async fn ship(
    State(s): State<AppState>,
    Path(id): Path<String>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> ApiResult<Json<Shipment>> {
    let id = id_of("shipment", &id)?;
    Ok(Json(s.commerce.ship(id, &caller.name).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PickQuery {
    orders: String,
}

/// Most orders in one pick list.
const PICK_ORDERS_MAX: usize = 200;

/// The units to take from the shelf for a batch of orders
/// (`?orders=1,2,3`), by SKU, each with the orders it is for.
#[utoipa::path(get, path = "/api/v1/picklist", tag = "commerce",
    params(("orders" = String, Query, description = "Comma-separated sales order ids")),
    responses((status = 200, body = PickList), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn picklist(
    State(s): State<AppState>,
    q: Result<Query<PickQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<PickList>> {
    let Query(q) = q.map_err(|e| bad_query(e.body_text()))?;
    let ids = q
        .orders
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<u64>()
                .map_err(|_| bad_query(format!("orders: '{p}' is not an order id")))
        })
        .collect::<ApiResult<Vec<u64>>>()?;
    if ids.is_empty() || ids.len() > PICK_ORDERS_MAX {
        return Err(bad_query(format!(
            "orders must name 1 to {PICK_ORDERS_MAX} sales orders"
        )));
    }
    Ok(Json(s.commerce.picklist(&ids)?))
}

// --------------------------------------------------------------- documents

/// `application/pdf`, shown in the browser (`inline`) so one click opens
/// the print dialog's preview.
const PDF: &str = "application/pdf";
/// ZPL II is plain text (UTF-8 under `^CI28`) with no registered media
/// type; it is saved (`attachment`) and sent to the printer as is.
const ZPL: &str = "text/plain; charset=utf-8";

/// A document answer: its type and a file name the browser keeps.
fn document(content_type: &'static str, filename: &str, body: Vec<u8>) -> Response {
    let disposition = if content_type == PDF {
        "inline"
    } else {
        "attachment"
    };
    // File names are built from our own numbers and GS1 set 82 serials;
    // anything else is replaced so the header stays one quoted token.
    let safe: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut res = (StatusCode::OK, body).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("{disposition}; filename=\"{safe}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    res
}

/// The 4×6 in shipping label as a vector PDF: from (`[shop.address]`)
/// and to addresses, service, weight, order reference and the shipment
/// number as Code 128. 409 for a voided shipment or without `[shop]`.
#[utoipa::path(get, path = "/api/v1/shipments/{id}/label.pdf", tag = "commerce",
    params(("id" = u64, Path, description = "Shipment id")),
    responses((status = 200, content_type = "application/pdf", body = Vec<u8>),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
async fn shipment_label_pdf(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let label = s.commerce.shipping_label(id_of("shipment", &id)?)?;
    let pdf = shipping_label_pdf(&label).map_err(CommerceError::from)?;
    Ok(document(
        PDF,
        &format!("{}.pdf", label.shipment_number),
        pdf,
    ))
}

/// The same label as ZPL II for a 203 dpi thermal printer (`^PW812`,
/// `^LL1218`, `^CI28`, every field hex-escaped).
#[utoipa::path(get, path = "/api/v1/shipments/{id}/label.zpl", tag = "commerce",
    params(("id" = u64, Path, description = "Shipment id")),
    responses((status = 200, content_type = "text/plain", body = String),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
async fn shipment_label_zpl(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let label = s.commerce.shipping_label(id_of("shipment", &id)?)?;
    let zpl = shipping_label_zpl(&label).map_err(CommerceError::from)?;
    Ok(document(
        ZPL,
        &format!("{}.zpl", label.shipment_number),
        zpl.into_bytes(),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlipQuery {
    paper: Option<String>,
}

/// The packing slip of an order (`?paper=a4`, the default, or `letter`):
/// shop, order reference and date, ship-to, and per line the SKU, title,
/// quantity and serials of the units reserved or shipped. 409 for an
/// order without units yet, a cancelled one, or without `[shop]`.
#[utoipa::path(get, path = "/api/v1/orders/{id}/packing-slip.pdf", tag = "commerce",
    params(("id" = u64, Path, description = "Sales order id"),
        ("paper" = Option<String>, Query, description = "a4 (default) or letter")),
    responses((status = 200, content_type = "application/pdf", body = Vec<u8>),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
async fn packing_slip(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<SlipQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(|e| bad_query(e.body_text()))?;
    let paper = match q.paper.as_deref() {
        None | Some("a4") => Paper::A4,
        Some("letter") => Paper::Letter,
        Some(other) => {
            return Err(bad_query(format!(
                "paper '{other}' is not one of a4, letter"
            )));
        }
    };
    let id = id_of("sales order", &id)?;
    let slip = s.commerce.packing_slip(id, paper)?;
    let pdf = packing_slip_pdf(&slip).map_err(CommerceError::from)?;
    Ok(document(PDF, &format!("packing-slip-{id}.pdf"), pdf))
}

/// The 2×1 in label of a unit: SKU, serial, lot (its production order),
/// production date and a GS1 DataMatrix ((11) date, (10) lot, (21) serial).
#[utoipa::path(get, path = "/api/v1/units/{serial}/label.pdf", tag = "commerce",
    params(("serial" = String, Path, description = "Unit serial")),
    responses((status = 200, content_type = "application/pdf", body = Vec<u8>),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn unit_label_pdf_route(
    State(s): State<AppState>,
    Path(serial): Path<String>,
) -> ApiResult<Response> {
    let label = s.commerce.unit_label(&serial)?;
    let pdf = unit_label_pdf(&label).map_err(CommerceError::from)?;
    Ok(document(PDF, &format!("{}.pdf", label.serial), pdf))
}

/// The unit label as ZPL II (406 × 203 dots at 203 dpi).
#[utoipa::path(get, path = "/api/v1/units/{serial}/label.zpl", tag = "commerce",
    params(("serial" = String, Path, description = "Unit serial")),
    responses((status = 200, content_type = "text/plain", body = String),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn unit_label_zpl_route(
    State(s): State<AppState>,
    Path(serial): Path<String>,
) -> ApiResult<Response> {
    let label = s.commerce.unit_label(&serial)?;
    let zpl = unit_label_zpl(&label).map_err(CommerceError::from)?;
    Ok(document(
        ZPL,
        &format!("{}.zpl", label.serial),
        zpl.into_bytes(),
    ))
}

/// Every commerce route, for `api::routes`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(inventory))
        .routes(routes!(inventory_item))
        .routes(routes!(adjust))
        .routes(routes!(inspect_return))
        .routes(routes!(create_order, list_orders))
        .routes(routes!(get_order))
        .routes(routes!(cancel_order))
        .routes(routes!(pick_order))
        .routes(routes!(pack_order))
        .routes(routes!(hold_order))
        .routes(routes!(release_order))
        .routes(routes!(return_order))
        .routes(routes!(create_shipment))
        .routes(routes!(get_shipment))
        .routes(routes!(ship))
        .routes(routes!(picklist))
        .routes(routes!(shipment_label_pdf))
        .routes(routes!(shipment_label_zpl))
        .routes(routes!(packing_slip))
        .routes(routes!(unit_label_pdf_route))
        .routes(routes!(unit_label_zpl_route))
}
