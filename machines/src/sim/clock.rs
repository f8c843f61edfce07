//! A sub-millisecond timer for the link model.
//!
//! Tokio's timer wheel has millisecond ticks and rounds every deadline up
//! to the next one, so a "1 ms" hop through the simulated link took 1–2 ms
//! and a round trip up to 2 ms more than modelled: at 250000 baud that is
//! a third of the time the firmware's receive buffer takes to drain, and it
//! made every host look slower than it is. A Linux `timerfd` armed with the
//! exact remaining time wakes the runtime's `epoll` within the kernel's
//! timer slack (tens of microseconds) instead.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

struct Fd(TimerFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// One reusable one-shot timer with nanosecond deadlines.
pub(crate) struct PreciseTimer {
    fd: AsyncFd<Fd>,
}

impl PreciseTimer {
    pub(crate) fn new() -> io::Result<Self> {
        let fd = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        // SAFETY: `Fd` owns the descriptor (an `OwnedFd` inside `TimerFd`),
        // so it stays open and the same for as long as the `AsyncFd` that
        // owns the `Fd` lives, which is all `register` asks.
        #[expect(
            unsafe_code,
            reason = "tokio's only non-deprecated way to register a descriptor"
        )]
        let fd = unsafe { AsyncFd::register(Fd(fd)) }.map_err(|e| e.into_parts().1)?;
        Ok(Self { fd })
    }

    /// Waits until `deadline`; returns at once when it has passed.
    pub(crate) async fn sleep_until(&self, deadline: Instant) -> io::Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        // A zero `it_value` would disarm the timer, so `left` is non-zero here.
        self.fd
            .get_ref()
            .0
            .set(
                Expiration::OneShot(TimeSpec::from_duration(left)),
                TimerSetTimeFlags::empty(),
            )
            .map_err(io::Error::from)?;
        loop {
            let mut guard = self.fd.readable().await?;
            // Reading the expiry count re-arms readiness; EAGAIN means the
            // wake was spurious.
            match guard.try_io(|fd| {
                let mut count = [0u8; 8];
                nix::unistd::read(fd.get_ref().0.as_fd(), &mut count).map_err(io::Error::from)
            }) {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_deadline_in_the_past_returns_at_once_and_a_future_one_is_not_early() {
        let t = PreciseTimer::new().expect("timerfd");
        t.sleep_until(Instant::now() - Duration::from_millis(5))
            .await
            .expect("past deadline");
        for micros in [150u64, 400, 1300] {
            let deadline = Instant::now() + Duration::from_micros(micros);
            t.sleep_until(deadline).await.expect("sleep");
            assert!(Instant::now() >= deadline, "woke before {micros} µs");
        }
    }

    #[tokio::test]
    async fn the_timer_can_be_re_armed_before_it_fires() {
        let t = PreciseTimer::new().expect("timerfd");
        let far = Instant::now() + Duration::from_secs(30);
        // Arm for the far deadline, abandon the wait, then re-arm near.
        let _ = tokio::time::timeout(Duration::from_micros(10), t.sleep_until(far)).await;
        let near = Instant::now() + Duration::from_micros(300);
        tokio::time::timeout(Duration::from_secs(5), t.sleep_until(near))
            .await
            .expect("the re-armed timer fired long before the first deadline")
            .expect("sleep");
        assert!(Instant::now() >= near);
    }
}
