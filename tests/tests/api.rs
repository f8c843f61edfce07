//! The HTTP API from the outside: who may call which route (every route of
//! the OpenAPI document, each with the roles its `x-roles` names, so a new
//! route is covered the day it is added), what each operator action does,
//! cookie sessions, limits, and what every kind of bad input gets back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use microfactory_e2e::{Factory, MachineSpec, data};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A small printer program: extrudes, so it routes to printers only.
const PRINT: &str = "G28\nG1 Z0.2 F3000\nG1 X10 Y10 E1 F1500\nG1 X20 Y10 E2\n";

/// A long print (about a minute of link time at the simulators' speed):
/// stays running while a test pauses, resumes and cancels it.
const LONG_PRINT: &str = "bracket_petg.gcode";

/// The walk sends wrong credentials to every route; the failed sign-in
/// limit is tested on its own.
const MANY_FAILURES: &str = "[http]\nmax_failed_sign_ins_per_minute = 100000\n\
    [apc.tiny.fdm_printer]\noee_min = 0.5\n\
    [shop]\nname = \"Test Shop\"\n[shop.address]\nname = \"Test Shop\"\n\
    street1 = \"1 Main St\"\ncity = \"Boston\"\nregion = \"MA\"\npostal_code = \"02108\"\n\
    country = \"US\"";

fn two_machines() -> [MachineSpec; 2] {
    [
        MachineSpec::printer("p1", "prusa-mk3s"),
        MachineSpec::mill("m1"),
    ]
}

/// A request to a documented path as it stands (the OctoPrint routes live
/// outside `/api/v1`, which `Factory::request` would add).
fn at(f: &Factory, method: Method, path: &str) -> reqwest::RequestBuilder {
    f.http.request(method, format!("{}{path}", f.base))
}

/// The slicers' OctoPrint routes answer OctoPrint's error shape,
/// `{"error": "<sentence>"}`, since slicers show that body as it is.
fn is_octoprint(template: &str) -> bool {
    // OctoPrint's paths are under /api but outside /api/v1; /metrics is ours.
    template.starts_with("/api/") && !template.starts_with("/api/v1/")
}

/// Shopify's callbacks answer the one error shape, and without a `shop`
/// (these calls name none) a 400.
fn is_shopify(template: &str) -> bool {
    template.starts_with("/shopify/")
}

/// Asserts OctoPrint's error shape and status and returns the message.
fn expect_octoprint_error(
    what: &str,
    (status, body): (StatusCode, &Option<Value>),
    want: StatusCode,
    needles: &[&str],
) {
    assert_eq!(status, want, "{what}: {body:?}");
    let msg = body
        .as_ref()
        .and_then(|b| b["error"].as_str())
        .unwrap_or_else(|| panic!("{what}: {status} without OctoPrint's error shape: {body:?}"));
    for n in needles {
        assert!(
            msg.contains(n),
            "{what}: message does not name '{n}': {msg}"
        );
    }
}

/// Sends a request; the body is parsed as JSON unless it is an event
/// stream (endless: only the status is looked at) or empty.
async fn call(req: reqwest::RequestBuilder) -> (StatusCode, Option<Value>, header::HeaderMap) {
    let res = req.send().await.expect("request");
    let status = res.status();
    let headers = res.headers().clone();
    // Event streams, the Prometheus exposition, labels and packing slips
    // (PDF, ZPL as text) are not JSON.
    let sse = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.starts_with("text/event-stream")
                || v.starts_with("application/openmetrics-text")
                || v.starts_with("application/pdf")
                || v.starts_with("text/plain")
        });
    if sse {
        return (status, None, headers);
    }
    let bytes = res.bytes().await.expect("body");
    if bytes.is_empty() {
        return (status, None, headers);
    }
    let v = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{status}: body is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, Some(v), headers)
}

/// Asserts the one error shape and returns (code, message).
fn error_of(what: &str, status: StatusCode, body: &Option<Value>) -> (String, String) {
    let b = body
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: {status} with an empty body"));
    let code = b["error"]["code"].as_str();
    let msg = b["error"]["message"].as_str();
    match (code, msg) {
        (Some(c), Some(m)) if !c.is_empty() && !m.is_empty() => (c.to_string(), m.to_string()),
        _ => panic!("{what}: {status} without the error shape: {b}"),
    }
}

fn expect_error(
    what: &str,
    (status, body): (StatusCode, &Option<Value>),
    want: StatusCode,
    code: &str,
    needles: &[&str],
) {
    assert_eq!(status, want, "{what}: {body:?}");
    let (c, m) = error_of(what, status, body);
    assert_eq!(c, code, "{what}: {m}");
    for n in needles {
        assert!(m.contains(n), "{what}: message does not name '{n}': {m}");
    }
}

/// A route of the OpenAPI document with who may call it (`x-roles`).
#[derive(Debug, Clone)]
struct Route {
    method: Method,
    template: String,
    roles: Vec<String>,
}

impl Route {
    fn public(&self) -> bool {
        self.roles == ["anyone"]
    }

    fn admits(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    fn name(&self) -> String {
        format!("{} {}", self.method, self.template)
    }
}

/// Every (method, path) of the document with its roles, checking that
/// every operation names who may call it and that exactly the public ones
/// need no token.
fn routes_of(doc: &Value) -> Vec<Route> {
    let mut out = Vec::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for (m, op) in ops.as_object().expect("operations") {
            let Ok(method) = m.to_uppercase().parse::<Method>() else {
                continue;
            };
            if !matches!(m.as_str(), "get" | "post" | "put" | "patch" | "delete") {
                continue;
            }
            let roles: Vec<String> = op["x-roles"]
                .as_array()
                .unwrap_or_else(|| panic!("{m} {path} has no x-roles"))
                .iter()
                .map(|r| r.as_str().expect("a role name").to_string())
                .collect();
            let r = Route {
                method,
                template: path.clone(),
                roles,
            };
            assert!(!r.roles.is_empty(), "{}: nobody may call it", r.name());
            let documented_secure = op
                .get("security")
                .and_then(Value::as_array)
                .is_some_and(|s| !s.is_empty());
            assert_eq!(
                documented_secure,
                !r.public(),
                "{}: the document's security does not match who may call it",
                r.name()
            );
            let who = op["description"].as_str().unwrap_or("");
            assert!(
                who.contains("Who may call: "),
                "{}: the description does not say who may call it: {who}",
                r.name()
            );
            out.push(r);
        }
    }
    out
}

/// Ids to put into path templates.
struct Ids {
    file: String,
    job: u64,
    machine: &'static str,
    sku: &'static str,
    order: u64,
    serial: String,
    sales_order: u64,
    /// A back-order for the cancel route, so the shipped order keeps its
    /// shipment and the label and packing slip answer 200 to every reader.
    cancel_order: u64,
    shipment: u64,
    webhook: &'static str,
}

