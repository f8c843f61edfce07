//! Federation through brokers (docs/federation.md): two sites, each a real
//! `microfactoryd` with a simulated printer and its own mosquitto, whose
//! bridge forwards `microfactory/<site>/#` to a third, central mosquitto.
//! A subscriber on the central broker sees both sites' machine states and
//! inventory, and keeps seeing them after one site's broker restarts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use anyhow::{Result, ensure};
use microfactory_e2e::mosquitto::{Broker, Subscriber};
use microfactory_e2e::{Factory, MachineSpec};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// docs/federation.md's bridge, pointed at the central broker's port.
fn bridge(site: &str, central: u16) -> String {
    format!(
        "connection central-{site}\n\
         address 127.0.0.1:{central}\n\
         remote_clientid bridge-{site}\n\
         topic microfactory/{site}/# out 1\n\
         cleansession false\n\
         local_cleansession false\n\
         try_private true\n\
         restart_timeout 1 5\n"
    )
}

/// A tiny plate: one hook.
const PLATE: &str =
    "G28\nG90\nM83\nG1 Z0.2 F3000\nG1 X10 Y10 E1 F1500\nG1 X40 Y10 E2\nG1 Z5 F3000\n";

/// A site: its broker (bridged to `central`) and its daemon with one fast
/// simulated printer.
async fn site(name: &str, central: u16) -> Result<(Broker, Factory)> {
    let broker = Broker::start(&bridge(name, central))?;
    let mut printer = MachineSpec::printer("mk3", "prusa-mk3s");
    printer.time_scale = 5000.0;
    printer.tweak = |c| {
        c.baud = 2_000_000;
        c.latency_ms = 0.0;
    };
    let f = Factory::start_with(
        &[printer],
        &format!(
            "[mqtt]\nbroker = \"{}\"\nsite = \"{name}\"\nkeep_alive_secs = 5\n",
            broker.url()
        ),
    )
    .await?;
    Ok((broker, f))
}

/// Makes one hook at a site through a production order, as a shop does:
/// the unit waits for QC, so it is on hand but not available. Its serial.
async fn make_a_hook(f: &Factory) -> Result<String> {
    let (s, file) = f
        .upload_bytes("hook.gcode", PLATE.as_bytes().to_vec())
        .await?;
    ensure!(s == StatusCode::CREATED, "{s} {file}");
    let (s, p) = f
        .post(
            "/products",
            json!({"sku": "hook-1", "name": "Hook", "file_id": file["id"]}),
        )
        .await?;
    ensure!(s == StatusCode::CREATED, "{s} {p}");
    let (s, o) = f
        .post(
            "/production-orders",
            json!({"sku": "hook-1", "quantity": 1}),
        )
        .await?;
    ensure!(s == StatusCode::CREATED, "{s} {o}");
    let id = o["id"].as_u64().unwrap_or_default();
    f.order_until(id, Duration::from_secs(60), |o| {
        o["progress"]["produced"] == 1
    })
    .await?;
    let (s, units) = f.get("/units?sku=hook-1").await?;
    ensure!(s == StatusCode::OK, "{s} {units}");
    Ok(units[0]["serial"].as_str().unwrap_or_default().to_string())
}

/// Passes a unit's QC: it becomes available.
async fn pass(f: &Factory, serial: &str) -> Result<()> {
    let (s, u) = f
        .post(&format!("/units/{serial}/qc"), json!({"result": "pass"}))
        .await?;
    ensure!(s == StatusCode::OK, "{s} {u}");
    Ok(())
}

fn machine_state<'a>(t: &str, v: &'a Value, site: &str) -> Option<&'a str> {
    (t == format!("microfactory/{site}/machines/mk3/state"))
        .then(|| v["state"].as_str())
        .flatten()
}

fn available(t: &str, v: &Value, site: &str) -> Option<i64> {
    (t == format!("microfactory/{site}/inventory/hook-1") && v["on_hand"] == 1)
        .then(|| v["available"].as_i64())
        .flatten()
}

/// Waits until `sub` has seen, for both sites, the printer in `states[i]`
/// (any state when empty) and one hook on hand, `counts[i]` of it
/// available.
async fn sees_both(sub: &mut Subscriber, states: [&str; 2], counts: [i64; 2]) -> Result<()> {
    let mut seen = [[false; 2]; 2];
    while seen != [[true; 2]; 2] {
        let hit = sub
            .until("both sites' states and counts", |t, v| {
                ["a", "b"].iter().enumerate().find_map(|(i, s)| {
                    if machine_state(t, v, s)
                        .is_some_and(|m| states[i].is_empty() || m == states[i])
                    {
                        Some((i, 0))
                    } else if available(t, v, s) == Some(counts[i]) {
                        Some((i, 1))
                    } else {
                        None
                    }
                })
            })
            .await?;
        seen[hit.0][hit.1] = true;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_central_subscriber_sees_both_sites_and_keeps_seeing_them_after_a_site_broker_restarts()
-> Result<()> {
    let central = Broker::start("")?;
    let (mut broker_a, a) = site("a", central.port).await?;
    let (_broker_b, b) = site("b", central.port).await?;
    let mut sub = Subscriber::connect(
        central.port,
        "storefront",
        &[
            "microfactory/+/machines/+/state",
            "microfactory/+/inventory/+",
        ],
    )
    .await?;
    let (hook_a, hook_b) = tokio::try_join!(make_a_hook(&a), make_a_hook(&b))?;
    sees_both(&mut sub, ["", ""], [0, 0]).await?;

    // Site a's broker dies and comes back empty (no persistence): the
    // daemon reconnects and publishes its state again, the bridge
    // reconnects to the central broker and forwards it.
    broker_a.kill();
    broker_a.spawn()?;
    for f in [&a, &b] {
        let (status, body) = f.post("/machines/mk3/disable", json!({})).await?;
        ensure!(status == StatusCode::OK, "{status} {body}");
    }
    pass(&a, &hook_a).await?;
    pass(&b, &hook_b).await?;
    sees_both(&mut sub, ["planned_down", "planned_down"], [1, 1])
        .await
        .map_err(|e| e.context(broker_a.log()))?;

    // Site a's daemon did lose its broker on the way.
    let (_, health) = a.get("/health").await?;
    ensure!(health["mqtt"]["failures"].as_u64() >= Some(1), "{health}");
    ensure!(health["mqtt"]["connected"] == true, "{health}");

    // A late subscriber on the central broker gets both sites at once
    // (retained there, whatever happened at the sites).
    let mut late = Subscriber::connect(
        central.port,
        "late",
        &[
            "microfactory/+/machines/+/state",
            "microfactory/+/inventory/+",
        ],
    )
    .await?;
    sees_both(&mut late, ["planned_down", "planned_down"], [1, 1]).await?;
    Ok(())
}
