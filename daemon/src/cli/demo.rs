//! `microfactoryd --demo`: a whole factory on one computer with nothing
//! else installed. Two simulated Marlin printers and a simulated GRBL mill
//! run in-process on pseudo-terminals and are opened through tokio-serial
//! like real machines; motion runs faster than real time. Sample programs
//! are uploaded so there is something to queue at once.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use microfactory_machines::sim::{self, FirmwareKind, SimConfig, SimHandle};

use crate::auth;
use crate::cli::serve;
use crate::commerce::address::Address;
use crate::commerce::orders::{LineInput, OrderInput, WhenShort};
use crate::commerce::service::{Commerce, body_digest};
use crate::config::{Adapter, Config, MachineConfig, MqttConfig, MqttMachineConfig};
use crate::core::model::Role;
use crate::store::Store;

/// How much faster than real time the demo machines move and heat.
pub const DEMO_TIME_SCALE: f64 = 20.0;

/// Demo options.
#[derive(Debug, Clone)]
pub struct DemoArgs {
    /// Listen address.
    pub listen: SocketAddr,
    /// Data directory; `None` for a fresh temporary one, removed on exit.
    pub data_dir: Option<PathBuf>,
    /// A broker to publish the demo factory to (site `demo`), with one
    /// read-only machine per MQTT adapter that `mosquitto_pub` brings to
    /// life.
    pub mqtt: Option<String>,
}

/// `--demo --mqtt URL`: site `demo` on that broker, and one machine per
/// adapter under the topics README's examples publish to.
fn demo_mqtt(broker: String) -> MqttConfig {
    let machine = |id: &str, name: &str, adapter, base: Option<&str>, serial: Option<&str>| {
        MqttMachineConfig {
            id: id.into(),
            name: Some(name.into()),
            profile: if id == "esp-mill" {
                "grbl-3018"
            } else {
                "prusa-mk3s"
            }
            .into(),
            adapter,
            base: base.map(String::from),
            serial: serial.map(String::from),
            tags: Vec::new(),
            class: None,
        }
    };
    MqttConfig {
        broker,
        site: "demo".into(),
        client_id: None,
        username: None,
        password: None,
        // mqtts:// uses the system's roots.
        ca_file: None,
        client_cert_file: None,
        client_key_file: None,
        keep_alive_secs: 30,
        max_payload_bytes: 64 * 1024,
        progress_interval_ms: 2000,
        machines: vec![
            machine(
                "octo",
                "OctoPrint printer",
                Adapter::Octoprint,
                Some("octoPrint"),
                None,
            ),
            machine(
                "klipper",
                "Klipper printer",
                Adapter::Moonraker,
                Some("moonraker-demo"),
                None,
            ),
            machine(
                "bambu",
                "Bambu printer",
                Adapter::Bambu,
                None,
                Some("BAMBU-DEMO"),
            ),
            machine("esp-mill", "Networked mill", Adapter::Report, None, None),
        ],
    }
}

