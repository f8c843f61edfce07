//! README's main command: `microfactoryd --demo` starts a working factory
//! with nothing else installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use microfactory_e2e::{TempDir, daemon_bin};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_a_sample_job_on_its_simulated_mill() {
    let dir = TempDir::new("demo");
    let mut child = tokio::process::Command::new(daemon_bin())
        .args(["--demo", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("MICROFACTORYD_TOKEN", "demo-secret")
        .env("MICROFACTORYD_STOREFRONT_TOKEN", "shop-secret")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    while printed.len() < 4 {
        let l = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("demo prints its banner")
            .unwrap()
            .expect("demo exited early");
        printed.push(l);
    }
    let base = printed[0]
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    assert!(printed[1].contains(&format!("{base}/")), "{printed:?}");
    assert_eq!(printed[2], "operator token: demo-secret");
    assert_eq!(printed[3], "storefront token: shop-secret");

    let http = reqwest::Client::new();
    let get = |path: &str| {
        http.get(format!("{base}/api/v1{path}"))
            .bearer_auth("demo-secret")
            .send()
    };
    let files: Value = get("/files").await.unwrap().json().await.unwrap();
    let pcb = files
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "demo-pcb-outline.nc")
        .expect("sample mill job uploaded");
    assert_eq!(files.as_array().unwrap().len(), 2, "{files}");

    // Subscribe first, then queue: the events cannot be missed.
    let mut events = http
        .get(format!("{base}/api/v1/events"))
        .bearer_auth("demo-secret")
        .send()
        .await
        .unwrap();
    let res = http
        .post(format!("{base}/api/v1/jobs"))
        .bearer_auth("demo-secret")
        // Ahead of the demo's own production orders.
        .json(&json!({"file_id": pcb["id"], "priority": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let queued: Value = res.json().await.unwrap();
    let id = queued["jobs"][0]["id"].as_u64().unwrap();
    // Every event may be the one: read the job again after each.
    let job = tokio::time::timeout(Duration::from_secs(120), async {
        while events.chunk().await.unwrap().is_some() {
            let j: Value = get(&format!("/jobs/{id}"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_ne!(j["state"], "failed", "{j}");
            if j["state"] == "completed" {
                return j;
            }
        }
        panic!("the event stream ended");
    })
    .await
    .expect("the demo job completes");
    assert_eq!(job["assigned_machine"], "mill-1", "{job}");

    // The demo storefront's first order arrived and, being short of the
    // made-to-order tile, opened a production order.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let order = loop {
        let orders: Value = http
            .get(format!("{base}/api/v1/orders"))
            .bearer_auth("shop-secret")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let first = orders.as_array().unwrap().first().cloned();
        if let Some(o) = first.filter(|o| {
            o["lines"][0]["production_orders"]
                .as_array()
                .is_some_and(|p| !p.is_empty())
        }) {
            break o;
        }
        assert!(tokio::time::Instant::now() < deadline, "{orders}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(order["external_id"], "D-1001", "{order}");
    let _ = child.start_kill();
}

/// Starts `--demo` without `--data-dir`, with `TMPDIR` pointing at `tmp`,
/// and returns the child, its API base and its token.
async fn start_demo_without_data_dir(
    tmp: &std::path::Path,
    token: &str,
) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(daemon_bin())
        .args(["--demo", "--listen", "127.0.0.1:0"])
        .env("TMPDIR", tmp)
        .env("MICROFACTORYD_TOKEN", token)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("demo prints its address")
        .unwrap()
        .expect("demo exited early");
    let base = first.strip_prefix("listening on ").unwrap().to_string();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_demos_without_a_data_dir_each_get_their_own_and_leave_nothing_behind() {
    let tmp = TempDir::new("demo-tmp");
    let (mut a, base_a) = start_demo_without_data_dir(tmp.path(), "secret-a").await;
    let (mut b, base_b) = start_demo_without_data_dir(tmp.path(), "secret-b").await;

    let http = reqwest::Client::new();
    for (base, token, other) in [
        (&base_a, "secret-a", "secret-b"),
        (&base_b, "secret-b", "secret-a"),
    ] {
        let files: Value = http
            .get(format!("{base}/api/v1/files"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        // Its own two samples, not the other demo's too.
        assert_eq!(files.as_array().unwrap().len(), 2, "{files}");
        // And not the other demo's token store.
        let res = http
            .get(format!("{base}/api/v1/files"))
            .bearer_auth(other)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
    }

    for child in [&mut a, &mut b] {
        let pid = child.id().unwrap();
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("the demo stops on SIGTERM")
            .unwrap();
        assert!(status.success(), "{status}");
    }
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind in TMPDIR: {left:?}");
}