impl Ids {
    fn path(&self, template: &str) -> String {
        let mut out = Vec::new();
        let segs: Vec<&str> = template.split('/').collect();
        for (i, seg) in segs.iter().enumerate() {
            if seg.starts_with('{') {
                let owner = if i > 0 { segs[i - 1] } else { "" };
                out.push(match owner {
                    "files" => self.file.clone(),
                    "jobs" => self.job.to_string(),
                    "machines" => self.machine.to_string(),
                    "products" => self.sku.to_string(),
                    "production-orders" => self.order.to_string(),
                    "units" | "returns" => self.serial.clone(),
                    "apc" | "inventory" => self.sku.to_string(),
                    "{sku}" => "fdm_printer".to_string(),
                    "orders" => self.sales_order.to_string(),
                    "shipments" => self.shipment.to_string(),
                    "webhooks" => self.webhook.to_string(),
                    _ => panic!("{template}: no test id for a parameter after '{owner}'; add one"),
                });
            } else {
                out.push((*seg).to_string());
            }
        }
        let path = out.join("/");
        if template == "/api/v1/orders/{id}/cancel" {
            return format!("/api/v1/orders/{}/cancel", self.cancel_order);
        }
        // Routes whose GET needs a query to answer 200.
        if template == "/api/v1/picklist" {
            return format!("{path}?orders={}", self.sales_order);
        }
        path
    }
}

/// The storefront's routes besides its session (as `policy.rs` says).
const STOREFRONT_ROUTES: &[&str] = &[
    "GET /api/v1/inventory",
    "GET /api/v1/inventory/{sku}",
    "POST /api/v1/orders",
    "GET /api/v1/orders",
    "GET /api/v1/orders/{id}",
    "POST /api/v1/orders/{id}/cancel",
    "GET /api/v1/shipments/{id}",
];

/// A storefront order with a fresh external id, for the calls that place
/// one.
fn with_body(r: &Route, req: reqwest::RequestBuilder, n: &mut u32) -> reqwest::RequestBuilder {
    if r.method == Method::POST && r.template == "/api/v1/orders" {
        *n += 1;
        return req.json(&sales_order(&format!("walk-{n}")));
    }
    req
}

fn sales_order(external_id: &str) -> Value {
    json!({"channel": "web", "external_id": external_id,
        "lines": [{"sku": "tiny", "quantity": 1}],
        "ship_to": {"name": "Ada Lovelace", "street1": "12 Market St", "street2": null,
            "city": "San Francisco", "region": "CA", "postal_code": "94105", "country": "US",
            "phone": null, "email": null},
        "service": "standard", "when_short": "backorder"})
}

/// A sales order for the unit, allocated once its QC pass reaches
/// finished goods, and a shipment of it.
async fn sales_order_and_shipment(f: &Factory, serial: &str) -> (u64, u64) {
    let (s, v) = f.post("/orders", sales_order("first")).await.unwrap();
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["id"].as_u64().unwrap();
    let tip = f.log_tip().await.unwrap();
    let (s, v) = f
        .post(&format!("/units/{serial}/qc"), json!({"result": "pass"}))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    // Finished goods follow QC through the log reader: await the unit's
    // allocation in the log.
    f.await_log(tip, Duration::from_secs(30), |e| {
        e["event"]["type"] == "units_allocated" && e["event"]["order_id"] == id
    })
    .await
    .expect("the unit is allocated to the order");
    let (_, o) = f.get(&format!("/orders/{id}")).await.unwrap();
    assert_eq!(o["state"], "allocated", "{o}");
    let (s, sh) = f
        .post(&format!("/orders/{id}/shipments"), json!({}))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED, "{sh}");
    (id, sh["id"].as_u64().unwrap())
}

/// The order operator calls run in, so that destructive ones come last and
/// each still finds what it acts on.
fn operator_order(r: &Route) -> u8 {
    let t = r.template.as_str();
    match (r.method.as_str(), t) {
        ("GET", _) => 0,
        (_, t) if t.ends_with("/cancel") => 2,
        ("DELETE", "/api/v1/files/{id}") => 3,
        ("DELETE", "/api/v1/webhooks/{id}") => 3,
        (_, t) if t.ends_with("/estop") => 4,
        ("DELETE", "/api/v1/session") => 5,
        _ => 1,
    }
}

