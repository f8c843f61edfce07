//! Who may call which route, and how large a body it takes: one table,
//! looked up by the route's method and path template (axum's
//! `MatchedPath`). A route without a row is refused, so forgetting the row
//! of a new route locks it instead of opening it.
//!
//! The table is published in the OpenAPI document (`x-roles` on every
//! operation) and in `docs/security.md`; tests hold both to this table.

use axum::http::Method;
use utoipa::openapi::OpenApi;
use utoipa::openapi::extensions::Extensions;

use crate::core::model::Role;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// Anyone, without a token: liveness, the API description, signing in.
    Anyone,
    /// A signed-in caller whose role is one of these.
    Roles(&'static [Role]),
    /// A caller with an OctoPrint-style API key (`X-Api-Key`, bearer or
    /// `?apikey=`, checked by `http::octoprint`, which answers in
    /// OctoPrint's error shape) whose role is one of these.
    ApiKey(&'static [Role]),
}

/// How large a request body a route accepts. Bodies are read only after
/// the caller is authenticated and allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLimit {
    /// No body is expected; a stray `{}` is tolerated.
    Empty,
    /// A small JSON document.
    Json,
    /// A G-code upload: `max_upload_bytes` plus multipart overhead.
    Upload,
}

/// Bytes a [`BodyLimit::Empty`] route reads at most.
pub const EMPTY_BODY_BYTES: usize = 1024;
/// Bytes a [`BodyLimit::Json`] route reads at most: the largest real
/// submission (tags, a name) is a few hundred bytes.
pub const JSON_BODY_BYTES: usize = 16 * 1024;
/// What a multipart form adds around the file (boundaries, part headers).
pub const MULTIPART_OVERHEAD: u64 = 64 * 1024;

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Rule {
    /// HTTP method.
    pub method: Method,
    /// Path template as axum and the OpenAPI document spell it.
    pub path: &'static str,
    /// Who may call it.
    pub who: Who,
    /// Its body limit.
    pub body: BodyLimit,
}

const EVERYONE: &[Role] = &[
    Role::Operator,
    Role::Viewer,
    Role::Storefront,
    Role::Machine,
    Role::Slicer,
    Role::Metrics,
];
/// A Prometheus scrape: the scraper's own role, and people who read.
const SCRAPERS: &[Role] = &[Role::Operator, Role::Viewer, Role::Metrics];
/// Slicers' status reads (Cura's monitor, the connection test).
const SLICER_READERS: &[Role] = &[Role::Operator, Role::Viewer, Role::Slicer];
/// Slicers' uploads.
const SLICER_SENDERS: &[Role] = &[Role::Operator, Role::Slicer];
/// Reading machines, jobs and files.
const READERS: &[Role] = &[Role::Operator, Role::Viewer];
/// Changing machines, jobs and files.
const OPERATOR: &[Role] = &[Role::Operator];
/// Reading inventory, orders and shipments: the storefront too.
const SHOP_READERS: &[Role] = &[Role::Operator, Role::Viewer, Role::Storefront];
/// Placing and cancelling orders.
const SHOP: &[Role] = &[Role::Operator, Role::Storefront];

const fn row(method: Method, path: &'static str, who: Who, body: BodyLimit) -> Rule {
    Rule {
        method,
        path,
        who,
        body,
    }
}

use BodyLimit::{Empty, Json, Upload};
use Who::{Anyone, ApiKey, Roles};

