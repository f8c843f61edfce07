//! Metering's second stage end to end: a production order on a simulated
//! printer with a `kill -9` while it runs, then `GET /metrics` parsed line
//! by line and checked against what the API and the store say, before and
//! after another `kill -9`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use microfactory_e2e::{Factory, MachineSpec, now_ms};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A small print: home, a first layer of a few moves.
const PLATE: &str = "G28\nG90\nM83\nG1 Z0.2 F3000\nG1 X10 Y10 E1 F1500\nG1 X40 Y10 E2\n\
G1 X40 Y40 E2\nG1 X10 Y40 E2\nG1 X10 Y10 E2\nG1 Z5 F3000\n";

const CONFIG: &str = r#"
[apc.tile.fdm_printer]
window = { min_units = 4, min_planned_hours = 0 }
quality_ratio_min = 0.9
cost_per_good_unit_max = 100.0

[costs]
currency = "USD"
labour_rate_per_hour = 60.0
energy_price_per_kwh = 0.3
qc_minutes_per_unit = 1.0

[costs.material.PLA]
price_per_kg = 25.0

[costs.class.fdm_printer]
purchase_price = 800.0
service_life_hours = 5000.0
power_draw_w = 120.0
"#;

fn slow_enough(mut m: MachineSpec) -> MachineSpec {
    // Fast, but a plate still takes a moment: the kill lands while the
    // order is running.
    m.time_scale = 1000.0;
    m.tweak = |c| {
        c.baud = 250_000;
        c.latency_ms = 0.0;
    };
    m
}

/// One sample of the exposition.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict reader of the OpenMetrics text format as far as `/metrics`
/// uses it: every sample belongs to a family declared before it by
/// `# TYPE`, labels are `name="value"` with escapes, values are numbers,
/// and the exposition ends with `# EOF`.
fn parse(text: &str) -> Vec<Sample> {
    let mut families: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    let mut eof = false;
    for line in text.lines() {
        assert!(!eof, "a line after # EOF: {line}");
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap(), parts.next().unwrap());
            match kind {
                "TYPE" => {
                    let t = parts.next().unwrap();
                    assert!(
                        ["counter", "gauge", "histogram"].contains(&t),
                        "type {t} in {line}"
                    );
                    assert!(
                        families.insert(name.to_string(), t.to_string()).is_none(),
                        "family declared twice: {line}"
                    );
                }
                "HELP" | "UNIT" => assert!(parts.next().is_some(), "{line}"),
                _ => panic!("unknown comment line: {line}"),
            }
            continue;
        }
        let (head, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value of {line}")),
        };
        let (name, labels) = match head.split_once('{') {
            None => (head.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line}"));
                (name.to_string(), parse_labels(body, line))
            }
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        let family = families
            .keys()
            .find(|f| {
                name == **f
                    || ["_total", "_bucket", "_count", "_sum", "_created"]
                        .iter()
                        .any(|s| name == format!("{f}{s}"))
            })
            .unwrap_or_else(|| panic!("sample of no declared family: {line}"));
        let t = &families[family];
        match t.as_str() {
            "counter" => assert!(name.ends_with("_total"), "{line}"),
            "gauge" => assert_eq!(&name, family, "{line}"),
            _ => {}
        }
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    assert!(eof, "no # EOF at the end");
    samples
}

fn parse_labels(body: &str, line: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert_eq!(chars.next(), Some('"'), "{line}");
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => panic!("{line}"),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => panic!("unterminated label value: {line}"),
            }
        }
        assert!(out.insert(key, value).is_none(), "label twice: {line}");
        match chars.next() {
            Some(',') | None => {}
            Some(c) => panic!("'{c}' after a label: {line}"),
        }
    }
    out
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

