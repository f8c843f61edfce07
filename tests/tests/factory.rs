//! The whole daemon with simulated machines: real files in, jobs routed to
//! capable machines, every executed line matching the source.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use microfactory_e2e::{Factory, MachineSpec, data, executed, source_commands, wait_log};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn fast(mut m: MachineSpec) -> MachineSpec {
    m.time_scale = 5000.0;
    m.tweak = |c| {
        c.baud = 2_000_000;
        c.latency_ms = 0.0;
    };
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_files_run_on_capable_machines_and_every_line_arrives() {
    let f = Factory::start(&[
        fast(MachineSpec::printer("mk3-a", "prusa-mk3s")),
        fast(MachineSpec::printer("mk3-b", "prusa-mk3s")),
        fast(MachineSpec::mill("mill-1")),
    ])
    .await
    .unwrap();
    let mut events = f.events().await.unwrap();

    let bracket = f.upload(&data("bracket_petg.gcode")).await.unwrap();
    let outline = f.upload(&data("pcb_outline_inch.nc")).await.unwrap();
    let drill = f
        .upload(&data("pcb_drill_toolchange_inch.nc"))
        .await
        .unwrap();

    // Same content again: the same file, 200 instead of 201.
    let (status, again) = f
        .upload_bytes(
            "copy.nc",
            std::fs::read(data("pcb_outline_inch.nc")).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["id"], outline.as_str());
    assert_eq!(
        again["name"], "pcb_outline_inch.nc",
        "the first name is kept"
    );

    // GRBL rejects the drill file as it is; printers cannot mill.
    let (status, body) = f.post("/jobs", json!({"file_id": drill})).await.unwrap();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("mill-1: its firmware rejects"), "{msg}");
    assert!(msg.contains("canned-cycle expansion"), "{msg}");
    assert!(
        msg.contains("mk3-a: the program turns a spindle on"),
        "{msg}"
    );

    let prints = f
        .submit(json!({"file_id": bracket, "copies": 2, "kind": "printer"}))
        .await
        .unwrap();
    assert_eq!(prints.len(), 2);
    let mills = f
        .submit(json!({"file_id": outline, "machine_id": "mill-1", "priority": 5}))
        .await
        .unwrap();

    let mut all = prints.clone();
    all.extend(&mills);
    let ended = f
        .wait_ended(&mut events, &all, Duration::from_secs(120))
        .await
        .unwrap();
    for j in &ended {
        assert_eq!(j["state"], "completed", "{j}");
        assert_eq!(j["progress"]["percent"], 100.0, "{j}");
    }
    let machines: Vec<_> = ended
        .iter()
        .filter(|j| prints.contains(&j["id"].as_u64().unwrap()))
        .map(|j| j["assigned_machine"].as_str().unwrap().to_string())
        .collect();
    assert!(
        machines.iter().all(|m| m == "mk3-a" || m == "mk3-b"),
        "{machines:?}"
    );
    assert_ne!(
        machines[0], machines[1],
        "two printers, two copies: one each"
    );

    // Ground truth: each printer executed exactly the bracket's commands.
    let source = source_commands(&data("bracket_petg.gcode"));
    for m in ["mk3-a", "mk3-b"] {
        let done = executed(&f.sim(m).log);
        assert_eq!(done.len(), source.len(), "{m}: line count");
        assert!(done == source, "{m}: executed log differs from the file");
    }
    let mill = executed(&f.sim("mill-1").log);
    let outline_src = source_commands(&data("pcb_outline_inch.nc"));
    assert_eq!(
        &mill[..outline_src.len()],
        &outline_src[..],
        "priority 5 ran first on the mill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_change_pauses_the_job_until_the_operator_resumes() {
    let f = Factory::start(&[fast(MachineSpec::mill("mill-1"))])
        .await
        .unwrap();
    let mut events = f.events().await.unwrap();
    let drill = f
        .upload(&data("pcb_drill_toolchange_inch.nc"))
        .await
        .unwrap();
    let (_, file) = f.get(&format!("/files/{drill}")).await.unwrap();
    let fit = &file["machines"][0];
    assert_eq!(fit["ok"], false);
    assert_eq!(fit["ok_with_expansion"], true);
    let tool_changes = file["analysis"]["tool_changes"].as_u64().unwrap();
    assert!(tool_changes >= 1);

    let id = f
        .submit(json!({"file_id": drill, "expand_canned_cycles": true}))
        .await
        .unwrap()[0];
    let mut pauses = 0;
    loop {
        let ev = events.next_of("job").await.unwrap();
        if ev["job_id"] != id {
            continue;
        }
        match ev["state"].as_str().unwrap() {
            "paused" => {
                pauses += 1;
                assert!(
                    ev["note"].as_str().unwrap().contains("tool"),
                    "pause names the tool change: {ev}"
                );
                let (s, j) = f
                    .post(&format!("/jobs/{id}/resume"), json!({}))
                    .await
                    .unwrap();
                assert_eq!(s, StatusCode::OK, "{j}");
            }
            "completed" => break,
            "failed" | "cancelled" | "interrupted" => panic!("job ended: {ev}"),
            _ => {}
        }
    }
    assert_eq!(pauses, tool_changes, "one pause per tool change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bed_clearance_pause_resume_cancel_and_reorder() {
    let mut slow = MachineSpec::printer("mk3-a", "prusa-mk3s");
    slow.require_bed_clear = true;
    slow.time_scale = 20.0;
    let f = Factory::start(&[slow]).await.unwrap();
    let mut events = f.events().await.unwrap();
    let coupling = f.upload(&data("coupling_pla.gcode")).await.unwrap();
    let ids = f
        .submit(json!({"file_id": coupling, "copies": 3, "name": "coupling"}))
        .await
        .unwrap();
    let (first, second, third) = (ids[0], ids[1], ids[2]);

    // Third before second.
    let (s, _) = f
        .post(&format!("/jobs/{third}/reorder"), json!({"before": second}))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK);
    let (_, queued) = f.get("/jobs?state=queued").await.unwrap();
    let order: Vec<u64> = queued
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_u64().unwrap())
        .collect();
    // The first copy may already be running; the other two are reordered.
    assert_eq!(
        order
            .iter()
            .filter(|i| **i != first)
            .copied()
            .collect::<Vec<_>>(),
        vec![third, second]
    );

    // Wait until the first copy streams, then pause and resume it.
    loop {
        let p = events.next_of("progress").await.unwrap();
        if p["job_id"] == first && p["progress"]["lines_done"].as_u64().unwrap() > 200 {
            break;
        }
    }
    let (s, j) = f
        .post(&format!("/jobs/{first}/pause"), json!({}))
        .await
        .unwrap();
    assert_eq!(
        (s, j["state"].as_str()),
        (StatusCode::OK, Some("paused")),
        "{j}"
    );
    let (_, m) = f.get("/machines/mk3-a").await.unwrap();
    assert_eq!(m["state"], "paused");
    let (s, j) = f
        .post(&format!("/jobs/{first}/resume"), json!({}))
        .await
        .unwrap();
    assert_eq!(
        (s, j["state"].as_str()),
        (StatusCode::OK, Some("running")),
        "{j}"
    );

    // Cancel: the job ends cancelled, heaters are commanded off, and the
    // machine waits for the bed to be cleared.
    let (s, _) = f.post("/machines/mk3-a/cancel", json!({})).await.unwrap();
    assert_eq!(s, StatusCode::OK);
    let ended = f
        .wait_ended(&mut events, &[first], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(ended[0]["state"], "cancelled");
    // The cancel script follows the last job line the firmware executed.
    wait_log(&f.sim("mk3-a").log, Duration::from_secs(30), |log| {
        let tail = &log[log.len().saturating_sub(4)..];
        ["M104 S0", "M140 S0"]
            .iter()
            .all(|c| tail.iter().any(|l| l == c))
    })
    .await;
    let (_, m) = f.get("/machines/mk3-a").await.unwrap();
    assert_eq!(m["state"], "awaiting_clear", "{m}");
    let (_, j) = f.get(&format!("/jobs/{third}")).await.unwrap();
    assert_eq!(
        j["state"], "queued",
        "nothing starts before the bed is cleared"
    );

    // Clear the bed: the reordered third copy starts next.
    let (s, _) = f.post("/machines/mk3-a/clear", json!({})).await.unwrap();
    assert_eq!(s, StatusCode::OK);
    loop {
        let ev = events.next_of("job").await.unwrap();
        // Only the scheduler assigns; resumes before the clearance do not.
        if ev["state"] == "assigned" {
            assert_eq!(ev["job_id"], third, "{ev}");
            break;
        }
    }
    for id in [third, second] {
        let (s, _) = f
            .post(&format!("/jobs/{id}/cancel"), json!({}))
            .await
            .unwrap();
        assert_eq!(s, StatusCode::OK);
    }
    let ended = f
        .wait_ended(&mut events, &[second, third], Duration::from_secs(60))
        .await
        .unwrap();
    assert!(ended.iter().all(|j| j["state"] == "cancelled"));

    // An ended job can be requeued, from a chosen line.
    let (s, j) = f
        .post(
            &format!("/jobs/{first}/requeue"),
            json!({"from_line": 5000}),
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK, "{j}");
    assert_eq!(
        (j["state"].as_str(), j["start_line"].as_u64()),
        (Some("queued"), Some(5000))
    );

    // A limit on ended jobs keeps every live one and the newest ended.
    let ended_states = ["completed", "failed", "cancelled", "interrupted"];
    let is_ended = |j: &Value| ended_states.contains(&j["state"].as_str().unwrap_or(""));
    let (_, all) = f.get("/jobs").await.unwrap();
    let all = all.as_array().unwrap().clone();
    let (s, some) = f.get("/jobs?ended_limit=1").await.unwrap();
    assert_eq!(s, StatusCode::OK, "{some}");
    let some = some.as_array().unwrap();
    let live: Vec<&Value> = all.iter().filter(|j| !is_ended(j)).collect();
    assert!(!live.is_empty() && all.iter().filter(|j| is_ended(j)).count() >= 2);
    assert_eq!(some.len(), live.len() + 1, "{some:?}");
    assert!(live.iter().all(|j| some.iter().any(|x| x["id"] == j["id"])));
    let newest = all
        .iter()
        .filter(|j| is_ended(j))
        .max_by_key(|j| (j["ended_ms"].as_u64(), j["id"].as_u64()))
        .unwrap();
    assert_eq!(some.last().unwrap()["id"], newest["id"]);
    let (s, e) = f.get("/jobs?ended_limit=some").await.unwrap();
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_jobs_beyond_the_memory_limit_are_still_listed_fetched_and_requeued() {
    // One ended job stays in memory; the daemon trims the rest at start,
    // so after a restart everything older comes from disk.
    let mut f = Factory::start_with(
        &[MachineSpec::printer("mk3-a", "prusa-mk3s")],
        "keep_ended_jobs = 1",
    )
    .await
    .unwrap();
    let (s, _) = f.post("/machines/mk3-a/disable", json!({})).await.unwrap();
    assert_eq!(s, StatusCode::OK);
    let file = f.upload(&data("bracket_petg.gcode")).await.unwrap();
    let ids = f
        .submit(json!({"file_id": file, "kind": "printer", "copies": 4}))
        .await
        .unwrap();
    assert_eq!(ids.len(), 4);
    for id in &ids {
        let (s, v) = f
            .post(&format!("/jobs/{id}/cancel"), json!({}))
            .await
            .unwrap();
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let ids_in = |v: &Value, state: Option<&str>| -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .filter(|j| state.is_none_or(|s| j["state"] == s))
            .filter_map(|j| j["id"].as_u64())
            .collect()
    };
    let listed = |v: &Value| ids_in(v, None);
    let (_, before) = f.get("/jobs").await.unwrap();
    let (_, newest2) = f.get("/jobs?ended_limit=2").await.unwrap();

    f.kill9().await;
    f.launch().await.unwrap();
    let (s, after) = f.get("/jobs").await.unwrap();
    assert_eq!(s, StatusCode::OK);
    assert_eq!(after, before, "the same list from disk as from memory");
    assert_eq!(listed(&after).len(), 4);
    let (_, limited) = f.get("/jobs?ended_limit=2").await.unwrap();
    assert_eq!(limited, newest2);
    let (_, cancelled) = f.get("/jobs?state=cancelled").await.unwrap();
    assert_eq!(listed(&cancelled).len(), 4);
    let (_, queued) = f.get("/jobs?state=queued").await.unwrap();
    assert!(listed(&queued).is_empty());

    // The oldest is only on disk now; it can be read and put back.
    let oldest = ids[0];
    let (s, j) = f.get(&format!("/jobs/{oldest}")).await.unwrap();
    assert_eq!(
        (s, j["state"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    let (s, j) = f
        .post(&format!("/jobs/{oldest}/requeue"), json!({}))
        .await
        .unwrap();
    assert_eq!(
        (s, j["state"].as_str()),
        (StatusCode::OK, Some("queued")),
        "{j}"
    );
    let (_, all) = f.get("/jobs").await.unwrap();
    let all = listed(&all);
    assert_eq!(all.len(), 4, "requeued, not duplicated: {all:?}");
    assert_eq!(all[0], oldest, "the live job first");
    let (s, _) = f.get("/jobs/999999").await.unwrap();
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Paging back through the history, one ended job a page, from disk,
    // gives the ended part of the whole list, in order.
    let (_, all) = f.get("/jobs").await.unwrap();
    let want = ids_in(&all, Some("cancelled"));
    assert_eq!(want.len(), 3);
    let mut pages = Vec::new();
    let mut path = "/jobs?ended_limit=1".to_string();
    loop {
        let (s, page) = f.get(&path).await.unwrap();
        assert_eq!(s, StatusCode::OK, "{page}");
        let ended = ids_in(&page, Some("cancelled"));
        let Some(&last) = ended.last() else { break };
        assert_eq!(ended.len(), 1);
        pages.push(last);
        path = format!("/jobs?ended_limit=1&ended_after={last}");
    }
    assert_eq!(pages, want);
    let (s, e) = f.get(&format!("/jobs?ended_after={oldest}")).await.unwrap();
    assert_eq!(
        s,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a live job is no cursor: {e}"
    );
    let (s, _) = f.get("/jobs?ended_after=999999").await.unwrap();
    assert_eq!(s, StatusCode::NOT_FOUND);
}