/// Every route of the API. The storefront reads inventory, places, reads
/// and cancels orders ([`Role::Storefront`] rows); the machine role will
/// get a row for reporting its own status.
pub const TABLE: &[Rule] = &[
    row(Method::GET, "/api/v1/health", Anyone, Empty),
    row(Method::GET, "/api/v1/openapi.json", Anyone, Empty),
    // Signing in reads a token from the body, before anyone is known.
    row(Method::POST, "/api/v1/session", Anyone, Json),
    // Every role may see who it is and end its own session.
    row(Method::GET, "/api/v1/session", Roles(EVERYONE), Empty),
    row(Method::DELETE, "/api/v1/session", Roles(EVERYONE), Empty),
    row(Method::GET, "/api/v1/files", Roles(READERS), Empty),
    row(Method::POST, "/api/v1/files", Roles(OPERATOR), Upload),
    row(Method::GET, "/api/v1/files/{id}", Roles(READERS), Empty),
    row(Method::DELETE, "/api/v1/files/{id}", Roles(OPERATOR), Empty),
    row(Method::GET, "/api/v1/jobs", Roles(READERS), Empty),
    row(Method::POST, "/api/v1/jobs", Roles(OPERATOR), Json),
    row(Method::GET, "/api/v1/jobs/{id}", Roles(READERS), Empty),
    row(
        Method::POST,
        "/api/v1/jobs/{id}/pause",
        Roles(OPERATOR),
        Empty,
    ),
    row(
        Method::POST,
        "/api/v1/jobs/{id}/resume",
        Roles(OPERATOR),
        Empty,
    ),
    row(
        Method::POST,
        "/api/v1/jobs/{id}/cancel",
        Roles(OPERATOR),
        Empty,
    ),
    row(
        Method::POST,
        "/api/v1/jobs/{id}/requeue",
        Roles(OPERATOR),
        Json,
    ),
    row(
        Method::POST,
        "/api/v1/jobs/{id}/acknowledge",
        Roles(OPERATOR),
        Empty,
    ),
    row(
        Method::POST,
        "/api/v1/jobs/{id}/reorder",
        Roles(OPERATOR),
        Json,
    ),
    row(Method::GET, "/api/v1/attention", Roles(READERS), Empty),
    row(Method::GET, "/api/v1/forecast", Roles(READERS), Empty),
    row(Method::GET, "/api/v1/machines", Roles(READERS), Empty),
    row(Method::GET, "/api/v1/machines/{id}", Roles(READERS), Empty),
    row(
        Method::POST,
        "/api/v1/machines/{id}/pause",
        Roles(OPERATOR),
        Empty,
    ),
    row(
        Method::POST,
        "/api/v1/machines/{id}/resume",
        Roles(OPERATOR),
        Empty,
    ),
    row(
        Method::POST,
        "/api/v1/machines/{id}/cancel",
        Roles(OPERATOR),
        Empty,
    ),
    row(
        Method::POST,
        "/api/v1/machines/{id}/estop",
        Roles(OPERATOR),
        Empty,
    ),
    row(
        Method::POST,
        "/api/v1/machines/{id}/recover",
        Roles(OPERATOR),
        Json,
    ),
    row(
        Method::POST,
        "/api/v1/machines/{id}/home",
        Roles(OPERATOR),
        Empty,
    ),
    row(
        Method::POST,
        "/api/v1/machines/{id}/clear",
        Roles(OPERATOR),
        Empty,
    ),
    row(
        Method::POST,
        "/api/v1/machines/{id}/enable",
        Roles(OPERATOR),
        Empty,
    ),
    row(
        Method::POST,
        "/api/v1/machines/{id}/disable",
        Roles(OPERATOR),
        Empty,
    ),
    row(
        Method::POST,
        "/api/v1/machines/{id}/console",
        Roles(OPERATOR),
        Json,
    ),
    row(
        Method::GET,
        "/api/v1/machines/{id}/serial",
        Roles(READERS),
        Empty,
    ),
    row(
        Method::GET,
        "/api/v1/machines/{id}/temperatures",
        Roles(READERS),
        Empty,
    ),
    row(
        Method::GET,
        "/api/v1/machines/{id}/states",
        Roles(READERS),
        Empty,
    ),
    row(
        Method::GET,
        "/api/v1/jobs/{id}/attempts",
        Roles(READERS),
        Empty,
    ),
    row(Method::GET, "/api/v1/events", Roles(READERS), Empty),
    row(Method::GET, "/api/v1/log", Roles(READERS), Empty),
    // Production metering (`http::production`).
    row(Method::POST, "/api/v1/products", Roles(OPERATOR), Json),
    row(Method::GET, "/api/v1/products", Roles(READERS), Empty),
    row(Method::GET, "/api/v1/products/{sku}", Roles(READERS), Empty),
    row(Method::PUT, "/api/v1/products/{sku}", Roles(OPERATOR), Json),
    row(
        Method::DELETE,
        "/api/v1/products/{sku}",
        Roles(OPERATOR),
        Empty,
    ),
    row(
        Method::POST,
        "/api/v1/production-orders",
        Roles(OPERATOR),
        Json,
    ),
    row(
        Method::GET,
        "/api/v1/production-orders",
        Roles(READERS),
        Empty,
    ),
    row(
        Method::GET,
        "/api/v1/production-orders/{id}",
        Roles(READERS),
        Empty,
    ),
    row(
        Method::POST,
        "/api/v1/production-orders/{id}/stop",
        Roles(OPERATOR),
        Empty,
    ),
    row(Method::GET, "/api/v1/units", Roles(READERS), Empty),
    row(Method::GET, "/api/v1/units/{serial}", Roles(READERS), Empty),
    row(
        Method::POST,
        "/api/v1/units/{serial}/qc",
        Roles(OPERATOR),
        Json,
    ),
    row(Method::GET, "/api/v1/metrics", Roles(READERS), Empty),
    row(Method::GET, "/api/v1/metrics/losses", Roles(READERS), Empty),
    row(Method::GET, "/api/v1/apc", Roles(READERS), Empty),
    row(
        Method::GET,
        "/api/v1/apc/{sku}/{class}/report",
        Roles(READERS),
        Empty,
    ),
    // Prometheus: a scraper's bearer token of the `metrics` role.
    row(Method::GET, "/metrics", Roles(SCRAPERS), Empty),
    // Commerce (`http::commerce`).
    row(Method::GET, "/api/v1/inventory", Roles(SHOP_READERS), Empty),
    row(
        Method::GET,
        "/api/v1/inventory/{sku}",
        Roles(SHOP_READERS),
        Empty,
    ),
    row(
        Method::POST,
        "/api/v1/inventory/{sku}/adjustments",
        Roles(OPERATOR),
        Json,
    ),
    row(
        Method::POST,
        "/api/v1/returns/{serial}/inspection",
        Roles(OPERATOR),
        Json,
    ),
    row(Method::POST, "/api/v1/orders", Roles(SHOP), Json),
    row(Method::GET, "/api/v1/orders", Roles(SHOP_READERS), Empty),
    row(
        Method::GET,
        "/api/v1/orders/{id}",
        Roles(SHOP_READERS),
        Empty,
    ),
    row(
        Method::POST,
        "/api/v1/orders/{id}/cancel",
        Roles(SHOP),
        Empty,
    ),
    row(
        Method::POST,
        "/api/v1/orders/{id}/pick",
        Roles(OPERATOR),
        Empty,
    ),
    row(
        Method::POST,
        "/api/v1/orders/{id}/pack",
        Roles(OPERATOR),
        Empty,
    ),
    row(
        Method::POST,
        "/api/v1/orders/{id}/hold",
        Roles(OPERATOR),
        Empty,
    ),
    row(
        Method::POST,
        "/api/v1/orders/{id}/release",
        Roles(OPERATOR),
        Empty,
    ),
    row(
        Method::POST,
        "/api/v1/orders/{id}/return",
        Roles(OPERATOR),
        Empty,
    ),
    row(
        Method::POST,
        "/api/v1/orders/{id}/shipments",
        Roles(OPERATOR),
        Json,
    ),
    row(
        Method::GET,
        "/api/v1/shipments/{id}",
        Roles(SHOP_READERS),
        Empty,
    ),
    row(
        Method::POST,
        "/api/v1/shipments/{id}/ship",
        Roles(OPERATOR),
        Empty,
    ),
    row(Method::GET, "/api/v1/picklist", Roles(READERS), Empty),
    // Labels and packing slips are printed at the packing bench: people
    // who read (operators, viewers). Not the storefront: it has no
    // printer here, it learns shipment numbers from GET /shipments/{id},
    // and its token sits on an internet-facing server.
    row(
        Method::GET,
        "/api/v1/shipments/{id}/label.pdf",
        Roles(READERS),
        Empty,
    ),
    row(
        Method::GET,
        "/api/v1/shipments/{id}/label.zpl",
        Roles(READERS),
        Empty,
    ),
    row(
        Method::GET,
        "/api/v1/orders/{id}/packing-slip.pdf",
        Roles(READERS),
        Empty,
    ),
    row(
        Method::GET,
        "/api/v1/units/{serial}/label.pdf",
        Roles(READERS),
        Empty,
    ),
    row(
        Method::GET,
        "/api/v1/units/{serial}/label.zpl",
        Roles(READERS),
        Empty,
    ),
    // Webhook receivers and Shopify notifications (`http::webhooks`).
    row(Method::GET, "/api/v1/webhooks", Roles(READERS), Empty),
    row(Method::POST, "/api/v1/webhooks", Roles(OPERATOR), Json),
    row(
        Method::DELETE,
        "/api/v1/webhooks/{id}",
        Roles(OPERATOR),
        Empty,
    ),
    row(
        Method::POST,
        "/api/v1/webhooks/{id}/enable",
        Roles(OPERATOR),
        Empty,
    ),
    row(
        Method::GET,
        "/api/v1/webhooks/{id}/deliveries",
        Roles(READERS),
        Empty,
    ),
    row(
        Method::GET,
        "/api/v1/shopify/notifications",
        Roles(READERS),
        Empty,
    ),
    // Shopify calls these without a token: the notification carries its
    // shop's HMAC, checked by the route; the reads name a configured shop.
    row(
        Method::POST,
        "/shopify/fulfillment_order_notification",
        Anyone,
        Json,
    ),
    row(Method::GET, "/shopify/fetch_stock.json", Anyone, Empty),
    row(
        Method::GET,
        "/shopify/fetch_tracking_numbers.json",
        Anyone,
        Empty,
    ),
    // OctoPrint's paths, for slicers (`http::octoprint`).
    row(Method::GET, "/api/version", ApiKey(SLICER_READERS), Empty),
    row(
        Method::POST,
        "/api/files/local",
        ApiKey(SLICER_SENDERS),
        Upload,
    ),
    row(Method::GET, "/api/job", ApiKey(SLICER_READERS), Empty),
    row(Method::GET, "/api/printer", ApiKey(SLICER_READERS), Empty),
    row(Method::GET, "/api/settings", ApiKey(SLICER_READERS), Empty),
];

