//! Reading a job's G-code from disk lazily, so files of any size stream
//! with bounded memory, and with every line's source number kept.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use microfactory_protocol::canned::{CannedExpander, Output};
use microfactory_protocol::framing::{
    DEFAULT_MAX_LINE, LineSplitter, MAX_RAW_LINE, SplitItem, clean_line,
};
use thiserror::Error;
use tokio::io::AsyncReadExt;

/// Why a job's file cannot be streamed.
#[derive(Debug, Error)]
pub enum JobFileError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line is not valid G-code text (binary, too long, bad comment).
    #[error("line {line}: {reason}")]
    BadLine { line: u64, reason: String },
}

/// One command of a job, ready for a host state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobLine {
    /// One-based line number in the source file.
    pub line: u64,
    /// The command, comments stripped and blanks collapsed.
    pub text: String,
    /// Stop here for the operator (a tool change), with the reason; `text`
    /// is empty then.
    pub pause: Option<String>,
    /// The tool to load at that stop, when the program names it.
    pub tool: Option<u32>,
}

/// Lines of a file, read in chunks on demand.
#[derive(Debug)]
pub struct JobSource {
    path: PathBuf,
    file: tokio::fs::File,
    splitter: LineSplitter,
    pending: VecDeque<JobLine>,
    start_line: u64,
    eof: bool,
    buf: Vec<u8>,
    clean: String,
    expander: Option<CannedExpander>,
    expanded: Vec<Output>,
}

/// How many bytes are read from disk at a time. Every line of a chunk is
/// queued at once, so this bounds a running job's memory: 8 KiB is ~300
/// commands (~50 KiB with their queue), where 64 KiB cost ~400 KiB a job,
/// 40 MiB over 100 machines. One read per few hundred lines is still cheap.
const CHUNK: usize = 8 * 1024;

impl JobSource {
    /// Opens `path`; lines before `start_line` (one-based) are skipped, for
    /// restarting an interrupted job part-way.
    pub async fn open(path: &Path, start_line: u64) -> Result<Self, JobFileError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| JobFileError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            splitter: LineSplitter::new(MAX_RAW_LINE),
            pending: VecDeque::new(),
            start_line,
            eof: false,
            buf: vec![0; CHUNK],
            clean: String::new(),
            expander: None,
            expanded: Vec::new(),
        })
    }

    /// Expands canned drilling cycles and turns tool changes into pause
    /// points (for GRBL 1.1), see `microfactory_protocol::canned`.
    pub fn expand_canned_cycles(mut self) -> Self {
        self.expander = Some(CannedExpander::new());
        self
    }

    /// The next command, or `None` at the end of the file.
    pub async fn next(&mut self) -> Result<Option<JobLine>, JobFileError> {
        loop {
            if let Some(l) = self.pending.pop_front() {
                return Ok(Some(l));
            }
            if self.eof {
                return Ok(None);
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<(), JobFileError> {
        let n = self
            .file
            .read(&mut self.buf)
            .await
            .map_err(|source| JobFileError::Io {
                path: self.path.clone(),
                source,
            })?;
        let Self {
            splitter,
            pending,
            clean,
            start_line,
            buf,
            expander,
            expanded,
            ..
        } = self;
        let mut take = |item: SplitItem<'_>| -> Result<(), JobFileError> {
            match item {
                SplitItem::Line { number, text } => {
                    if let Some(x) = expander.as_mut() {
                        // The transform needs every line for its modal
                        // state, even those before a restart point.
                        expanded.clear();
                        x.push_line(number, text, expanded)
                            .map_err(|e| JobFileError::BadLine {
                                line: number,
                                reason: e.to_string(),
                            })?;
                        if number >= *start_line {
                            for o in expanded.drain(..) {
                                pending.push_back(match o {
                                    Output::Line { source_line, text } => JobLine {
                                        line: source_line,
                                        text,
                                        pause: None,
                                        tool: None,
                                    },
                                    Output::Pause {
                                        source_line,
                                        reason,
                                        tool,
                                    } => JobLine {
                                        line: source_line,
                                        text: String::new(),
                                        pause: Some(reason),
                                        tool,
                                    },
                                });
                            }
                        }
                        return Ok(());
                    }
                    if number < *start_line {
                        return Ok(());
                    }
                    clean_line(text, DEFAULT_MAX_LINE, clean).map_err(|e| {
                        JobFileError::BadLine {
                            line: number,
                            reason: e.to_string(),
                        }
                    })?;
                    if !clean.is_empty() {
                        pending.push_back(JobLine {
                            line: number,
                            text: clean.clone(),
                            pause: None,
                            tool: None,
                        });
                    }
                    Ok(())
                }
                SplitItem::Bad { number, error } => Err(JobFileError::BadLine {
                    line: number,
                    reason: error.to_string(),
                }),
            }
        };
        if n == 0 {
            self.eof = true;
            splitter.finish(&mut take)
        } else {
            splitter.feed(&buf[..n], &mut take)
        }
    }
}

/// Counts a file's commands (non-empty lines after cleaning), for progress
/// totals when no analysis is at hand.
pub async fn count_commands(
    path: &Path,
    start_line: u64,
    expand: bool,
) -> Result<u64, JobFileError> {
    let mut src = JobSource::open(path, start_line.max(1)).await?;
    if expand {
        src = src.expand_canned_cycles();
    }
    let mut n = 0;
    while let Some(l) = src.next().await? {
        if l.pause.is_none() {
            n += 1;
        }
    }
    Ok(n)
}