/// A demo's own temporary data directory, removed when dropped. Each demo
/// gets a new one so two demos never share a store (sled lets only one
/// process open it) or PTY links, and a demo never resumes another's jobs.
#[derive(Debug)]
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn create() -> anyhow::Result<Self> {
        let base = std::env::temp_dir();
        // The pid keeps concurrent demos apart; the counter skips a folder
        // left behind by an earlier process that had the same pid.
        for n in 0..1000 {
            let p = base.join(format!("microfactoryd-demo-{}-{n}", std::process::id()));
            match std::fs::create_dir(&p) {
                Ok(()) => return Ok(Self(p)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot create {}", p.display())),
            }
        }
        anyhow::bail!("no free demo folder name in {}", base.display())
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the demo until SIGTERM/SIGINT.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    // `_scratch` lives to the end of the demo: dropping it removes the
    // folder.
    let (data_dir, _scratch) = match args.data_dir {
        Some(d) => (d, None),
        None => {
            let s = ScratchDir::create()?;
            (s.path().to_path_buf(), Some(s))
        }
    };
    let store =
        Store::open(&data_dir).with_context(|| format!("cannot open {}", data_dir.display()))?;
    let machines = [
        (
            "mk3-a",
            "Printer A",
            "prusa-mk3s",
            FirmwareKind::Marlin,
            vec!["material:PLA"],
        ),
        (
            "ender-b",
            "Printer B",
            "creality-ender3",
            FirmwareKind::Marlin,
            vec!["material:PETG"],
        ),
        (
            "mill-1",
            "PCB mill",
            "grbl-3018",
            FirmwareKind::Grbl,
            vec!["tool:vbit-30"],
        ),
    ];
    let mut sims: Vec<SimHandle> = Vec::new();
    let mut configs = Vec::new();
    for (id, name, profile, fw, tags) in machines {
        let link = data_dir.join(format!("demo-{id}.tty"));
        let _ = std::fs::remove_file(&link);
        let sim = sim::spawn(SimConfig {
            name: id.into(),
            firmware: fw,
            time_scale: DEMO_TIME_SCALE,
            link: Some(link.clone()),
            // An occasional fault on one printer's link: corrupted
            // bytes, which the host answers with resends (/metrics).
            corrupt_rate: if id == "ender-b" { 0.000_5 } else { 0.0 },
            max_faults_per_line: Some(1),
            ..SimConfig::new(fw)
        })
        .await
        .with_context(|| format!("cannot start the simulated {name}"))?;
        sims.push(sim);
        configs.push(MachineConfig {
            id: id.into(),
            name: Some(name.into()),
            profile: profile.into(),
            port: link,
            baud: None,
            tags: tags.into_iter().map(String::from).collect(),
            require_bed_clear: fw == FirmwareKind::Marlin,
            flow: None,
            class: None,
            read_only: false,
        });
    }
    let checked = Config {
        listen: args.listen,
        data_dir: data_dir.clone(),
        max_upload_bytes: crate::config::DEFAULT_MAX_UPLOAD,
        keep_ended_jobs: crate::config::DEFAULT_KEEP_ENDED_JOBS,
        http: crate::config::HttpConfig::default(),
        machines: configs,
        apc: DemoProduction::parse()?.apc,
        mqtt: args.mqtt.clone().map(demo_mqtt),
        costs: Some(DemoProduction::parse()?.costs),
        commerce: crate::config::CommerceConfig {
            make_to_order: vec![DEMO_SKU.to_string()],
        },
        webhooks: Vec::new(),
        webhook_retry: crate::config::WebhookRetry::default(),
        shopify: Vec::new(),
        shop: Some(demo_shop()),
    }
    .check()
    .map_err(|p| anyhow::anyhow!("demo configuration: {}", p.join("; ")))?;

    let token = match std::env::var("MICROFACTORYD_TOKEN") {
        Ok(t) if !t.trim().is_empty() => {
            auth::add_token(&store, t.trim(), Role::Operator, "demo operator")?;
            t.trim().to_string()
        }
        _ => auth::create_token(&store, Role::Operator, "demo operator")?,
    };
    let shop = match std::env::var("MICROFACTORYD_STOREFRONT_TOKEN") {
        Ok(t) if !t.trim().is_empty() => {
            auth::add_token(&store, t.trim(), Role::Storefront, SHOP_NAME)?;
            t.trim().to_string()
        }
        _ => auth::create_token(&store, Role::Storefront, SHOP_NAME)?,
    };
    store.flush().await?;
    let running = serve::start(checked, store).await?;
    let mut file_ids = Vec::new();
    for (name, text) in [
        ("demo-tile.gcode", tile_gcode()),
        ("demo-pcb-outline.nc", pcb_outline_gcode()),
    ] {
        let mut up = running.factory.upload()?;
        up.push(text.as_bytes())?;
        file_ids.push(running.factory.add_file(up, name.into()).await?.0.id);
    }
    production(&running, &file_ids).await?;
    let orders = tokio::spawn(demo_orders(std::sync::Arc::clone(running.commerce())));
    println!("listening on http://{}", running.addr);
    println!("microfactoryd demo: dashboard at http://{}/", running.addr);
    println!("operator token: {token}");
    println!("storefront token: {shop}");
    println!(
        "machines: 2 simulated Marlin printers and 1 simulated GRBL mill, {DEMO_TIME_SCALE}x real time"
    );
    if let Some(broker) = &args.mqtt {
        println!(
            "mqtt: publishing site 'demo' to {broker}; read-only machines octo (octoPrint/…), \
             klipper (moonraker-demo/…), bambu (device/BAMBU-DEMO/report) and esp-mill \
             (microfactory/demo/machines/esp-mill/report)"
        );
    }
    let operator = tokio::spawn(demo_operator(
        std::sync::Arc::clone(&running.factory),
        std::sync::Arc::clone(running.metering()),
    ));
    serve::signal().await;
    operator.abort();
    orders.abort();
    running.stop().await;
    for s in sims {
        s.shutdown().await;
    }
    Ok(())
}

/// The demo's criteria and rates, as an operator would write them.
const DEMO_PRODUCTION: &str = r#"
[apc.demo-tile.fdm_printer]
window = { min_units = 6, min_planned_hours = 0 }
quality_ratio_min = 0.8
first_pass_yield_min = 0.8
cost_per_good_unit_max = 5.0

[apc.demo-pcb.cnc_mill]
window = { min_units = 3, min_planned_hours = 0 }
quality_ratio_min = 0.8
earnings_per_operator_hour_min = 68.0

[costs]
currency = "USD"
labour_rate_per_hour = 75.0
energy_price_per_kwh = 0.30
qc_minutes_per_unit = 0.5

[costs.material.PLA]
price_per_kg = 25.0

[costs.class.fdm_printer]
purchase_price = 800.0
service_life_hours = 10000.0
power_draw_w = 120.0

[costs.class.cnc_mill]
purchase_price = 300.0
service_life_hours = 5000.0
power_draw_w = 300.0
tooling_wear_per_job = 0.40
"#;

/// The demo's `[apc]` and `[costs]` tables.
#[derive(serde::Deserialize)]
struct DemoProduction {
    apc: std::collections::BTreeMap<
        String,
        std::collections::BTreeMap<String, crate::config::ApcCriteria>,
    >,
    costs: crate::config::CostsConfig,
}

impl DemoProduction {
    fn parse() -> anyhow::Result<Self> {
        toml::from_str(DEMO_PRODUCTION).context("the demo's production tables")
    }
}

/// Two products, one printed and one milled, and an order of each, so the
/// Production view, /metrics and the APC verdicts have numbers at once.
async fn production(running: &serve::Running, files: &[String]) -> anyhow::Result<()> {
    use crate::metering::model::{OrderInput, ProductInput};
    let m = running.metering();
    for (sku, name, file, material, price, material_cost, quantity) in [
        (
            "demo-tile",
            "Demo tile",
            &files[0],
            Some("PLA"),
            6.0,
            None,
            12,
        ),
        (
            "demo-pcb",
            "Demo PCB outline",
            &files[1],
            None,
            12.0,
            Some(1.5),
            4,
        ),
    ] {
        m.create_product(ProductInput {
            sku: Some(sku.into()),
            name: name.into(),
            file_id: file.clone(),
            material: material.map(String::from),
            price_per_unit: Some(price),
            material_cost_per_unit: material_cost,
            ..ProductInput::default()
        })
        .await
        .with_context(|| format!("demo product {sku}"))?;
        m.create_order(OrderInput {
            sku: sku.into(),
            quantity,
            due_ms: None,
            priority: None,
        })
        .await
        .with_context(|| format!("demo order of {sku}"))?;
    }
    Ok(())
}

/// The demo's operator: clears beds once a second and inspects what was
/// made, failing about one unit in seven (with a reason), so the QC
/// figures and the loss Pareto have something to show. A real operator
/// does this from the Production view.
async fn demo_operator(
    factory: std::sync::Arc<crate::factory::Factory>,
    metering: std::sync::Arc<crate::metering::Metering>,
) {
    use crate::metering::model::{QcInput, QcState};
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        for m in factory.machines() {
            if m.awaiting_clear && m.job_id.is_none() {
                let _ = factory.set_machine(&m.id, Some(true), None).await;
            }
        }
        let pending = metering
            .units(&crate::metering::UnitFilter {
                state: Some(QcState::Pending),
                ..crate::metering::UnitFilter::default()
            })
            .unwrap_or_default();
        for u in pending {
            let n: u64 = u.serial.trim_start_matches('U').parse().unwrap_or(0);
            let input = if n % 7 == 3 {
                QcInput {
                    result: QcState::Fail,
                    reason: Some(
                        if u.sku == "demo-pcb" {
                            "burr"
                        } else {
                            "warping"
                        }
                        .into(),
                    ),
                    note: None,
                }
            } else {
                QcInput {
                    result: QcState::Pass,
                    reason: None,
                    note: None,
                }
            };
            let _ = metering.inspect(&u.serial, input, "demo inspector").await;
        }
    }
}

