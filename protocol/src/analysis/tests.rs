use std::sync::OnceLock;

use proptest::prelude::*;

use super::*;
use crate::slicer::limits_from_settings;

fn analyze(text: &str) -> Analysis {
    analyze_bytes(text.as_bytes(), AnalyzerConfig::default()).expect("analyses")
}

fn data(name: &str) -> Vec<u8> {
    crate::testdata::read(name).into_bytes()
}

/// Analyses a shared file once per test binary, with the limits from its
/// settings block, as `microfactoryd analyze` does.
fn shared(name: &'static str) -> &'static Analysis {
    static CACHE: OnceLock<std::sync::Mutex<Vec<(&'static str, &'static Analysis)>>> =
        OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut guard = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, a)) = guard.iter().find(|(n, _)| *n == name) {
        return a;
    }
    let bytes = data(name);
    let tail = &bytes[bytes.len().saturating_sub(64 * 1024)..];
    let limits = limits_from_settings(&String::from_utf8_lossy(tail));
    let a = analyze_bytes(
        &bytes,
        AnalyzerConfig {
            limits,
            max_line: 0,
        },
    )
    .expect("analyses");
    let a: &'static Analysis = Box::leak(Box::new(a));
    guard.push((name, a));
    a
}

#[test]
fn inches_are_converted_and_relative_moves_accumulate() {
    let a = analyze("G20\nG91\nG1 X1 F10\nG1 X1\nM3 S1000\nG1 Y1\n");
    let b = a.travel_bounds_mm.expect("moves");
    assert!((b.max[0] - 50.8).abs() < 1e-3);
    assert!((b.max[1] - 25.4).abs() < 1e-3);
    assert!(a.inch_units);
    assert!(a.uses_spindle);
    assert!(!a.uses_extrusion);
}

#[test]
fn g92_resets_extrusion_and_retractions_are_netted() {
    let a = analyze("M82\nG1 X10 E5 F600\nG1 E3\nG1 E5\nG92 E0\nG1 X20 E2\n");
    // 5 out, 2 back, 2 out again, then 2 more: 7 mm net.
    assert!((a.filament_mm - 7.0).abs() < 1e-6, "{}", a.filament_mm);
    let a = analyze("M83\nG1 X10 E1 F600\nG1 X20 E1\n");
    assert!((a.filament_mm - 2.0).abs() < 1e-6);
}

#[test]
fn bounds_cover_only_working_moves_and_travel_covers_all() {
    let a = analyze("G0 X100 Y100\nG1 X10 Y10 F600\nG1 X20 Y20 E1\n");
    let b = a.bounds_mm.expect("extrusion");
    assert_eq!((b.min[0], b.max[0]), (10.0, 20.0));
    let t = a.travel_bounds_mm.expect("moves");
    assert_eq!(t.max[0], 100.0);
}

#[test]
fn layers_come_from_markers_or_else_from_z_levels() {
    let a = analyze(";LAYER_CHANGE\nG1 Z0.2 F600\nG1 X1 E1\n;LAYER_CHANGE\nG1 Z0.4\nG1 X2 E2\n");
    assert_eq!(a.layers, 2);
    let a = analyze("G1 Z0.2 F600\nG1 X1 E1\nG1 Z0.4\nG1 X2 E2\nG1 Z0.6\nG1 X3 E3\n");
    assert_eq!(a.layers, 3);
}

#[test]
fn dwell_is_milliseconds_for_printers_and_seconds_for_mills() {
    let a = analyze("G1 X1 E1 F600\nG4 P500\n");
    assert!((a.dwell_seconds - 0.5).abs() < 1e-9);
    let a = analyze("G20\nM3 S1000\nG4 P0.25\n");
    assert!((a.dwell_seconds - 0.25).abs() < 1e-9);
    assert!(a.estimated_seconds >= 0.25);
}

