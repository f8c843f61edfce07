//! Per-caller limits of the API: event streams per token and failed
//! sign-ins per client address. Both live in memory: they protect a
//! running daemon, and a restart rightly forgets them.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::HttpConfig;

/// The `[http]` settings the handlers need, in their units.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A body that sends nothing for this long is cut off.
    pub idle_timeout: Duration,
    /// Event streams per token.
    pub max_streams_per_token: usize,
    /// Session lifetime in ms.
    pub session_lifetime_ms: u64,
    /// `Secure` on the session cookie.
    pub cookie_secure: bool,
    /// Failed sign-ins per address per [`FAILURE_WINDOW`].
    pub max_failures: usize,
}

impl From<&HttpConfig> for Settings {
    fn from(c: &HttpConfig) -> Self {
        Self {
            idle_timeout: Duration::from_secs(c.idle_timeout_secs),
            max_streams_per_token: c.max_event_streams_per_token,
            session_lifetime_ms: c.session_lifetime_days.saturating_mul(24 * 3600 * 1000),
            cookie_secure: c.cookie_secure,
            max_failures: usize::try_from(c.max_failed_sign_ins_per_minute).unwrap_or(usize::MAX),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self::from(&HttpConfig::default())
    }
}

/// Open event streams per token hash.
#[derive(Debug, Default)]
pub struct Streams(Mutex<HashMap<String, usize>>);

/// One open event stream; dropping it (the stream ends or the client
/// goes away) frees its place.
#[derive(Debug)]
pub struct StreamSlot {
    streams: Arc<Streams>,
    token: String,
}

impl Streams {
    /// A place for one more stream of `token`, unless it has `max` open.
    pub fn open(self: &Arc<Self>, token: &str, max: usize) -> Option<StreamSlot> {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(token.to_string()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            streams: Arc::clone(self),
            token: token.to_string(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self
            .streams
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.token) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.token);
            }
        }
    }
}

/// The window failed sign-ins are counted in.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Addresses remembered at most; past it the oldest are forgotten first
/// (a flood of spoofed-looking addresses must not grow memory).
const MAX_ADDRESSES: usize = 10_000;

/// Recent failed sign-ins per client address.
#[derive(Debug, Default)]
pub struct Failures(Mutex<HashMap<IpAddr, VecDeque<Instant>>>);

impl Failures {
    /// How long `addr` must wait before trying again, if it has failed
    /// `max` times within the window.
    pub fn retry_after(&self, addr: IpAddr, max: usize, now: Instant) -> Option<Duration> {
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let times = all.get_mut(&addr)?;
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= FAILURE_WINDOW)
        {
            times.pop_front();
        }
        if times.len() < max {
            if times.is_empty() {
                all.remove(&addr);
            }
            return None;
        }
        let oldest = *times.front()?;
        Some(FAILURE_WINDOW.saturating_sub(now.duration_since(oldest)))
    }

    /// Counts a failure of `addr`.
    pub fn record(&self, addr: IpAddr, max: usize, now: Instant) {
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if all.len() >= MAX_ADDRESSES && !all.contains_key(&addr) {
            all.retain(|_, t| {
                t.back()
                    .is_some_and(|t| now.duration_since(*t) < FAILURE_WINDOW)
            });
            if all.len() >= MAX_ADDRESSES {
                all.clear();
            }
        }
        let times = all.entry(addr).or_default();
        times.push_back(now);
        // Only the newest `max` matter for the decision.
        while times.len() > max {
            times.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_gets_its_number_of_streams_and_a_closed_one_frees_its_place() {
        let s = Arc::new(Streams::default());
        let a = s.open("t", 2).expect("first");
        let _b = s.open("t", 2).expect("second");
        assert!(s.open("t", 2).is_none());
        assert!(s.open("other", 2).is_some(), "limits are per token");
        drop(a);
        assert!(s.open("t", 2).is_some());
    }

    #[test]
    fn an_address_that_keeps_failing_waits_until_its_oldest_failure_is_a_minute_old() {
        let f = Failures::default();
        let addr: IpAddr = [192, 0, 2, 7].into();
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(f.retry_after(addr, 3, t0), None, "failure {i}");
            f.record(addr, 3, t0 + Duration::from_secs(i));
        }
        let wait = f.retry_after(addr, 3, t0 + Duration::from_secs(10));
        assert_eq!(wait, Some(Duration::from_secs(50)));
        assert_eq!(f.retry_after([192, 0, 2, 8].into(), 3, t0), None);
        assert_eq!(f.retry_after(addr, 3, t0 + Duration::from_secs(60)), None);
    }
}
