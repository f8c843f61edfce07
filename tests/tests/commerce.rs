//! Commerce end to end with the real daemon: units made on a simulated
//! printer reach finished goods through QC, 32 storefront clients race
//! for the last unit over HTTP, and `kill -9` at seeded moments during
//! order intake and QC-driven allocation loses no acknowledged order and
//! reserves no unit twice. A shipment's label and packing slip come over
//! HTTP and are read back with poppler-utils and zxing-cpp.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use microfactory_e2e::{Factory, MachineSpec};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A small print.
const PLATE: &str = "G28\nG90\nM83\nG1 Z0.2 F3000\nG1 X10 Y10 E1 F1500\nG1 X40 Y10 E2\n\
G1 X40 Y40 E2\nG1 X10 Y40 E2\nG1 X10 Y10 E2\nG1 Z5 F3000\n";

/// A reproducible generator for the kill schedule.
struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

fn fast(mut m: MachineSpec) -> MachineSpec {
    m.time_scale = 5000.0;
    m.tweak = |c| {
        c.baud = 2_000_000;
        c.latency_ms = 0.0;
    };
    m
}

/// A factory with one fast printer and a storefront token.
async fn factory() -> (Factory, String) {
    factory_with("").await
}

/// The same with extra top-level configuration.
async fn factory_with(extra: &str) -> (Factory, String) {
    let mut f = Factory::start_with(&[fast(MachineSpec::printer("mk3", "prusa-mk3s"))], extra)
        .await
        .unwrap();
    // sled allows one process: tokens are made while the daemon is stopped.
    f.terminate().await.unwrap();
    let shop = Factory::token_create(f.dir.path(), "storefront").unwrap();
    f.launch().await.unwrap();
    (f, shop)
}

/// Product `tile` (two per plate) and a production order of `n`; returns
/// once all `n` units are made (pending QC unless `auto_pass`).
async fn produce(f: &Factory, n: u32, auto_pass: bool) -> Vec<String> {
    let (s, file) = f
        .upload_bytes("tile.gcode", PLATE.as_bytes().to_vec())
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED, "{file}");
    let (s, p) = f
        .post(
            "/products",
            json!({"sku": "tile", "name": "Tile", "file_id": file["id"],
                "units_per_job": 2, "auto_pass": auto_pass}),
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let (s, o) = f
        .post("/production-orders", json!({"sku": "tile", "quantity": n}))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED, "{o}");
    // Units are made by the daemon's log reader, which publishes no live
    // event: read them until a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (_, units) = f.get("/units?sku=tile").await.unwrap();
        let serials: Vec<String> = units
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["serial"].as_str().unwrap().to_string())
            .collect();
        if serials.len() >= n as usize {
            return serials;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} units made",
            serials.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads `GET /inventory` until the `tile` item satisfies `pred`
