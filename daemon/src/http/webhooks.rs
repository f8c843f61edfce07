//! Webhook receivers under `/api/v1/webhooks` (operators change them,
//! viewers read them) and Shopify's fulfillment-service callbacks under
//! `/shopify/`, which Shopify calls without a token: the notification is
//! authenticated by its `X-Shopify-Hmac-Sha256`, the two reads by naming
//! a configured shop (docs/webhooks.md says what that exposes).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::clock::now_ms;
use crate::commerce::shopify::{Notification, Shopify, ShopifyError, TrackingNumbers};
use crate::commerce::webhooks::model::{Delivery, ReceiverView};
use crate::commerce::webhooks::{ReceiverCreated, ReceiverInput, Webhooks, WebhooksError};
use crate::http::api::{ApiError, AppState, ErrorBody, json_body};

type ApiResult<T> = Result<T, ApiError>;

impl From<WebhooksError> for ApiError {
    fn from(e: WebhooksError) -> Self {
        let msg = e.to_string();
        let (status, code) = match e {
            WebhooksError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            WebhooksError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            WebhooksError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            WebhooksError::Client(_) | WebhooksError::Store(_) => {
                tracing::error!(error = %msg, "webhook request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "storage")
            }
        };
        Self::new(status, code, msg)
    }
}

impl From<ShopifyError> for ApiError {
    fn from(e: ShopifyError) -> Self {
        let msg = e.to_string();
        let (status, code) = match e {
            ShopifyError::MissingShop(_) => (StatusCode::BAD_REQUEST, "missing_shop"),
            // The shop's domain is public anyway; a 404 tells its merchant
            // the callback URL reaches a daemon that lacks the shop, which
            // a 401 would confuse with a wrong secret.
            ShopifyError::UnknownShop(_) => (StatusCode::NOT_FOUND, "unknown_shop"),
            ShopifyError::BadSignature => (StatusCode::UNAUTHORIZED, "bad_signature"),
            ShopifyError::NotJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            ShopifyError::Source(_) | ShopifyError::Store(_) => {
                tracing::error!(error = %msg, "Shopify callback failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        Self::new(status, code, msg)
    }
}

fn unavailable(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_running",
        format!("{what} is not running in this daemon"),
    )
}

fn webhooks(s: &AppState) -> ApiResult<&Arc<Webhooks>> {
    s.webhooks
        .as_ref()
        .ok_or_else(|| unavailable("the webhook outbox"))
}

fn shopify(s: &AppState) -> ApiResult<&Arc<Shopify>> {
    s.shopify
        .as_ref()
        .ok_or_else(|| unavailable("the Shopify callback service"))
}

fn bad_query(e: &axum::extract::rejection::QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text())
}

// ---------------------------------------------------------------- receivers

/// Every webhook receiver with its delivery status (never its secret).
#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks",
    responses((status = 200, body = Vec<ReceiverView>)),
    security(("bearer" = [])))]
async fn list_webhooks(State(s): State<AppState>) -> ApiResult<Json<Vec<ReceiverView>>> {
    Ok(Json(webhooks(&s)?.list()?))
}

