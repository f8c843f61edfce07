//! The invariants ARCHITECTURE.md states, checked against the source so
//! that the codemap cannot drift from the code: which module may know
//! which crate.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file under `dir`, with its path relative to `base`.
fn sources(base: &Path, dir: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![base.join(dir)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p
                    .strip_prefix(base)
                    .expect("under base")
                    .to_string_lossy()
                    .into_owned();
                let text = std::fs::read_to_string(&p).expect("read");
                out.push((rel, text));
            }
        }
    }
    assert!(!out.is_empty(), "no sources under {dir}");
    out
}

/// Code lines (comment lines left out) that mention `word` as a path.
fn uses(text: &str, word: &str) -> bool {
    text.lines()
        .map(str::trim_start)
        .filter(|l| !l.starts_with("//"))
        .any(|l| {
            l.contains(&format!("{word}::"))
                || l.contains(&format!("use {word}"))
                || l.contains(&format!("{word} ::"))
        })
}

fn offenders(files: &[(String, String)], word: &str, allowed: &[&str]) -> Vec<String> {
    files
        .iter()
        .filter(|(p, t)| uses(t, word) && !allowed.iter().any(|a| p.starts_with(a)))
        .map(|(p, _)| p.clone())
        .collect()
}

#[test]
fn only_the_store_knows_sled() {
    let files = sources(&root(), "daemon/src");
    assert_eq!(
        offenders(&files, "sled", &["daemon/src/store/"]),
        Vec::<String>::new()
    );
}

#[test]
fn only_http_knows_axum_apart_from_binding_the_server() {
    let files = sources(&root(), "daemon/src");
    assert_eq!(
        offenders(
            &files,
            "axum",
            &["daemon/src/http/", "daemon/src/cli/serve.rs"]
        ),
        Vec::<String>::new()
    );
}

#[test]
fn anyhow_is_used_only_at_the_binary_edge() {
    let files = sources(&root(), "daemon/src");
    assert_eq!(
        offenders(&files, "anyhow", &["daemon/src/main.rs", "daemon/src/cli/"]),
        Vec::<String>::new()
    );
    let files = sources(&root(), "protocol/src");
    assert_eq!(offenders(&files, "anyhow", &[]), Vec::<String>::new());
    // The simulator's binary is an edge of its own.
    let files = sources(&root(), "machines/src");
    assert_eq!(
        offenders(&files, "anyhow", &["machines/src/bin/"]),
        Vec::<String>::new()
    );
}

#[test]
fn the_core_does_no_io_and_reads_no_clock() {
    let files = sources(&root(), "daemon/src/core");
    for word in ["tokio", "sled", "axum", "reqwest"] {
        assert_eq!(offenders(&files, word, &[]), Vec::<String>::new(), "{word}");
    }
    for (p, t) in files.iter().filter(|(p, _)| !p.ends_with("/tests.rs")) {
        // Test helpers may write a scratch file; the decisions may not.
        let code = t.split("#[cfg(test)]").next().unwrap_or(t);
        for clock in ["SystemTime::now", "Instant::now", "std::fs::"] {
            assert!(!code.contains(clock), "{p} uses {clock}");
        }
    }
}

#[test]
fn the_protocol_crate_knows_no_runtime_storage_or_http() {
    let files = sources(&root(), "protocol/src");
    for word in ["tokio", "sled", "axum", "rumqttc"] {
        assert_eq!(offenders(&files, word, &[]), Vec::<String>::new(), "{word}");
    }
}

#[test]
fn unsafe_code_lives_only_in_the_simulators_timer() {
    let mut files = Vec::new();
    for dir in ["protocol/src", "machines/src", "daemon/src"] {
        files.extend(sources(&root(), dir));
    }
    let unsafe_files: Vec<&str> = files
        .iter()
        .filter(|(_, t)| t.contains("unsafe {") || t.contains("unsafe fn"))
        .map(|(p, _)| p.as_str())
        .collect();
    assert_eq!(unsafe_files, vec!["machines/src/sim/clock.rs"]);
}

