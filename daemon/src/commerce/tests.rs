//! The commerce shell against a real store: units arrive through the log
//! as metering writes them, orders race for them, and everything is read
//! back after reopening the store.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::address::Address;
use super::inventory::UnitState;
use super::labels::Paper;
use super::orders::{Action, LineInput, OrderInput, SalesState, ShipmentInput, WhenShort};
use super::service::{
    AdjustmentInput, Commerce, CommerceError, OrderView, ReturnInspection, body_digest,
};
use crate::config::ShopConfig;
use crate::core::events::DomainEvent;
use crate::core::model::{AdjustmentKind, QcState};
use crate::factory::Factory;
use crate::metering::Metering;
use crate::store::{Batch, Store};

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mfd-commerce-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn commerce(store: &Store, mto: &[String]) -> Arc<Commerce> {
    commerce_for(store, mto, None).await
}

async fn commerce_for(store: &Store, mto: &[String], shop: Option<ShopConfig>) -> Arc<Commerce> {
    let f = Factory::with_links(store.clone(), Vec::new(), 1 << 20, 10)
        .await
        .expect("factory");
    let m = Metering::new(f, &[], BTreeMap::new(), None);
    Commerce::new(store.clone(), m, mto, shop).expect("commerce")
}

/// Metering's record of units made (and their QC state at birth).
async fn made(store: &Store, sku: &str, serials: &[&str], qc: QcState) {
    let events = serials
        .iter()
        .map(|s| DomainEvent::UnitMade {
            serial: (*s).into(),
            sku: sku.into(),
            order_id: 1,
            job_id: 1,
            attempt: 1,
            machine_id: "mk3".into(),
            qc,
        })
        .collect();
    commit_events(store, events).await;
}

async fn commit_events(store: &Store, events: Vec<DomainEvent>) {
    store
        .commit(
            &Batch {
                events,
                ..Batch::default()
            },
            1,
        )
        .expect("commit");
    store.flush().await.expect("flush");
}

async fn catch_up_all(c: &Commerce, store: &Store) {
    let tip = *store.log_tip().borrow();
    while c.catch_up(tip).await.expect("catch up") {}
}

/// The example ship-to.
pub(crate) fn address() -> Address {
    Address {
        name: "Ada Lovelace".into(),
        street1: "12 Market St".into(),
        street2: None,
        city: "San Francisco".into(),
        region: Some("CA".into()),
        postal_code: "94105".into(),
        country: "US".into(),
        phone: None,
        email: None,
    }
}

fn input(ext: &str, sku: &str, quantity: u32, when_short: WhenShort) -> OrderInput {
    OrderInput {
        channel: "web".into(),
        external_id: ext.into(),
        lines: vec![LineInput {
            sku: sku.into(),
            quantity,
        }],
        ship_to: address(),
        service: "standard".into(),
        when_short,
    }
}

