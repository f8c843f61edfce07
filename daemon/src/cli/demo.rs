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
use crate::config::{Config, MachineConfig};
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
        apc: std::collections::BTreeMap::new(),
        mqtt: None,
        webhooks: Vec::new(),
        webhook_retry: crate::config::WebhookRetry::default(),
        shopify: Vec::new(),
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
    store.flush().await?;
    let running = serve::start(checked, store).await?;
    for (name, text) in [
        ("demo-tile.gcode", tile_gcode()),
        ("demo-pcb-outline.nc", pcb_outline_gcode()),
    ] {
        let mut up = running.factory.upload()?;
        up.push(text.as_bytes())?;
        running.factory.add_file(up, name.into()).await?;
    }
    println!("listening on http://{}", running.addr);
    println!("microfactoryd demo: dashboard at http://{}/", running.addr);
    println!("operator token: {token}");
    println!(
        "machines: 2 simulated Marlin printers and 1 simulated GRBL mill, {DEMO_TIME_SCALE}x real time"
    );
    serve::signal().await;
    running.stop().await;
    for s in sims {
        s.shutdown().await;
    }
    Ok(())
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