/// The row of a matched route; `None` means refuse. `HEAD` is a `GET`
/// without the body, so it has the `GET` row.
pub fn rule(method: &Method, path: &str) -> Option<&'static Rule> {
    let method = if *method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    TABLE.iter().find(|r| r.method == *method && r.path == path)
}

impl Rule {
    /// Whether `role` may call this route.
    pub fn admits(&self, role: Role) -> bool {
        match self.who {
            Who::Anyone => true,
            Who::Roles(roles) | Who::ApiKey(roles) => roles.contains(&role),
        }
    }

    /// The roles' names, for messages and documents.
    pub fn role_names(&self) -> Vec<&'static str> {
        match self.who {
            Who::Anyone => vec!["anyone"],
            Who::Roles(roles) | Who::ApiKey(roles) => roles.iter().map(|r| role_name(*r)).collect(),
        }
    }

    /// The body limit in bytes, given the configured upload cap.
    pub fn body_bytes(&self, max_upload: u64) -> u64 {
        match self.body {
            BodyLimit::Empty => EMPTY_BODY_BYTES as u64,
            BodyLimit::Json => JSON_BODY_BYTES as u64,
            BodyLimit::Upload => max_upload.saturating_add(MULTIPART_OVERHEAD),
        }
    }
}

/// A role as it is spelt in tokens, the API and the documents.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Operator => "operator",
        Role::Viewer => "viewer",
        Role::Storefront => "storefront",
        Role::Machine => "machine",
        Role::Slicer => "slicer",
        Role::Metrics => "metrics",
    }
}

