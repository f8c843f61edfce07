//! Log output: plain lines by default (journald-friendly), one JSON object
//! per line with `--log-format json`, carrying the spans' machine and job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use microfactory_e2e::{TempDir, daemon_bin};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Starts the demo (which runs production orders at once) with `args`
/// and returns its log lines until `pick` accepts one.
async fn demo_log_until(args: &[&str], pick: impl Fn(&str) -> bool) -> (Vec<String>, String) {
    let dir = TempDir::new("logs");
    let mut child = tokio::process::Command::new(daemon_bin())
        .args(["--demo", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(args)
        .env_remove("MICROFACTORYD_LOG_FORMAT")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let hit = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let l = lines
                .next_line()
                .await
                .unwrap()
                .expect("the demo exited early");
            if pick(&l) {
                return l;
            }
            seen.push(l);
        }
    })
    .await
    .expect("the awaited log line came");
    let _ = child.start_kill();
    (seen, hit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_with_the_machine_and_job_of_their_spans() {
    let (before, line) = demo_log_until(&["--log-format", "json"], |l| {
        l.contains("\"job ended\"") && l.contains("\"microfactoryd::factory\"")
    })
    .await;
    for l in &before {
        serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"));
    }
    let v: Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(v["level"], "INFO", "{v}");
    assert_eq!(v["fields"]["message"], "job ended", "{v}");
    let job = v["spans"]
        .as_array()
        .expect("a span list")
        .iter()
        .find(|s| s["name"] == "job")
        .unwrap_or_else(|| panic!("no job span: {v}"));
    assert!(job["job"].as_u64().is_some_and(|j| j > 0), "{v}");
    assert!(
        ["mk3-a", "ender-b", "mill-1"].contains(&job["machine"].as_str().unwrap_or("")),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_logs_are_text_without_colour_codes() {
    let (_, line) = demo_log_until(&[], |l| {
        l.contains("job started") && l.contains("microfactoryd::factory")
    })
    .await;
    assert!(serde_json::from_str::<Value>(&line).is_err(), "{line}");
    assert!(!line.contains('\u{1b}'), "no ANSI escapes: {line:?}");
    assert!(line.contains("INFO"), "{line}");
    assert!(
        line.contains("job{job="),
        "the job's span and its id: {line}"
    );
    assert!(line.contains(" machine="), "the machine: {line}");
}