/// (finished goods follow QC through a log reader, which publishes no live
/// event).
async fn tile_until(f: &Factory, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (s, inv) = f.get("/inventory").await.unwrap();
        assert_eq!(s, StatusCode::OK, "{inv}");
        let item = inv["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["sku"] == "tile")
            .cloned()
            .unwrap_or(Value::Null);
        if pred(&item) {
            return item;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "inventory never reached '{what}': {inv}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn order_body(external_id: &str, quantity: u32, when_short: &str) -> Value {
    json!({"channel": "web", "external_id": external_id,
        "lines": [{"sku": "tile", "quantity": quantity}],
        "ship_to": {"name": "Ada Lovelace", "street1": "12 Market St", "street2": null,
            "city": "San Francisco", "region": "CA", "postal_code": "94105", "country": "US",
            "phone": null, "email": null},
        "service": "standard", "when_short": when_short})
}

/// POSTs an order as the storefront with an idempotency key; status and
/// body (`None` when the connection failed).
async fn post_order(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    key: &str,
    body: &Value,
) -> Option<(StatusCode, Value)> {
    let res = http
        .post(format!("{base}/api/v1/orders"))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .ok()?;
    let status = res.status();
    let v = res.json::<Value>().await.ok()?;
    Some((status, v))
}

fn allocated(o: &Value) -> Vec<String> {
    o["lines"][0]["allocated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

async fn all_orders(f: &Factory) -> Vec<Value> {
    let (s, v) = f.get("/orders").await.unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    v.as_array().unwrap().clone()
}

/// No unit is reserved for two orders, and committed is what the orders
/// hold.
async fn no_unit_twice(f: &Factory) -> usize {
    let mut seen = BTreeSet::new();
    for o in all_orders(f).await {
        for s in allocated(&o) {
            assert!(seen.insert(s.clone()), "{s} is reserved twice");
        }
    }
    let item = tile_until(f, "any", |_| true).await;
    assert_eq!(
        item["committed"].as_u64(),
        Some(seen.len() as u64),
        "{item}"
    );
    seen.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_storefronts_racing_for_the_last_unit_leave_exactly_one_with_it() {
    let (f, shop) = factory().await;
    produce(&f, 2, true).await;
    tile_until(&f, "two available", |i| i["available"] == 2).await;
    // An unchanged inventory answers 304 to its ETag.
    let pull = |etag: Option<String>, query: &'static str| {
        let mut req = f
            .request(reqwest::Method::GET, &format!("/inventory{query}"))
            .bearer_auth(&shop);
        if let Some(e) = etag {
            req = req.header("if-none-match", e);
        }
        req.send()
    };
    let first = pull(None, "").await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let etag = first.headers()["etag"].to_str().unwrap().to_string();
    assert!(etag.starts_with('"'), "a strong ETag: {etag}");
    let cursor = first.json::<Value>().await.unwrap()["cursor"]
        .as_u64()
        .unwrap();
    let again = pull(Some(etag.clone()), "").await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert!(again.bytes().await.unwrap().is_empty());

    // One unit goes to an operator's order: one is left. A retry with the
    // same key and body is the first answer; another body is refused.
    let holder_body = order_body("holder", 1, "reject");
    let (s, holder) = post_order(&f.http, &f.base, &f.token, "hold-1", &holder_body)
        .await
        .unwrap();
    assert_eq!(
        (s, &holder["state"]),
        (StatusCode::CREATED, &json!("allocated"))
    );
    let retry = f
        .request(reqwest::Method::POST, "/orders")
        .bearer_auth(&f.token)
        .header("idempotency-key", "hold-1")
        .json(&holder_body)
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.json::<Value>().await.unwrap(), holder);
    let (s, v) = post_order(
        &f.http,
        &f.base,
        &f.token,
        "hold-1",
        &order_body("x", 1, "reject"),
    )
    .await
    .unwrap();
    assert_eq!(
        (s, &v["error"]["code"]),
        (StatusCode::CONFLICT, &json!("conflict")),
        "{v}"
    );
    // The inventory changed: a new ETag, and the change since the cursor.
    let changed = pull(Some(etag.clone()), "").await.unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    assert_ne!(changed.headers()["etag"].to_str().unwrap(), etag);
    let since = pull(None, "?changed_since=0").await.unwrap();
    let since: Value = since.json().await.unwrap();
    assert!(since["cursor"].as_u64().unwrap() > cursor, "{since}");
    assert_eq!(since["items"][0]["committed"], 1, "{since}");
    let (s, none) = f
        .get(&format!("/inventory?changed_since={}", since["cursor"]))
        .await
        .unwrap();
    assert_eq!((s, &none["items"]), (StatusCode::OK, &json!([])), "{none}");
    for round in 0..6 {
        let when = if round % 2 == 0 {
            "reject"
        } else {
            "backorder"
        };
        let tasks: Vec<_> = (0..32)
            .map(|n| {
                let (http, base, shop) = (f.http.clone(), f.base.clone(), shop.clone());
                tokio::spawn(async move {
                    let id = format!("r{round}-{n}");
                    post_order(&http, &base, &shop, &id, &order_body(&id, 1, when))
                        .await
                        .expect("answer")
                })
            })
            .collect();
        let (mut winners, mut waiting, mut refused) = (Vec::new(), Vec::new(), 0);
        for t in tasks {
            let (s, v) = t.await.unwrap();
            match (s, v["state"].as_str()) {
                (StatusCode::CREATED, Some("allocated")) => winners.push(v),
                (StatusCode::CREATED, Some("received")) => waiting.push(v),
                (StatusCode::CONFLICT, None) => {
                    assert_eq!(v["error"]["code"], "short", "{v}");
                    assert!(v["error"]["message"].as_str().unwrap().contains("tile"));
                    refused += 1;
                }
                other => panic!("unexpected answer {other:?}: {v}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        if when == "reject" {
            assert_eq!((refused, waiting.len()), (31, 0), "round {round}");
        } else {
            assert_eq!((refused, waiting.len()), (0, 31), "round {round}");
        }
        assert_eq!(no_unit_twice(&f).await, 2);
        let item = tile_until(&f, "any", |_| true).await;
        assert_eq!(item["available"], 0, "{item}");
        // The back-orders give up, then the winner cancels: the unit is
        // the last one again for the next round.
        for o in waiting.iter().chain(&winners) {
            let (s, v) = f
                .send(
                    f.request(
                        reqwest::Method::POST,
                        &format!("/orders/{}/cancel", o["id"]),
                    ),
                    Some(&shop),
                )
                .await
                .unwrap();
            assert_eq!(
                (s, &v["state"]),
                (StatusCode::OK, &json!("cancelled")),
                "{v}"
            );
        }
        let item = tile_until(&f, "any", |_| true).await;
        assert_eq!(
            (&item["available"], &item["committed"]),
            (&json!(1), &json!(1)),
            "{item}"
        );
    }
}

#[derive(Default)]
struct Acked {
    /// Idempotency key → (order id, body) of every 201.
    orders: BTreeMap<String, (u64, Value)>,
    /// Keys sent without an answer (cut by the kill).
    unanswered: BTreeMap<String, Value>,
    /// Units whose QC pass was acknowledged.
    passed: BTreeSet<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_order_intake_and_allocation_loses_no_order_and_reserves_no_unit_twice() {
    let (mut f, shop) = factory().await;
    let units = produce(&f, 12, false).await;
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut rng = SplitMix(0x5eed_c0de);
    let mut pending: Vec<String> = units.clone();
    for round in 0..4 {
        // Storefronts place back-orders while the operator passes units,
        // which the log reader allocates to the oldest waiting orders.
        let mut load = Vec::new();
        for client in 0..4 {
            let (http, base, shop) = (f.http.clone(), f.base.clone(), shop.clone());
            let acked = Arc::clone(&acked);
            load.push(tokio::spawn(async move {
                for n in 0.. {
                    let key = format!("k{round}-{client}-{n}");
                    let body = order_body(&key, 1, "backorder");
                    acked
                        .lock()
                        .unwrap()
                        .unanswered
                        .insert(key.clone(), body.clone());
                    let Some((s, v)) = post_order(&http, &base, &shop, &key, &body).await else {
                        return;
                    };
                    assert_eq!(s, StatusCode::CREATED, "{v}");
                    let mut a = acked.lock().unwrap();
                    a.unanswered.remove(&key);
                    a.orders.insert(key, (v["id"].as_u64().unwrap(), body));
                }
            }));
        }
        let qc = {
            let (http, base, token) = (f.http.clone(), f.base.clone(), f.token.clone());
            let acked = Arc::clone(&acked);
            let batch: Vec<String> = pending.drain(..pending.len().min(3)).collect();
            tokio::spawn(async move {
                for serial in batch {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let Ok(res) = http
                        .post(format!("{base}/api/v1/units/{serial}/qc"))
                        .bearer_auth(&token)
                        .json(&json!({"result": "pass"}))
                        .send()
                        .await
                    else {
                        return;
                    };
                    if res.status() == StatusCode::OK {
                        acked.lock().unwrap().passed.insert(serial);
                    }
                }
            })
        };
        // The kill moment is the experiment, not a synchronisation.
        tokio::time::sleep(Duration::from_millis(150 + rng.below(900))).await;
        f.kill9().await;
        for l in load {
            l.await.unwrap();
        }
        qc.await.unwrap();
        f.launch().await.unwrap();

        // Every acknowledged order is there, as it was answered.
        let a = acked.lock().unwrap().orders.clone();
        for (key, (id, body)) in &a {
            let (s, o) = f.get(&format!("/orders/{id}")).await.unwrap();
            assert_eq!(s, StatusCode::OK, "acknowledged order {id} ({key}) is lost");
            assert_eq!(o["external_id"], body["external_id"], "{o}");
        }
        // A retry of an unanswered order gets the first answer if it was
        // committed, or creates it now: never a second order.
        let retries = std::mem::take(&mut acked.lock().unwrap().unanswered);
        for (key, body) in retries {
            let (s, v) = post_order(&f.http, &f.base, &shop, &key, &body)
                .await
                .expect("answer");
            assert_eq!(s, StatusCode::CREATED, "{v}");
            acked
                .lock()
                .unwrap()
                .orders
                .insert(key, (v["id"].as_u64().unwrap(), body));
        }
        // Acknowledged QC passes reached finished goods.
        let passed = acked.lock().unwrap().passed.len() as u64;
        tile_until(&f, "passed units on hand", |i| {
            i["on_hand"].as_u64() == Some(12)
                && i["unavailable"].as_u64().unwrap_or(0) <= 12 - passed
        })
        .await;
        no_unit_twice(&f).await;
    }
    // The rest pass: every unit is reserved, oldest orders first.
    for serial in units {
        if acked.lock().unwrap().passed.contains(&serial) {
            continue;
        }
        let (s, v) = f
            .post(&format!("/units/{serial}/qc"), json!({"result": "pass"}))
            .await
            .unwrap();
        // A pass cut short by a kill may have been committed: then it is final.
        assert!(s == StatusCode::OK || s == StatusCode::CONFLICT, "{v}");
    }
    let orders = acked.lock().unwrap().orders.clone();
    let demand = orders.len() as u64;
    tile_until(&f, "every unit passed and reserved", |i| {
        i["unavailable"] == 0 && i["committed"].as_u64() == Some(demand.min(12))
    })
    .await;
    assert_eq!(no_unit_twice(&f).await as u64, demand.min(12));
    // One order per storefront order, whatever was retried.
    let listed = all_orders(&f).await;
    let mut by_ext: BTreeMap<String, u64> = BTreeMap::new();
    for o in &listed {
        *by_ext
            .entry(o["external_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert!(by_ext.values().all(|n| *n == 1), "{by_ext:?}");
    assert_eq!(by_ext.len() as u64, demand);
    // Oldest first: the reserved orders are a prefix of the orders by id.
    let mut ids: Vec<(u64, bool)> = listed
        .iter()
        .map(|o| (o["id"].as_u64().unwrap(), !allocated(o).is_empty()))
        .collect();
    ids.sort_unstable();
    let first_short = ids.iter().position(|(_, has)| !has).unwrap_or(ids.len());
    assert!(
        ids[first_short..].iter().all(|(_, has)| !has),
        "a later order got a unit before an older one: {ids:?}"
    );
}

/// `[shop]` for the label tests: a German sender, so the US ship-to
/// prints with its country line.
const SHOP: &str = r#"
[shop]
name = "Werkstatt Ada"
[shop.address]
name = "Werkstatt Ada GmbH"
street1 = "Hauptstrasse 5"
city = "Berlin"
postal_code = "10115"
country = "DE"
"#;

/// Runs a tool (poppler-utils, python3 with zxing-cpp, as `.ci/run`
/// installs them) and returns its standard output.
fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} could not start ({e}); see .ci/run"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// GET as `token`: status, headers and raw body.
async fn raw(
    f: &Factory,
    path: &str,
    token: &str,
) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
    let res = f
        .request(reqwest::Method::GET, path)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let (status, headers) = (res.status(), res.headers().clone());
    (status, headers, res.bytes().await.unwrap().to_vec())
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Asserts a refusal in the one JSON error shape and returns its sentence.
async fn refused(f: &Factory, path: &str, token: &str, status: StatusCode) -> String {
    let (s, h, body) = raw(f, path, token).await;
    assert_eq!(s, status, "{path}: {}", String::from_utf8_lossy(&body));
    assert!(
        header(&h, "content-type").starts_with("application/json"),
        "{path}"
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    let msg = v["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{path}: {v}"));
    assert!(!msg.is_empty());
    msg.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipments_label_over_http_shows_its_number_and_address_and_its_barcode_decodes() {
    let (f, shop) = factory_with(SHOP).await;
    let units = produce(&f, 2, true).await;
    tile_until(&f, "2 available", |i| i["available"] == 2).await;
    let base = f.base.clone();
    let (s, order) = post_order(
        &f.http,
        &base,
        &shop,
        "label-1",
        &order_body("L1", 1, "reject"),
    )
    .await
    .unwrap();
    assert_eq!(s, StatusCode::CREATED, "{order}");
    let oid = order["id"].as_u64().unwrap();
    let serial = allocated(&order)[0].clone();
    assert!(units.contains(&serial));
    let (s, sh) = f
        .post(&format!("/orders/{oid}/shipments"), json!({}))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED, "{sh}");
    let (sid, number) = (
        sh["id"].as_u64().unwrap(),
        sh["number"].as_str().unwrap().to_string(),
    );

    let dir = f.dir.path().join("docs");
    std::fs::create_dir_all(&dir).unwrap();
    let save = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_string_lossy().into_owned()
    };

    // The PDF, read by the viewer role as the packing bench would.
    let (s, h, pdf) = raw(&f, &format!("/shipments/{sid}/label.pdf"), &f.viewer).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&pdf));
    assert_eq!(header(&h, "content-type"), "application/pdf");
    assert_eq!(
        header(&h, "content-disposition"),
        format!("inline; filename=\"{number}.pdf\"")
    );
    let path = save("label.pdf", &pdf);
    let info = tool("pdfinfo", &[&path]);
    assert!(info.contains("288 x 432 pts"), "4x6 in: {info}");
    let text = tool("pdftotext", &["-layout", &path, "-"]);
    for needle in [
        number.as_str(),
        "ADA LOVELACE",
        "12 MARKET ST",
        "SAN FRANCISCO CA 94105",
        "UNITED STATES",
        "Werkstatt Ada GmbH",
        "10115 Berlin",
        "web/L1",
    ] {
        assert!(
            text.contains(needle),
            "'{needle}' not in the label:\n{text}"
        );
    }
    let prefix = dir.join("page").to_string_lossy().into_owned();
    tool("pdftoppm", &["-gray", "-r", "203", &path, &prefix]);
    let page = format!("{prefix}-1.pgm");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../daemon/tests/decode_barcodes.py"
    );
    let decoded: Vec<Value> = tool("python3", &[script, &page])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(decoded.len(), 1, "{decoded:?}");
    assert_eq!(decoded[0]["format"], "Code 128", "{decoded:?}");
    assert_eq!(decoded[0]["text"], number.as_str(), "{decoded:?}");

    // ZPL for a 203 dpi printer.
    let (s, h, zpl) = raw(&f, &format!("/shipments/{sid}/label.zpl"), &f.token).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(header(&h, "content-type"), "text/plain; charset=utf-8");
    assert_eq!(
        header(&h, "content-disposition"),
        format!("attachment; filename=\"{number}.zpl\"")
    );
    let zpl = String::from_utf8(zpl).unwrap();
    for cmd in ["^XA", "^PW812", "^LL1218", "^CI28", "^BC", "^XZ"] {
        assert!(zpl.contains(cmd), "{cmd} missing:\n{zpl}");
    }
    assert!(zpl.contains(&number), "{zpl}");

    // The packing slip on Letter lists the serial; A4 is the default.
    let (s, h, slip) = raw(
        &f,
        &format!("/orders/{oid}/packing-slip.pdf?paper=letter"),
        &f.token,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&slip));
    assert_eq!(header(&h, "content-type"), "application/pdf");
    assert_eq!(
        header(&h, "content-disposition"),
        format!("inline; filename=\"packing-slip-{oid}.pdf\"")
    );
    let path = save("slip.pdf", &slip);
    assert!(
        tool("pdfinfo", &[&path]).contains("612 x 792 pts"),
        "Letter"
    );
    let text = tool("pdftotext", &["-layout", &path, "-"]);
    for needle in ["Werkstatt Ada", &serial, "tile", "web/L1"] {
        assert!(text.contains(needle), "'{needle}' not on the slip:\n{text}");
    }
    let (s, _, a4) = raw(&f, &format!("/orders/{oid}/packing-slip.pdf"), &f.token).await;
    assert_eq!(s, StatusCode::OK);
    assert!(tool("pdfinfo", &[&save("a4.pdf", &a4)]).contains("595.276 x 841.89 pts"));

    // The unit's own label, PDF and ZPL.
    let (s, h, unit) = raw(&f, &format!("/units/{serial}/label.pdf"), &f.token).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&unit));
    assert_eq!(header(&h, "content-type"), "application/pdf");
    assert!(tool("pdftotext", &[&save("unit.pdf", &unit), "-"]).contains(&serial));
    let (s, _, unit_zpl) = raw(&f, &format!("/units/{serial}/label.zpl"), &f.token).await;
    assert_eq!(s, StatusCode::OK);
    assert!(String::from_utf8(unit_zpl).unwrap().contains("^PW406"));

    // Refusals: unknown ids, a bad paper, the storefront, a voided shipment.
    refused(
        &f,
        "/shipments/999/label.pdf",
        &f.token,
        StatusCode::NOT_FOUND,
    )
    .await;
    refused(
        &f,
        "/shipments/x/label.zpl",
        &f.token,
        StatusCode::BAD_REQUEST,
    )
    .await;
    refused(
        &f,
        "/orders/999/packing-slip.pdf",
        &f.token,
        StatusCode::NOT_FOUND,
    )
    .await;
    refused(&f, "/units/U404/label.pdf", &f.token, StatusCode::NOT_FOUND).await;
    let m = refused(
        &f,
        &format!("/orders/{oid}/packing-slip.pdf?paper=a5"),
        &f.token,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(m.contains("a4, letter"), "{m}");
    refused(
        &f,
        &format!("/shipments/{sid}/label.pdf"),
        &shop,
        StatusCode::FORBIDDEN,
    )
    .await;
    let (s, v) = f
        .post(&format!("/orders/{oid}/cancel"), json!({}))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    let m = refused(
        &f,
        &format!("/shipments/{sid}/label.pdf"),
        &f.token,
        StatusCode::CONFLICT,
    )
    .await;
    assert!(m.contains("voided"), "{m}");
    let m = refused(
        &f,
        &format!("/orders/{oid}/packing-slip.pdf"),
        &f.token,
        StatusCode::CONFLICT,
    )
    .await;
    assert!(m.contains("cancelled"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_shop_section_labels_are_refused_naming_what_to_configure() {
    let (f, shop) = factory().await;
    produce(&f, 2, true).await;
    tile_until(&f, "available", |i| i["available"].as_i64() >= Some(1)).await;
    let (s, order) = post_order(
        &f.http,
        &f.base,
        &shop,
        "ns-1",
        &order_body("N1", 1, "reject"),
    )
    .await
    .unwrap();
    assert_eq!(s, StatusCode::CREATED, "{order}");
    let oid = order["id"].as_u64().unwrap();
    let (s, sh) = f
        .post(&format!("/orders/{oid}/shipments"), json!({}))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED, "{sh}");
    for path in [
        format!("/shipments/{}/label.pdf", sh["id"]),
        format!("/orders/{oid}/packing-slip.pdf"),
    ] {
        let m = refused(&f, &path, &f.token, StatusCode::CONFLICT).await;
        assert!(m.contains("[shop]"), "{m}");
    }
    // A unit label needs no shop.
    let serial = allocated(&order)[0].clone();
    let (s, _, _) = raw(&f, &format!("/units/{serial}/label.zpl"), &f.token).await;
    assert_eq!(s, StatusCode::OK);
}