/// The demo's product, made to order.
pub const DEMO_SKU: &str = "demo-tile";
/// The demo storefront's token name.
const SHOP_NAME: &str = "demo storefront";

/// The demo's sender: a shop name and return address for its labels.
fn demo_shop() -> crate::config::ShopConfig {
    crate::config::ShopConfig {
        name: "Microfactory Demo Shop".into(),
        address: Address {
            name: "Microfactory Demo Workshop".into(),
            street1: "200 Industrial Way".into(),
            street2: None,
            city: "Oakland".into(),
            region: Some("CA".into()),
            postal_code: "94607".into(),
            country: "US".into(),
            phone: None,
            email: None,
        },
    }
}

/// A few storefront orders arriving while the factory runs: the first is
/// short, so it opens a production order (the tile is made to order), and
/// its unit goes machine → QC (the demo's inspector) → finished goods →
/// the order, ready for a shipment.
async fn demo_orders(commerce: std::sync::Arc<Commerce>) {
    for (wait_s, ext, quantity, when_short) in [
        (2, "D-1001", 1, WhenShort::Backorder),
        (40, "D-1002", 2, WhenShort::Backorder),
        (90, "D-1003", 1, WhenShort::Reject),
    ] {
        tokio::time::sleep(std::time::Duration::from_secs(wait_s)).await;
        let input = OrderInput {
            channel: "demo".into(),
            external_id: ext.into(),
            lines: vec![LineInput {
                sku: DEMO_SKU.into(),
                quantity,
            }],
            ship_to: Address {
                name: "Ada Lovelace".into(),
                street1: "12 Market St".into(),
                street2: None,
                city: "San Francisco".into(),
                region: Some("CA".into()),
                postal_code: "94105".into(),
                country: "US".into(),
                phone: None,
                email: None,
            },
            service: "standard".into(),
            when_short,
        };
        let digest = body_digest(ext.as_bytes());
        match commerce
            .create_order(input, Some(format!("demo-{ext}")), digest, SHOP_NAME)
            .await
        {
            Ok(_) => tracing::info!(order = ext, "demo storefront order placed"),
            Err(e) => tracing::info!(order = ext, error = %e, "demo storefront order refused"),
        }
    }
}

