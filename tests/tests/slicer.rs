//! "Send to printer" from slicers: the requests PrusaSlicer (and its forks
//! OrcaSlicer and SuperSlicer, which share its OctoPrint client) and Cura's
//! OctoPrint plugin send, replayed byte for byte against the real daemon,
//! down to a job completed on a simulated printer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use microfactory_e2e::{Factory, MachineSpec, data, executed, source_commands};
use reqwest::{Method, StatusCode, header::HeaderMap};
use serde_json::Value;

/// A small printer program: extrudes, so only printers can run it.
const PRINT: &str = "G28\nG1 Z0.2 F3000\nG1 X10 Y10 E1 F1500\nG1 X20 Y10 E2\n";

/// Extrudes over 400 mm: wider than the MK3S bed, and no mill extrudes.
const TOO_WIDE: &str = "G28\nG1 Z0.2 F3000\nG1 X0 Y10 E1 F1500\nG1 X400 Y10 E2\n";

/// A file name with spaces and non-ASCII letters, as people name parts.
const PEOPLES_NAME: &str = "Bänk hook ø20 – v2.gcode";

fn fast(mut m: MachineSpec) -> MachineSpec {
    m.time_scale = 5000.0;
    m.tweak = |c| {
        c.baud = 2_000_000;
        c.latency_ms = 0.0;
    };
    m
}

/// A printer and a mill, fast, and a slicer token (made while the daemon
/// is stopped: sled allows one process).
async fn farm() -> (Factory, String) {
    let mut f = Factory::start(&[
        fast(MachineSpec::printer("p1", "prusa-mk3s")),
        fast(MachineSpec::mill("m1")),
    ])
    .await
    .unwrap();
    f.terminate().await.unwrap();
    let slicer = Factory::token_create(f.dir.path(), "slicer").unwrap();
    f.launch().await.unwrap();
    (f, slicer)
}

/// One part of a multipart body.
struct Part<'a> {
    name: &'a str,
    file_name: Option<&'a str>,
    content_type: Option<&'a str>,
    body: &'a [u8],
}

impl<'a> Part<'a> {
    fn text(name: &'a str, body: &'a str) -> Self {
        Self {
            name,
            file_name: None,
            content_type: None,
            body: body.as_bytes(),
        }
    }
}

