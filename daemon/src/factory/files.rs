//! Taking in G-code uploads: stream to a scratch file while hashing and
//! checking that it is text, then analyse it from disk and store it under
//! its sha256. Nothing is held in memory whole, whatever the file's size.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use microfactory_protocol::analysis::{Analysis, AnalysisError, Analyzer, AnalyzerConfig};
use microfactory_protocol::framing::{LineSplitter, MAX_RAW_LINE, SplitItem};
use microfactory_protocol::preflight::{Dialect, Preflight, PreflightReport};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Why an upload was refused.
#[derive(Debug, Error)]
pub enum IngestError {
    /// Over the configured limit.
    #[error("file is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// Contains NUL bytes: an STL, image or binary G-code, not text.
    #[error("file is binary (NUL byte at offset {offset}); upload plain-text G-code")]
    Binary { offset: u64 },
    /// Not valid UTF-8.
    #[error("file is not UTF-8 text (invalid byte at offset {offset}); save it as UTF-8 or ASCII")]
    NotText { offset: u64 },
    /// No bytes.
    #[error("file is empty")]
    Empty,
    /// The analysis refused it (overlong line, no commands).
    #[error("{0}")]
    Invalid(#[from] AnalysisError),
    /// Disk trouble.
    #[error("cannot store the file: {0}")]
    Io(#[from] std::io::Error),
}

/// An upload being received: a scratch file, its hash and a text check.
#[derive(Debug)]
pub struct Upload {
    path: PathBuf,
    file: std::fs::File,
    hasher: Sha256,
    size: u64,
    limit: u64,
    /// Up to 3 bytes of a UTF-8 sequence cut by the chunk boundary.
    carry: Vec<u8>,
}

impl Upload {
    /// Starts an upload in `tmp_dir`.
    pub fn new(tmp_dir: &Path, limit: u64) -> Result<Self, IngestError> {
        let mut rnd = [0u8; 8];
        getrandom::fill(&mut rnd).map_err(|e| std::io::Error::other(e.to_string()))?;
        let path = tmp_dir.join(format!("{}.part", u64::from_le_bytes(rnd)));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Self {
            path,
            file,
            hasher: Sha256::new(),
            size: 0,
            limit,
            carry: Vec::new(),
        })
    }

    /// Adds a chunk; fails at once on binary content or past the limit.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), IngestError> {
        if self.size + chunk.len() as u64 > self.limit {
            return Err(IngestError::TooLarge { limit: self.limit });
        }
        if let Some(i) = memchr_nul(chunk) {
            return Err(IngestError::Binary {
                offset: self.size + i as u64,
            });
        }
        self.check_utf8(chunk)?;
        self.hasher.update(chunk);
        self.file.write_all(chunk)?;
        self.size += chunk.len() as u64;
        Ok(())
    }

    fn check_utf8(&mut self, chunk: &[u8]) -> Result<(), IngestError> {
        let base = self.size - self.carry.len() as u64;
        let joined;
        let bytes = if self.carry.is_empty() {
            chunk
        } else {
            joined = [self.carry.as_slice(), chunk].concat();
            &joined
        };
        match std::str::from_utf8(bytes) {
            Ok(_) => self.carry.clear(),
            Err(e) if e.error_len().is_none() => {
                self.carry = bytes[e.valid_up_to()..].to_vec();
            }
            Err(e) => {
                return Err(IngestError::NotText {
                    offset: base + e.valid_up_to() as u64,
                });
            }
        }
        Ok(())
    }

