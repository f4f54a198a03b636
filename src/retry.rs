//! The one backoff policy for every transient error: capped exponential backoff with jitter,
//! reset after a success.
//!
//! Reconnects, registry calls, publisher start-up and store outages all wait through a
//! [`Backoff`]. The delay doubles from `initial` up to `max`; each wait is drawn uniformly
//! from the upper half of the current delay ("equal jitter"), so parts that failed together
//! do not retry in lockstep, and no wait is ever shorter than half the nominal delay. A part
//! calls [`Backoff::reset`] once it has made progress again, so a long-lived daemon that
//! meets an occasional error always starts again from `initial`, never from the cap.

use std::time::Duration;

/// Capped exponential backoff with jitter; see the module docs.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    seed: u64,
}

impl Backoff {
    /// Starts at `initial` and doubles up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id()).rotate_left(32);
        Self {
            initial,
            max: max.max(initial),
            next: initial,
            seed: seed | 1,
        }
    }

    /// The wait before the next attempt; each call doubles the nominal delay up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = nominal / 2;
        let span = u64::try_from((nominal - half).as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(if span == 0 {
            0
        } else {
            self.random() % (span + 1)
        })
    }

    /// Waits [`Self::next_delay`].
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Progress was made: the next failure waits `initial` again.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// xorshift64*: jitter needs spread, not cryptographic quality.
    fn random(&mut self) -> u64 {
        self.seed ^= self.seed >> 12;
        self.seed ^= self.seed << 25;
        self.seed ^= self.seed >> 27;
        self.seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_double_up_to_the_cap_and_stay_within_the_upper_half() {
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        let nominal = [100, 200, 400, 800, 1000, 1000, 1000];
        for n in nominal {
            let d = b.next_delay();
            assert!(
                d >= n * MS / 2 && d <= n * MS,
                "delay {d:?} outside [{:?}, {:?}]",
                n * MS / 2,
                n * MS
            );
        }
    }

    #[test]
    fn a_reset_starts_again_from_the_initial_delay() {
        let mut b = Backoff::new(100 * MS, 30_000 * MS);
        for _ in 0..20 {
            b.next_delay();
        }
        b.reset();
        assert!(b.next_delay() <= 100 * MS);
    }

    #[test]
    fn jitter_spreads_the_waits() {
        let mut b = Backoff::new(1000 * MS, 1000 * MS);
        let waits: std::collections::BTreeSet<_> = (0..32).map(|_| b.next_delay()).collect();
        assert!(waits.len() > 16, "waits barely vary: {waits:?}");
    }
}
