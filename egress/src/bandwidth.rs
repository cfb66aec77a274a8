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
        let wait = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let refill = now.duration_since(state.updated).as_secs_f64() * self.bytes_per_second;
            state.tokens = (state.tokens + refill).min(self.burst) - bytes as f64;
            state.updated = now;
            (state.tokens < 0.0)
                .then(|| Duration::from_secs_f64(-state.tokens / self.bytes_per_second))
        };
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(bytes_per_second: u64) -> Bandwidth {
        Bandwidth::new(NonZeroU64::new(bytes_per_second).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn burst_passes_at_once_and_the_rest_waits_for_the_rate() {
        let bucket = rate(400_000);
        assert_eq!(bucket.burst(), 100_000);
        let start = Instant::now();

        bucket.consume(100_000).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        bucket.consume(200_000).await;
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(499) && elapsed <= Duration::from_millis(501),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_consumers_share_one_rate() {
        let bucket = std::sync::Arc::new(rate(100_000));
        let burst = bucket.burst() as usize;
        bucket.consume(burst).await;
        let start = Instant::now();

        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let bucket = std::sync::Arc::clone(&bucket);
                tokio::spawn(async move {
                    for _ in 0..5 {
                        bucket.consume(10_000).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        // 200 000 bytes at 100 000 bytes per second.
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(1999) && elapsed <= Duration::from_millis(2001),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_refills_no_more_than_the_burst() {
        let bucket = rate(100_000);
        let burst = bucket.burst() as usize;
        tokio::time::sleep(Duration::from_secs(60)).await;
        let start = Instant::now();

        bucket.consume(burst).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        bucket.consume(50_000).await;
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(499) && elapsed <= Duration::from_millis(501),
            "{elapsed:?}"
        );
    }

    #[test]
    fn small_rates_keep_a_copy_buffer_of_burst() {
        assert_eq!(rate(1000).burst(), MIN_BURST);
    }
}