    /// Finishes: the file is durable on disk and analysed. Returns its
    /// sha256 (hex), size, the scratch path and the analysis; the caller
    /// moves it into place with [`Upload::commit`].
    pub fn finish(mut self) -> Result<Finished, IngestError> {
        if !self.carry.is_empty() {
            return Err(IngestError::NotText {
                offset: self.size - self.carry.len() as u64,
            });
        }
        if self.size == 0 {
            return Err(IngestError::Empty);
        }
        self.file.sync_all()?;
        let id = hex(&self.hasher.finalize_reset());
        let (analysis, preflight_marlin, preflight_grbl) = analyze(&mut self.file)?;
        Ok(Finished {
            id,
            size: self.size,
            tmp: std::mem::take(&mut self.path),
            analysis,
            preflight_marlin,
            preflight_grbl,
        })
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A received, analysed upload waiting to be moved into the store.
#[derive(Debug)]
pub struct Finished {
    /// sha256, hex.
    pub id: String,
    /// Bytes.
    pub size: u64,
    tmp: PathBuf,
    /// The analysis.
    pub analysis: Analysis,
    /// Marlin 2 pre-flight.
    pub preflight_marlin: PreflightReport,
    /// GRBL 1.1 pre-flight.
    pub preflight_grbl: PreflightReport,
}

impl Finished {
    /// Renames the scratch file to `dest` (or drops it when identical
    /// content is already there) and makes the rename durable.
    pub fn commit(mut self, dest: &Path, dir: &Path) -> Result<(), IngestError> {
        let tmp = std::mem::take(&mut self.tmp);
        if dest.exists() {
            let _ = std::fs::remove_file(&tmp);
            return Ok(());
        }
        std::fs::rename(&tmp, dest)?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(())
    }
}

impl Drop for Finished {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn memchr_nul(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == 0)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    // By table, not `write!("{:02x}")`: a token's hash is formatted on every
    // API request, and the formatter cost more than the sha256 itself.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// The sha256 of a token or file, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Machine limits from the slicer settings in the file's last 64 KiB
/// (PrusaSlicer writes them at the end), so that the estimate uses the
/// machine the slicer estimated with; leaves the file at its start.
pub fn slicer_limits(
    file: &mut std::fs::File,
) -> std::io::Result<Option<microfactory_protocol::kinematics::MachineLimits>> {
    let len = file.metadata()?.len();
    let start = len.saturating_sub(64 * 1024);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::with_capacity((len - start) as usize);
    file.read_to_end(&mut tail)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(microfactory_protocol::slicer::limits_from_settings(
        &String::from_utf8_lossy(&tail),
    ))
}

/// Analysis and both dialects' pre-flight of a file on disk, in one pass
/// (plus a read of the tail for the slicer's machine limits).
pub fn analyze(
    file: &mut std::fs::File,
) -> Result<(Analysis, PreflightReport, PreflightReport), IngestError> {
    let limits = slicer_limits(file)?;
    let mut analyzer = Analyzer::new(AnalyzerConfig {
        limits,
        max_line: 0,
    });
    let mut marlin = Preflight::new(Dialect::Marlin2);
    let mut grbl = Preflight::new(Dialect::Grbl11);
    let mut splitter = LineSplitter::new(MAX_RAW_LINE);
    let mut buf = vec![0u8; 256 * 1024];
    let mut per_line = |item: SplitItem<'_>| -> Result<(), IngestError> {
        if let SplitItem::Line { number, text } = item {
            marlin.check_line(number, text);
            grbl.check_line(number, text);
        }
        // Lines over the raw bound are reported by the analyser with their
        // number; overlong commands are pre-flight findings.
        Ok(())
    };
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        analyzer.feed(&buf[..n])?;
        splitter.feed(&buf[..n], &mut per_line)?;
    }
    splitter.finish(&mut per_line)?;
    let analysis = analyzer.finish()?;
    Ok((analysis, marlin.finish(), grbl.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!("mfd-files-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("tmp");
        d
    }

    #[test]
    fn hex_writes_every_byte_as_the_formatter_would() {
        let all: Vec<u8> = (0..=255).collect();
        let by_formatter: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&all), by_formatter);
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn utf8_split_across_chunks_is_text_and_the_hash_is_the_content_hash() {
        let text = "G28 ; höhe\nG1 X1 Y2\n".as_bytes();
        let cut = text.iter().position(|&b| b >= 0x80).expect("multibyte") + 1;
        let mut u = Upload::new(&tmp(), 1 << 20).expect("new");
        u.push(&text[..cut]).expect("first half");
        u.push(&text[cut..]).expect("second half");
        let f = u.finish().expect("finish");
        assert_eq!(f.id, sha256_hex(text));
        assert_eq!(f.analysis.commands, 2);
    }

    /// Issue 11: a real slicer file with comments longer than 256 bytes
    /// (settings, a one-line thumbnail) used to be refused with 422. Only
    /// an overlong command is a problem, and it is a pre-flight finding
    /// with its line number.
    #[test]
    fn long_comments_upload_and_an_overlong_command_is_a_finding_with_its_line() {
        let text = format!(
            "G28\n; {}\n;thumbnail {}\nG1 X1 Y1 F600\nM117 {}\nG1 X2 Y2\n",
            "s".repeat(300),
            "A".repeat(100_000),
            "a".repeat(295)
        );
        let mut u = Upload::new(&tmp(), 1 << 20).expect("new");
        u.push(text.as_bytes()).expect("push");
        let f = u.finish().expect("a file with long comments uploads");
        assert_eq!(f.analysis.commands, 4);
        for report in [&f.preflight_marlin, &f.preflight_grbl] {
            let lines: Vec<u64> = report.findings.iter().map(|f| f.line).collect();
            assert!(lines.contains(&5), "{:?}", report.findings);
            assert!(!lines.contains(&2) && !lines.contains(&3), "{lines:?}");
        }
    }

    #[test]
    fn binary_latin1_oversized_and_empty_uploads_say_why() {
        let mut u = Upload::new(&tmp(), 1 << 20).expect("new");
        let e = u.push(b"G1 X1\n\0\x01").expect_err("nul");
        assert!(matches!(e, IngestError::Binary { offset: 6 }), "{e}");

        let mut u = Upload::new(&tmp(), 1 << 20).expect("new");
        let e = u.push(b"G1 X1 ; \xe9t\xe9\n").expect_err("latin1");
        assert!(matches!(e, IngestError::NotText { offset: 8 }), "{e}");

        let mut u = Upload::new(&tmp(), 10).expect("new");
        u.push(b"G1 X1\n").expect("fits");
        let e = u.push(b"G1 X2\n").expect_err("too big");
        assert!(e.to_string().contains("10 bytes"), "{e}");

        let u = Upload::new(&tmp(), 10).expect("new");
        assert!(matches!(u.finish(), Err(IngestError::Empty)));

        let mut u = Upload::new(&tmp(), 100).expect("new");
        u.push(b"G1 X1 ; \xc3").expect("cut sequence waits");
        assert!(matches!(
            u.finish(),
            Err(IngestError::NotText { offset: 8 })
        ));
    }
}
