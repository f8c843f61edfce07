//! Shopify's fulfillment-service callbacks, for shops that give the
//! daemon a callback URL: `fulfillment_order_notification` (a signed
//! ping, recorded durably and shown to the operator), `fetch_stock` and
//! `fetch_tracking_numbers` (answered from a [`FulfillmentSource`], which
//! commerce implements with its inventory and shipments).
//!
//! Shops are configured with their secret (`[[shopify]]`); a ping whose
//! `X-Shopify-Hmac-Sha256` is not base64(HMAC-SHA256(secret, raw body))
//! is refused before anything is stored.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use utoipa::ToSchema;

use crate::commerce::webhooks::model::verify;
use crate::config::ShopifyShop;
use crate::store::{Batch, Store, StoreError};

/// A `fulfillment_order_notification` as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Notification {
    /// Never reused.
    pub id: u64,
    /// The shop's myshopify domain.
    pub shop: String,
    /// When it arrived, ms since the Unix epoch.
    pub received_ms: u64,
    /// `kind` from the body: `FULFILLMENT_REQUEST` or
    /// `CANCELLATION_REQUEST`.
    pub kind: Option<String>,
    /// The body as Shopify sent it.
    #[schema(value_type = Object)]
    pub body: serde_json::Value,
}

/// Why a callback was refused; each maps to one HTTP status.
#[derive(Debug, Error)]
pub enum ShopifyError {
    /// No shop named (header or `shop` parameter).
    #[error("{0}")]
    MissingShop(String),
    /// A shop that is not configured.
    #[error("shop '{0}' is not configured here; add it under [[shopify]] with its app's secret")]
    UnknownShop(String),
    /// The signature is missing or wrong.
    #[error(
        "X-Shopify-Hmac-Sha256 does not match the body signed with the shop's secret (or is missing)"
    )]
    BadSignature,
    /// The body is not JSON.
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    /// Commerce could not answer.
    #[error("{0}")]
    Source(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where stock and tracking numbers come from: commerce's inventory and
/// shipments implement it. A seam, so the callbacks can be tested with a
/// fake and land before commerce does.
pub trait FulfillmentSource: Send + Sync + std::fmt::Debug {
    /// Units per SKU for `shop`: only `sku` when given (an unknown SKU is
    /// left out), else every SKU. Shopify reads the number as on hand.
    fn stock(&self, shop: &str, sku: Option<&str>) -> Result<BTreeMap<String, u64>, String>;

    /// The tracking number of each named fulfillment (`#1001.1`) that
    /// has one; names without one are left out.
    fn tracking_numbers(
        &self,
        shop: &str,
        order_names: &[String],
    ) -> Result<BTreeMap<String, String>, String>;
}

/// Until commerce is merged: no SKUs, no shipments.
#[derive(Debug, Default)]
pub struct NothingStocked;

impl FulfillmentSource for NothingStocked {
    fn stock(&self, _: &str, _: Option<&str>) -> Result<BTreeMap<String, u64>, String> {
        Ok(BTreeMap::new())
    }

    fn tracking_numbers(&self, _: &str, _: &[String]) -> Result<BTreeMap<String, String>, String> {
        Ok(BTreeMap::new())
    }
}

/// The answer to `fetch_tracking_numbers`, in Shopify's shape.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TrackingNumbers {
    /// Fulfillment name → tracking number.
    pub tracking_numbers: BTreeMap<String, String>,
    /// In words.
    pub message: String,
    /// Always true when answered.
    pub success: bool,
}

/// The configured shops and the source of their answers.
#[derive(Debug, Clone)]
pub struct Shopify {
    shops: BTreeMap<String, String>,
    store: Store,
    source: Arc<dyn FulfillmentSource>,
}

/// Notifications shown at most.
pub const SHOWN: usize = 200;

impl Shopify {
    /// The shops of `[[shopify]]`, answering from `source`.
    pub fn new(shops: &[ShopifyShop], store: Store, source: Arc<dyn FulfillmentSource>) -> Self {
        Self {
            shops: shops
                .iter()
                .map(|s| (s.shop.to_ascii_lowercase(), s.secret.clone()))
                .collect(),
            store,
            source,
        }
    }

