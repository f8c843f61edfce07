//! The repository's real G-code files (`tests/data/gcode` at the workspace
//! root), for this crate's tests only: the product never reads them.

use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/gcode")
}

/// One data file's text.
pub(crate) fn read(name: &str) -> String {
    let p = dir().join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every data G-code file (`.gcode`, `.nc`) with its text.
pub(crate) fn all() -> Vec<(PathBuf, String)> {
    let dir = dir();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut files: Vec<(PathBuf, String)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|x| x.to_str()), Some("gcode" | "nc")))
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, text)
        })
        .collect();
    files.sort();
    // Tests iterate over these: none would mean they check nothing.
    assert!(!files.is_empty(), "no G-code files in {}", dir.display());
    files
}