async fn place(c: &Commerce, i: OrderInput) -> Result<OrderView, CommerceError> {
    let body = serde_json::to_vec(&i).expect("json");
    let intake = c.create_order(i, None, body_digest(&body), "shop").await?;
    Ok(serde_json::from_str(&intake.body).expect("view"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_clients_racing_for_the_last_unit_leave_exactly_one_with_it() {
    let dir = temp_dir("race");
    let store = Store::open(&dir).expect("open");
    let c = commerce(&store, &[]).await;
    for round in 0..5u32 {
        let serial = format!("U{round:09}");
        made(&store, "tile", &[&serial], QcState::Pass).await;
        catch_up_all(&c, &store).await;
        assert_eq!(c.inventory_item("tile").expect("level").available, 1);
        // Reject mode in even rounds, back-order in odd ones.
        let when = if round % 2 == 0 {
            WhenShort::Reject
        } else {
            WhenShort::Backorder
        };
        let tasks: Vec<_> = (0..32)
            .map(|n| {
                let c = Arc::clone(&c);
                tokio::spawn(async move {
                    place(&c, input(&format!("r{round}-{n}"), "tile", 1, when)).await
                })
            })
            .collect();
        let mut winners = Vec::new();
        let mut others = 0;
        for t in tasks {
            match t.await.expect("task") {
                Ok(v) if v.order.state == SalesState::Allocated => {
                    winners.push(v.order.lines[0].allocated.clone());
                }
                Ok(v) => {
                    assert_eq!(when, WhenShort::Backorder);
                    assert_eq!(v.order.state, SalesState::Received);
                    assert!(v.order.lines[0].allocated.is_empty());
                    others += 1;
                }
                Err(CommerceError::Short(skus)) => {
                    assert_eq!(when, WhenShort::Reject);
                    assert_eq!(skus, vec!["tile".to_string()]);
                    others += 1;
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(winners, vec![vec![serial.clone()]], "round {round}");
        assert_eq!(others, 31);
        let level = c.inventory_item("tile").expect("level");
        assert_eq!(
            (level.available, level.committed),
            (0, i64::from(round) + 1)
        );
        // Back-orders wait for the next unit in the next round; cancel them
        // so every round races for one unit.
        for v in c.orders(Some(SalesState::Received)) {
            c.act(v.order.id, Action::Cancel, "op", None)
                .await
                .expect("cancel");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_bad_address_is_refused_naming_its_field_and_a_good_one_is_kept_normalised() {
    let dir = temp_dir("address");
    let store = Store::open(&dir).expect("open");
    let c = commerce(&store, &[]).await;
    let mut bad = input("2001", "tile", 1, WhenShort::Backorder);
    bad.ship_to.postal_code = "9410".into();
    match place(&c, bad).await {
        Err(CommerceError::Invalid(e)) => {
            assert!(e.to_string().starts_with("ship_to.postal_code"), "{e}")
        }
        other => panic!("a four-digit US ZIP code was not refused: {other:?}"),
    }
    assert!(c.orders(None).is_empty(), "a refused order was kept");
    let v = place(&c, input("2002", "tile", 1, WhenShort::Backorder))
        .await
        .expect("a good address");
    assert_eq!(
        v.order.ship_to,
        crate::commerce::address::validate(&address()).expect("valid")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_retried_order_gets_the_first_answer_and_another_body_under_the_key_is_refused() {
    let dir = temp_dir("idem");
    let store = Store::open(&dir).expect("open");
    let c = commerce(&store, &[]).await;
    let i = input("1001", "tile", 2, WhenShort::Backorder);
    let body = serde_json::to_vec(&i).expect("json");
    let first = c
        .create_order(i.clone(), Some("k1".into()), body_digest(&body), "shop")
        .await
        .expect("first");
    assert!(!first.replay);
    let again = c
        .create_order(i.clone(), Some("k1".into()), body_digest(&body), "shop")
        .await
        .expect("retry");
    assert!(again.replay);
    assert_eq!(again.body, first.body);
    assert_eq!(c.orders(None).len(), 1, "a retry creates nothing");
    let other = input("1002", "tile", 1, WhenShort::Backorder);
    let other_body = serde_json::to_vec(&other).expect("json");
    let e = c
        .create_order(other, Some("k1".into()), body_digest(&other_body), "shop")
        .await
        .expect_err("other body");
    assert!(matches!(e, CommerceError::Conflict(_)), "{e}");
    // The same storefront order under a new key is a duplicate.
    let e = c
        .create_order(i, Some("k2".into()), body_digest(&body), "shop")
        .await
        .expect_err("duplicate");
    assert!(e.to_string().contains("already has order '1001'"), "{e}");
    drop(c);
    // The key is stored with the order: a restart answers the same.
    let c = commerce(&store, &[]).await;
    let again = c
        .create_order(
            input("1001", "tile", 2, WhenShort::Backorder),
            Some("k1".into()),
            body_digest(&body),
            "shop",
        )
        .await
        .expect("retry after restart");
    assert_eq!(again.body, first.body);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn units_passing_qc_fill_back_orders_oldest_order_first_and_cancelling_passes_them_on() {
    let dir = temp_dir("backorder");
    let store = Store::open(&dir).expect("open");
    let c = commerce(&store, &[]).await;
    let a = place(&c, input("a", "tile", 2, WhenShort::Backorder))
        .await
        .expect("a");
    let b = place(&c, input("b", "tile", 1, WhenShort::Backorder))
        .await
        .expect("b");
    assert_eq!(a.order.state, SalesState::Received);
    made(&store, "tile", &["U1", "U2", "U3"], QcState::Pending).await;
    catch_up_all(&c, &store).await;
    let level = c.inventory_item("tile").expect("level");
    assert_eq!(
        (level.on_hand, level.unavailable, level.available),
        (3, 3, 0)
    );
    assert!(
        c.order(a.order.id).expect("a").order.lines[0]
            .allocated
            .is_empty()
    );
    // Two pass, one fails: the first order gets both.
    commit_events(
        &store,
        ["U1", "U2", "U3"]
            .iter()
            .zip([QcState::Pass, QcState::Fail, QcState::Pass])
            .map(|(s, r)| DomainEvent::UnitInspected {
                serial: (*s).into(),
                sku: "tile".into(),
                from: QcState::Pending,
                result: r,
                reason: None,
                by: "op".into(),
            })
            .collect(),
    )
    .await;
    catch_up_all(&c, &store).await;
    let a_now = c.order(a.order.id).expect("a");
    assert_eq!(a_now.order.state, SalesState::Allocated);
    assert_eq!(a_now.order.lines[0].allocated, vec!["U1", "U3"]);
    assert_eq!(
        c.order(b.order.id).expect("b").order.state,
        SalesState::Received
    );
    // Cancelling the first releases its units to the waiting second.
    c.act(a.order.id, Action::Cancel, "shop", None)
        .await
        .expect("cancel");
    let b_now = c.order(b.order.id).expect("b");
    assert_eq!(b_now.order.lines[0].allocated, vec!["U1"]);
    assert_eq!(b_now.order.state, SalesState::Allocated);
    let level = c.inventory_item("tile").expect("level");
    assert_eq!((level.on_hand, level.committed, level.available), (2, 1, 1));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn partial_shipments_ship_the_order_and_a_return_waits_for_inspection() {
    let dir = temp_dir("ship");
    let store = Store::open(&dir).expect("open");
    let c = commerce(&store, &[]).await;
    made(&store, "tile", &["U1", "U2"], QcState::Pass).await;
    catch_up_all(&c, &store).await;
    let o = place(&c, input("s1", "tile", 2, WhenShort::Reject))
        .await
        .expect("order");
    let id = o.order.id;
    c.act(id, Action::Pick, "op", None).await.expect("pick");
    c.act(id, Action::Pack, "op", None).await.expect("pack");
    let one = ShipmentInput {
        lines: Some(vec![LineInput {
            sku: "tile".into(),
            quantity: 1,
        }]),
    };
    let s1 = c.create_shipment(id, one, "op").await.expect("first");
    assert!(s1.number.starts_with("MF-"), "{}", s1.number);
    assert_eq!(c.order(id).expect("o").order.state, SalesState::Packed);
    let s2 = c
        .create_shipment(id, ShipmentInput::default(), "op")
        .await
        .expect("rest");
    assert_ne!(s1.number, s2.number);
    assert_eq!(c.order(id).expect("o").order.state, SalesState::Labelled);
    let label = c.label_data(s2.id).expect("label data");
    assert_eq!(label.order_reference, "web/s1");
    assert_eq!(label.lines[0].serials, vec!["U2"]);
    c.ship(s1.id, "op").await.expect("ship 1");
    assert!(c.ship(s1.id, "op").await.is_err(), "shipped twice");
    assert_eq!(c.order(id).expect("o").order.state, SalesState::Labelled);
    c.ship(s2.id, "op").await.expect("ship 2");
    let v = c.order(id).expect("o");
    assert_eq!(v.order.state, SalesState::Shipped);
    assert_eq!(v.shipment_records.len(), 2);
    assert!(c.inventory_item("tile").expect("level").on_hand == 0);
    // Every step is in the history with who made it.
    let steps: Vec<(SalesState, &str)> = v
        .order
        .history
        .iter()
        .map(|t| (t.to, t.by.as_str()))
        .collect();
    assert_eq!(
        steps,
        vec![
            (SalesState::Received, "shop"),
            (SalesState::Allocated, "microfactoryd"),
            (SalesState::Picked, "op"),
            (SalesState::Packed, "op"),
            (SalesState::Labelled, "microfactoryd"),
            (SalesState::Shipped, "microfactoryd"),
        ]
    );
    c.act(id, Action::Return, "op", None).await.expect("return");
    let level = c.inventory_item("tile").expect("level");
    assert_eq!(
        (level.on_hand, level.unavailable, level.available),
        (2, 2, 0)
    );
    let u = c
        .inspect_return(
            "U1",
            ReturnInspection {
                result: QcState::Pass,
                reason: None,
            },
            "op",
        )
        .await
        .expect("restock");
    assert_eq!(u.state, UnitState::Available);
    let e = c
        .inspect_return(
            "U2",
            ReturnInspection {
                result: QcState::Scrap,
                reason: None,
            },
            "op",
        )
        .await
        .expect_err("needs a reason");
    assert!(matches!(e, CommerceError::Invalid(_)));
    assert_eq!(c.inventory_item("tile").expect("level").available, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn orders_units_shipments_and_the_inventory_cursor_survive_reopening_the_store() {
    let dir = temp_dir("reopen");
    let (order, snap_version, levels);
    {
        let store = Store::open(&dir).expect("open");
        let c = commerce(&store, &[]).await;
        made(&store, "tile", &["U1", "U2", "U3"], QcState::Pass).await;
        catch_up_all(&c, &store).await;
        let o = place(&c, input("p1", "tile", 2, WhenShort::Backorder))
            .await
            .expect("order");
        c.create_shipment(o.order.id, ShipmentInput::default(), "op")
            .await
            .expect("shipment");
        c.adjust(
            "tile",
            AdjustmentInput {
                kind: AdjustmentKind::Damage,
                counted: None,
                serials: vec!["U3".into()],
                reason: "dropped".into(),
            },
            "op",
        )
        .await
        .expect("damage");
        order = c.order(o.order.id).expect("order");
        snap_version = c.snapshot().version;
        levels = c.inventory_item("tile").expect("level");
        assert_eq!(
            (levels.committed, levels.unavailable, levels.available),
            (2, 1, 0)
        );
    }
    let store = Store::open(&dir).expect("reopen");
    let c = commerce(&store, &[]).await;
    assert_eq!(
        serde_json::to_value(c.order(order.order.id).expect("order")).expect("json"),
        serde_json::to_value(&order).expect("json")
    );
    assert_eq!(c.inventory_item("tile").expect("level"), levels);
    let snap = c.snapshot();
    assert_eq!(snap.version, snap_version);
    // Nothing changed after the cursor; everything since 0.
    let (body, _) = snap.changed_since(snap.version);
    assert!(String::from_utf8_lossy(&body).contains("\"items\":[]"));
    let (body, _) = snap.changed_since(0);
    assert!(String::from_utf8_lossy(&body).contains("\"sku\":\"tile\""));
    // The reader does not add the units a second time.
    catch_up_all(&c, &store).await;
    assert_eq!(c.inventory_item("tile").expect("level"), levels);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_count_below_what_is_reserved_shows_a_negative_available_and_blocks_allocation() {
    let dir = temp_dir("count");
    let store = Store::open(&dir).expect("open");
    let c = commerce(&store, &[]).await;
    made(&store, "tile", &["U1", "U2"], QcState::Pass).await;
    catch_up_all(&c, &store).await;
    place(&c, input("c1", "tile", 2, WhenShort::Reject))
        .await
        .expect("order");
    let count = |n| AdjustmentInput {
        kind: AdjustmentKind::Count,
        counted: Some(n),
        serials: vec![],
        reason: "cycle_count".into(),
    };
    let after = c.adjust("tile", count(1), "op").await.expect("count");
    assert_eq!(
        (after.on_hand, after.committed, after.available),
        (1, 2, -1)
    );
    let e = c
        .adjust("tile", count(5), "op")
        .await
        .expect_err("too many");
    assert!(matches!(e, CommerceError::Invalid(_)), "{e}");
    let e = place(&c, input("c2", "tile", 1, WhenShort::Reject))
        .await
        .expect_err("nothing available");
    assert!(matches!(e, CommerceError::Short(_)));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn documents_need_the_shop_units_and_a_live_shipment_and_print_the_shops_address() {
    let dir = temp_dir("docs");
    let store = Store::open(&dir).expect("open");
    // Without [shop], labels and slips are refused with what to configure.
    let bare = commerce(&store, &[]).await;
    made(&store, "tile", &["U1", "U2"], QcState::Pass).await;
    catch_up_all(&bare, &store).await;
    let o = place(&bare, input("d1", "tile", 1, WhenShort::Reject))
        .await
        .expect("order");
    let sh = bare
        .create_shipment(o.order.id, ShipmentInput::default(), "op")
        .await
        .expect("shipment");
    for e in [
        bare.shipping_label(sh.id).expect_err("no shop"),
        bare.packing_slip(o.order.id, Paper::A4)
            .expect_err("no shop"),
    ] {
        assert!(
            matches!(&e, CommerceError::Conflict(c) if c.0.contains("[shop]")),
            "{e}"
        );
    }
    drop(bare);

    let from = Address {
        name: "Ada's Workshop".into(),
        street1: "200 Industrial Way".into(),
        city: "Oakland".into(),
        postal_code: "94607".into(),
        ..address()
    };
    let shop = ShopConfig {
        name: "Ada's Shop".into(),
        address: from.clone(),
    };
    let c = commerce_for(&store, &[], Some(shop)).await;
    let label = c.shipping_label(sh.id).expect("label");
    assert_eq!(label.from, from);
    assert_eq!(
        label.to,
        super::address::validate(&address()).expect("valid")
    );
    assert_eq!(label.shipment_number, sh.number);
    assert_eq!(label.order_reference, "web/d1");
    // No product record, so no weight: the label must not invent one.
    assert_eq!(label.weight_grams, None);
    let slip = c.packing_slip(o.order.id, Paper::Letter).expect("slip");
    assert_eq!(slip.shop_name, "Ada's Shop");
    assert_eq!(slip.paper, Paper::Letter);
    assert_eq!(slip.lines.len(), 1);
    assert_eq!(slip.lines[0].quantity, 1);
    assert_eq!(slip.lines[0].serials, vec!["U1".to_string()]);

    // An order still waiting for units has nothing to put on a slip.
    let waiting = place(&c, input("d2", "tile", 5, WhenShort::Backorder))
        .await
        .expect("back-order");
    assert_eq!(waiting.order.lines[0].allocated, vec!["U2".to_string()]);
    let other = place(&c, input("d3", "tile", 1, WhenShort::Backorder))
        .await
        .expect("back-order");
    assert!(other.order.lines[0].allocated.is_empty());
    let e = c
        .packing_slip(other.order.id, Paper::A4)
        .expect_err("no units");
    assert!(matches!(e, CommerceError::Conflict(_)), "{e}");
    assert!(matches!(
        c.packing_slip(999, Paper::A4),
        Err(CommerceError::NotFound(_))
    ));

    // Cancelling voids the shipment: no label for it any more.
    c.act(o.order.id, Action::Cancel, "op", None)
        .await
        .expect("cancel");
    let e = c.shipping_label(sh.id).expect_err("voided");
    assert!(
        matches!(&e, CommerceError::Conflict(m) if m.0.contains("voided")),
        "{e}"
    );
    assert!(matches!(
        c.shipping_label(999),
        Err(CommerceError::NotFound(_))
    ));
    assert!(matches!(
        c.unit_label("U404"),
        Err(CommerceError::NotFound(_))
    ));
    let _ = std::fs::remove_dir_all(&dir);
}
