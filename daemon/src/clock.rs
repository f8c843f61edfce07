//! The wall clock, read by the shell only: the core is handed `now`.

/// Milliseconds since the Unix epoch; what every timestamp is.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