/// Marks every operation of the document with who may call it:
/// `x-roles` (`["anyone"]` or role names), a sentence in its description
/// and, for public routes, no security requirement. Operations without a
/// row get `x-roles: []` (nobody), which the table test refuses.
pub fn annotate(doc: &mut OpenApi) {
    for (path, item) in doc.paths.paths.iter_mut() {
        let ops = [
            (Method::GET, item.get.as_mut()),
            (Method::POST, item.post.as_mut()),
            (Method::PUT, item.put.as_mut()),
            (Method::PATCH, item.patch.as_mut()),
            (Method::DELETE, item.delete.as_mut()),
        ];
        for (method, op) in ops {
            let Some(op) = op else { continue };
            let names = rule(&method, path)
                .map(Rule::role_names)
                .unwrap_or_default();
            let sentence = match names.as_slice() {
                ["anyone"] => "Who may call: anyone, no token needed.".to_string(),
                [] => "Who may call: nobody (no access rule).".to_string(),
                n => format!("Who may call: {}.", n.join(", ")),
            };
            op.description = Some(match op.description.take() {
                Some(d) if !d.is_empty() => format!("{d}\n\n{sentence}"),
                _ => sentence,
            });
            if names == ["anyone"] {
                op.security = None;
            }
            op.extensions
                .get_or_insert_with(Extensions::default)
                .insert("x-roles".into(), serde_json::json!(names));
        }
    }
}

