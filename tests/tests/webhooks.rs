//! Webhooks and Shopify's callbacks through the real binary: `kill -9`
//! at seeded moments while deliveries are in flight (some answered 500),
//! then every event committed while the receiver was configured arrives
//! at least once, each under one delivery id with one body, every
//! signature checked by the receiver's own HMAC. And Shopify's
//! callbacks as Shopify sends them: signed, forged, from an unknown shop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::routing::post;
use base64::Engine;
use hmac::{Hmac, Mac};
use microfactory_e2e::{Factory, MachineSpec};
use reqwest::StatusCode;
use serde_json::{Value, json};

const SECRET: &str = "e2e-webhook-secret-0123";
const SHOP: &str = "maker-shop.myshopify.com";
const SHOP_SECRET: &str = "shpss_e2e_secret";

fn hmac_b64(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Seen {
    delivery: String,
    signature_ok: bool,
    body: Value,
    answered: u16,
}

#[derive(Clone, Default)]
struct Sink {
    requests: Arc<AtomicU64>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// Every fourth request is answered 500; the others 200 after a short
/// pause, so that a kill often lands while one is in flight.
async fn hook(State(s): State<Sink>, headers: HeaderMap, body: Bytes) -> AxumStatus {
    let n = s.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let h = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let answered = if n % 4 == 0 { 500 } else { 200 };
    tokio::time::sleep(Duration::from_millis(n % 20)).await;
    s.seen.lock().unwrap().push(Seen {
        delivery: h("x-microfactory-delivery"),
        signature_ok: h("x-microfactory-signature") == hmac_b64(SECRET, &body),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        answered,
    });
    AxumStatus::from_u16(answered).unwrap()
}

async fn sink() -> (String, Sink) {
    let s = Sink::default();
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(s.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), s)
}

fn config(url: &str) -> String {
    format!(
        "[[webhooks]]\nid = \"sink\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\ntopics = [\"*\"]\n\
         [webhook_retry]\nbase_ms = 50\ncap_ms = 400\ndisable_after = 1000\ntimeout_ms = 2000\n\
         [[shopify]]\nshop = \"{SHOP}\"\nsecret = \"{SHOP_SECRET}\"\n"
    )
}

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

/// The whole durable log.
async fn log(f: &Factory) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    loop {
        let after = out.last().map_or(0, |r| r["seq"].as_u64().unwrap());
        let (s, page) = f
            .get(&format!("/log?after={after}&limit=1000"))
            .await
            .unwrap();
        assert_eq!(s, StatusCode::OK, "{page}");
        let page = page.as_array().unwrap().clone();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

const TOPICS: [&str; 4] = [
    "machine_state",
    "attempt_ended",
    "unit_made",
    "unit_inspected",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_delivery_loses_no_webhook_and_keeps_each_delivery_id() {
    let (url, sink) = sink().await;
    let mut f = Factory::start_with(&[MachineSpec::printer("p1", "prusa-mk3s")], &config(&url))
        .await
        .unwrap();
    // The machine's own start-up changes come first; the events this test
    // makes follow them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, m) = f.get("/machines/p1").await.unwrap();
        if m["machine_state"] == "idle" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "p1 never idle: {m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let start = log(&f)
        .await
        .last()
        .map_or(0, |r| r["seq"].as_u64().unwrap());

    let mut rng = SplitMix(0x5eed_0b0c);
    let mut disabled = false;
    for _round in 0..4 {
        for _ in 0..(5 + rng.below(10)) {
            let action = if disabled { "enable" } else { "disable" };
            let (s, v) = f
                .post(&format!("/machines/p1/{action}"), json!({}))
                .await
                .unwrap();
            assert_eq!(s, StatusCode::OK, "{v}");
            disabled = !disabled;
        }
        // A seeded moment while deliveries (and retries) are in flight.
        tokio::time::sleep(Duration::from_millis(rng.below(150))).await;
        f.kill9().await;
        f.launch().await.unwrap();
    }

    let want: BTreeMap<String, u64> = log(&f)
        .await
        .iter()
        .filter(|r| r["seq"].as_u64().unwrap() > start)
        .filter(|r| TOPICS.contains(&r["event"]["type"].as_str().unwrap()))
        .map(|r| {
            let seq = r["seq"].as_u64().unwrap();
            (format!("sink:{seq}"), seq)
        })
        .collect();
    assert!(want.len() >= 20, "only {} events", want.len());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let delivered: BTreeSet<String> = sink
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.answered == 200)
            .map(|s| s.delivery.clone())
            .collect();
        let missing: Vec<&String> = want.keys().filter(|id| !delivered.contains(*id)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never delivered: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let seen = sink.seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|s| s.answered == 500),
        "no retry was exercised"
    );
    let mut bodies: BTreeMap<&str, &Value> = BTreeMap::new();
    for s in &seen {
        assert!(s.signature_ok, "bad signature: {s:?}");
        assert_eq!(s.body["id"], s.delivery.as_str(), "{s:?}");
        let first = bodies.entry(&s.delivery).or_insert(&s.body);
        assert_eq!(*first, &s.body, "one id, two bodies");
        if let Some(seq) = want.get(&s.delivery) {
            assert_eq!(s.body["seq"], *seq);
            assert_eq!(s.body["topic"], "machine_state");
            assert_eq!(s.body["event"]["machine_id"], "p1");
        }
    }
    // The daemon's own account agrees once the last outcome is stored.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (s, hooks) = f.get("/webhooks").await.unwrap();
        assert_eq!(s, StatusCode::OK, "{hooks}");
        assert_eq!(hooks[0]["id"], "sink");
        assert_eq!(hooks[0]["source"], "config");
        assert!(hooks[0].get("secret").is_none(), "{hooks}");
        if hooks[0]["pending"] == 0 {
            assert_eq!(hooks[0]["state"], "active");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{hooks}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, list) = f.get("/webhooks/sink/deliveries?limit=500").await.unwrap();
    assert_eq!(s, StatusCode::OK, "{list}");
    let listed: BTreeSet<String> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["state"] == "delivered")
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    assert!(want.keys().all(|id| listed.contains(id)), "{list}");
    f.terminate().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shopify_callbacks_are_verified_recorded_through_a_kill_and_answered_in_shopifys_shape() {
    let (url, _sink) = sink().await;
    let mut f = Factory::start_with(&[], &config(&url)).await.unwrap();
    let notify = |shop: &str, hmac: &str, body: &'static str| {
        f.http
            .post(format!("{}/shopify/fulfillment_order_notification", f.base))
            .header("content-type", "application/json")
            .header("x-shopify-shop-domain", shop)
            .header("x-shopify-hmac-sha256", hmac)
            .header("x-shopify-topic", "fulfillment_orders/fulfillment_request")
            .body(body)
    };
    let body = r#"{"kind":"FULFILLMENT_REQUEST"}"#;
    let (s, v) = f
        .send(
            notify(SHOP, &hmac_b64(SHOP_SECRET, body.as_bytes()), body),
            None,
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    let id = v["id"].as_u64().unwrap();
    let (s, v) = f
        .send(
            notify(SHOP, &hmac_b64("not the secret", body.as_bytes()), body),
            None,
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(v["error"]["code"], "bad_signature", "{v}");
    let (s, v) = f
        .send(
            notify(
                "stranger.myshopify.com",
                &hmac_b64(SHOP_SECRET, body.as_bytes()),
                body,
            ),
            None,
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["error"]["code"], "unknown_shop", "{v}");

    // Acknowledged means durable.
    f.kill9().await;
    f.launch().await.unwrap();
    let (s, shown) = f.get("/shopify/notifications").await.unwrap();
    assert_eq!(s, StatusCode::OK, "{shown}");
    assert_eq!(shown.as_array().unwrap().len(), 1, "{shown}");
    assert_eq!(shown[0]["id"], id);
    assert_eq!(shown[0]["shop"], SHOP);
    assert_eq!(shown[0]["kind"], "FULFILLMENT_REQUEST");

    // The reads, with Shopify's query strings.
    let get = |path: String| f.send(f.http.get(format!("{}{path}", f.base)), None);
    let (s, v) = get(format!(
        "/shopify/fetch_stock.json?sku=coupling-12mm&shop={SHOP}"
    ))
    .await
    .unwrap();
    assert_eq!((s, &v), (StatusCode::OK, &json!({})), "{v}");
    let (s, v) = get(format!(
        "/shopify/fetch_tracking_numbers.json?order_names%5B%5D=%231001.1&order_names%5B%5D=%231002.1&shop={SHOP}"
    ))
    .await
    .unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["success"], true);
    assert_eq!(v["tracking_numbers"], json!({}));
    assert!(v["message"].as_str().unwrap().contains("0 of 2"), "{v}");
    let (s, v) = get("/shopify/fetch_stock.json?shop=stranger.myshopify.com".into())
        .await
        .unwrap();
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, v) = get("/shopify/fetch_stock.json".into()).await.unwrap();
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("shop"),
        "{v}"
    );
    f.terminate().await.unwrap();
}
