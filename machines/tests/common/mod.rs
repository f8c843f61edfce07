//! A line-oriented serial client for the simulator tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::{SerialPortBuilderExt, SerialStream};

pub const WAIT: Duration = Duration::from_secs(10);

pub struct Client {
    port: SerialStream,
    buf: Vec<u8>,
    pub transcript: Vec<String>,
}

impl Client {
    pub fn open(path: &Path) -> Self {
        let port = tokio_serial::new(path.to_string_lossy(), 115_200)
            .open_native_async()
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        Self {
            port,
            buf: Vec::new(),
            transcript: Vec::new(),
        }
    }

    pub async fn send(&mut self, line: &str) {
        self.port.write_all(line.as_bytes()).await.unwrap();
        self.port.write_all(b"\n").await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.port.write_all(bytes).await.unwrap();
    }

    /// The next line, or `None` on EOF or a read error (hang-up).
    pub async fn next_line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let s = String::from_utf8_lossy(&line).trim_end().to_string();
                self.transcript.push(s.clone());
                return Some(s);
            }
            let mut chunk = [0u8; 512];
            match self.port.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads lines until one satisfies `pred`; panics after [`WAIT`].
    pub async fn expect(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.expect_within(what, WAIT, pred).await
    }

    pub async fn expect_within(
        &mut self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let r = tokio::time::timeout(limit, async {
            while let Some(l) = self.next_line().await {
                if pred(&l) {
                    return Some(l);
                }
            }
            None
        })
        .await;
        match r {
            Ok(Some(l)) => l,
            Ok(None) => panic!(
                "port closed while waiting for {what}; saw {:?}",
                self.transcript
            ),
            Err(_) => panic!("timed out waiting for {what}; saw {:?}", self.transcript),
        }
    }

    /// Sends `line` and waits for its `ok` (or an error line).
    pub async fn command(&mut self, line: &str) -> String {
        self.send(line).await;
        self.expect(line, |l| l.starts_with("ok") || l.starts_with("error"))
            .await
    }
}

/// A fresh path in the temp directory for symlinks and logs.
pub fn temp_path(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("mf-sim-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// Runs the binary with `args`; returns the child and the PTY path it
/// printed first.
pub async fn run_binary(args: &[&str]) -> (tokio::process::Child, PathBuf) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_microfactory-sim"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("binary printed no path")
        .unwrap()
        .expect("stdout closed");
    (child, PathBuf::from(first))
}