/// Adds a receiver. It gets the events committed from now on, signed
/// with its secret; without a `secret` one is generated and shown in
/// this answer only.
#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks", request_body = ReceiverInput,
    responses((status = 201, body = ReceiverCreated), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn create_webhook(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<ReceiverCreated>)> {
    let input: ReceiverInput = json_body(&headers, &body)?;
    let created = webhooks(&s)?.create(input).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Removes a receiver added through the API; its pending deliveries are
/// dropped (receivers from the configuration file: 409).
#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Receiver id")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
async fn delete_webhook(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    webhooks(&s)?.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Enables a receiver that was disabled after repeated failures; its
/// oldest waiting delivery is attempted at once.
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/enable", tag = "webhooks",
    params(("id" = String, Path, description = "Receiver id")),
    responses((status = 200, body = ReceiverView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn enable_webhook(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<ReceiverView>> {
    Ok(Json(webhooks(&s)?.enable(&id).await?))
}

/// `GET /webhooks/{id}/deliveries` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    /// Only deliveries of log records before this seq (paging).
    pub before: Option<u64>,
    /// At most this many (default 50, at most 500).
    pub limit: Option<usize>,
}

/// A receiver's deliveries, newest first, each with its attempts (time,
/// HTTP status or error) and, while pending, when the next one is due.
#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path, description = "Receiver id"), DeliveriesQuery),
    responses((status = 200, body = Vec<Delivery>), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn webhook_deliveries(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<DeliveriesQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<Delivery>>> {
    let Query(q) = q.map_err(|e| bad_query(&e))?;
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    Ok(Json(webhooks(&s)?.deliveries(&id, q.before, limit)?))
}

// ------------------------------------------------------------------ Shopify

/// The fulfillment-order notifications Shopify sent, newest first (at
/// most 200): each is a ping that fulfillment orders await acceptance.
#[utoipa::path(get, path = "/api/v1/shopify/notifications", tag = "shopify",
    responses((status = 200, body = Vec<Notification>)),
    security(("bearer" = [])))]
async fn shopify_notifications(State(s): State<AppState>) -> ApiResult<Json<Vec<Notification>>> {
    Ok(Json(shopify(&s)?.notifications()?))
}

/// What a recorded notification is acknowledged with.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Recorded {
    /// The notification's id in `GET /api/v1/shopify/notifications`.
    pub id: u64,
}

/// Shopify's `fulfillment_order_notification`: verified against the
/// shop's secret (`X-Shopify-Shop-Domain`, `X-Shopify-Hmac-Sha256` over
/// the raw body), recorded durably, then acknowledged. 401 on a wrong or
/// missing signature, 404 for a shop that is not configured.
#[utoipa::path(post, path = "/shopify/fulfillment_order_notification", tag = "shopify",
    request_body(content = Object, description = "e.g. {\"kind\": \"FULFILLMENT_REQUEST\"}"),
    responses((status = 200, body = Recorded), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn fulfillment_order_notification(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Recorded>> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let n = shopify(&s)?
        .notify(
            header("x-shopify-shop-domain"),
            header("x-shopify-hmac-sha256"),
            &body,
            now_ms(),
        )
        .await?;
    Ok(Json(Recorded { id: n.id }))
}

/// `fetch_stock.json` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct StockQuery {
    /// One SKU; every SKU when absent.
    pub sku: Option<String>,
    /// The shop's myshopify domain.
    pub shop: Option<String>,
    /// Sent by Shopify, not used.
    pub timestamp: Option<String>,
}

/// Shopify's `fetch_stock.json`: `{"<SKU>": quantity}` for one SKU or
/// all, which Shopify reads as on hand (docs/webhooks.md says which level
/// is answered).
#[utoipa::path(get, path = "/shopify/fetch_stock.json", tag = "shopify", params(StockQuery),
    responses((status = 200, body = BTreeMap<String, u64>), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn fetch_stock(
    State(s): State<AppState>,
    q: Result<Query<StockQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<BTreeMap<String, u64>>> {
    let Query(q) = q.map_err(|e| bad_query(&e))?;
    Ok(Json(
        shopify(&s)?.stock(q.shop.as_deref(), q.sku.as_deref())?,
    ))
}

/// Shopify's `fetch_tracking_numbers.json?order_names[]=#1001.1&shop=…`:
/// the tracking number of each named fulfillment that has one.
#[utoipa::path(get, path = "/shopify/fetch_tracking_numbers.json", tag = "shopify",
    params(("order_names[]" = Vec<String>, Query, description = "Fulfillment names, repeated"),
        ("shop" = String, Query, description = "The shop's myshopify domain")),
    responses((status = 200, body = TrackingNumbers), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn fetch_tracking_numbers(
    State(s): State<AppState>,
    q: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<TrackingNumbers>> {
    let Query(pairs) = q.map_err(|e| bad_query(&e))?;
    let mut shop = None;
    let mut names = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "order_names[]" | "order_names" => names.push(v),
            "shop" => shop = Some(v),
            _ => {}
        }
    }
    Ok(Json(
        shopify(&s)?.tracking_numbers(shop.as_deref(), &names)?,
    ))
}

/// The webhook and Shopify routes, to merge into the API router.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_webhooks, create_webhook))
        .routes(routes!(delete_webhook))
        .routes(routes!(enable_webhook))
        .routes(routes!(webhook_deliveries))
        .routes(routes!(shopify_notifications))
        .routes(routes!(fulfillment_order_notification))
        .routes(routes!(fetch_stock))
        .routes(routes!(fetch_tracking_numbers))
}
