//! The operator dashboard: the files of `web-ui/`, embedded in the binary
//! so that running the daemon needs no Node, no build step and no files
//! next to it.
//!
//! Every answer carries a strict Content-Security-Policy (scripts, styles
//! and connections only from this origin, no inline code, no framing): the
//! page holds an operator session that can stop machines, so injected
//! markup must not be able to run anything. Files are revalidated with
//! their content hash as ETag on every load (`no-cache`), because their
//! names carry no version and a stale `app.js` would talk to a newer API.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rust_embed::RustEmbed;

use crate::http::api::ApiError;

#[derive(RustEmbed)]
#[folder = "../web-ui/"]
struct Assets;

/// No inline scripts or styles (the page sets none; CSSOM changes from
/// scripts are not inline styles), nothing from other origins.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; font-src 'self'; manifest-src 'self'; \
    base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The dashboard's routes: `/` is the page, `/assets/*` everything it loads.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route(
            "/assets/{*path}",
            get(|Path(path): Path<String>, headers: HeaderMap| async move {
                serve(&path, &headers)
            }),
        )
}

/// `text/javascript` for modules whatever mime_guess's version prefers
/// (browsers refuse modules served as anything else), and UTF-8 said
/// explicitly for text so that browsers never guess.
fn content_type(path: &str) -> String {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    match mime.essence_str() {
        _ if path.ends_with(".js") || path.ends_with(".mjs") => {
            "text/javascript; charset=utf-8".into()
        }
        e if mime.type_() == mime_guess::mime::TEXT => format!("{e}; charset=utf-8"),
        e => e.into(),
    }
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(file) = Assets::get(path) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "no_asset",
            format!("the dashboard has no file '{path}'"),
        )
        .into_response();
    };
    let etag = format!(
        "\"{}\"",
        file.metadata
            .sha256_hash()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let mut res = if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(header::CONTENT_TYPE, content_type(path))],
            file.data.into_owned(),
        )
            .into_response()
    };
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_embedded_file_has_a_specific_content_type() {
        for name in Assets::iter() {
            let mime = mime_guess::from_path(name.as_ref()).first_or_octet_stream();
            assert_ne!(
                mime,
                mime_guess::mime::APPLICATION_OCTET_STREAM,
                "{name} would be served as octet-stream"
            );
        }
    }

    #[test]
    fn the_page_is_served_with_the_csp_and_revalidation() {
        let res = serve("index.html", &HeaderMap::new());
        assert_eq!(res.status(), StatusCode::OK);
        let h = res.headers();
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(h[header::CACHE_CONTROL], "no-cache");
        assert!(
            h[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("script-src 'self'")
        );
        let etag = h[header::ETAG].clone();
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(
            serve("index.html", &again).status(),
            StatusCode::NOT_MODIFIED
        );
    }

    #[test]
    fn javascript_modules_are_served_as_javascript() {
        let res = serve("app.js", &HeaderMap::new());
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
    }

    #[test]
    fn unknown_files_are_a_json_404() {
        let res = serve("nope.js", &HeaderMap::new());
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
    }
}
