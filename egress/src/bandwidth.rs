//! Per-session bandwidth limit: one token bucket shared by all tunnels of a session,
//! counting the bytes of both directions.

use std::num::NonZeroU64;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Smallest bucket size, so one full copy buffer never has to wait for more than the
/// bucket can hold.
const MIN_BURST: u64 = 16 * 1024;

/// A token bucket of bytes, refilled at `bytes_per_second` up to `burst`.
///
/// [`Bandwidth::consume`] takes the bytes at once, letting the bucket go negative, and
/// then waits until the debt is repaid. Bytes are forwarded only after that wait, so
/// over any interval of length `t` from the start at most `burst + rate * t` bytes
/// pass, however many tunnels share the bucket.
#[derive(Debug)]
pub(crate) struct Bandwidth {
    bytes_per_second: f64,
    burst: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    updated: Instant,
}

impl Bandwidth {
    /// A full bucket of a quarter second's bytes, and at least 16 KiB.
    pub(crate) fn new(bytes_per_second: NonZeroU64) -> Self {
        let rate = bytes_per_second.get();
        let burst = (rate / 4).max(MIN_BURST) as f64;
        Self {
            bytes_per_second: rate as f64,
            burst,
            state: Mutex::new(State {
                tokens: burst,
                updated: Instant::now(),
            }),
        }
    }

    /// Bytes the bucket holds when full.
    #[cfg(test)]
    pub(crate) fn burst(&self) -> u64 {
        self.burst as u64
    }

    /// Takes `bytes` from the bucket and waits until the bucket is no longer in debt.
    pub(crate) async fn consume(&self, bytes: usize) {
        let wait = self.reserve(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes `bytes` from the bucket at `now` and returns how long the caller must wait
    /// before forwarding them.
    fn reserve(&self, bytes: usize, now: Instant) -> Duration {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let refill = now.saturating_duration_since(state.updated).as_secs_f64()
            * self.bytes_per_second;
        state.tokens = (state.tokens + refill).min(self.burst) - bytes as f64;
        state.updated = state.updated.max(now);
        if state.tokens < 0.0 {
            Duration::from_secs_f64(-state.tokens / self.bytes_per_second)
        } else {
            Duration::ZERO
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(bytes_per_second: u64) -> Bandwidth {
        Bandwidth::new(NonZeroU64::new(bytes_per_second).unwrap())
    }

    fn millis(duration: Duration) -> u128 {
        duration.as_millis()
    }

    #[test]
    fn burst_passes_at_once_and_the_rest_waits() {
        let bucket = rate(400_000);
        assert_eq!(bucket.burst(), 100_000);
        let start = bucket.state.lock().unwrap().updated;

        assert_eq!(bucket.reserve(100_000, start), Duration::ZERO);
        assert_eq!(millis(bucket.reserve(200_000, start)), 500);
    }

    #[test]
    fn consumers_share_one_rate() {
        let bucket = rate(100_000);
        let start = bucket.state.lock().unwrap().updated;
        assert_eq!(bucket.reserve(bucket.burst() as usize, start), Duration::ZERO);

        // Four consumers take 10 000 bytes each at the same moment: each waits for its
        // own bytes and for every reservation before it.
        let waits: Vec<u128> = (0..4)
            .map(|_| millis(bucket.reserve(10_000, start)))
            .collect();
        assert_eq!(waits, [100, 200, 300, 400]);
        // Half a second later the 40 000 bytes of debt are repaid and 10 000 refilled.
        let later = start + Duration::from_millis(500);
        assert_eq!(bucket.reserve(10_000, later), Duration::ZERO);
        assert_eq!(millis(bucket.reserve(10_000, later)), 100);
    }

    #[test]
    fn idle_time_refills_no_more_than_the_burst() {
        let bucket = rate(100_000);
        let start = bucket.state.lock().unwrap().updated;
        let later = start + Duration::from_secs(60);

        assert_eq!(bucket.reserve(bucket.burst() as usize, later), Duration::ZERO);
        assert_eq!(millis(bucket.reserve(50_000, later)), 500);
    }

    #[test]
    fn small_rates_keep_a_copy_buffer_of_burst() {
        assert_eq!(rate(1000).burst(), MIN_BURST);
    }
}
