//! Per-principal request rate limits (`kmsfs serve --rate-limit N`): each caller (an IAM
//! user by its ARN, a socket peer by its uid) has a token bucket holding up to N requests
//! that refills at N a second; a request finding it empty is answered ThrottlingException,
//! AWS's name for it, which the SDKs retry with backoff. Off unless asked for.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Buckets kept before idle (full) ones are dropped: bounds the memory a stream of
/// principals can take.
const MAX_BUCKETS: usize = 10_000;

pub struct RateLimiter {
    per_sec: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// `per_sec` requests a second per principal, with bursts of as many.
    pub fn new(per_sec: u32) -> RateLimiter {
        RateLimiter { per_sec: f64::from(per_sec.max(1)), buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one request from `who`'s bucket at `now`; false when it is empty.
    pub fn admit(&self, who: &str, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(who) {
            let (rate, cap) = (self.per_sec, self.per_sec);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.last).as_secs_f64() * rate < cap);
        }
        let bucket = buckets.entry(who.to_string()).or_insert(Bucket { tokens: self.per_sec, last: now });
        let refill = now.saturating_duration_since(bucket.last).as_secs_f64() * self.per_sec;
        bucket.tokens = (bucket.tokens + refill).min(self.per_sec);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate_per_principal() {
        let limiter = RateLimiter::new(10);
        let t0 = Instant::now();
        assert!((0..10).all(|_| limiter.admit("alice", t0)), "a second's worth at once");
        assert!(!limiter.admit("alice", t0));
        assert!(limiter.admit("bob", t0), "each principal has its own bucket");
        assert!(!limiter.admit("alice", t0 + Duration::from_millis(50)));
        assert!(limiter.admit("alice", t0 + Duration::from_millis(110)), "refilled at 10/s");
        assert!(!limiter.admit("alice", t0 + Duration::from_millis(110)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            (0..20).filter(|_| limiter.admit("alice", later)).count(),
            10,
            "never more than the burst"
        );
    }
}
