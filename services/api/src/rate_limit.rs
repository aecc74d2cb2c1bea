//! A per-organisation token bucket (per api replica): 429 with `Retry-After`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use uuid::Uuid;

use crate::error::ApiError;

pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<Uuid, (f64, Instant)>>,
}

impl RateLimiter {
    /// `per_second` = 0 disables limiting.
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            burst: f64::from(per_second) * 2.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn check(&self, org_id: Uuid) -> Result<(), ApiError> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (tokens, last) = buckets.entry(org_id).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * self.per_second).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - *tokens) / self.per_second).ceil().max(1.0);
            Err(ApiError::RateLimited {
                retry_after_seconds: wait as u64,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_beyond_twice_the_rate_is_limited() {
        let limiter = RateLimiter::new(5);
        let org = Uuid::new_v4();
        for _ in 0..10 {
            limiter.check(org).expect("within the burst");
        }
        assert!(matches!(
            limiter.check(org),
            Err(ApiError::RateLimited { .. })
        ));
        limiter
            .check(Uuid::new_v4())
            .expect("other orgs are unaffected");
    }

    #[test]
    fn zero_disables_limiting() {
        let limiter = RateLimiter::new(0);
        let org = Uuid::new_v4();
        for _ in 0..10_000 {
            limiter.check(org).unwrap();
        }
    }
}
