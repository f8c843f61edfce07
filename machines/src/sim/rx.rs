//! The firmware's serial receive ring buffer.

use std::collections::VecDeque;

/// Bytes that arrived over the link and wait for the firmware to read them.
/// Like a UART ring buffer, a byte arriving while it is full is lost.
#[derive(Debug)]
pub(crate) struct RxBuffer {
    buf: VecDeque<u8>,
    cap: usize,
}

impl RxBuffer {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            buf: VecDeque::with_capacity(cap),
            cap: cap.max(1),
        }
    }

    /// Stores `b`; false when the buffer was full and the byte is lost.
    pub(crate) fn push(&mut self, b: u8) -> bool {
        if self.buf.len() >= self.cap {
            return false;
        }
        self.buf.push_back(b);
        true
    }

    pub(crate) fn free(&self) -> usize {
        self.cap - self.buf.len()
    }

    /// Nothing has arrived that the firmware has not read.
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.buf.clear();
    }

    /// Removes and returns the first complete line (terminated by `\n` or
    /// `\r`, both firmwares accept either), without its terminator.
    pub(crate) fn take_line(&mut self) -> Option<Vec<u8>> {
        let end = self.buf.iter().position(|&b| b == b'\n' || b == b'\r')?;
        let line: Vec<u8> = self.buf.drain(..end).collect();
        self.buf.pop_front();
        Some(line)
    }
}
