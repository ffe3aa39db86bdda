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

    /// Takes one token, waiting until it is available.
    pub async fn acquire(&self) {
        let wait = {
            let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens = (b.tokens + elapsed * self.qps).min(self.burst);
            b.at = now;
            b.tokens -= 1.0;
            if b.tokens >= 0.0 {
                return;
            }
            Duration::from_secs_f64(-b.tokens / self.qps)
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