#[test]
fn only_the_mqtt_client_knows_rumqttc_and_the_mqtt_schema_and_adapters_are_pure() {
    let files = sources(&root(), "daemon/src");
    assert_eq!(
        offenders(&files, "rumqttc", &["daemon/src/mqtt/client.rs"]),
        Vec::<String>::new()
    );
    assert_eq!(
        offenders(&files, "native_tls", &["daemon/src/mqtt/tls.rs"]),
        Vec::<String>::new()
    );
    let pure: Vec<(String, String)> = files
        .into_iter()
        .filter(|(p, _)| {
            ["schema.rs", "adapters.rs", "backoff.rs"]
                .iter()
                .any(|f| p.ends_with(&format!("daemon/src/mqtt/{f}")))
        })
        .collect();
    assert_eq!(pure.len(), 3);
    for word in ["tokio", "sled", "axum", "rumqttc"] {
        assert_eq!(offenders(&pure, word, &[]), Vec::<String>::new(), "{word}");
    }
    for (p, t) in &pure {
        let code = t.split("#[cfg(test)]").next().unwrap_or(t);
        for clock in ["SystemTime::now", "Instant::now", "std::fs::"] {
            assert!(!code.contains(clock), "{p} uses {clock}");
        }
    }
}

#[test]
fn labels_addresses_and_pdf_are_pure_and_only_they_know_the_pdf_and_barcode_crates() {
    let files = sources(&root(), "daemon/src");
    for word in ["barcoders", "datamatrix"] {
        assert_eq!(
            offenders(&files, word, &["daemon/src/commerce/labels/"]),
            Vec::<String>::new(),
            "{word}"
        );
    }
    for word in ["krilla", "skrifa"] {
        assert_eq!(
            offenders(
                &files,
                word,
                &["daemon/src/commerce/labels/", "daemon/src/pdf/"]
            ),
            Vec::<String>::new(),
            "{word}"
        );
    }
    let pure: Vec<(String, String)> = files
        .into_iter()
        .filter(|(p, _)| {
            p.starts_with("daemon/src/commerce/labels/")
                || p.starts_with("daemon/src/pdf/")
                || p == "daemon/src/commerce/address.rs"
                || p == "daemon/src/metering/report_pdf.rs"
        })
        .collect();
    assert!(
        pure.len() >= 8,
        "{:?}",
        pure.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    for word in [
        "tokio",
        "sled",
        "axum",
        "crate::store",
        "crate::http",
        "crate::factory",
    ] {
        assert_eq!(offenders(&pure, word, &[]), Vec::<String>::new(), "{word}");
    }
    for (p, t) in &pure {
        let code = t.split("#[cfg(test)]").next().unwrap_or(t);
        for io in [
            "SystemTime::now",
            "Instant::now",
            "std::fs::",
            "std::process",
            "std::net",
        ] {
            assert!(!code.contains(io), "{p} uses {io}");
        }
    }
}

#[test]
fn only_the_webhook_outbox_knows_the_http_client_and_its_schedule_is_pure() {
    let files = sources(&root(), "daemon/src");
    assert_eq!(
        offenders(&files, "reqwest", &["daemon/src/commerce/webhooks/"]),
        Vec::<String>::new()
    );
    let pure: Vec<(String, String)> = files
        .into_iter()
        .filter(|(p, _)| p.ends_with("daemon/src/commerce/webhooks/schedule.rs"))
        .collect();
    assert_eq!(pure.len(), 1);
    for word in ["tokio", "sled", "axum", "reqwest"] {
        assert_eq!(offenders(&pure, word, &[]), Vec::<String>::new(), "{word}");
    }
    let code = pure[0].1.split("#[cfg(test)]").next().unwrap_or("");
    for clock in ["SystemTime::now", "Instant::now", "now_ms()"] {
        assert!(!code.contains(clock), "schedule.rs uses {clock}");
    }
}
