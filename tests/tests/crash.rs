//! `kill -9` at seeded random moments during uploads, submissions and
//! streaming, then restart: nothing acknowledged is lost or duplicated, and
//! a job that was running is interrupted at a line the machine really
//! executed. Also a clean SIGTERM and a restart from the interrupted line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use microfactory_e2e::{
    Factory, MachineSpec, commands_of, data, executed, source_commands, wait_log,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A reproducible generator for the kill schedule.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A distinct print program: its first command names it, so its lines can
/// be found in a machine's log.
fn program(tag: &str, moves: usize) -> String {
    let mut g = format!("M117 {tag}\nG28\nG90\nM83\nG1 Z0.3 F600\n");
    for i in 0..moves {
        let x = 50.0 + (i % 40) as f64;
        let y = 50.0 + ((i / 40) % 40) as f64;
        g.push_str(&format!("G1 X{x:.1} Y{y:.1} E0.05 F1800 ; move {i}\n"));
    }
    g.push_str("M84\n");
    g
}

/// Source commands in lines 1..=line of `text`.
fn commands_through(text: &str, line: u64) -> Vec<String> {
    let prefix: Vec<&str> = text.lines().take(line as usize).collect();
    commands_of(&prefix.join("\n"))
}

#[derive(Default)]
struct Acked {
    files: HashMap<String, String>,
    jobs: HashMap<u64, String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_and_duplicates_nothing() {
    let printer = |id| {
        let mut m = MachineSpec::printer(id, "prusa-mk3s");
        m.time_scale = 20.0;
        m
    };
    let mut f = Factory::start(&[printer("mk3-a"), printer("mk3-b")])
        .await
        .unwrap();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut texts: HashMap<String, String> = HashMap::new();
    let mut rng = SplitMix(0x5eed_0001);
    let mut prefixes_checked = 0;

    for round in 0..4 {
        // Load: upload distinct programs and submit each as a job.
        let load = {
            let base = f.base.clone();
            let token = f.token.clone();
            let acked = Arc::clone(&acked);
            let http = f.http.clone();
            let moves = 300 + rng.below(900) as usize;
            tokio::spawn(async move {
                for n in 0.. {
                    let tag = format!("crash r{round} n{n}");
                    let text = program(&tag, moves);
                    let part = reqwest::multipart::Part::bytes(text.clone().into_bytes())
                        .file_name(format!("{tag}.gcode"));
                    let form = reqwest::multipart::Form::new().part("file", part);
                    let Ok(res) = http
                        .post(format!("{base}/api/v1/files"))
                        .bearer_auth(&token)
                        .multipart(form)
                        .send()
                        .await
                    else {
                        return;
                    };
                    if res.status() != StatusCode::CREATED {
                        return;
                    }
                    let Ok(v) = res.json::<Value>().await else {
                        return;
                    };
                    let id = v["id"].as_str().unwrap().to_string();
                    acked.lock().unwrap().files.insert(id.clone(), text);
                    let Ok(res) = http
                        .post(format!("{base}/api/v1/jobs"))
                        .bearer_auth(&token)
                        .json(&json!({"file_id": id, "kind": "printer"}))
                        .send()
                        .await
                    else {
                        return;
                    };
                    if res.status() != StatusCode::CREATED {
                        return;
                    }
                    let Ok(v) = res.json::<Value>().await else {
                        return;
                    };
                    let job = v["jobs"][0]["id"].as_u64().unwrap();
                    acked.lock().unwrap().jobs.insert(job, id);
                }
            })
        };
        // The kill moment is the experiment, not a synchronisation.
        tokio::time::sleep(Duration::from_millis(200 + rng.below(2500))).await;
        f.kill9().await;
        let _ = load.await;
        f.launch().await.unwrap();

        let a = {
            let g = acked.lock().unwrap();
            Acked {
                files: g.files.clone(),
                jobs: g.jobs.clone(),
            }
        };
        for (id, text) in &a.files {
            texts.insert(id.clone(), text.clone());
        }
        // Every acknowledged file is there, with its content's size.
        let (_, files) = f.get("/files").await.unwrap();
        let stored: HashMap<String, u64> = files
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["id"].as_str().unwrap().to_string(),
                    v["size"].as_u64().unwrap(),
                )
            })
            .collect();
        for (id, text) in &a.files {
            assert_eq!(
                stored.get(id),
                Some(&(text.len() as u64)),
                "round {round}: file {id} lost"
            );
        }
        // Every acknowledged job is there, once.
        let (_, jobs) = f.get("/jobs").await.unwrap();
        let jobs = jobs.as_array().unwrap().clone();
        let ids: Vec<u64> = jobs.iter().map(|j| j["id"].as_u64().unwrap()).collect();
        let unique: HashSet<u64> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "round {round}: duplicated job ids");
        for (id, file) in &a.jobs {
            let j = jobs.iter().find(|j| j["id"] == *id);
            let j = j.unwrap_or_else(|| panic!("round {round}: acknowledged job {id} lost"));
            assert_eq!(j["file_id"], file.as_str());
        }
        assert!(
            ids.len() <= a.jobs.len() + 1 + round,
            "round {round}: more jobs than submissions"
        );
        // A job that was running is interrupted at a line its machine
        // executed: its acknowledged prefix is in the machine's log.
        for j in jobs.iter().filter(|j| {
            j["state"] == "interrupted"
                && j["history"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|h| h["note"].as_str().is_some_and(|n| n.contains("recovered")))
        }) {
            let line = j["progress"]["last_acked_line"].as_u64().unwrap();
            assert_eq!(j["failure"]["line"].as_u64(), Some(line), "{j}");
            let fid = j["file_id"].as_str().unwrap();
            let text = texts.get(fid).expect("a job's file was acknowledged");
            let want = commands_through(text, line);
            if line > 0 {
                prefixes_checked += 1;
            }
            let machine = j["assigned_machine"].as_str().unwrap();
            let marker = want.first().cloned();
            wait_log(&f.sim(machine).log, Duration::from_secs(30), |log| {
                let Some(m) = &marker else { return true };
                log.iter()
                    .rposition(|l| l == m)
                    .is_some_and(|at| log[at..].starts_with(&want))
            })
            .await;
        }
    }
    assert!(
        prefixes_checked > 0,
        "no kill landed while a job streamed; the interrupted-line check proved nothing"
    );
    assert!(
        !acked.lock().unwrap().jobs.is_empty(),
        "the load never got a job acknowledged; the test proved nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_interrupts_at_a_safe_line_and_the_job_restarts_there() {
    let mut m = MachineSpec::printer("mk3-a", "prusa-mk3s");
    m.time_scale = 5000.0;
    m.tweak = |c| {
        c.baud = 2_000_000;
        c.latency_ms = 0.0;
    };
    let mut f = Factory::start(&[m]).await.unwrap();
    let mut events = f.events().await.unwrap();
    let file = data("bracket_petg.gcode");
    let id = f.upload(&file).await.unwrap();
    let job = f.submit(json!({"file_id": id})).await.unwrap()[0];
    loop {
        let p = events.next_of("progress").await.unwrap();
        if p["job_id"] == job && p["progress"]["lines_done"].as_u64().unwrap() > 3000 {
            break;
        }
    }
    let status = f.terminate().await.unwrap();
    assert!(status.success(), "SIGTERM exits cleanly: {status:?}");
    f.launch().await.unwrap();
    let mut events = f.events().await.unwrap();
    let (_, j) = f.get(&format!("/jobs/{job}")).await.unwrap();
    assert_eq!(j["state"], "interrupted", "{j}");
    let line = j["progress"]["last_acked_line"].as_u64().unwrap();
    assert!(line > 3000, "{j}");
    assert!(
        j["failure"]["reason"]
            .as_str()
            .unwrap()
            .contains("shutting down"),
        "the driver's own reason is kept: {j}"
    );

    // What the firmware executed is exactly the file up to that line.
    let text = std::fs::read_to_string(&file).unwrap();
    let before = commands_through(&text, line);
    let log = &f.sim("mk3-a").log;
    wait_log(log, Duration::from_secs(30), |l| l.len() >= before.len()).await;
    let ran = executed(log);
    assert_eq!(&ran[..before.len()], &before[..]);
    let executed_before = ran.len();

    // The printer holds the half-made part: nothing starts on it until
    // the operator says so.
    let (_, m) = f.get("/machines/mk3-a").await.unwrap();
    assert_eq!(m["awaiting_clear"], true, "{m}");
    assert_eq!(m["hold_reason"], "interrupted", "{m}");

    // Restart after that line: heats, homes X/Y only, sets Z and E, and
    // the rest of the file follows, once the operator confirms.
    let (s, m) = f.post("/machines/mk3-a/clear", json!({})).await.unwrap();
    assert_eq!(s, StatusCode::OK, "{m}");
    let (s, j) = f
        .post(
            &format!("/jobs/{job}/requeue"),
            json!({"from_line": line + 1}),
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK, "{j}");
    let ended = f
        .wait_ended(&mut events, &[job], Duration::from_secs(300))
        .await
        .unwrap();
    assert_eq!(ended[0]["state"], "completed", "{}", ended[0]);
    let all = source_commands(&file);
    let rest = &all[before.len()..];
    let ran = executed(log);
    let after = &ran[executed_before..];
    assert!(
        after.ends_with(rest),
        "the rest of the file ran after the preamble"
    );
    let preamble = &after[..after.len() - rest.len()];
    for want in ["G28 X0 Y0", "M109 S", "M190 S", "G92 E"] {
        assert!(
            preamble.iter().any(|l| l.starts_with(want)),
            "missing {want}: {preamble:?}"
        );
    }
    assert!(
        preamble.iter().any(|l| l.starts_with("G92 Z")),
        "{preamble:?}"
    );
    assert!(
        !preamble.iter().any(|l| l == "G28"),
        "never home Z into the part: {preamble:?}"
    );
    // Up and clear of the part before homing, across at that height, and
    // down only above the restart point.
    let at = |pred: &dyn Fn(&str) -> bool| {
        preamble
            .iter()
            .position(|l| pred(l))
            .unwrap_or_else(|| panic!("{preamble:?}"))
    };
    let lift = at(&|l| l.starts_with("G1 Z5 "));
    let home = at(&|l| l == "G28 X0 Y0");
    let set_z = at(&|l| l.starts_with("G92 Z"));
    let travel = at(&|l| l.starts_with("G1 X") && l.contains(" Y"));
    let lowered = preamble[travel..].iter().any(|l| l.starts_with("G1 Z"));
    assert!(lift > 0 && preamble[lift - 1] == "G91", "{preamble:?}");
    assert!(
        lift < home && home < set_z && set_z < travel && lowered,
        "{preamble:?}"
    );
}
