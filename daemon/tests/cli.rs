//! The `microfactoryd` command line, run as a process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_microfactoryd"))
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/gcode")
        .join(name)
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("runs")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mfd-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn analyze_json_has_the_documented_fields() {
    let out = run(&[
        "analyze",
        "--json",
        data("bracket_petg.gcode").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in [
        "lines",
        "estimated_seconds",
        "filament_mm",
        "layers",
        "bounds_mm",
        "slicer_estimated_seconds",
        "preflight",
    ] {
        assert!(v.get(k).is_some(), "missing {k}");
    }
    assert_eq!(v["slicer_estimated_seconds"], 5936.0);
    assert_eq!(v["layers"], 399);
    assert_eq!(v["bounds_mm"]["min"].as_array().unwrap().len(), 3);
}

#[test]
fn analyze_exits_2_with_the_lines_grbl_would_reject() {
    let out = run(&[
        "analyze",
        "--json",
        "--firmware",
        "grbl",
        data("pcb_drill_toolchange_inch.nc").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pf = v["preflight"].as_array().unwrap();
    assert!(!pf.is_empty());
    let first = &pf[0];
    assert!(first["line"].as_u64().unwrap() > 0);
    assert!(first["reason"].as_str().unwrap().contains("error:20"));
    assert!(first["text"].as_str().is_some());
}

#[test]
fn analyze_exits_0_for_a_clean_file() {
    let out = run(&[
        "analyze",
        "--firmware",
        "grbl",
        data("pcb_outline_inch.nc").to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pre-flight       clean"));
}

#[test]
fn analyze_exits_1_naming_the_file_for_unreadable_or_binary_input() {
    let out = run(&["analyze", "/definitely/not/here.gcode"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/definitely/not/here.gcode"));
    let bin = tmp("binary.gcode");
    std::fs::write(&bin, [b'G', b'1', b'\n', 0, 159, 146, 150, b'\n']).unwrap();
    let out = run(&["analyze", bin.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2"), "{err}");
    let empty = tmp("empty.gcode");
    std::fs::write(&empty, b"").unwrap();
    let out = run(&["analyze", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));
}

#[test]
fn expanded_output_is_a_program_grbl_accepts() {
    let out_file = tmp("expanded.nc");
    let out = run(&[
        "analyze",
        "--firmware",
        "grbl",
        "--expand-canned-cycles",
        "-o",
        out_file.to_str().unwrap(),
        data("pcb_isolation_and_drill_inch.nc").to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check = run(&["analyze", "--firmware", "grbl", out_file.to_str().unwrap()]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let text = std::fs::read_to_string(&out_file).unwrap();
    assert!(!text.contains("G82"));
    assert!(text.contains("G4 P0.25"));
}

const GOOD_CONFIG: &str = r#"
listen = "127.0.0.1:7125"
data_dir = "data-good"

[[machine]]
id = "mk3-a"
name = "Prusa A"
profile = "prusa-mk3s"
port = "/dev/serial/by-id/usb-Prusa_MK3_A-if00"
tags = ["material:PLA"]

[[machine]]
id = "mill-1"
profile = "grbl-3018"
port = "/dev/serial/by-id/usb-GRBL_3018-if00"
"#;

/// Four different mistakes: an unknown key, an unknown profile, an id
/// used twice and a shop address whose postal code is not a ZIP code.
const BAD_CONFIG: &str = r#"
data_dir = "data-bad"
listen_adress = "127.0.0.1:7125"

[shop]
name = "Ada's Shop"
[shop.address]
name = "Ada's Workshop"
street1 = "200 Industrial Way"
city = "Oakland"
region = "CA"
postal_code = "9460"
country = "US"

[[machine]]
id = "mk3-a"
profile = "prusa-mk9"
port = "/dev/serial/by-id/a"

[[machine]]
id = "mk3-a"
profile = "grbl-3018"
port = "/dev/serial/by-id/b"
"#;

fn config_file(name: &str, text: &str) -> PathBuf {
    let p = tmp(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn check_config_exits_78_listing_every_problem_at_once() {
    let bad = config_file("bad.toml", BAD_CONFIG);
    let out = run(&["check-config", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        bad.to_str().unwrap(),
        "listen_adress",
        "unknown machine profile 'prusa-mk9'",
        "id 'mk3-a' is used twice",
        "shop.address.postal_code: ",
    ] {
        assert!(err.contains(needle), "missing '{needle}' in:\n{err}");
    }
}

#[test]
fn check_config_exits_0_naming_the_machines_of_a_good_file() {
    let good = config_file("good.toml", GOOD_CONFIG);
    let out = run(&["check-config", "--config", good.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "ok, 2 machine(s)",
        "mk3-a (Prusa A): prusa-mk3s",
        "mill-1 (mill-1): grbl-3018",
    ] {
        assert!(text.contains(needle), "missing '{needle}' in:\n{text}");
    }
}

#[test]
fn serving_a_bad_config_exits_78_before_listening() {
    let bad = config_file("bad-serve.toml", BAD_CONFIG);
    let out = run(&["--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stdout).is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("prusa-mk9"), "{err}");
    let missing = tmp("missing.toml");
    let out = run(&["--config", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn token_create_prints_a_new_token_once() {
    let config = config_file(
        "token.toml",
        &format!(
            "data_dir = \"data-token\"\n{}",
            &GOOD_CONFIG[GOOD_CONFIG.find("[[").unwrap()..]
        ),
    );
    let create = || {
        run(&[
            "token",
            "create",
            "--config",
            config.to_str().unwrap(),
            "--role",
            "storefront",
            "--name",
            "shop",
        ])
    };
    let first = create();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let stdout = String::from_utf8(first.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly the token: {stdout:?}");
    let token = lines[0];
    assert!(
        token.starts_with("mfd_") && token.len() == 4 + 64,
        "{token}"
    );
    let err = String::from_utf8_lossy(&first.stderr);
    assert!(err.contains("shown only this once"), "{err}");
    assert!(!err.contains(token), "the token is printed once: {err}");
    let second = create();
    assert!(second.status.success());
    assert_ne!(String::from_utf8_lossy(&second.stdout).trim(), token);

    let out = run(&[
        "token",
        "create",
        "--config",
        config.to_str().unwrap(),
        "--role",
        "admin",
        "--name",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown role 'admin'"));
}
