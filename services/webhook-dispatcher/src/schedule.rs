//! The retry schedule of API.md: attempts immediately, then +1 min, +5 min,
//! +30 min, +2 h, +5 h, +10 h, +24 h, each ±20 % jitter; a failure at the 8th
//! attempt exhausts the delivery.

use std::time::Duration;

use rand::RngExt;
use ringer::broker::WEBHOOK_RETRY_TIERS;

/// Attempts a delivery gets before it is exhausted (the first plus seven retries).
pub const MAX_ATTEMPTS: i32 = 8;
/// ±20 %.
pub const JITTER: f64 = 0.2;
/// Exhausted deliveries in a row that disable an endpoint.
pub const DISABLE_AFTER_FAILURES: i32 = 10;

/// The nominal wait after the `attempts_made`-th failed attempt (1-based).
pub fn nominal_delay(attempts_made: i32) -> Duration {
    let index = usize::try_from(attempts_made.max(1) - 1)
        .unwrap_or(0)
        .min(WEBHOOK_RETRY_TIERS.len() - 1);
    WEBHOOK_RETRY_TIERS[index].1
}

/// The wait after the `attempts_made`-th failure: nominal ±20 %, then time-scaled.
pub fn retry_delay(attempts_made: i32, time_scale: f64) -> Duration {
    let factor = rand::rng().random_range((1.0 - JITTER)..=(1.0 + JITTER));
    ringer::config::scale_duration(nominal_delay(attempts_made).mul_f64(factor), time_scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_follows_the_documented_tiers() {
        let minutes: Vec<u64> = (1..=7)
            .map(|attempt| nominal_delay(attempt).as_secs() / 60)
            .collect();
        assert_eq!(minutes, [1, 5, 30, 120, 300, 600, 1440]);
        assert_eq!(nominal_delay(20), Duration::from_secs(24 * 3600));
    }

    #[test]
    fn jitter_stays_within_twenty_percent_and_scales() {
        for attempt in 1..=7 {
            let nominal = nominal_delay(attempt).as_secs_f64();
            for _ in 0..200 {
                let delay = retry_delay(attempt, 1.0).as_secs_f64();
                assert!(delay >= nominal * 0.8 - 1e-6 && delay <= nominal * 1.2 + 1e-6);
            }
        }
        assert_eq!(retry_delay(3, 0.0), Duration::ZERO);
        let scaled = retry_delay(1, 0.001).as_secs_f64();
        assert!((0.048..=0.072).contains(&scaled), "{scaled}");
    }
}