    /// The same, with another source (commerce's, or a test's fake).
    #[must_use]
    pub fn with_source(mut self, source: Arc<dyn FulfillmentSource>) -> Self {
        self.source = source;
        self
    }

    /// A configured shop's secret.
    fn secret(&self, shop: Option<&str>, named_by: &str) -> Result<&str, ShopifyError> {
        let shop = shop
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ShopifyError::MissingShop(format!("name the shop with {named_by}")))?;
        self.shops
            .get(&shop.to_ascii_lowercase())
            .map(String::as_str)
            .ok_or_else(|| ShopifyError::UnknownShop(shop.to_string()))
    }

    /// Verifies and records a `fulfillment_order_notification`, durably,
    /// before it is acknowledged.
    pub async fn notify(
        &self,
        shop: Option<&str>,
        hmac: Option<&str>,
        body: &[u8],
        now_ms: u64,
    ) -> Result<Notification, ShopifyError> {
        let secret = self.secret(shop, "the X-Shopify-Shop-Domain header")?;
        if !hmac.is_some_and(|h| verify(secret.as_bytes(), body, h)) {
            tracing::warn!(shop = ?shop, "Shopify notification with a wrong signature refused");
            return Err(ShopifyError::BadSignature);
        }
        let body: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| ShopifyError::NotJson(e.to_string()))?;
        let n = Notification {
            id: self.store.fresh_id()?,
            shop: shop.unwrap_or_default().trim().to_ascii_lowercase(),
            received_ms: now_ms,
            kind: body
                .get("kind")
                .and_then(|k| k.as_str())
                .map(str::to_string),
            body,
        };
        let batch = Batch {
            shopify_notifications: vec![n.clone()],
            ..Batch::default()
        };
        self.store.commit(&batch, now_ms)?;
        self.store.flush().await?;
        tracing::info!(shop = %n.shop, kind = ?n.kind, "Shopify fulfillment notification recorded");
        Ok(n)
    }

    /// The latest notifications, newest first.
    pub fn notifications(&self) -> Result<Vec<Notification>, ShopifyError> {
        Ok(self.store.shopify_notifications(SHOWN)?)
    }

    /// `fetch_stock.json`.
    pub fn stock(
        &self,
        shop: Option<&str>,
        sku: Option<&str>,
    ) -> Result<BTreeMap<String, u64>, ShopifyError> {
        self.secret(shop, "the shop query parameter")?;
        let sku = sku.filter(|s| !s.is_empty());
        self.source
            .stock(shop.unwrap_or_default(), sku)
            .map_err(ShopifyError::Source)
    }

    /// `fetch_tracking_numbers.json`.
    pub fn tracking_numbers(
        &self,
        shop: Option<&str>,
        order_names: &[String],
    ) -> Result<TrackingNumbers, ShopifyError> {
        self.secret(shop, "the shop query parameter")?;
        let found = self
            .source
            .tracking_numbers(shop.unwrap_or_default(), order_names)
            .map_err(ShopifyError::Source)?;
        Ok(TrackingNumbers {
            message: format!(
                "{} of {} fulfillments have a tracking number",
                found.len(),
                order_names.len()
            ),
            tracking_numbers: found,
            success: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commerce::webhooks::model::sign;

    /// Stock and tracking numbers as commerce will answer them.
    #[derive(Debug)]
    struct Fake;

    impl FulfillmentSource for Fake {
        fn stock(&self, shop: &str, sku: Option<&str>) -> Result<BTreeMap<String, u64>, String> {
            assert_eq!(shop, "shop-a.myshopify.com");
            let all = BTreeMap::from([("coupling-12mm".to_string(), 7), ("hook".to_string(), 0)]);
            Ok(match sku {
                Some(s) => all.into_iter().filter(|(k, _)| k == s).collect(),
                None => all,
            })
        }

        fn tracking_numbers(
            &self,
            _: &str,
            names: &[String],
        ) -> Result<BTreeMap<String, String>, String> {
            Ok(names
                .iter()
                .filter(|n| n.as_str() == "#1001.1")
                .map(|n| (n.clone(), "MF000123".to_string()))
                .collect())
        }
    }

    fn shops() -> Vec<ShopifyShop> {
        vec![ShopifyShop {
            shop: "Shop-A.myshopify.com".into(),
            secret: "shpss_secret".into(),
        }]
    }

    fn temp_store(tag: &str) -> (std::path::PathBuf, Store) {
        let dir = std::env::temp_dir().join(format!("mfd-shopify-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).expect("open");
        (dir, store)
    }

    #[tokio::test]
    async fn a_signed_notification_is_recorded_durably_and_a_forged_one_or_a_strangers_is_refused()
    {
        let (dir, store) = temp_store("notify");
        let s = Shopify::new(&shops(), store.clone(), Arc::new(Fake));
        let body = br#"{"kind":"FULFILLMENT_REQUEST"}"#;
        let good = sign(b"shpss_secret", body);
        let shop = Some("shop-a.myshopify.com");
        let n = s
            .notify(shop, Some(&good), body, 42)
            .await
            .expect("recorded");
        assert_eq!(n.kind.as_deref(), Some("FULFILLMENT_REQUEST"));
        assert_eq!(n.shop, "shop-a.myshopify.com");
        let wrong = sign(b"another secret", body);
        for (hmac, body) in [
            (Some(wrong.as_str()), &body[..]),
            (None, &body[..]),
            (
                Some(good.as_str()),
                &br#"{"kind":"CANCELLATION_REQUEST"}"#[..],
            ),
        ] {
            let e = s.notify(shop, hmac, body, 43).await.expect_err("forged");
            assert!(matches!(e, ShopifyError::BadSignature), "{e}");
        }
        let e = s
            .notify(Some("other.myshopify.com"), Some(&good), body, 44)
            .await
            .expect_err("unknown shop");
        assert!(matches!(e, ShopifyError::UnknownShop(_)), "{e}");
        assert!(e.to_string().contains("[[shopify]]"), "{e}");
        let e = s
            .notify(None, Some(&good), body, 44)
            .await
            .expect_err("no shop");
        assert!(matches!(e, ShopifyError::MissingShop(_)), "{e}");
        let not_json = b"kind=FULFILLMENT_REQUEST";
        let e = s
            .notify(shop, Some(&sign(b"shpss_secret", not_json)), not_json, 45)
            .await
            .expect_err("not json");
        assert!(matches!(e, ShopifyError::NotJson(_)), "{e}");
        drop(s);
        drop(store);
        // Flushed before it was acknowledged: it is there after reopening.
        let store = Store::open(&dir).expect("reopen");
        let shown = store.shopify_notifications(10).expect("list");
        assert_eq!(shown, vec![n]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn stock_and_tracking_numbers_come_from_the_source_for_configured_shops_only() {
        let (dir, store) = temp_store("reads");
        let s = Shopify::new(&shops(), store, Arc::new(NothingStocked)).with_source(Arc::new(Fake));
        let shop = Some("shop-a.myshopify.com");
        let all = s.stock(shop, None).expect("all");
        assert_eq!(all.len(), 2);
        assert_eq!(s.stock(shop, Some("")).expect("empty sku is all"), all);
        let one = s.stock(shop, Some("coupling-12mm")).expect("one");
        assert_eq!(one, BTreeMap::from([("coupling-12mm".to_string(), 7)]));
        assert!(s.stock(shop, Some("nope")).expect("unknown").is_empty());
        assert!(matches!(
            s.stock(Some("x.myshopify.com"), None),
            Err(ShopifyError::UnknownShop(_))
        ));
        assert!(matches!(
            s.stock(None, None),
            Err(ShopifyError::MissingShop(_))
        ));
        let names = vec!["#1001.1".to_string(), "#1002.1".to_string()];
        let t = s.tracking_numbers(shop, &names).expect("tracking");
        assert!(t.success);
        assert_eq!(t.tracking_numbers.len(), 1);
        assert_eq!(t.tracking_numbers["#1001.1"], "MF000123");
        assert!(t.message.contains("1 of 2"), "{}", t.message);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
