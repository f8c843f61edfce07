//! Two findings of the hardening review that only show when requests
//! overlap: a job submitted while its file is deleted, and a console
//! command sent into a running job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use microfactory_e2e::{Factory, MachineSpec};
use reqwest::{Method, StatusCode};
use serde_json::json;

const PRINT: &str = "G28\nG1 Z0.2 F3000\nG1 X10 Y10 E1 F1500\nG1 X20 Y10 E2\n";

/// Racing `POST /jobs` against `DELETE /files/{id}`: exactly one wins.
/// Either the job is queued and the file stays (the deletion is refused
/// with 409), or the file is gone and the submission is refused with 422;
/// never both acknowledged, which left a job queued for ever on a missing
/// file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_racing_a_deletion_never_both_succeed() {
    let mut spec = MachineSpec::printer("p1", "prusa-mk3s");
    // Nothing runs: every job stays queued, so a lost file would show.
    spec.require_bed_clear = false;
    let f = Factory::start(&[spec]).await.unwrap();
    let (s, m) = f.post("/machines/p1/disable", json!({})).await.unwrap();
    assert_eq!(s, StatusCode::OK, "{m}");
    let (mut queued, mut deleted) = (0, 0);
    for round in 0..60 {
        let text = format!("{PRINT}; round {round}\n");
        let (s, file) = f
            .upload_bytes("race.gcode", text.into_bytes())
            .await
            .unwrap();
        assert_eq!(s, StatusCode::CREATED, "{file}");
        let id = file["id"].as_str().unwrap().to_string();
        let submit = f.post("/jobs", json!({"file_id": id}));
        let delete = f.send(
            f.request(Method::DELETE, &format!("/files/{id}")),
            Some(&f.token),
        );
        let (sub, del) = tokio::join!(submit, delete);
        let ((s_sub, job), (s_del, del)) = (sub.unwrap(), del.unwrap());
        match (s_sub, s_del) {
            (StatusCode::CREATED, StatusCode::CONFLICT) => {
                queued += 1;
                let (s, _) = f.get(&format!("/files/{id}")).await.unwrap();
                assert_eq!(s, StatusCode::OK, "the queued job's file is kept");
            }
            (StatusCode::UNPROCESSABLE_ENTITY, StatusCode::NO_CONTENT) => {
                deleted += 1;
                assert!(
                    job["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("not an uploaded file"),
                    "{job}"
                );
            }
            other => panic!("round {round}: {other:?} {job} {del}"),
        }
    }
    // Both outcomes are legal; the point is that no round had both. Every
    // job that was acknowledged is queued, each with its file.
    eprintln!("{queued} rounds queued the job, {deleted} deleted the file");
    let (_, jobs) = f.get("/jobs?state=queued").await.unwrap();
    let jobs = jobs.as_array().unwrap();
    assert_eq!(jobs.len(), queued, "queued jobs against acknowledged ones");
    for j in jobs {
        let (s, _) = f
            .get(&format!("/files/{}", j["file_id"].as_str().unwrap()))
            .await
            .unwrap();
        assert_eq!(s, StatusCode::OK, "queued job {} lost its file", j["id"]);
    }
}

/// During a job only queries reach the firmware: a `G28` would home the
/// printer in the middle of the part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_refuses_moves_during_a_job_and_answers_queries() {
    let mut spec = MachineSpec::printer("p1", "prusa-mk3s");
    spec.time_scale = 2.0;
    let f = Factory::start(&[spec]).await.unwrap();
    let mut program = String::from("G28\n");
    for i in 0..300 {
        program.push_str(&format!(
            "G1 X{} Y{} E{} F600\n",
            10 + i % 50,
            10 + i % 40,
            i
        ));
    }
    let (_, file) = f
        .upload_bytes("long.gcode", program.into_bytes())
        .await
        .unwrap();
    let ids = f.submit(json!({"file_id": file["id"]})).await.unwrap();
    let mut events = f.events().await.unwrap();
    loop {
        let p = events.next_of("progress").await.unwrap();
        if p["job_id"] == ids[0] && p["progress"]["lines_done"].as_u64() > Some(2) {
            break;
        }
    }
    let (s, body) = f
        .post("/machines/p1/console", json!({"command": "G28"}))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("only queries") && msg.contains("M105"),
        "{msg}"
    );
    let (s, body) = f
        .post("/machines/p1/console", json!({"command": "M105"}))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(
        body["response"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap_or("").contains("T:")),
        "{body}"
    );
    // The job is still the one running, untouched.
    let (_, job) = f.get(&format!("/jobs/{}", ids[0])).await.unwrap();
    assert_eq!(job["state"], "running", "{job}");
}
