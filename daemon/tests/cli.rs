//! The `microfactoryd` command line, run as a process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_microfactoryd"))
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/gcode")
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
