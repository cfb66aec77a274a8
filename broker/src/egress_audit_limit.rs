//! Per-session rate limit on egress denials written to the audit trail. A hostile page
//! can make the browser open thousands of refused connections a minute, and each would
//! otherwise become a hash-chained audit event.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use uuid::Uuid;

/// Denials of one session audited per window; the rest are counted.
pub const DENIALS_PER_WINDOW: u32 = 20;
/// Length of one rate-limit window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Sessions tracked before windows that have ended are dropped.
const TRACKED_SESSIONS: usize = 1024;

/// The decision about one denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Audit it. `suppressed_before` is the number of this session's denials that the
    /// previous window left unaudited.
    Audit { suppressed_before: u64 },
    /// Count it in metrics only.
    Suppress,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    audited: u32,
    suppressed: u64,
}

/// Fixed windows per session.
#[derive(Debug, Default)]
pub struct DenialLimiter {
    sessions: HashMap<Uuid, Window>,
}

impl DenialLimiter {
    /// Decides about one denial of `session_id` at `now`.
    pub fn check(&mut self, session_id: Uuid, now: Instant) -> Verdict {
        if self.sessions.len() >= TRACKED_SESSIONS {
            self.sessions
                .retain(|_, window| now.duration_since(window.started) < WINDOW);
        }
        let window = self.sessions.entry(session_id).or_insert(Window {
            started: now,
            audited: 0,
            suppressed: 0,
        });

        let mut suppressed_before = 0;
        if now.duration_since(window.started) >= WINDOW {
            suppressed_before = window.suppressed;
            *window = Window {
                started: now,
                audited: 0,
                suppressed: 0,
            };
        }
        if window.audited < DENIALS_PER_WINDOW {
            window.audited += 1;
            Verdict::Audit { suppressed_before }
        } else {
            window.suppressed += 1;
            Verdict::Suppress
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_over_the_burst_are_suppressed() {
        let mut limiter = DenialLimiter::default();
        let session = Uuid::new_v4();
        let start = Instant::now();

        for _ in 0..DENIALS_PER_WINDOW {
            assert_eq!(
                limiter.check(session, start),
                Verdict::Audit {
                    suppressed_before: 0
                }
            );
        }
        assert_eq!(limiter.check(session, start), Verdict::Suppress);
        assert_eq!(limiter.check(session, start), Verdict::Suppress);
    }

    #[test]
    fn next_window_reports_suppressed_count() {
        let mut limiter = DenialLimiter::default();
        let session = Uuid::new_v4();
        let start = Instant::now();
        for _ in 0..DENIALS_PER_WINDOW + 3 {
            limiter.check(session, start);
        }

        assert_eq!(
            limiter.check(session, start + WINDOW),
            Verdict::Audit {
                suppressed_before: 3
            }
        );
    }

    #[test]
    fn sessions_are_limited_apart() {
        let mut limiter = DenialLimiter::default();
        let noisy = Uuid::new_v4();
        let quiet = Uuid::new_v4();
        let start = Instant::now();
        for _ in 0..DENIALS_PER_WINDOW + 1 {
            limiter.check(noisy, start);
        }

        assert_eq!(
            limiter.check(quiet, start),
            Verdict::Audit {
                suppressed_before: 0
            }
        );
    }
}