/// The table as Markdown, for `docs/security.md` (a test keeps the
/// document equal to this).
#[cfg(test)]
pub fn markdown() -> String {
    let mut out =
        String::from("| Method | Path | Who may call | Body limit |\n|---|---|---|---|\n");
    for r in TABLE {
        let body = match r.body {
            BodyLimit::Empty => format!("{} KiB", EMPTY_BODY_BYTES / 1024),
            BodyLimit::Json => format!("{} KiB", JSON_BODY_BYTES / 1024),
            BodyLimit::Upload => "`max_upload_bytes` + 64 KiB".to_string(),
        };
        out.push_str(&format!(
            "| {} | `{}` | {} | {} |\n",
            r.method,
            r.path,
            r.role_names().join(", "),
            body
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn documented() -> BTreeSet<(String, String)> {
        let doc = crate::http::api::openapi();
        let mut out = BTreeSet::new();
        for (path, item) in &doc.paths.paths {
            for (m, op) in [
                ("GET", &item.get),
                ("POST", &item.post),
                ("PUT", &item.put),
                ("PATCH", &item.patch),
                ("DELETE", &item.delete),
                ("HEAD", &item.head),
                ("OPTIONS", &item.options),
            ] {
                if op.is_some() {
                    out.insert((m.to_string(), path.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn every_documented_route_has_exactly_one_row_and_every_row_a_route() {
        let doc = documented();
        let table: BTreeSet<(String, String)> = TABLE
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        assert_eq!(table.len(), TABLE.len(), "a route has two rows");
        let missing: Vec<_> = doc.difference(&table).collect();
        let stale: Vec<_> = table.difference(&doc).collect();
        assert!(missing.is_empty(), "routes without a row: {missing:?}");
        assert!(stale.is_empty(), "rows without a route: {stale:?}");
    }

    #[test]
    fn the_document_carries_each_rows_roles() {
        let doc = crate::http::api::openapi();
        let json = serde_json::to_value(&doc).expect("document");
        for r in TABLE {
            let op = &json["paths"][r.path][r.method.as_str().to_lowercase()];
            assert_eq!(
                op["x-roles"],
                serde_json::json!(r.role_names()),
                "{} {}",
                r.method,
                r.path
            );
            let public = r.who == Who::Anyone;
            assert_eq!(
                op.get("security").is_none(),
                public,
                "{} {}",
                r.method,
                r.path
            );
        }
    }

    #[test]
    fn a_route_without_a_row_admits_nobody() {
        assert!(rule(&Method::GET, "/api/v1/secret").is_none());
        assert!(rule(&Method::PUT, "/api/v1/jobs").is_none());
    }

    /// What the storefront role may call besides its session: inventory,
    /// its orders (read, place, cancel) and shipments.
    const STOREFRONT_ROUTES: &[(&str, &str)] = &[
        ("GET", "/api/v1/inventory"),
        ("GET", "/api/v1/inventory/{sku}"),
        ("POST", "/api/v1/orders"),
        ("GET", "/api/v1/orders"),
        ("GET", "/api/v1/orders/{id}"),
        ("POST", "/api/v1/orders/{id}/cancel"),
        ("GET", "/api/v1/shipments/{id}"),
    ];

    #[test]
    fn only_operators_change_things_and_reserved_roles_see_only_their_session_and_own_routes() {
        for r in TABLE {
            let reads = r.method == Method::GET;
            let session = r.path == "/api/v1/session";
            if r.who == Who::Anyone {
                continue;
            }
            assert!(r.admits(Role::Operator), "{} {}", r.method, r.path);
            assert_eq!(
                r.admits(Role::Viewer),
                reads || session,
                "{} {}",
                r.method,
                r.path
            );
            let shop = STOREFRONT_ROUTES
                .iter()
                .any(|(m, p)| r.method.as_str() == *m && r.path == *p);
            assert_eq!(
                r.admits(Role::Storefront),
                session || shop,
                "storefront {} {}",
                r.method,
                r.path
            );
            assert_eq!(
                r.admits(Role::Machine),
                session,
                "machine {} {}",
                r.method,
                r.path
            );
        }
    }

    /// `docs/security.md` shows this table between two markers; run with
    /// `UPDATE_DOCS=1` to rewrite it after changing the table.
    #[test]
    fn the_security_document_shows_this_table_and_every_http_setting() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/security.md");
        let doc = std::fs::read_to_string(path).expect("docs/security.md");
        let (begin, end) = ("<!-- policy-table:begin -->\n", "<!-- policy-table:end -->");
        let start = doc.find(begin).expect("begin marker") + begin.len();
        let stop = doc.find(end).expect("end marker");
        let table = markdown();
        if std::env::var_os("UPDATE_DOCS").is_some() {
            let fresh = format!("{}{table}{}", &doc[..start], &doc[stop..]);
            std::fs::write(path, fresh).expect("write docs/security.md");
            return;
        }
        assert_eq!(
            &doc[start..stop],
            table,
            "docs/security.md is out of date: run UPDATE_DOCS=1 cargo test -p microfactoryd security_document"
        );
        for key in crate::config::HttpConfig::KEYS {
            assert!(
                doc.contains(&format!("`{key}`")),
                "docs/security.md does not explain {key}"
            );
        }
    }

    #[test]
    fn only_the_uploads_take_a_large_body() {
        for r in TABLE {
            let big = r.body_bytes(256 << 20) > JSON_BODY_BYTES as u64;
            let upload = r.method == Method::POST
                && (r.path == "/api/v1/files" || r.path == "/api/files/local");
            assert_eq!(big, upload, "{} {}", r.method, r.path);
        }
    }
}