/// A multipart/form-data body as libcurl and Qt write it: file names in
/// raw UTF-8 between quotes.
fn multipart(boundary: &str, parts: &[Part<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        out.extend_from_slice(
            format!("Content-Disposition: form-data; name=\"{}\"", p.name).as_bytes(),
        );
        if let Some(f) = p.file_name {
            out.extend_from_slice(format!("; filename=\"{f}\"").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        if let Some(ct) = p.content_type {
            out.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(p.body);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

/// An answer: status, headers, body as JSON (`null` when empty).
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    /// The sentence of an OctoPrint-shaped error, checked to be one.
    fn error(&self) -> &str {
        let msg = self.body["error"].as_str().unwrap_or_else(|| {
            panic!("{}: not {{\"error\": \"...\"}}: {}", self.status, self.body)
        });
        assert!(
            msg.starts_with(char::is_uppercase) && msg.ends_with('.'),
            "not a sentence: {msg}"
        );
        msg
    }
}

async fn send(
    f: &Factory,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Answer {
    let mut req = f.http.request(method, format!("{}{path}", f.base));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.body(body).send().await.expect("request");
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.bytes().await.expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{status}: not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// PrusaSlicer's connection test: `GET /api/version` with `X-Api-Key`.
async fn prusaslicer_version(f: &Factory, key: &str) -> Answer {
    send(
        f,
        Method::GET,
        "/api/version",
        &[
            ("User-Agent", "PrusaSlicer/2.8.1"),
            ("Accept", "*/*"),
            ("X-Api-Key", key),
        ],
        vec![],
    )
    .await
}

/// PrusaSlicer's upload, as libcurl's mime API sends it: `print`, then
/// `path` (the folder typed in the dialog, usually empty), then the file.
async fn prusaslicer_upload(
    f: &Factory,
    key: &str,
    print: bool,
    path: &str,
    name: &str,
    gcode: &[u8],
) -> Answer {
    let boundary = "------------------------d74496d66958873e";
    let body = multipart(
        boundary,
        &[
            Part::text("print", if print { "true" } else { "false" }),
            Part::text("path", path),
            Part {
                name: "file",
                file_name: Some(name),
                content_type: Some("application/octet-stream"),
                body: gcode,
            },
        ],
    );
    let ct = format!("multipart/form-data; boundary={boundary}");
    send(
        f,
        Method::POST,
        "/api/files/local",
        &[
            ("User-Agent", "PrusaSlicer/2.8.1"),
            ("Accept", "*/*"),
            ("X-Api-Key", key),
            ("Content-Type", &ct),
            ("Expect", "100-continue"),
        ],
        body,
    )
    .await
}

/// Cura's OctoPrint plugin's upload, as Qt's QHttpMultiPart sends it: a
/// quoted boundary, `path` first, then the file, then `select` and
/// `print` (only when printing right away).
async fn cura_upload(
    f: &Factory,
    key: &str,
    print: bool,
    path: &str,
    name: &str,
    gcode: &[u8],
) -> Answer {
    let boundary = "boundary_.oOo._MTY4NzQ0NTk4Mw==MjA0Njk2Nzg2";
    let mut parts = vec![
        Part {
            name: "path",
            file_name: None,
            content_type: Some("text/plain"),
            body: path.as_bytes(),
        },
        Part {
            name: "file",
            file_name: Some(name),
            content_type: Some("application/octet-stream"),
            body: gcode,
        },
    ];
    if print {
        for field in ["select", "print"] {
            parts.push(Part {
                name: field,
                file_name: None,
                content_type: Some("text/plain"),
                body: b"true",
            });
        }
    }
    let ct = format!("multipart/form-data; boundary=\"{boundary}\"");
    send(
        f,
        Method::POST,
        "/api/files/local",
        &[
            ("User-Agent", "Cura/5.7.2 OctoPrintPlugin/3.7.3"),
            ("X-Api-Key", key),
            ("Content-Type", &ct),
        ],
        multipart(boundary, &parts),
    )
    .await
}

async fn cura_get(f: &Factory, key: &str, what: &str) -> Answer {
    send(
        f,
        Method::GET,
        &format!("/api/{what}"),
        &[
            ("User-Agent", "Cura/5.7.2 OctoPrintPlugin/3.7.3"),
            ("X-Api-Key", key),
        ],
        vec![],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prusaslicer_upload_and_print_ends_with_the_job_completed_on_a_simulated_printer() {
    let (f, key) = farm().await;
    let mut events = f.events().await.unwrap();

    let v = prusaslicer_version(&f, &key).await;
    assert_eq!(v.status, StatusCode::OK, "{}", v.body);
    assert!(v.body["api"].is_string(), "{}", v.body);
    assert!(
        v.body["text"].as_str().unwrap().starts_with("OctoPrint"),
        "PrusaSlicer calls any other text a mismatched host: {}",
        v.body
    );

    // A real PrusaSlicer file, under a name with spaces and non-ASCII
    // letters, in no folder.
    let source = data("bracket_petg.gcode");
    let up = prusaslicer_upload(
        &f,
        &key,
        true,
        "",
        PEOPLES_NAME,
        &std::fs::read(&source).unwrap(),
    )
    .await;
    assert_eq!(up.status, StatusCode::CREATED, "{}", up.body);
    assert_eq!(up.body["done"], true);
    assert_eq!(up.body["effectivePrint"], true);
    let local = &up.body["files"]["local"];
    assert_eq!(local["name"], PEOPLES_NAME);
    assert_eq!(local["path"], PEOPLES_NAME);
    assert_eq!(local["origin"], "local");
    let location = up.headers["location"].to_str().unwrap();
    assert_eq!(location, local["refs"]["resource"].as_str().unwrap());
    assert!(
        location.starts_with("/api/files/local/B%C3%A4nk%20hook%20"),
        "{location}"
    );
    // Analysed like any upload: PrusaSlicer's metadata is read.
    let file = &up.body["microfactory"]["file"];
    assert!(
        file["analysis"]["estimated_seconds"].as_f64().unwrap() > 60.0,
        "{file}"
    );
    let jobs = up.body["microfactory"]["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{}", up.body);
    assert_eq!(jobs[0]["name"], PEOPLES_NAME);
    assert_eq!(jobs[0]["state"], "queued");
    let id = jobs[0]["id"].as_u64().unwrap();

    let ended = f
        .wait_ended(&mut events, &[id], Duration::from_secs(300))
        .await
        .unwrap();
    assert_eq!(ended[0]["state"], "completed", "{}", ended[0]);
    assert_eq!(
        ended[0]["assigned_machine"], "p1",
        "only the printer extrudes"
    );
    let (done, sliced) = (executed(&f.sim("p1").log), source_commands(&source));
    assert_eq!(done.len(), sliced.len(), "line count");
    assert!(
        done == sliced,
        "the printer's log differs from the file as sliced"
    );
    assert!(
        executed(&f.sim("m1").log).is_empty(),
        "the mill ran nothing"
    );

    // Cura's monitor view of the finished farm.
    let job = cura_get(&f, &key, "job").await;
    assert_eq!(job.status, StatusCode::OK, "{}", job.body);
    assert_eq!(job.body["state"], "Operational", "{}", job.body);
    assert!(job.body["job"]["file"]["name"].is_null(), "{}", job.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cura_stores_a_file_in_a_folder_then_prints_it_and_reads_its_monitor_routes() {
    let (f, key) = farm().await;
    let mut events = f.events().await.unwrap();

    // What the plugin reads when it connects, with the fields it indexes
    // without checking.
    let settings = cura_get(&f, &key, "settings").await;
    assert_eq!(settings.status, StatusCode::OK, "{}", settings.body);
    assert_eq!(settings.body["feature"]["sdSupport"], false);
    assert!(
        settings.body["webcam"].get("streamUrl").is_none(),
        "no webcam to show"
    );
    let printer = cura_get(&f, &key, "printer").await;
    assert_eq!(printer.status, StatusCode::OK, "{}", printer.body);
    let flags = &printer.body["state"]["flags"];
    for flag in [
        "error",
        "closedOrError",
        "paused",
        "pausing",
        "printing",
        "cancelling",
        "ready",
        "operational",
    ] {
        assert!(flags[flag].is_boolean(), "flag {flag} missing: {flags}");
    }
    assert_eq!(flags["ready"], true, "Cura prints only to a ready printer");
    assert_eq!(flags["printing"], false);
    let text = printer.body["state"]["text"].as_str().unwrap();
    assert!(
        text.contains("2 machines") && text.contains("0 jobs queued"),
        "{text}"
    );

    // "Upload" without printing, into a folder typed in the dialog: stored,
    // analysed, not queued; the folder is a label in the name.
    let up = cura_upload(
        &f,
        &key,
        false,
        "customer 42/brackets",
        PEOPLES_NAME,
        PRINT.as_bytes(),
    )
    .await;
    assert_eq!(up.status, StatusCode::CREATED, "{}", up.body);
    assert_eq!(up.body["effectivePrint"], false);
    let path = format!("customer 42/brackets/{PEOPLES_NAME}");
    assert_eq!(up.body["files"]["local"]["path"], path.as_str());
    assert_eq!(up.body["files"]["local"]["name"], PEOPLES_NAME);
    assert!(
        up.headers["location"]
            .to_str()
            .unwrap()
            .starts_with("/api/files/local/customer%2042/brackets/B%C3%A4nk"),
        "Cura reads the file's path from Location: {:?}",
        up.headers["location"]
    );
    let file_id = up.body["microfactory"]["file"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, files) = f.get("/files").await.unwrap();
    assert_eq!(s, StatusCode::OK);
    let stored = files
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == file_id.as_str())
        .expect("the file is in the dashboard's files");
    assert_eq!(stored["name"], path.as_str());
    // The list has summaries; the analysis is the file's own.
    let (_, detail) = f.get(&format!("/files/{file_id}")).await.unwrap();
    assert_eq!(detail["analysis"]["commands"], 4, "{detail}");
    let (_, queued) = f.get("/jobs").await.unwrap();
    assert_eq!(
        queued.as_array().unwrap().len(),
        0,
        "print=false queues nothing: {queued}"
    );

    // "Print": the same content with select and print after the file.
    let up = cura_upload(&f, &key, true, "", "hook.gcode", PRINT.as_bytes()).await;
    assert_eq!(
        up.status,
        StatusCode::CREATED,
        "a job was made: {}",
        up.body
    );
    assert_eq!(up.body["effectivePrint"], true);
    assert_eq!(
        up.body["microfactory"]["file"]["id"],
        file_id.as_str(),
        "same content, same file"
    );
    let id = up.body["microfactory"]["jobs"][0]["id"].as_u64().unwrap();
    let ended = f
        .wait_ended(&mut events, &[id], Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(ended[0]["state"], "completed", "{}", ended[0]);
    assert_eq!(ended[0]["assigned_machine"], "p1");
    assert_eq!(ended[0]["name"], "hook.gcode");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_keys_unrunnable_files_and_bad_forms_are_refused_with_a_sentence() {
    let (f, key) = farm().await;

    // No key, a blank key (PrusaSlicer with the field left empty), a key
    // this daemon never issued.
    let a = send(&f, Method::GET, "/api/version", &[], vec![]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(
        a.error().contains("X-Api-Key") && a.error().contains("token create"),
        "{}",
        a.error()
    );
    let a = prusaslicer_version(&f, "").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.error().contains("No API key"), "{}", a.error());
    let a = prusaslicer_version(&f, "mfd_0000not0a0real0key").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.error().contains("not known"), "{}", a.error());
    let a = prusaslicer_upload(
        &f,
        "mfd_0000not0a0real0key",
        true,
        "",
        "x.gcode",
        PRINT.as_bytes(),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.error().contains("not known"), "{}", a.error());

    // A viewer reads the status but sends nothing; a slicer key opens
    // nothing under /api/v1.
    assert_eq!(cura_get(&f, &f.viewer, "job").await.status, StatusCode::OK);
    let a = prusaslicer_upload(&f, &f.viewer, false, "", "x.gcode", PRINT.as_bytes()).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(
        a.error().contains("viewer") && a.error().contains("slicer"),
        "{}",
        a.error()
    );
    let (s, v) = f
        .send(f.request(Method::POST, "/machines/p1/estop"), Some(&key))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");

    // OctoPrint's ?apikey= works too.
    let a = send(
        &f,
        Method::GET,
        &format!("/api/version?apikey={key}"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);

    // No machine can run it: refused with every machine's reason, not kept.
    let a = prusaslicer_upload(&f, &key, true, "", "wide.gcode", TOO_WIDE.as_bytes()).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    let msg = a.error();
    assert!(
        msg.starts_with("No machine in this factory can run wide.gcode"),
        "{msg}"
    );
    assert!(msg.contains("p1: the program spans 400.0"), "{msg}");
    assert!(msg.contains("m1: the program extrudes filament"), "{msg}");
    let (_, files) = f.get("/files").await.unwrap();
    assert!(
        !files.to_string().contains("wide.gcode"),
        "a refused file is not kept: {files}"
    );
    let (_, jobs) = f.get("/jobs").await.unwrap();
    assert_eq!(jobs.as_array().unwrap().len(), 0, "{jobs}");

    // Binary G-code, a folder that climbs, a print that is neither, no file.
    let a = prusaslicer_upload(&f, &key, false, "", "hook.bgcode", b"GCDE\x01\x00\x00\x00").await;
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(
        a.error().contains("Supports binary G-code"),
        "{}",
        a.error()
    );
    let a = prusaslicer_upload(&f, &key, false, "../../etc", "x.gcode", PRINT.as_bytes()).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.error().contains("'..'"), "{}", a.error());
    let boundary = "xyz";
    let body = multipart(boundary, &[Part::text("print", "maybe")]);
    let ct = format!("multipart/form-data; boundary={boundary}");
    let a = send(
        &f,
        Method::POST,
        "/api/files/local",
        &[("X-Api-Key", &key), ("Content-Type", &ct)],
        body,
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.error().contains("'maybe'"), "{}", a.error());
    let body = multipart(boundary, &[Part::text("print", "true")]);
    let a = send(
        &f,
        Method::POST,
        "/api/files/local",
        &[("X-Api-Key", &key), ("Content-Type", &ct)],
        body,
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.error().contains("no field named 'file'"), "{}", a.error());
    let a = send(
        &f,
        Method::POST,
        "/api/files/local",
        &[("X-Api-Key", &key), ("Content-Type", "text/plain")],
        PRINT.as_bytes().to_vec(),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(a.error().contains("multipart/form-data"), "{}", a.error());
}