/// A 20 mm square, 2 mm thick tile: perimeters and zig-zag infill.
pub fn tile_gcode() -> String {
    // 0.4 mm wide, 0.2 mm tall lines of 1.75 mm filament.
    let e_per_mm = 0.4 * 0.2 / (std::f64::consts::PI * 0.875 * 0.875);
    let mut g = String::from(
        "; microfactoryd demo part: 20 mm square tile\nM140 S60\nM104 S210\nM190 S60\nM109 S210\nG28\nG90\nM82\nG92 E0\nG1 Z5 F3000\n",
    );
    let mut e = 0.0;
    let (x0, y0, side) = (100.0, 100.0, 20.0);
    for layer in 1..=10 {
        let z = 0.2 * f64::from(layer);
        let _ = writeln!(
            g,
            ";LAYER_CHANGE\nG1 Z{z:.2} F600\nG0 X{x0:.2} Y{y0:.2} F6000"
        );
        for (x, y) in [
            (x0 + side, y0),
            (x0 + side, y0 + side),
            (x0, y0 + side),
            (x0, y0),
        ] {
            e += side * e_per_mm;
            let _ = writeln!(g, "G1 X{x:.2} Y{y:.2} E{e:.4} F1800");
        }
        let mut y = y0 + 0.5;
        let mut left = true;
        while y < y0 + side - 0.25 {
            let (xa, xb) = if left {
                (x0 + 0.5, x0 + side - 0.5)
            } else {
                (x0 + side - 0.5, x0 + 0.5)
            };
            let _ = writeln!(g, "G0 X{xa:.2} Y{y:.2}");
            e += (side - 1.0) * e_per_mm;
            let _ = writeln!(g, "G1 X{xb:.2} Y{y:.2} E{e:.4} F2400");
            y += 0.5;
            left = !left;
        }
    }
    g.push_str("G1 Z10 F600\nM104 S0\nM140 S0\nM107\nM84\n");
    g
}

/// A 30 x 20 mm board outline cut in three passes.
pub fn pcb_outline_gcode() -> String {
    let mut g = String::from(
        "(microfactoryd demo: 30 x 20 mm board outline)\nG21\nG90\nG0 Z2\nM3 S10000\nG4 P1\nG0 X0 Y0\n",
    );
    for pass in 1..=3 {
        let z = -0.5 * f64::from(pass);
        let _ = writeln!(g, "G1 Z{z:.2} F60");
        for (x, y) in [(30.0, 0.0), (30.0, 20.0), (0.0, 20.0), (0.0, 0.0)] {
            let _ = writeln!(g, "G1 X{x:.2} Y{y:.2} F300");
        }
    }
    g.push_str("G0 Z5\nM5\nG0 X0 Y0\nM2\n");
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use microfactory_protocol::analysis::analyze_bytes;

    #[test]
    fn the_sample_programs_are_what_they_claim() {
        let tile = analyze_bytes(tile_gcode().as_bytes(), Default::default()).expect("tile");
        assert!(tile.uses_extrusion && !tile.uses_spindle);
        assert_eq!(tile.layers, 10);
        let b = tile.bounds_mm.expect("bounds");
        assert!((b.size()[0] - 20.0).abs() < 0.01, "{b:?}");
        let pcb = analyze_bytes(pcb_outline_gcode().as_bytes(), Default::default()).expect("pcb");
        assert!(pcb.uses_spindle && !pcb.uses_extrusion);
    }
}
