//! A token bucket that spaces out calls to the API server.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Allows `qps` calls per second on average with bursts of up to `burst` calls. Waiters are
/// served in arrival order: each reserves the next token, so a burst of 1,000 applies is spread
/// evenly instead of retrying in a thundering herd.
#[derive(Debug)]
pub struct RateLimiter {
    qps: f64,
    burst: f64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Tokens available at `at`; negative when tokens are reserved ahead.
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// A full bucket. `qps` must be positive; `burst` is at least 1.
    pub fn new(qps: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        RateLimiter {
            qps: qps.max(f64::MIN_POSITIVE),
            burst,
            state: Mutex::new(Bucket {
                tokens: burst,
                at: Instant::now(),
            }),
        }
    }

    /// Takes one token if it is available within `max_wait`, and waits for it; otherwise takes
    /// nothing and returns how long until a token would be free, so the caller can be told to
    /// come back then instead of queueing without bound.
    pub async fn acquire_within(&self, max_wait: Duration) -> Result<(), Duration> {
        let wait = {
            let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens = (b.tokens + elapsed * self.qps).min(self.burst);
            b.at = now;
            let wait = Duration::from_secs_f64((1.0 - b.tokens).max(0.0) / self.qps);
            if wait > max_wait {
                return Err(wait);
            }
            b.tokens -= 1.0;
            wait
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// Takes one token, waiting until it is available.
    pub async fn acquire(&self) {
        // With no bound on the wait, no token is refused.
        let _ = self.acquire_within(Duration::MAX).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_bounded_wait_refuses_beyond_it_and_says_when() {
        let l = RateLimiter::new(10.0, 2);
        let start = Instant::now();
        let max = Duration::from_millis(250);
        // The burst, then two more within 250 ms (at 100 and 200 ms).
        for _ in 0..4 {
            assert_eq!(l.acquire_within(max).await, Ok(()));
        }
        assert_eq!(start.elapsed(), Duration::from_millis(200));
        // Now at 200 ms with the bucket empty: the next token is 100 ms away, within the bound;
        // with no wait allowed the one after is refused, told how long until its token.
        assert_eq!(l.acquire_within(max).await, Ok(()));
        let refused = l.acquire_within(Duration::ZERO).await.unwrap_err();
        assert!(
            refused > Duration::ZERO && refused <= Duration::from_millis(100),
            "{refused:?}"
        );
        // A refusal takes nothing: after its wait the token is there.
        tokio::time::sleep(refused).await;
        assert_eq!(l.acquire_within(Duration::ZERO).await, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn bursts_then_spaces_calls() {
        let l = RateLimiter::new(10.0, 5);
        let start = Instant::now();
        for _ in 0..5 {
            l.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst is free");
        for _ in 0..10 {
            l.acquire().await;
        }
        let e = start.elapsed().as_secs_f64();
        assert!(
            (0.99..1.02).contains(&e),
            "10 more calls at 10/s take 1 s: {e}"
        );
    }
}
