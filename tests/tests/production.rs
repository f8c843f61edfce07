//! Production metering end to end: a product with two units per plate, a
//! production order of four on a simulated printer, units made by the log
//! reader, a QC failure that queues another plate, and metrics that agree
//! with the machine state log as this test reads it for itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use microfactory_e2e::{Factory, MachineSpec, now_ms};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A small print: home, a first layer of a few moves.
const PLATE: &str = "G28\nG90\nM83\nG1 Z0.2 F3000\nG1 X10 Y10 E1 F1500\nG1 X40 Y10 E2\n\
G1 X40 Y40 E2\nG1 X10 Y40 E2\nG1 X10 Y10 E2\nG1 Z5 F3000\n";

const APC: &str = r#"
[apc.tile.fdm_printer]
window = { min_units = 4, min_planned_hours = 0 }
quality_ratio_min = 0.9
availability_min = 0.0
"#;

fn fast(mut m: MachineSpec) -> MachineSpec {
    m.time_scale = 5000.0;
    m.tweak = |c| {
        c.baud = 2_000_000;
        c.latency_ms = 0.0;
    };
    m
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_u64().unwrap())
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_makes_serialised_units_and_a_qc_failure_queues_another_plate() {
    let f = Factory::start_with(&[fast(MachineSpec::printer("mk3", "prusa-mk3s"))], APC)
        .await
        .unwrap();
    let mut events = f.events().await.unwrap();
    let (s, file) = f
        .upload_bytes("tile.gcode", PLATE.as_bytes().to_vec())
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED, "{file}");
    let file_id = file["id"].as_str().unwrap();
    let estimated = file["analysis"]["estimated_seconds"].as_f64().unwrap();

    // A product: two tiles per plate; the planned runtime per unit is the
    // analysed duration over two.
    let (s, p) = f
        .post(
            "/products",
            json!({"sku": "tile", "name": "Test tile", "file_id": file_id,
                "units_per_job": 2, "material": "PLA", "price_per_unit": 4.5}),
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED, "{p}");
    assert!(close(
        p["planned_runtime_per_unit_s"].as_f64().unwrap(),
        estimated / 2.0
    ));
    let (s, dup) = f
        .post(
            "/products",
            json!({"sku": "tile", "name": "x", "file_id": file_id}),
        )
        .await
        .unwrap();
    assert_eq!(
        (s, dup["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );
    let (s, bad) = f
        .post(
            "/products",
            json!({"sku": "a b", "name": "x", "file_id": file_id}),
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");

    // Four tiles: two plates.
    let (s, o) = f
        .post("/production-orders", json!({"sku": "tile", "quantity": 4}))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED, "{o}");
    let order = o["id"].as_u64().unwrap();
    let first = ids(&o["queued"]);
    assert_eq!(first.len(), 2, "{o}");
    assert_eq!(o["progress"]["in_progress"], 4, "{o}");
    for j in f
        .wait_ended(&mut events, &first, Duration::from_secs(60))
        .await
        .unwrap()
    {
        assert_eq!(j["state"], "completed", "{j}");
    }
    let o = f
        .order_until(order, Duration::from_secs(30), |o| {
            o["progress"]["produced"] == 4
        })
        .await
        .unwrap();
    assert_eq!(o["progress"]["awaiting_qc"], 4, "{o}");
    assert_eq!(o["progress"]["jobs_needed"], 0, "{o}");

    let (_, units) = f.get("/units?sku=tile&state=pending").await.unwrap();
    let units = units.as_array().unwrap().clone();
    assert_eq!(units.len(), 4);
    let serials: BTreeSet<&str> = units
        .iter()
        .map(|u| u["serial"].as_str().unwrap())
        .collect();
    assert_eq!(serials.len(), 4, "serials are unique");
    assert!(serials.iter().all(|s| s.len() <= 20));
    for u in &units {
        assert_eq!(u["machine_id"], "mk3");
        assert_eq!(u["gcode_sha256"], file_id);
        assert!(first.contains(&u["job_id"].as_u64().unwrap()), "{u}");
        assert_eq!(u["attempt"], 1);
        assert!(u["started_ms"].as_u64().unwrap() <= u["ended_ms"].as_u64().unwrap());
    }
    let places: BTreeSet<(u64, u64)> = units
        .iter()
        .map(|u| (u["job_id"].as_u64().unwrap(), u["index"].as_u64().unwrap()))
        .collect();
    assert_eq!(places.len(), 4, "one unit per place on each plate");

    // QC: three pass, one fails; the order is short by one: one plate more.
    let serials: Vec<String> = serials.iter().map(|s| (*s).to_string()).collect();
    for s in &serials[..3] {
        let (st, u) = f
            .post(&format!("/units/{s}/qc"), json!({"result": "pass"}))
            .await
            .unwrap();
        assert_eq!(st, StatusCode::OK, "{u}");
        assert_eq!(u["first_pass"], true);
    }
    let (st, no_reason) = f
        .post(
            &format!("/units/{}/qc", serials[3]),
            json!({"result": "fail"}),
        )
        .await
        .unwrap();
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{no_reason}");
    let (st, u) = f
        .post(
            &format!("/units/{}/qc", serials[3]),
            json!({"result": "fail", "reason": "warping", "note": "corner lifted"}),
        )
        .await
        .unwrap();
    assert_eq!(st, StatusCode::OK, "{u}");
    assert_eq!(u["qc_history"][0]["by"], "test operator");
    let (st, again) = f
        .post(
            &format!("/units/{}/qc", serials[3]),
            json!({"result": "pass"}),
        )
        .await
        .unwrap();
    assert_eq!(st, StatusCode::CONFLICT, "{again}");
    let o = f
        .order_until(order, Duration::from_secs(30), |o| {
            o["jobs"].as_array().unwrap().len() == 3
        })
        .await
        .unwrap();
    assert_eq!(
        (&o["progress"]["good"], &o["progress"]["scrap"]),
        (&json!(3), &json!(1)),
        "{o}"
    );
    let third = o["jobs"][2]["job_id"].as_u64().unwrap();
    f.wait_ended(&mut events, &[third], Duration::from_secs(60))
        .await
        .unwrap();
    let o = f
        .order_until(order, Duration::from_secs(30), |o| {
            o["progress"]["produced"] == 6
        })
        .await
        .unwrap();
    assert_eq!(o["state"], "open", "{o}");
    let (_, newest) = f.get("/units?sku=tile&state=pending").await.unwrap();
    let newest = newest[0]["serial"].as_str().unwrap().to_string();
    let (st, _) = f
        .post(&format!("/units/{newest}/qc"), json!({"result": "pass"}))
        .await
        .unwrap();
    assert_eq!(st, StatusCode::OK);
    let o = f
        .order_until(order, Duration::from_secs(30), |o| o["state"] == "done")
        .await
        .unwrap();
    assert_eq!(o["progress"]["good"], 4, "{o}");
    assert_eq!(
        o["jobs"].as_array().unwrap().len(),
        3,
        "no plate beyond the need"
    );

    // The product stays while its order and units refer to it.
    let (st, body) = f
        .send(
            f.request(reqwest::Method::DELETE, "/products/tile"),
            Some(&f.token),
        )
        .await
        .unwrap();
    assert_eq!(st, StatusCode::CONFLICT, "{body}");

    // Metrics of the machine over a closed window, against the state log
    // read and summed here.
    let to = now_ms();
    let (st, m) = f
        .get(&format!("/metrics?scope=machine&id=mk3&from=0&to={to}"))
        .await
        .unwrap();
    assert_eq!(st, StatusCode::OK, "{m}");
    let (_, states) = f
        .get(&format!("/machines/mk3/states?from=0&to={to}"))
        .await
        .unwrap();
    let states = states.as_array().unwrap();
    let (mut apt, mut pbt) = (0u64, 0u64);
    for (i, c) in states.iter().enumerate() {
        let start = c["at_ms"].as_u64().unwrap();
        let end = states
            .get(i + 1)
            .map_or(to, |n| n["at_ms"].as_u64().unwrap());
        let d = end.min(to).saturating_sub(start);
        match c["state"].as_str().unwrap() {
            "planned_down" => {}
            "producing" => {
                apt += d;
                pbt += d;
            }
            _ => pbt += d,
        }
    }
    assert!(apt > 0, "{states:?}");
    assert_eq!(m["time"]["apt_ms"], apt, "{m}");
    assert_eq!(m["time"]["pbt_ms"], pbt, "{m}");
    let q = &m["quantities"];
    assert_eq!(
        (&q["produced"], &q["good"], &q["scrap"], &q["uninspected"]),
        (&json!(6), &json!(4), &json!(1), &json!(1)),
        "{m}"
    );
    let planned_ms = (estimated / 2.0 * 1000.0).round();
    assert_eq!(q["credited_runtime_ms"].as_f64().unwrap(), 6.0 * planned_ms);
    let fig = &m["figures"];
    #[allow(clippy::cast_precision_loss)]
    let (a, e, qr) = (
        apt as f64 / pbt as f64,
        6.0 * planned_ms / apt as f64,
        4.0 / 6.0,
    );
    assert!(close(fig["availability"].as_f64().unwrap(), a), "{fig}");
    assert!(close(fig["effectiveness"].as_f64().unwrap(), e), "{fig}");
    assert_eq!(fig["effectiveness_over_one"], e > 1.0, "{fig}");
    assert!(close(fig["quality_ratio"].as_f64().unwrap(), qr), "{fig}");
    assert!(close(fig["oee"].as_f64().unwrap(), a * e * qr), "{fig}");
    // Five inspected first: three passed, one failed, the last passed.
    assert!(close(fig["first_pass_yield"].as_f64().unwrap(), 4.0 / 5.0));

    // The product's own time is within the machine's.
    let (_, by_sku) = f
        .get(&format!("/metrics?scope=sku&id=tile&from=0&to={to}"))
        .await
        .unwrap();
    assert_eq!(by_sku["time"]["apt_ms"], apt, "all production was tiles");
    assert!(by_sku["time"]["pbt_ms"].as_u64().unwrap() <= pbt);
    let (st, _) = f.get("/metrics?scope=sku&id=nope").await.unwrap();
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = f.get("/metrics?scope=shift").await.unwrap();
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // APC: six units, enough; quality 4/6 misses 0.9.
    let (_, apc) = f.get(&format!("/apc?from=0&to={to}")).await.unwrap();
    assert_eq!(apc.as_array().unwrap().len(), 1, "{apc}");
    let v = &apc[0];
    assert_eq!(
        (&v["sku"], &v["class"]),
        (&json!("tile"), &json!("fdm_printer"))
    );
    assert_eq!(v["verdict"], "fail", "{v}");
    let quality = v["criteria"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["key"] == "quality_ratio_min")
        .unwrap();
    assert_eq!(quality["status"], "fail");
    assert!(close(quality["measured"].as_f64().unwrap(), qr));
    assert_eq!(quality["threshold"], 0.9);

    // The certification report as PDF, read back by poppler-utils: the
    // verdict, every criterion of the JSON report with its threshold,
    // measured value and status on one line, the units, and the font
    // embedded.
    let path = format!("/apc/tile/fdm_printer/report?from=0&to={to}");
    let (_, report) = f.get(&path).await.unwrap();
    let res = f
        .http
        .get(format!("{}/api/v1{path}&format=pdf", f.base))
        .bearer_auth(&f.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/pdf");
    let bytes = res.bytes().await.unwrap();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("apc-report-pdf");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("report.pdf");
    std::fs::write(&file, &bytes).unwrap();
    let text = poppler("pdftotext", &["-layout", file.to_str().unwrap(), "-"]);
    assert!(text.contains("Verdict: fail"), "{text}");
    let criteria = report["result"]["criteria"].as_array().unwrap();
    assert_eq!(criteria.len(), 2, "{report}");
    for c in criteria {
        let key = c["key"].as_str().unwrap();
        let threshold = c["threshold"].as_f64().unwrap().to_string();
        let measured = format!("{:.3}", c["measured"].as_f64().unwrap());
        let status = c["status"].as_str().unwrap();
        assert!(
            text.lines().any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() >= 4 && cols[..4] == [key, &threshold, &measured, status]
            }),
            "{key} {threshold} {measured} {status} in\n{text}"
        );
    }
    for u in report["units"].as_array().unwrap() {
        assert!(text.contains(u["serial"].as_str().unwrap()), "{text}");
    }
    let fonts = poppler("pdffonts", &[file.to_str().unwrap()]);
    let rows: Vec<&str> = fonts.lines().skip(2).collect();
    assert!(!rows.is_empty(), "{fonts}");
    for row in rows {
        let cols: Vec<&str> = row.split_whitespace().collect();
        let n = cols.len();
        assert!(cols[0].contains("DejaVuSans"), "{fonts}");
        assert_eq!(
            (cols[n - 5], cols[n - 4]),
            ("yes", "yes"),
            "embedded, subset: {fonts}"
        );
    }
    let (st, _) = f.get(&format!("{path}&format=docx")).await.unwrap();
    assert_eq!(st, StatusCode::BAD_REQUEST);
}

/// Runs one of poppler-utils' tools (`.ci/run` installs them).
fn poppler(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} could not start ({e}); install poppler-utils"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
