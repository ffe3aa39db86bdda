//! Capped exponential backoff, the workspace's one retry pacing: with jitter for what many
//! processes retry at once (agents of a fleet that lost sigma-api, replicas of sigma-api that
//! lost the API server), exact for one local process.

use std::time::Duration;

/// Capped exponential backoff: jittered ([`Backoff::new`]) or exact ([`Backoff::exact`]).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    jitter: bool,
}

impl Backoff {
    /// Starts at `base`, never waits longer than `max`; each wait is jittered.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
            jitter: true,
        }
    }

    /// Doubles from `base` to `max` without jitter (one local process, nobody to spread out).
    pub fn exact(base: Duration, max: Duration) -> Backoff {
        Backoff {
            jitter: false,
            ..Backoff::new(base, max)
        }
    }

    /// The wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16));
        self.attempt = self.attempt.saturating_add(1);
        let cap = exp.min(self.max);
        if !self.jitter {
            return cap;
        }
        // Full jitter spreads a fleet that lost sigma-api at the same moment.
        let ms = cap.as_millis().max(1) as u64;
        Duration::from_millis(ms / 2 + fastrand::u64(0..=ms / 2))
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let d: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[3] >= Duration::from_millis(400));
        assert!(d.iter().all(|x| *x <= Duration::from_secs(2)));
        assert!(d[9] >= Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn exact_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::exact(Duration::from_millis(500), Duration::from_secs(3));
        let seq: Vec<u64> = (0..5).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(seq, [500, 1000, 2000, 3000, 3000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }
}
