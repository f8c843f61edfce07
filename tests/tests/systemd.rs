//! Running under systemd: the unit verifies and scores as hardened, and
//! the daemon speaks `Type=notify` (ready only once it answers, watchdog
//! pings, stopping on SIGTERM) to a notify socket of the test's own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use microfactory_e2e::{TempDir, daemon_bin};

/// The unit as shipped, with the binary where this build put it.
fn unit_for_this_build(dir: &Path) -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let unit = std::fs::read_to_string(root.join("systemd/microfactoryd.service")).expect("unit");
    let bin = daemon_bin();
    let text = unit.replace("/usr/bin/microfactoryd", &bin.display().to_string());
    let path = dir.join("microfactoryd.service");
    std::fs::write(&path, text).expect("write unit");
    path
}

#[test]
fn the_unit_verifies_and_scores_as_hardened() {
    let dir = TempDir::new("unit");
    let unit = unit_for_this_build(dir.path());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian's systemd package; .ci/run installs it)");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify failed: {said}");
    // Lines about the host (no /etc/microfactoryd here) are not the
    // unit's fault; anything else is.
    for line in said.lines() {
        assert!(
            line.contains("/etc/microfactoryd") || line.trim().is_empty(),
            "systemd-analyze verify: {line}"
        );
    }
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=25"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze");
    let said = String::from_utf8_lossy(&out.stdout);
    let score: f64 = said
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for microfactoryd.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {said}"));
    assert!(out.status.success() && score <= 2.5, "exposure {score}");
}

/// Reads notify datagrams until one contains `what`.
fn until(sock: &UnixDatagram, what: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            seen.push(msg.clone());
            if msg.lines().any(|l| l == what) {
                return;
            }
        }
    }
    panic!("no {what} from the daemon; it said {seen:?}");
}

#[test]
fn the_daemon_is_ready_only_once_it_answers_pings_the_watchdog_and_says_when_it_stops() {
    let dir = TempDir::new("notify");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n",
            dir.path().join("data").display()
        ),
    )
    .expect("config");
    let socket = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&socket).expect("notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut child = Command::new(daemon_bin())
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket)
        .env("WATCHDOG_USEC", "200000")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("daemon");
    let mut seen = Vec::new();
    until(&sock, "READY=1", &mut seen);
    let ready = seen.last().cloned().unwrap_or_default();
    assert!(ready.contains("STATUS=listening on 127.0.0.1:"), "{ready}");
    // Ready means serving: the port it printed answers at once.
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listening line");
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .expect("address")
        .to_string();
    let health = std::net::TcpStream::connect(&addr).map(|mut s| {
        use std::io::{Read, Write};
        let _ = write!(
            s,
            "GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let mut r = String::new();
        let _ = s.read_to_string(&mut r);
        r
    });
    let health = health.expect("connect");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    // 200 ms watchdog: pinged at least twice over.
    until(&sock, "WATCHDOG=1", &mut seen);
    until(&sock, "WATCHDOG=1", &mut seen);
    let pid = child.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    until(&sock, "STOPPING=1", &mut seen);
    let status = child.wait().expect("exit");
    assert!(status.success(), "{status}");
}

#[test]
fn the_packaged_config_passes_check_config_as_shipped_and_with_every_example_uncommented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shipped = root.join("packaging/config.toml");
    let check = |path: &Path| {
        let out = Command::new(daemon_bin())
            .args(["check-config", "--config"])
            .arg(path)
            .output()
            .expect("check-config");
        assert!(
            out.status.success(),
            "{}: {}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(check(&shipped).contains("0 machine(s)"));
    // Every commented-out example line (a table header or `key = value`)
    // uncommented: the examples are valid configuration too.
    let text = std::fs::read_to_string(&shipped).expect("shipped config");
    let examples: String = text
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest)
                if rest.starts_with('[')
                    || rest
                        .split_once(" = ")
                        .is_some_and(|(k, _)| !k.contains(' ')) =>
            {
                rest
            }
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = TempDir::new("packaged-config");
    let all = dir.path().join("config.toml");
    std::fs::write(&all, examples).expect("write");
    let said = check(&all);
    assert!(said.contains("3 machine(s)"), "{said}");
}