#[test]
fn tool_changes_are_counted() {
    let a = analyze("M6 T1\nG0 X1\nM6 T2\n");
    assert_eq!(a.tool_changes, 2);
}

#[test]
fn binary_input_names_the_line() {
    let e = analyze_bytes(b"G1 X1\nG1 \x00\x01\x02\n", AnalyzerConfig::default());
    assert!(
        matches!(e, Err(AnalysisError::BadLine { line: 2, .. })),
        "{e:?}"
    );
    let e = analyze_bytes(b"G1 X1\nG1 X\xff\n", AnalyzerConfig::default());
    assert!(
        matches!(e, Err(AnalysisError::BadLine { line: 2, .. })),
        "{e:?}"
    );
}

/// The raw bound is for memory: a "line" longer than any real one (a
/// binary file's) is refused with its number.
#[test]
fn a_line_over_the_raw_bound_is_refused_with_its_number() {
    let mut v = b"G1 X1\nG1 X2\n".to_vec();
    v.extend(std::iter::repeat_n(b'X', crate::framing::MAX_RAW_LINE + 1));
    v.push(b'\n');
    let e = analyze_bytes(&v, AnalyzerConfig::default());
    assert!(
        matches!(e, Err(AnalysisError::BadLine { line: 3, .. })),
        "{e:?}"
    );
}

/// Issue 11: slicer comments of any length are analysed, and an overlong
/// command is pre-flight's to report, not a reason to refuse the file.
#[test]
fn long_comments_and_an_overlong_command_do_not_stop_the_analysis() {
    let text = format!(
        "G28\n; {}\nG1 X1 Y1 ; {}\nM117 {}\nG1 X10 Y10 F600\n",
        "c".repeat(300),
        "t".repeat(100_000),
        "a".repeat(295)
    );
    let a = analyze(&text);
    assert_eq!(a.lines, 5);
    assert_eq!(a.commands, 4);
}

#[test]
fn out_of_range_codes_are_errors_not_panics() {
    let e = analyze_bytes(b"G1 X1\nM2222341542\n", AnalyzerConfig::default());
    assert!(
        matches!(e, Err(AnalysisError::BadLine { line: 2, .. })),
        "{e:?}"
    );
}

#[test]
fn empty_and_comment_only_files_are_errors() {
    assert_eq!(
        analyze_bytes(b"", AnalyzerConfig::default()),
        Err(AnalysisError::Empty)
    );
    assert_eq!(
        analyze_bytes(b"; nothing\n\n", AnalyzerConfig::default()),
        Err(AnalysisError::NoCommands { lines: 2 })
    );
}

/// README promises estimates within 0.3 % of PrusaSlicer's own on these
/// two files: this is that promise (1.001 and 0.998 today).
#[test]
fn prusaslicer_estimates_land_within_three_tenths_of_a_percent_of_the_slicer() {
    for name in ["coupling_pla.gcode", "bracket_petg.gcode"] {
        let a = shared(name);
        let slicer = a.slicer_estimated_seconds.expect("slicer estimate");
        let ratio = a.estimated_seconds / slicer;
        eprintln!(
            "{name}: estimate {:.0} s, slicer {slicer:.0} s, ratio {ratio:.3}",
            a.estimated_seconds
        );
        assert!((0.997..=1.003).contains(&ratio), "{name}: ratio {ratio}");
    }
}

#[test]
fn prusaslicer_files_report_filament_layers_and_metadata() {
    let a = shared("coupling_pla.gcode");
    let info = a.slicer.as_ref().expect("metadata");
    assert_eq!(info.name, "PrusaSlicer 2.5.0");
    assert_eq!(info.filament_mm, Some(4009.13));
    assert_eq!(info.layer_height_mm, Some(0.2));
    assert_eq!(info.nozzle_diameter_mm, Some(0.4));
    let ratio = a.filament_mm / 4009.13;
    eprintln!("coupling filament {:.2} mm (slicer 4009.13)", a.filament_mm);
    assert!((0.99..=1.01).contains(&ratio), "filament {}", a.filament_mm);
    assert_eq!(a.layers, 199);
    assert!(a.uses_extrusion && !a.uses_spindle);
    let b = a.bounds_mm.expect("extrusion");
    // A small part near the middle of a 220 mm bed.
    assert!(b.min[0] > 50.0 && b.max[0] < 170.0, "{b:?}");
    assert!(b.max[2] > 10.0 && b.max[2] < 60.0, "{b:?}");
    let a = shared("bracket_petg.gcode");
    assert_eq!(a.layers, 399);
}

