//! How records are laid out on disk: one version byte, then JSON.
//!
//! Version bytes are below 0x20, which no JSON text starts with, so the
//! unversioned JSON of the first daemon (version 0) is told apart from a
//! versioned record by its first byte, and a record from a newer daemon is
//! recognised and refused instead of misread.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StoreError;

/// The record layout this daemon writes and reads.
pub const VERSION: u8 = 1;

/// What the first byte says about a stored value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Plain JSON of the first daemon: migrate it.
    Legacy,
    /// This daemon's layout.
    Current,
    /// A layout this daemon does not know: written by a newer one.
    Newer(u8),
    /// An empty or unreadable value.
    Unknown,
}

/// The layout of a stored value.
pub fn layout(bytes: &[u8]) -> Layout {
    match bytes.first() {
        None => Layout::Unknown,
        Some(&VERSION) => Layout::Current,
        Some(0) => Layout::Unknown,
        Some(&b) if b < 0x20 && b > VERSION => Layout::Newer(b),
        Some(&b) if b < 0x20 => Layout::Unknown,
        Some(_) => Layout::Legacy,
    }
}

/// A record as stored.
pub fn encode<T: Serialize>(table: &'static str, v: &T) -> Result<Vec<u8>, StoreError> {
    // Most records are a few hundred bytes: start there rather than grow
    // from one byte through every power of two.
    let mut out = Vec::with_capacity(512);
    out.push(VERSION);
    serde_json::to_writer(&mut out, v).map_err(|source| StoreError::Encode { table, source })?;
    Ok(out)
}

/// Bytes of another encoding (metering's compact records) behind this
/// layout's version byte.
pub fn wrap(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(VERSION);
    out.extend_from_slice(body);
    out
}

/// What follows the version byte of a record in this daemon's layout;
/// refuses a newer layout by name, and an older or unreadable one.
pub fn body<'b>(table: &'static str, key: &[u8], bytes: &'b [u8]) -> Result<&'b [u8], StoreError> {
    match layout(bytes) {
        Layout::Current => Ok(&bytes[1..]),
        Layout::Newer(version) => Err(StoreError::Newer {
            table,
            key: show_key(key),
            version,
        }),
        Layout::Legacy | Layout::Unknown => Err(StoreError::Unreadable {
            table,
            key: show_key(key),
        }),
    }
}

/// A stored record, which must be in this daemon's layout (the store
/// migrates older ones when it opens).
pub fn decode<T: DeserializeOwned>(
    table: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(body(table, key, bytes)?).map_err(|source| StoreError::Corrupt {
        table,
        key: show_key(key),
        source,
    })
}

/// A record in the first daemon's plain JSON.
pub fn decode_legacy<T: DeserializeOwned>(
    table: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        table,
        key: show_key(key),
        source,
    })
}

/// A key for error messages: text when it is text, else numbers.
pub fn show_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => s.to_string(),
        _ if key.len() == 8 => u64_key(key).to_string(),
        _ => format!("{key:02x?}"),
    }
}

/// A big-endian u64 key (shorter keys read as 0-padded).
pub fn u64_key(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_a_newer_layout_is_refused_by_name() {
        let bytes = encode("jobs", &vec![1, 2, 3]).expect("encode");
        assert_eq!(bytes[0], VERSION);
        let back: Vec<i32> = decode("jobs", b"k", &bytes).expect("decode");
        assert_eq!(back, vec![1, 2, 3]);
        let mut newer = bytes.clone();
        newer[0] = VERSION + 1;
        let err =
            decode::<Vec<i32>>("jobs", &7u64.to_be_bytes(), &newer).expect_err("newer layout");
        let msg = err.to_string();
        assert!(msg.contains("newer microfactoryd"), "{msg}");
        assert!(msg.contains("jobs") && msg.contains(" 7"), "{msg}");
        assert_eq!(layout(b"{\"a\":1}"), Layout::Legacy);
        assert_eq!(layout(b""), Layout::Unknown);
        assert!(decode::<Vec<i32>>("jobs", b"k", b"[1]").is_err());
    }
}