/// Makes product `tiny` from `file`, orders one and awaits its unit in
/// the log (metering's log reader makes it; no live event shows it);
/// returns the order and serial.
async fn one_unit(f: &Factory, file: &str) -> (u64, String) {
    let (s, v) = f
        .post(
            "/products",
            json!({"sku": "tiny", "name": "Tiny", "file_id": file}),
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = f
        .post("/production-orders", json!({"sku": "tiny", "quantity": 1}))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let order = v["id"].as_u64().unwrap();
    let made = f
        .await_log(0, Duration::from_secs(60), |e| {
            e["event"]["type"] == "unit_made" && e["event"]["sku"] == "tiny"
        })
        .await
        .expect("a unit is made");
    let serial = made["event"]["serial"].as_str().unwrap().to_string();
    let (_, units) = f.get("/units?sku=tiny").await.unwrap();
    assert_eq!(units[0]["serial"], serial.as_str(), "{units}");
    (order, serial)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_admits_exactly_the_roles_it_documents() {
    let mut f = Factory::start_with(&two_machines(), MANY_FAILURES)
        .await
        .unwrap();
    // The reserved roles: tokens are made while the daemon is stopped
    // (sled allows one process).
    f.terminate().await.unwrap();
    let storefront = Factory::token_create(f.dir.path(), "storefront").unwrap();
    let machine = Factory::token_create(f.dir.path(), "machine").unwrap();
    let metrics = Factory::token_create(f.dir.path(), "metrics").unwrap();
    assert!(storefront.starts_with("mfd_") && machine.starts_with("mfd_"));
    f.launch().await.unwrap();

    // Something for every path parameter: a file, a job that stays queued
    // (its machine is out of service) and a machine.
    let file = f
        .upload_bytes("tiny.gcode", PRINT.as_bytes().to_vec())
        .await
        .unwrap();
    assert_eq!(file.0, StatusCode::CREATED, "{}", file.1);
    let file_id = file.1["id"].as_str().unwrap().to_string();
    // A product, an order of one and the unit it made, while p1 still runs.
    let (order, serial) = one_unit(&f, &file_id).await;
    let (s, v) = f.post("/machines/p1/disable", json!({})).await.unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    let jobs = f
        .submit(json!({"file_id": file_id, "machine_id": "p1"}))
        .await
        .unwrap();
    let (sales_order, shipment) = sales_order_and_shipment(&f, &serial).await;
    let (s, v) = f
        .post("/orders", crate::sales_order("to-cancel"))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let cancel_order = v["id"].as_u64().unwrap();
    // A webhook receiver (nobody listens there; its retries are harmless).
    let (s, v) = f
        .post(
            "/webhooks",
            json!({"id": "hook1", "url": "http://127.0.0.1:9/hook", "topics": ["*"]}),
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let ids = Ids {
        file: file_id.clone(),
        job: jobs[0],
        machine: "m1",
        sku: "tiny",
        order,
        serial,
        sales_order,
        cancel_order,
        shipment,
        webhook: "hook1",
    };
    let mut placed = 0;

    // The document itself needs no token.
    let (s, doc, _) = call(f.request(Method::GET, "/openapi.json")).await;
    assert_eq!(s, StatusCode::OK);
    let routes = routes_of(doc.as_ref().unwrap());
    let names: BTreeSet<String> = routes.iter().map(Route::name).collect();
    for must in [
        "GET /api/v1/openapi.json",
        "POST /api/v1/files",
        "DELETE /api/v1/files/{id}",
        "POST /api/v1/jobs/{id}/requeue",
        "POST /api/v1/machines/{id}/console",
        "GET /api/v1/events",
        "DELETE /api/v1/session",
        "GET /api/version",
        "POST /api/files/local",
    ] {
        assert!(names.contains(must), "{must} is not in the document");
    }
    assert!(
        routes.len() >= 30,
        "only {} routes: {names:?}",
        routes.len()
    );
    // What the document says holds the security promises: the operator
    // may do everything, the viewer only read (and end its session), the
    // reserved roles nothing but their own session; public routes are few.
    let public: BTreeSet<String> = routes
        .iter()
        .filter(|r| r.public())
        .map(Route::name)
        .collect();
    assert_eq!(
        public,
        BTreeSet::from([
            "GET /api/v1/health".to_string(),
            "GET /api/v1/openapi.json".to_string(),
            "POST /api/v1/session".to_string(),
            // Shopify's callbacks: the notification carries its own HMAC.
            "POST /shopify/fulfillment_order_notification".to_string(),
            "GET /shopify/fetch_stock.json".to_string(),
            "GET /shopify/fetch_tracking_numbers.json".to_string(),
        ])
    );
    for r in routes.iter().filter(|r| !r.public()) {
        let session = r.template == "/api/v1/session";
        assert!(r.admits("operator"), "{}: {:?}", r.name(), r.roles);
        assert_eq!(
            r.admits("viewer"),
            r.method == Method::GET || session,
            "{}: {:?}",
            r.name(),
            r.roles
        );
        let shop = STOREFRONT_ROUTES.contains(&r.name().as_str());
        assert_eq!(
            r.admits("storefront"),
            session || shop,
            "{}: {:?}",
            r.name(),
            r.roles
        );
        assert_eq!(r.admits("machine"), session, "{}: {:?}", r.name(), r.roles);
        // A Prometheus scraper's token reads /metrics and nothing else.
        assert_eq!(
            r.admits("metrics"),
            session || r.template == "/metrics",
            "{}: {:?}",
            r.name(),
            r.roles
        );
    }

    for r in &routes {
        let what = r.name();
        let path = ids.path(&r.template);
        let req = || at(&f, r.method.clone(), &path);

        // No credentials.
        let (s, body, _) = call(req()).await;
        if r.public() {
            assert_ne!(s, StatusCode::UNAUTHORIZED, "{what} is public: {body:?}");
            assert_ne!(s, StatusCode::FORBIDDEN, "{what} is public: {body:?}");
            continue;
        }
        if is_octoprint(&r.template) {
            octoprint_roles(&f, r, &storefront, &machine).await;
            continue;
        }
        expect_error(
            &format!("{what} without a token"),
            (s, &body),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            &["Bearer"],
        );

        // A token the daemon never issued, and a session it never opened.
        let (s, body, _) = call(req().bearer_auth("mfd_0000not0a0real0token")).await;
        expect_error(
            &format!("{what} with a wrong token"),
            (s, &body),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            &["not known"],
        );
        let (s, body, _) = call(
            req()
                .header(header::COOKIE, "mfd_session=forged")
                .header("x-microfactory-csrf", "1"),
        )
        .await;
        expect_error(
            &format!("{what} with a forged session"),
            (s, &body),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            &["sign in again"],
        );

        // Every role but the operator (walked below, in an order that
        // keeps things to act on): admitted exactly where the document
        // says, refused with a message naming its role and who may.
        for (role, token) in [
            ("viewer", &f.viewer),
            ("storefront", &storefront),
            ("machine", &machine),
            ("metrics", &metrics),
        ] {
            let (s, body, _) = call(with_body(r, req(), &mut placed).bearer_auth(token)).await;
            if r.admits(role) {
                assert!(s.is_success(), "{role} {what}: {s} {body:?}");
            } else {
                expect_error(
                    &format!("{role} {what}"),
                    (s, &body),
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    &[role, &r.roles[0]],
                );
            }
        }
    }

    // Nothing the others sent changed anything: the job still waits.
    let (_, j) = f.get(&format!("/jobs/{}", ids.job)).await.unwrap();
    assert_eq!(j["state"], "queued", "{j}");

    // The operator may call everything; destructive calls last.
    let mut ordered = routes.clone();
    ordered.sort_by_key(|r| (operator_order(r), r.template.clone()));
    let mut second_file: Option<String> = None;
    for r in &ordered {
        let what = format!("operator {}", r.name());
        let path = ids.path(&r.template);
        let mut req =
            with_body(r, at(&f, r.method.clone(), &path), &mut placed).bearer_auth(&f.token);
        match (r.method.as_str(), r.template.as_str()) {
            ("POST", "/api/v1/files") => {
                let part = reqwest::multipart::Part::bytes(b"G28\nG1 X5 E1\n".to_vec())
                    .file_name("second.gcode");
                req = req.multipart(reqwest::multipart::Form::new().part("file", part));
            }
            ("POST", "/api/v1/jobs") => {
                // The second file, so that deleting the first one is allowed
                // once its job is cancelled.
                let file = second_file.clone().unwrap_or_else(|| file_id.clone());
                req = req.json(&json!({"file_id": file, "machine_id": "p1"}));
            }
            ("POST", "/api/v1/session") => req = req.json(&json!({"token": f.token})),
            ("POST", "/api/v1/machines/{id}/console") => {
                req = req.json(&json!({"command": "G4 P0"}))
            }
            ("POST", "/api/v1/jobs/{id}/reorder") => req = req.json(&json!({"priority": 1})),
            ("POST", "/api/v1/webhooks") => {
                req = req.json(&json!({"url": "http://127.0.0.1:9/other", "topics": ["unit_made"]}))
            }
            ("POST", "/api/files/local") => {
                let part = reqwest::multipart::Part::bytes(b"G28\nG1 X7 E1\n".to_vec())
                    .file_name("sliced.gcode");
                let form = reqwest::multipart::Form::new()
                    .text("print", "false")
                    .text("path", "")
                    .part("file", part);
                req = req.multipart(form);
            }
            _ => {}
        }
        let (s, body, _) = call(req).await;
        assert!(
            s != StatusCode::UNAUTHORIZED && s != StatusCode::FORBIDDEN && !s.is_server_error(),
            "{what}: {s} {body:?}"
        );
        if s.is_client_error() && is_octoprint(&r.template) {
            expect_octoprint_error(&what, (s, &body), s, &[]);
        } else if s.is_client_error() {
            error_of(&what, s, &body);
        }
        if r.method == Method::GET && !is_shopify(&r.template) {
            assert_eq!(s, StatusCode::OK, "{what}: {body:?}");
        }
        match (r.method.as_str(), r.template.as_str()) {
            ("POST", "/api/v1/files") => {
                assert_eq!(s, StatusCode::CREATED, "{what}: {body:?}");
                second_file = Some(body.unwrap()["id"].as_str().unwrap().to_string());
            }
            ("POST", "/api/v1/jobs") => assert_eq!(s, StatusCode::CREATED, "{what}: {body:?}"),
            ("POST", "/api/v1/jobs/{id}/cancel") => {
                assert_eq!(s, StatusCode::OK, "{what}: {body:?}");
                assert_eq!(body.unwrap()["state"], "cancelled");
            }
            ("DELETE", "/api/v1/files/{id}") => {
                assert_eq!(s, StatusCode::NO_CONTENT, "{what}: {body:?}");
            }
            ("POST", "/api/files/local") => {
                assert_eq!(s, StatusCode::CREATED, "{what}: {body:?}");
            }
            _ => {}
        }
    }

    cookie_sessions(&f).await;
}

/// An OctoPrint route with every kind of caller: a key (`X-Api-Key`, as
/// slicers send it) missing or unknown, a viewer (reads only), the
/// reserved roles (nothing). The operator comes with the other routes.
async fn octoprint_roles(f: &Factory, r: &Route, storefront: &str, machine: &str) {
    let what = r.name();
    let req = || at(f, r.method.clone(), &r.template);
    let (s, body, _) = call(req()).await;
    expect_octoprint_error(
        &format!("{what} without a key"),
        (s, &body),
        StatusCode::UNAUTHORIZED,
        &["X-Api-Key"],
    );
    let (s, body, _) = call(req().header("X-Api-Key", "mfd_0000not0a0real0token")).await;
    expect_octoprint_error(
        &format!("{what} with a wrong key"),
        (s, &body),
        StatusCode::UNAUTHORIZED,
        &["not known"],
    );
    let (s, body, _) = call(req().header("X-Api-Key", &f.viewer)).await;
    if r.method == Method::GET {
        assert!(s.is_success(), "viewer {what}: {s} {body:?}");
    } else {
        expect_octoprint_error(
            &format!("viewer {what}"),
            (s, &body),
            StatusCode::FORBIDDEN,
            &["viewer", "operator"],
        );
    }
    for (role, token) in [("storefront", storefront), ("machine", machine)] {
        let (s, body, _) = call(req().header("X-Api-Key", token)).await;
        expect_octoprint_error(
            &format!("{role} {what}"),
            (s, &body),
            StatusCode::FORBIDDEN,
            &[role],
        );
    }
}

/// The dashboard's cookie: `HttpOnly`, `SameSite=Strict`, needs the CSRF
/// header to change anything, and is dead after signing out.
async fn cookie_sessions(f: &Factory) {
    let (s, body, _) = call(
        f.request(Method::POST, "/session")
            .json(&json!({"token": "mfd_not_a_token"})),
    )
    .await;
    expect_error(
        "sign in with a wrong token",
        (s, &body),
        StatusCode::UNAUTHORIZED,
        "invalid_token",
        &["not known"],
    );

    for (role, token) in [("operator", &f.token), ("viewer", &f.viewer)] {
        let (s, body, headers) = call(
            f.request(Method::POST, "/session")
                .json(&json!({"token": token})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{role} sign in: {body:?}");
        assert_eq!(body.unwrap()["role"], role);
        let set = headers
            .get(header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .expect("Set-Cookie")
            .to_string();
        for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(set.contains(attr), "{role} cookie lacks {attr}: {set}");
        }
        let pair = set.split(';').next().unwrap().trim().to_string();
        assert!(pair.starts_with("mfd_session=") && pair.len() > "mfd_session=".len());
        let with_cookie = |m: Method, p: &str| f.request(m, p).header(header::COOKIE, &pair);

        let (s, body, _) = call(with_cookie(Method::GET, "/session")).await;
        assert_eq!(s, StatusCode::OK, "{role}: {body:?}");
        assert_eq!(body.unwrap()["role"], role);
        let (s, _, _) = call(with_cookie(Method::GET, "/jobs")).await;
        assert_eq!(s, StatusCode::OK, "{role} GET /jobs by cookie");

        let (s, body, _) = call(with_cookie(Method::POST, "/machines/m1/enable")).await;
        expect_error(
            &format!("{role} POST by cookie without the CSRF header"),
            (s, &body),
            StatusCode::FORBIDDEN,
            "csrf",
            &["x-microfactory-csrf"],
        );
        let (s, body, _) = call(
            with_cookie(Method::POST, "/machines/m1/enable").header("x-microfactory-csrf", "1"),
        )
        .await;
        if role == "operator" {
            assert_eq!(s, StatusCode::OK, "{role} POST with CSRF header: {body:?}");
        } else {
            expect_error(
                "viewer POST by cookie",
                (s, &body),
                StatusCode::FORBIDDEN,
                "forbidden",
                &["viewer"],
            );
        }

        let (s, body, _) = call(with_cookie(Method::DELETE, "/session")).await;
        expect_error(
            &format!("{role} sign out without the CSRF header"),
            (s, &body),
            StatusCode::FORBIDDEN,
            "csrf",
            &[],
        );
        let (s, body, headers) =
            call(with_cookie(Method::DELETE, "/session").header("x-microfactory-csrf", "1")).await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{role} sign out: {body:?}");
        let cleared = headers
            .get(header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(cleared.contains("Max-Age=0"), "{role}: {cleared}");

        let (s, body, _) = call(with_cookie(Method::GET, "/jobs")).await;
        expect_error(
            &format!("{role} cookie after sign out"),
            (s, &body),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            &[],
        );
    }
}

/// (what, request, status, code, words the message must contain)
type Case = (
    &'static str,
    reqwest::RequestBuilder,
    StatusCode,
    &'static str,
    Vec<String>,
);

/// (what, file content, status, code, words the message must contain)
type UploadCase = (
    &'static str,
    Vec<u8>,
    StatusCode,
    &'static str,
    Vec<&'static str>,
);

/// A small deterministic generator (xorshift64*), so a failing fuzz case
/// is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A body that is not a valid request: random bytes, random text or
    /// JSON-looking fragments glued at random.
    fn body(&mut self) -> Vec<u8> {
        const PIECES: [&str; 24] = [
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "\"",
            "\"file_id\"",
            "\"command\"",
            "\"before\"",
            "\"priority\"",
            "\"copies\"",
            "null",
            "true",
            "-1",
            "1e309",
            "18446744073709551616",
            "\"\\u0000\"",
            "\"\\ud800\"",
            "\\",
            "0",
            "\u{e9}",
            "\n",
            "\"tags\"",
        ];
        let len = 1 + self.below(96);
        let mut out = match self.below(3) {
            0 => (0..len).map(|_| self.next() as u8).collect::<Vec<u8>>(),
            1 => (0..len)
                .map(|_| 0x20 + (self.below(0x5f) as u8))
                .collect::<Vec<u8>>(),
            _ => (0..1 + self.below(12))
                .flat_map(|_| PIECES[self.below(PIECES.len())].bytes())
                .collect(),
        };
        // An empty body means "all defaults" on some routes: never send one.
        if out.iter().all(u8::is_ascii_whitespace) {
            out.insert(0, b'{');
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_status_code_and_a_message_naming_the_problem() {
    let f = Factory::start_with(&two_machines(), "max_upload_bytes = 4096")
        .await
        .unwrap();
    let (s, file) = f
        .upload_bytes("tiny.gcode", PRINT.as_bytes().to_vec())
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED, "{file}");
    let file_id = file["id"].as_str().unwrap().to_string();
    // Two copies that stay queued: their machine is out of service.
    let (s, v) = f.post("/machines/p1/disable", json!({})).await.unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    let jobs = f
        .submit(json!({"file_id": file_id, "machine_id": "p1", "copies": 2}))
        .await
        .unwrap();
    let (queued, spare) = (jobs[0], jobs[1]);

    let op = |m: Method, p: &str| f.request(m, p).bearer_auth(&f.token);
    let json_req = |m: Method, p: &str, body: &str| {
        op(m, p)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
    };

    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            json_req(Method::POST, "/jobs", "{\"file_id\": "),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            vec!["request body".into(), "line 1".into()],
        ),
        (
            "wrong content type",
            op(Method::POST, "/jobs")
                .header(header::CONTENT_TYPE, "text/plain")
                .body(format!("{{\"file_id\": \"{file_id}\"}}")),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected_json",
            vec!["application/json".into(), "text/plain".into()],
        ),
        (
            "unknown field",
            json_req(
                Method::POST,
                "/jobs",
                &format!("{{\"file_id\": \"{file_id}\", \"colour\": \"red\"}}"),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
            vec!["unknown field".into(), "colour".into()],
        ),
        (
            "unknown file_id",
            json_req(Method::POST, "/jobs", "{\"file_id\": \"deadbeef\"}"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            vec!["deadbeef".into(), "not an uploaded file".into()],
        ),
        (
            "copies 0",
            json_req(
                Method::POST,
                "/jobs",
                &format!("{{\"file_id\": \"{file_id}\", \"copies\": 0}}"),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            vec!["copies".into(), "between 1 and 1000".into(), "got 0".into()],
        ),
        (
            "copies 1001",
            json_req(
                Method::POST,
                "/jobs",
                &format!("{{\"file_id\": \"{file_id}\", \"copies\": 1001}}"),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            vec!["copies".into(), "got 1001".into()],
        ),
        (
            "negative copies",
            json_req(
                Method::POST,
                "/jobs",
                &format!("{{\"file_id\": \"{file_id}\", \"copies\": -1}}"),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
            vec!["-1".into()],
        ),
        (
            "unknown machine_id",
            json_req(
                Method::POST,
                "/jobs",
                &format!("{{\"file_id\": \"{file_id}\", \"machine_id\": \"nope\"}}"),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            vec!["machine_id".into(), "nope".into(), "p1".into(), "m1".into()],
        ),
        (
            "bad tag",
            json_req(
                Method::POST,
                "/jobs",
                &format!("{{\"file_id\": \"{file_id}\", \"tags\": [\"PLA\"]}}"),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            vec!["'PLA'".into(), "key:value".into()],
        ),
        (
            "priority over a million",
            json_req(
                Method::POST,
                "/jobs",
                &format!("{{\"file_id\": \"{file_id}\", \"priority\": 1000001}}"),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            vec![
                "priority".into(),
                "-1000000 and 1000000".into(),
                "got 1000001".into(),
            ],
        ),
        (
            "reorder to the lowest i32",
            json_req(
                Method::POST,
                &format!("/jobs/{queued}/reorder"),
                "{\"priority\": -2147483648}",
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            vec!["priority".into(), "got -2147483648".into()],
        ),
        (
            "a 121-character job name",
            json_req(
                Method::POST,
                "/jobs",
                &format!(
                    "{{\"file_id\": \"{file_id}\", \"name\": \"{}\"}}",
                    "é".repeat(121)
                ),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            vec!["121 characters".into(), "at most 120".into()],
        ),
        (
            "a job name with a line break",
            json_req(
                Method::POST,
                "/jobs",
                &format!("{{\"file_id\": \"{file_id}\", \"name\": \"a\\nb\"}}"),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            vec!["control character".into()],
        ),
        (
            "job id that is not a number",
            op(Method::GET, "/jobs/abc"),
            StatusCode::BAD_REQUEST,
            "invalid_id",
            vec!["'abc'".into(), "integer".into()],
        ),
        (
            "unknown job",
            op(Method::GET, "/jobs/999999"),
            StatusCode::NOT_FOUND,
            "not_found",
            vec!["999999".into()],
        ),
        (
            "unknown machine",
            op(Method::GET, "/machines/nope"),
            StatusCode::NOT_FOUND,
            "not_found",
            vec!["'nope'".into(), "p1".into(), "m1".into()],
        ),
        (
            "unknown file",
            op(Method::GET, "/files/nope"),
            StatusCode::NOT_FOUND,
            "not_found",
            vec!["'nope'".into()],
        ),
        (
            "unknown job state",
            op(Method::GET, "/jobs?state=queued,bogus"),
            StatusCode::BAD_REQUEST,
            "invalid_state",
            vec![
                "'bogus'".into(),
                "queued".into(),
                "running".into(),
                "interrupted".into(),
            ],
        ),
        (
            "resume a queued job",
            op(Method::POST, &format!("/jobs/{queued}/resume")),
            StatusCode::CONFLICT,
            "conflict",
            vec![format!("job {queued}"), "queued".into()],
        ),
        (
            "delete a file a queued job uses",
            op(Method::DELETE, &format!("/files/{file_id}")),
            StatusCode::CONFLICT,
            "conflict",
            vec![format!("job {queued}"), "cancel it first".into()],
        ),
        (
            "console with an empty command",
            json_req(
                Method::POST,
                "/machines/m1/console",
                "{\"command\": \"  \"}",
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            vec!["command".into(), "1 to 200 characters".into()],
        ),
        (
            "console without a command",
            json_req(Method::POST, "/machines/m1/console", "{}"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
            vec!["missing field".into(), "command".into()],
        ),
        (
            "unknown route",
            op(Method::GET, "/nope"),
            StatusCode::NOT_FOUND,
            "no_route",
            vec!["GET /api/v1/nope".into(), "openapi.json".into()],
        ),
        (
            "unknown route without a token",
            f.request(Method::POST, "/jobs/1/explode"),
            StatusCode::NOT_FOUND,
            "no_route",
            vec!["/api/v1/jobs/1/explode".into()],
        ),
        (
            "wrong method on a known path",
            op(Method::DELETE, "/jobs"),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            vec!["/api/v1/jobs".into(), "DELETE".into()],
        ),
        (
            "wrong method on a public path",
            f.request(Method::PUT, "/health"),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            vec!["/api/v1/health".into(), "PUT".into()],
        ),
        (
            "upload that is not multipart",
            json_req(Method::POST, "/files", "{\"file\": \"G28\"}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected_multipart",
            vec!["multipart/form-data".into(), "'file'".into()],
        ),
        (
            "upload without a file field",
            op(Method::POST, "/files")
                .multipart(reqwest::multipart::Form::new().text("other", "G28\n")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_file",
            vec!["'file'".into()],
        ),
    ];
    for (what, req, status, code, needles) in cases {
        let (s, body, headers) = call(req).await;
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        expect_error(what, (s, &body), status, code, &needles);
        if status == StatusCode::METHOD_NOT_ALLOWED {
            let allow = headers
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            assert!(allow.contains("GET"), "{what}: Allow is '{allow}'");
        }
    }

    // Uploads: (what, content, status, code, words).
    let uploads: Vec<UploadCase> = vec![
        (
            "an upload over max_upload_bytes",
            "G1 X1 Y1\n".repeat(600).into_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            vec!["4096 bytes"],
        ),
        (
            "a file with a NUL byte",
            b"G28\nG1 X1\0\n".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not_text",
            vec!["binary", "offset 9"],
        ),
        (
            "a Latin-1 file",
            b"G28 ; caf\xe9\nG1 X1\n".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not_text",
            vec!["UTF-8", "offset 9"],
        ),
        (
            "a file of comments only",
            b"; sliced by hand\n\n(nothing here)\n".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_gcode",
            vec!["no G-code commands"],
        ),
        (
            "an empty file",
            Vec::new(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_gcode",
            vec!["empty"],
        ),
    ];
    for (what, bytes, status, code, needles) in uploads {
        let part = reqwest::multipart::Part::bytes(bytes).file_name("bad.gcode");
        let req = op(Method::POST, "/files")
            .multipart(reqwest::multipart::Form::new().part("file", part));
        let (s, body, _) = call(req).await;
        expect_error(what, (s, &body), status, code, &needles);
    }
    // Not refused (issue 11): a comment of any length, and a 300-byte
    // command, which is a pre-flight finding with its line number.
    let text = format!("G28\n; {}\nM117 {}\n", "c".repeat(300), "a".repeat(295));
    let (s, v) = f
        .upload_bytes("long.gcode", text.into_bytes())
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let findings = v["preflight_marlin"]["findings"]
        .as_array()
        .expect("findings");
    assert!(
        findings
            .iter()
            .any(|x| x["line"] == 3 && x["reason"].as_str().unwrap_or("").contains("300")),
        "{v}"
    );
    let id = v["id"].as_str().unwrap().to_string();
    let (s, _, _) = call(op(Method::DELETE, &format!("/files/{id}"))).await;
    assert!(s.is_success(), "{s}");
    // Nothing refused was stored.
    let (_, files) = f.get("/files").await.unwrap();
    assert_eq!(files.as_array().unwrap().len(), 1, "{files}");

    // Requeue past the end of the file: cancel the spare copy first.
    let (s, v) = f
        .post(&format!("/jobs/{spare}/cancel"), json!({}))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, body, _) = call(json_req(
        Method::POST,
        &format!("/jobs/{spare}/requeue"),
        "{\"from_line\": 999}",
    ))
    .await;
    expect_error(
        "requeue past the end",
        (s, &body),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        &["from_line 999", "past the end", "4 lines"],
    );

    // Fuzz: no body makes a route answer anything but a 4xx error.
    let mut rng = Rng(0x6d66_645f_6675_7a7a);
    let targets = [
        "/jobs".to_string(),
        "/machines/m1/console".to_string(),
        format!("/jobs/{queued}/reorder"),
    ];
    for i in 0..210 {
        let path = &targets[i % targets.len()];
        let body = rng.body();
        let ct = [
            "application/json",
            "application/json; charset=utf-8",
            "text/plain",
        ][rng.below(3)];
        let req = op(Method::POST, path)
            .header(header::CONTENT_TYPE, ct)
            .body(body.clone());
        let (s, resp, _) = call(req).await;
        let what = format!(
            "fuzz #{i} POST {path} ({ct}) {:?}",
            String::from_utf8_lossy(&body)
        );
        assert!(s.is_client_error(), "{what}: {s} {resp:?}");
        error_of(&what, s, &resp);
    }
    let (s, health) = f
        .send(f.request(Method::GET, "/health"), None)
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK, "{health}");
    assert_eq!(health["status"], "ok");
    // The queued job is where it was.
    let (_, j) = f.get(&format!("/jobs/{queued}")).await.unwrap();
    assert_eq!(j["state"], "queued", "{j}");
}

/// Waits until job `id` is in `state`, re-checking at every job event.
async fn wait_state(f: &Factory, events: &mut microfactory_e2e::Events, id: u64, state: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, j) = f.get(&format!("/jobs/{id}")).await.unwrap();
        if j["state"] == state {
            return;
        }
        tokio::time::timeout_at(deadline, events.next_of("job"))
            .await
            .unwrap_or_else(|_| panic!("job {id} never became {state}: {j}"))
            .unwrap();
    }
}

/// POSTs `path` as the operator, expects 200 and returns the body.
async fn ok(f: &Factory, path: &str) -> Value {
    let (s, v) = f.post(path, json!({})).await.unwrap();
    assert_eq!(s, StatusCode::OK, "POST {path}: {v}");
    v
}

async fn job_state(f: &Factory, id: u64) -> String {
    let (_, j) = f.get(&format!("/jobs/{id}")).await.unwrap();
    j["state"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_job_and_machine_action_does_what_it_says_to_a_running_print() {
    let f = Factory::start(&[MachineSpec::printer("p1", "prusa-mk3s")])
        .await
        .unwrap();
    let file = f.upload(&data(LONG_PRINT)).await.unwrap();
    let mut events = f.events().await.unwrap();
    let id = f
        .submit(json!({"file_id": file, "machine_id": "p1"}))
        .await
        .unwrap()[0];
    wait_state(&f, &mut events, id, "running").await;

    // By job.
    assert_eq!(
        ok(&f, &format!("/jobs/{id}/pause")).await["state"],
        "paused"
    );
    assert_eq!(job_state(&f, id).await, "paused");
    assert_eq!(
        ok(&f, &format!("/jobs/{id}/resume")).await["state"],
        "running"
    );
    assert_eq!(job_state(&f, id).await, "running");

    // By machine: the same, through the job the machine runs.
    let m = ok(&f, "/machines/p1/pause").await;
    assert_eq!(m["id"], "p1", "{m}");
    assert_eq!(job_state(&f, id).await, "paused");
    ok(&f, "/machines/p1/resume").await;
    assert_eq!(job_state(&f, id).await, "running");
    ok(&f, "/machines/p1/cancel").await;
    wait_state(&f, &mut events, id, "cancelled").await;

    // Requeued while its machine is out of service, so it stays queued;
    // then cancelled from the queue.
    let m = ok(&f, "/machines/p1/disable").await;
    assert_eq!(m["disabled"], true, "{m}");
    assert_eq!(
        ok(&f, &format!("/jobs/{id}/requeue")).await["state"],
        "queued"
    );
    assert_eq!(job_state(&f, id).await, "queued");
    let (_, queue) = f.get("/jobs?state=queued").await.unwrap();
    assert_eq!(queue[0]["id"], id, "{queue}");
    assert_eq!(
        ok(&f, &format!("/jobs/{id}/cancel")).await["state"],
        "cancelled"
    );
    assert_eq!(job_state(&f, id).await, "cancelled");
    let m = ok(&f, "/machines/p1/enable").await;
    assert_eq!(m["disabled"], false, "{m}");
}

/// A raw connection that sends `sent` and then nothing.
async fn silent_connection(f: &Factory, sent: &[u8]) -> tokio::net::TcpStream {
    let addr = f.base.strip_prefix("http://").unwrap();
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(sent).await.unwrap();
    c
}

/// Reads until the daemon closes the connection; fails after `limit`.
async fn closed_within(c: &mut tokio::net::TcpStream, limit: Duration) {
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the connection was still open after {limit:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_get_a_json_503_and_silent_ones_are_closed() {
    let f = Factory::start_with(
        &[],
        "[http]\nmax_connections = 3\nheader_read_timeout_secs = 2",
    )
    .await
    .unwrap();
    let mut held = Vec::new();
    held.push(silent_connection(&f, b"").await);
    held.push(silent_connection(&f, b"GET /api/v1/health HTTP/1.1\r\n").await);
    held.push(silent_connection(&f, b"POST /api/v1/session HTTP/1.1\r\nHost: x\r\n").await);
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let probe = || fresh.get(format!("{}/api/v1/health", f.base)).send();
    let res = probe().await.expect("an answer, not a reset");
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()[header::RETRY_AFTER], "1");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_connections")
    );

    // Slow or silent clients are cut off after the header-read timeout,
    // which frees their places.
    for c in &mut held {
        closed_within(c, Duration::from_secs(10)).await;
    }
    // The place is freed as the daemon's connection task ends, just after
    // the close the client saw: nothing to await but the answer itself.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let s = probe().await.unwrap().status();
        if s == StatusCode::OK {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = std::fs::read_to_string(f.dir.path().join("daemon.log")).unwrap();
    assert!(
        log.contains("http.max_connections"),
        "the limit was not logged"
    );
    assert!(
        log.contains("http.header_read_timeout_secs"),
        "the timeout was not logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_headers_hold_for_whoever_reaches_the_port() {
    let f = Factory::start_with(
        &two_machines(),
        "[http]\nmax_event_streams_per_token = 2\nmax_failed_sign_ins_per_minute = 3\ncookie_secure = true",
    )
    .await
    .unwrap();

    // Every API answer is no-store and nosniff, errors included; the page
    // nosniff too.
    for (path, token) in [
        ("/health", None),
        ("/jobs", None),
        ("/jobs", Some(&f.token)),
    ] {
        let mut req = f.request(Method::GET, path);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let (_, _, h) = call(req).await;
        assert_eq!(h[header::CACHE_CONTROL], "no-store", "{path}");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
    }
    let page = f.http.get(format!("{}/", f.base)).send().await.unwrap();
    assert_eq!(page.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");

    // The Bearer scheme in any case (RFC 7235).
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        let (s, body, _) = call(
            f.request(Method::GET, "/session")
                .header(header::AUTHORIZATION, format!("{scheme} {}", f.token)),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{scheme}: {body:?}");
    }

    // A Secure cookie when configured; an empty CSRF header is no header.
    let (s, _, h) = call(
        f.request(Method::POST, "/session")
            .json(&json!({"token": f.token})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let set = h[header::SET_COOKIE].to_str().unwrap().to_string();
    assert!(set.contains("; Secure"), "{set}");
    assert!(
        set.contains(&format!("Max-Age={}", 30 * 24 * 3600)),
        "{set}"
    );
    let pair = set.split(';').next().unwrap().to_string();
    for empty in ["", " "] {
        let (s, body, _) = call(
            f.request(Method::POST, "/machines/m1/enable")
                .header(header::COOKIE, &pair)
                .header("x-microfactory-csrf", empty),
        )
        .await;
        expect_error(
            "empty CSRF header",
            (s, &body),
            StatusCode::FORBIDDEN,
            "csrf",
            &["non-empty"],
        );
    }

    // Bodies: signing in needs no token, so it reads a few KiB at most,
    // declared or streamed; a JSON route as much; an overlong URI is 414.
    // Just past each limit: a server that answers early and closes with
    // bytes still unread makes the kernel reset the connection, and a
    // client still pushing 1 MiB then sees EPIPE before it reads the
    // answer (it did, now and then). Past the limit is what is tested.
    let big = vec![b' '; 17 * 1024];
    let (s, body, _) = call(
        f.request(Method::POST, "/session")
            .header(header::CONTENT_TYPE, "application/json")
            .body(big),
    )
    .await;
    expect_error(
        "17 KiB sign-in",
        (s, &body),
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        &["16384 bytes"],
    );
    let chunks = futures_util::stream::iter(
        [16 * 1024, 1024].map(|n| Ok::<_, std::io::Error>(vec![b' '; n])),
    );
    let (s, body, _) = call(
        f.request(Method::POST, "/session")
            .header(header::CONTENT_TYPE, "application/json")
            .body(reqwest::Body::wrap_stream(chunks)),
    )
    .await;
    expect_error(
        "streamed 17 KiB sign-in",
        (s, &body),
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        &["16384 bytes"],
    );
    let (s, body, _) = call(
        f.request(Method::POST, "/jobs/1/pause")
            .bearer_auth(&f.token)
            .header(header::CONTENT_TYPE, "application/json")
            .body(vec![b' '; 2 * 1024]),
    )
    .await;
    expect_error(
        "2 KiB to pause",
        (s, &body),
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        &["1024 bytes"],
    );
    let long = format!("/jobs?state={}", "queued,".repeat(1500));
    let (s, body, h) = call(f.request(Method::GET, &long).bearer_auth(&f.token)).await;
    expect_error(
        "10 KiB URI",
        (s, &body),
        StatusCode::URI_TOO_LONG,
        "uri_too_long",
        &["8192"],
    );
    assert_eq!(h[header::CACHE_CONTROL], "no-store");

    // The log after the last possible sequence number is empty, not the
    // log from the start.
    let (s, file) = f
        .upload_bytes("tiny.gcode", PRINT.as_bytes().to_vec())
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED, "{file}");
    f.post("/machines/p1/disable", json!({})).await.unwrap();
    f.submit(json!({"file_id": file["id"], "machine_id": "p1"}))
        .await
        .unwrap();
    let (_, all) = f.get("/log").await.unwrap();
    assert!(!all.as_array().unwrap().is_empty(), "{all}");
    let (s, none) = f.get(&format!("/log?after={}", u64::MAX)).await.unwrap();
    assert_eq!(s, StatusCode::OK, "{none}");
    assert_eq!(none, json!([]));

    // Event streams per token: the third is refused, another token's is not.
    let _a = f.events().await.unwrap();
    let _b = f.events().await.unwrap();
    let (s, body, h) = call(f.request(Method::GET, "/events").bearer_auth(&f.token)).await;
    expect_error(
        "third stream",
        (s, &body),
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_streams",
        &["2 event streams"],
    );
    assert!(h.contains_key(header::RETRY_AFTER));
    let (s, _, _) = call(f.request(Method::GET, "/events").bearer_auth(&f.viewer)).await;
    assert_eq!(s, StatusCode::OK, "the viewer's own stream");

    // Last (it locks this address out for a minute): failed sign-ins.
    for i in 0..3 {
        let (s, body, _) = call(
            f.request(Method::POST, "/session")
                .json(&json!({"token": format!("mfd_guess{i}")})),
        )
        .await;
        expect_error(
            "a wrong guess",
            (s, &body),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            &[],
        );
    }
    for token in ["mfd_guess3", f.token.as_str()] {
        let (s, body, h) = call(
            f.request(Method::POST, "/session")
                .json(&json!({"token": token})),
        )
        .await;
        expect_error(
            "a guess too many",
            (s, &body),
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_failures",
            &["try again in"],
        );
        let wait: u64 = h[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&wait), "Retry-After {wait}");
    }
    let (s, body, _) = call(f.request(Method::GET, "/jobs").bearer_auth("mfd_guess4")).await;
    expect_error(
        "a bearer guess",
        (s, &body),
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_failures",
        &[],
    );
    let log = std::fs::read_to_string(f.dir.path().join("daemon.log")).unwrap();
    assert!(log.contains("failed sign-in"), "failures are not logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_and_its_sessions_stop_working() {
    let mut f = Factory::start(&[]).await.unwrap();
    let (s, _, h) = call(
        f.request(Method::POST, "/session")
            .json(&json!({"token": f.viewer})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let pair = h[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    f.terminate().await.unwrap();

    let cli = |args: &[&str]| {
        let out = std::process::Command::new(microfactory_e2e::daemon_bin())
            .args(["token"])
            .args(args)
            .arg("--config")
            .arg(f.dir.path().join("config.toml"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (okay, list, err) = cli(&["list"]);
    assert!(okay, "{err}");
    assert!(
        list.contains("test viewer") && list.contains("test operator"),
        "{list}"
    );
    assert!(
        !list.contains(&f.viewer) && !list.contains(&f.token),
        "a token is shown: {list}"
    );
    let (okay, _, err) = cli(&["revoke", "nobody"]);
    assert!(!okay && err.contains("no token is named 'nobody'"), "{err}");
    let (okay, _, err) = cli(&["revoke", "test viewer"]);
    assert!(okay, "{err}");
    assert!(err.contains("1 browser session(s) ended"), "{err}");
    f.launch().await.unwrap();

    let (s, body, _) = call(f.request(Method::GET, "/jobs").bearer_auth(&f.viewer)).await;
    expect_error(
        "revoked token",
        (s, &body),
        StatusCode::UNAUTHORIZED,
        "invalid_token",
        &[],
    );
    let (s, body, _) = call(
        f.request(Method::GET, "/jobs")
            .header(header::COOKIE, &pair),
    )
    .await;
    expect_error(
        "its session",
        (s, &body),
        StatusCode::UNAUTHORIZED,
        "invalid_token",
        &[],
    );
    let (s, _) = f.get("/jobs").await.unwrap();
    assert_eq!(s, StatusCode::OK, "the operator's token still works");
}

/// `GET /log?wait=` answers as soon as something durable follows `after`,
/// and with nothing when the wait runs out: a reader follows the log
/// without polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_can_be_followed_by_waiting_for_its_next_entry() {
    let f = Factory::start(&[MachineSpec::printer("p1", "prusa-mk3s")])
        .await
        .unwrap();
    let file = f.upload(&data(LONG_PRINT)).await.unwrap();
    let tip = f.log_tip().await.unwrap();
    assert!(tip > 0, "the upload is in the log");
    assert_eq!(
        tip,
        f.last_logged().await.unwrap(),
        "X-Log-Tip names the last entry"
    );
    let (s, v) = f.get(&format!("/log?after={tip}&wait=1")).await.unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!([]),
        "nothing new: an empty answer once the wait ends"
    );
    // The wait is sent before the job exists: its answer is the job.
    let url = format!("{}/api/v1/log?after={tip}&wait=30", f.base);
    let waiting = tokio::spawn(f.http.get(url).bearer_auth(&f.token).send());
    let id = f
        .submit(json!({"file_id": file, "machine_id": "p1"}))
        .await
        .unwrap()[0];
    let answer: Value = waiting
        .await
        .expect("join")
        .expect("the wait is answered")
        .json()
        .await
        .expect("json");
    let entries = answer.as_array().expect("a list");
    assert!(
        entries.iter().all(|e| e["seq"].as_u64() > Some(tip)),
        "{answer}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["event"]["type"] == "job_queued" && e["event"]["job_id"] == id),
        "{answer}"
    );
    let (s, bad) = f.get("/log?wait=soon").await.unwrap();
    assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
    let message = bad["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("wait"), "{bad}");
}