#[test]
fn pcb_files_are_inch_mill_jobs_with_sane_estimates() {
    for name in [
        "pcb_outline_inch.nc",
        "pcb_drill_toolchange_inch.nc",
        "pcb_isolation_and_drill_inch.nc",
    ] {
        let a = shared(name);
        assert!(a.inch_units, "{name}");
        assert!(a.uses_spindle && !a.uses_extrusion, "{name}");
        assert!(
            a.estimated_seconds > 10.0,
            "{name}: {}",
            a.estimated_seconds
        );
        let info = a.slicer.as_ref().expect("pcb-gcode header");
        assert!(info.name.starts_with("pcb-gcode"), "{name}: {}", info.name);
        let b = a.bounds_mm.expect("cuts");
        assert!(b.size()[0] < 300.0, "{name}: {b:?}");
    }
    assert!(shared("pcb_drill_toolchange_inch.nc").tool_changes > 0);
}

proptest! {
    #[test]
    fn chunking_does_not_change_the_result(cuts in proptest::collection::vec(0usize..2000, 0..6)) {
        let text = "G21\nM82\n;LAYER_CHANGE\nG1 Z0.2 F3000\nG1 X10 Y10 E1 F1200\nG1 X20 Y5 E2\nG4 P100\nG1 E1.5\nG1 X0 Y0 E3\n";
        let bytes = text.repeat(20).into_bytes();
        let whole = analyze_bytes(&bytes, AnalyzerConfig::default()).expect("analyses");
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % bytes.len()).collect();
        cuts.sort_unstable();
        let mut a = Analyzer::new(AnalyzerConfig::default());
        let mut at = 0;
        for c in cuts {
            a.feed(&bytes[at..c]).expect("feeds");
            at = c;
        }
        a.feed(&bytes[at..]).expect("feeds");
        prop_assert_eq!(a.finish().expect("analyses"), whole);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = analyze_bytes(&bytes, AnalyzerConfig::default());
    }

    #[test]
    fn arbitrary_gcode_like_text_never_panics(lines in proptest::collection::vec("[GMTXYZEFIJPS]{1,2}-?[0-9]{0,6}(\\.[0-9]{0,3})?( [XYZEFIJPRS]-?[0-9]{1,5})*", 0..40)) {
        let text = lines.join("\n");
        let _ = analyze_bytes(text.as_bytes(), AnalyzerConfig::default());
    }
}

#[test]
fn each_layer_starts_at_its_first_extruding_line_with_its_height() {
    let a = analyze(
        "G28\nG1 Z0.2 F3000\nG1 X10 Y10 E1 F1500\nG1 X20 Y10 E2\nG1 Z0.4\nG0 X0\nG1 X10 E3\nG1 Z5\n",
    );
    assert_eq!(
        a.layer_starts,
        [
            LayerStart { line: 3, z: 0.2 },
            LayerStart { line: 7, z: 0.4 }
        ],
        "a travel to Z 5 with no extrusion is no layer"
    );
    // A real print: one start per Z level, lines and heights increasing.
    let a = shared("coupling_pla.gcode");
    assert!(a.layer_starts.len() >= 190, "{}", a.layer_starts.len());
    assert!(
        a.layer_starts
            .windows(2)
            .all(|w| w[0].line < w[1].line && w[0].z < w[1].z)
    );
}