async fn scrape(f: &Factory, token: &str) -> (String, Vec<Sample>) {
    let res = f
        .http
        .get(format!("{}/metrics", f.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let ct = res.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let text = res.text().await.unwrap();
    let samples = parse(&text);
    (text, samples)
}

/// The samples that depend only on what was recorded, not on the clock
/// or the link: units, attempts, resends, verdicts, queue depth.
fn recorded(samples: &[Sample]) -> Vec<Sample> {
    samples
        .iter()
        .filter(|s| {
            !s.name.starts_with("microfactory_machine_state")
                && !s.name.starts_with("microfactory_oee")
                && !s.name.starts_with("microfactory_log_lag")
        })
        .cloned()
        .collect()
}

/// Interrupted jobs of the order, requeued from the start after the
/// operator clears the machine (what the dashboard asks of a person).
async fn restart_interrupted(f: &Factory, order: &Value) -> usize {
    let mut n = 0;
    for j in order["jobs"].as_array().unwrap() {
        let id = j["job_id"].as_u64().unwrap();
        let (_, job) = f.get(&format!("/jobs/{id}")).await.unwrap();
        if job["state"] == "interrupted" {
            let (s, m) = f.post("/machines/mk3/clear", json!({})).await.unwrap();
            assert!(s.is_success(), "{m}");
            let (s, r) = f
                .post(&format!("/jobs/{id}/requeue"), json!({}))
                .await
                .unwrap();
            assert_eq!(s, StatusCode::OK, "{r}");
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_agree_with_the_store_and_kill_9_during_production_loses_and_duplicates_no_unit() {
    let mut f = Factory::start_with(
        &[slow_enough(MachineSpec::printer("mk3", "prusa-mk3s"))],
        CONFIG,
    )
    .await
    .unwrap();
    // A scraper's own token (sled admits one process: stop, create, start).
    f.terminate().await.unwrap();
    let scraper = Factory::token_create(f.dir.path(), "metrics").unwrap();
    f.launch().await.unwrap();

    // The scraper reads /metrics and nothing else; no token, no metrics.
    let res = f
        .http
        .get(format!("{}/metrics", f.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let (s, body) = f
        .send(f.request(reqwest::Method::GET, "/jobs"), Some(&scraper))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");

    let (s, file) = f
        .upload_bytes("tile.gcode", PLATE.as_bytes().to_vec())
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED, "{file}");
    let file_id = file["id"].as_str().unwrap();
    let (s, p) = f
        .post(
            "/products",
            json!({"sku": "tile", "name": "Test tile", "file_id": file_id,
                "units_per_job": 2, "material": "PLA", "price_per_unit": 4.5}),
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let (s, o) = f
        .post("/production-orders", json!({"sku": "tile", "quantity": 6}))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED, "{o}");
    let order = o["id"].as_u64().unwrap();

    // kill -9 as soon as the first plate's units exist, while the next
    // plate runs.
    f.order_until(order, Duration::from_secs(120), |o| {
        o["progress"]["produced"].as_u64().unwrap() >= 2
    })
    .await
    .unwrap();
    f.kill9().await;
    f.launch().await.unwrap();
    let o = f
        .order_until(order, Duration::from_secs(120), |_| true)
        .await
        .unwrap();
    restart_interrupted(&f, &o).await;
    let o = f
        .order_until(order, Duration::from_secs(120), |o| {
            o["progress"]["produced"] == 6
        })
        .await
        .unwrap();
    assert_eq!(o["progress"]["awaiting_qc"], 6, "{o}");

    // No unit lost, none twice: six serials, one per place, none spent
    // twice.
    let (_, units) = f.get("/units?sku=tile").await.unwrap();
    let units = units.as_array().unwrap().clone();
    let serials: Vec<&str> = units
        .iter()
        .map(|u| u["serial"].as_str().unwrap())
        .collect();
    assert_eq!(
        serials,
        (1..=6).map(|n| format!("U{n:09}")).collect::<Vec<_>>(),
        "{units:?}"
    );
    let places: BTreeSet<(u64, u64, u64)> = units
        .iter()
        .map(|u| {
            (
                u["job_id"].as_u64().unwrap(),
                u["attempt"].as_u64().unwrap(),
                u["index"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(places.len(), 6);

    // QC: five pass, one fails (and the order queues one more plate, whose
    // two units pass).
    for s in &serials[..5] {
        let (st, u) = f
            .post(&format!("/units/{s}/qc"), json!({"result": "pass"}))
            .await
            .unwrap();
        assert_eq!(st, StatusCode::OK, "{u}");
    }
    let (st, u) = f
        .post(
            &format!("/units/{}/qc", serials[5]),
            json!({"result": "fail", "reason": "warping"}),
        )
        .await
        .unwrap();
    assert_eq!(st, StatusCode::OK, "{u}");
    let o = f
        .order_until(order, Duration::from_secs(120), |o| {
            o["progress"]["produced"] == 8
        })
        .await
        .unwrap();
    let (_, pending) = f.get("/units?sku=tile&state=pending").await.unwrap();
    for u in pending.as_array().unwrap() {
        let s = u["serial"].as_str().unwrap();
        let (st, u) = f
            .post(&format!("/units/{s}/qc"), json!({"result": "pass"}))
            .await
            .unwrap();
        assert_eq!(st, StatusCode::OK, "{u}");
    }
    f.order_until(order, Duration::from_secs(120), |o| o["state"] == "done")
        .await
        .unwrap();

    // /metrics against the API.
    let (exposition, samples) = scrape(&f, &scraper).await;
    let units_gauge = |qc: &str| {
        value(
            &samples,
            "microfactory_units",
            &[("sku", "tile"), ("qc", qc)],
        )
    };
    assert_eq!(units_gauge("pass"), Some(7.0));
    assert_eq!(units_gauge("fail"), Some(1.0));
    assert_eq!(units_gauge("pending"), Some(0.0));
    // Every ended attempt of every job, by outcome, against the job
    // records; and resends against the attempts' stream statistics.
    let mut outcomes: BTreeMap<String, f64> = BTreeMap::new();
    let mut resends = 0.0;
    for j in o["jobs"].as_array().unwrap() {
        let id = j["job_id"].as_u64().unwrap();
        let (_, attempts) = f.get(&format!("/jobs/{id}/attempts")).await.unwrap();
        for a in attempts.as_array().unwrap() {
            if let Some(outcome) = a["outcome"].as_str() {
                *outcomes.entry(outcome.to_string()).or_default() += 1.0;
                resends += a["stats"]["resends"].as_f64().unwrap_or(0.0);
            }
        }
    }
    assert_eq!(outcomes.get("completed"), Some(&4.0), "{outcomes:?}");
    for (outcome, n) in &outcomes {
        let count = value(
            &samples,
            "microfactory_attempt_duration_seconds_count",
            &[("outcome", outcome)],
        );
        assert_eq!(count, Some(*n), "{outcome}: {exposition}");
        let inf = value(
            &samples,
            "microfactory_attempt_duration_seconds_bucket",
            &[("outcome", outcome), ("le", "+Inf")],
        );
        assert_eq!(inf, Some(*n), "{outcome}");
    }
    let exposed_resends: f64 = samples
        .iter()
        .filter(|s| s.name == "microfactory_serial_resends_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(exposed_resends, resends);
    assert_eq!(value(&samples, "microfactory_queue_depth", &[]), Some(0.0));
    let (_, apc) = f.get("/apc").await.unwrap();
    let verdict = apc[0]["verdict"].as_str().unwrap();
    assert_eq!(
        value(
            &samples,
            "microfactory_apc_verdict",
            &[
                ("sku", "tile"),
                ("class", "fdm_printer"),
                ("verdict", verdict)
            ]
        ),
        Some(1.0),
        "{apc}"
    );
    let (_, machine) = f.get("/machines/mk3").await.unwrap();
    let state = machine["machine_state"].as_str().unwrap();
    assert_eq!(
        value(
            &samples,
            "microfactory_machine_state",
            &[("machine", "mk3"), ("state", state)]
        ),
        Some(1.0),
        "{machine}"
    );
    // OEE of the class over the last day against the API's figures for
    // the only machine of the class: quality and effectiveness do not move
    // while nothing runs; availability only by the idle moments between
    // the two reads.
    let (_, m) = f
        .get(&format!(
            "/metrics?scope=machine&id=mk3&from={}",
            now_ms() - 24 * 3_600_000
        ))
        .await
        .unwrap();
    let oee = |c: &str| {
        value(
            &samples,
            "microfactory_oee",
            &[("class", "fdm_printer"), ("component", c)],
        )
        .unwrap()
    };
    // The two encoders print the last digit of a double differently.
    let same = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(b.abs());
    for c in ["quality_ratio", "effectiveness"] {
        let api = m["figures"][c].as_f64().unwrap();
        assert!(same(oee(c), api), "{c}: {} against {api}", oee(c));
    }
    let a = m["figures"]["availability"].as_f64().unwrap();
    assert!(
        oee("availability") >= a - 1e-12 && oee("availability") - a < 0.05,
        "{a} {}",
        oee("availability")
    );
    // Cost accounts with their inputs.
    let cost = &apc[0]["cost"];
    assert_eq!(cost["inputs"]["good"], 7, "{cost}");
    assert_eq!(cost["inputs"]["produced"], 8, "{cost}");
    assert_eq!(cost["material_per_unit"]["source"], "filament", "{cost}");

    // kill -9 again: what was recorded, the metrics of a closed window and
    // the APC verdicts are the same after the restart.
    let to = now_ms();
    let (_, closed) = f
        .get(&format!("/metrics?scope=machine&id=mk3&from=0&to={to}"))
        .await
        .unwrap();
    let (_, apc_closed) = f.get(&format!("/apc?from=0&to={to}")).await.unwrap();
    f.kill9().await;
    f.launch().await.unwrap();
    let (_, after) = scrape(&f, &scraper).await;
    assert_eq!(recorded(&after), recorded(&samples));
    let (_, closed_after) = f
        .get(&format!("/metrics?scope=machine&id=mk3&from=0&to={to}"))
        .await
        .unwrap();
    assert_eq!(closed_after, closed);
    let (_, apc_after) = f.get(&format!("/apc?from=0&to={to}")).await.unwrap();
    assert_eq!(apc_after, apc_closed);
}
