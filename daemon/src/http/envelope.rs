//! What every answer gets, the dashboard and fallbacks included: a bound
//! on the URI, the one JSON error shape for framework errors, `nosniff`
//! on everything and `no-store` on the API (its answers may carry job
//! data and must not be cached), and `Connection: close` after a body
//! that was refused unread.
//!
//! A service around the whole router rather than a layer on it: axum
//! applies a router's layers to each route, and clones that stack for
//! every request, one allocation per layer; this wraps it once.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower_service::Service;

use crate::http::api::ApiError;

/// URIs longer than this get 414 (hyper's own limit, near 64 KiB, answers
/// without the error shape).
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// The routed application with what every answer gets; see the module.
#[derive(Debug, Clone)]
pub struct Envelope {
    router: Router,
    body_limit: DefaultBodyLimit,
}

impl Envelope {
    /// Wraps `router`; `body_limit` replaces axum's 2 MB default for the
    /// body extractors (the route guard bounds each route's body itself).
    pub fn new(router: Router, body_limit: DefaultBodyLimit) -> Self {
        Self { router, body_limit }
    }
}

impl<B> Service<axum::http::Request<B>> for Envelope
where
    B: axum::body::HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<axum::http::Request<B>>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, mut req: axum::http::Request<B>) -> Self::Future {
        let api = req.uri().path().starts_with("/api/");
        let len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
        if len > MAX_URI_BYTES {
            let res = ApiError::new(
                StatusCode::URI_TOO_LONG,
                "uri_too_long",
                format!("the URI is {len} bytes; this daemon takes at most {MAX_URI_BYTES}"),
            )
            .into_response();
            return Box::pin(std::future::ready(Ok(finish(res, api))));
        }
        self.body_limit.apply(&mut req);
        let fut = self.router.call(req);
        Box::pin(async move {
            let Ok(res) = fut.await;
            Ok(finish(one_error_shape(res).await, api))
        })
    }
}

/// The headers every answer gets.
fn finish(mut res: Response, api: bool) -> Response {
    // A body refused before it was read (too large, too slow) leaves the
    // rest of it on the connection: say the connection ends, so a client
    // does not send its next request after that unread body.
    if matches!(
        res.status(),
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
    ) {
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let h = res.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if api {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// An error answer that is not JSON (an extractor's plain-text rejection)
/// rewritten into the one shape, keeping its status and other headers.
async fn one_error_shape(res: Response) -> Response {
    let status = res.status();
    let json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let fresh = ApiError::new(status, code, message).into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, fresh.into_body())
}
