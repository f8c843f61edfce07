//! Stopping: systemd gives the daemon `TimeoutStopSec=30s` after SIGTERM
//! and then kills it, losing whatever was not stored. With a farm of
//! twenty machines, one of them mid-print, the daemon must stop well
//! within that, and the interrupted print must be on record with its
//! machine waiting for the operator.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use microfactory_e2e::{Factory, MachineSpec};
use serde_json::{Value, json};

/// Well under systemd's 30 s, so a loaded machine still passes and a
/// shutdown that waits on machines one after another (5 s each) fails.
const STOP_WITHIN: Duration = Duration::from_secs(12);

const IDS: [&str; 20] = [
    "p00", "p01", "p02", "p03", "p04", "p05", "p06", "p07", "p08", "p09", "m10", "m11", "m12",
    "m13", "m14", "m15", "m16", "m17", "m18", "m19",
];

async fn machines(f: &Factory) -> Vec<Value> {
    let (s, v) = f.get("/machines").await.unwrap();
    assert!(s.is_success(), "{s} {v}");
    v.as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_machines_stop_together_and_an_interrupted_print_waits_for_the_operator() {
    let specs: Vec<MachineSpec> = IDS
        .iter()
        .map(|id| {
            if id.starts_with('p') {
                let mut s = MachineSpec::printer(id, "prusa-mk3s");
                // Slow enough that the print is still running at SIGTERM.
                s.time_scale = 5.0;
                s
            } else {
                MachineSpec::mill(id)
            }
        })
        .collect();
    let mut f = Factory::start(&specs).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while machines(&f).await.iter().any(|m| m["state"] != "idle") {
        assert!(Instant::now() < deadline, "machines never all came online");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut program = String::from("M104 S200\nG28\n");
    for i in 0..400 {
        program.push_str(&format!(
            "G1 X{} Y{} E{} F1200\n",
            10 + i % 50,
            10 + i % 40,
            i
        ));
    }
    let (s, file) = f
        .upload_bytes("long.gcode", program.into_bytes())
        .await
        .unwrap();
    assert!(s.is_success(), "{s} {file}");
    let ids = f
        .submit(json!({"file_id": file["id"], "machine_id": "p03"}))
        .await
        .unwrap();
    let mut events = f.events().await.unwrap();
    loop {
        let p = events.next_of("progress").await.unwrap();
        if p["job_id"] == ids[0] && p["progress"]["lines_done"].as_u64() > Some(5) {
            break;
        }
    }
    let asked = Instant::now();
    let status = f.terminate().await.unwrap();
    let took = asked.elapsed();
    eprintln!("SIGTERM with 20 machines, one printing: exited after {took:?}");
    assert!(status.success(), "{status}");
    assert!(took < STOP_WITHIN, "SIGTERM took {took:?} with 20 machines");
    f.launch().await.unwrap();
    let (_, job) = f.get(&format!("/jobs/{}", ids[0])).await.unwrap();
    assert_eq!(job["state"], "interrupted", "{job}");
    // Once it is back online, the printer waits for the operator.
    let deadline = Instant::now() + Duration::from_secs(60);
    let m = loop {
        let m = machines(&f)
            .await
            .into_iter()
            .find(|m| m["id"] == "p03")
            .unwrap();
        if m["status"]["connection"] == "online" {
            break m;
        }
        assert!(Instant::now() < deadline, "p03 never came back: {m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(m["machine_state"], "awaiting_operator", "{m}");
    assert_eq!(m["reason"], "interrupted", "{m}");
    let (_, attempts) = f.get(&format!("/jobs/{}/attempts", ids[0])).await.unwrap();
    assert_eq!(attempts[0]["outcome"], "interrupted", "{attempts}");
}
