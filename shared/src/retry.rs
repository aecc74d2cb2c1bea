//! Retrying a fallible async operation with exponential backoff and jitter.
//!
//! This is the only module that uses the `backoff` crate: it is unmaintained
//! (RUSTSEC-2025-0012), so swapping it for `backon` must stay a one-file change.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backoff::ExponentialBackoffBuilder;

/// How often and how patiently to retry.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included; at least 1.
    pub max_attempts: u32,
    /// Pause after the first failure.
    pub initial_delay: Duration,
    /// Longest pause between two attempts (also caps a server's `Retry-After`).
    pub max_delay: Duration,
    /// Growth of the pause after each failure.
    pub multiplier: f64,
    /// Each pause is drawn from ± this fraction of its nominal value, so that
    /// clients that failed together do not all retry at the same instant.
    pub jitter: f64,
}

impl RetryPolicy {
    /// `max_attempts` attempts, pauses doubling from `initial_delay` up to 30 s, ±20 % jitter.
    pub fn new(max_attempts: u32, initial_delay: Duration) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            initial_delay,
            max_delay: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }

    /// The same policy with its pauses scaled (`RINGER_TIME_SCALE`; 0 = no waiting).
    pub fn scaled(mut self, time_scale: f64) -> Self {
        self.initial_delay = crate::config::scale_duration(self.initial_delay, time_scale);
        self.max_delay = crate::config::scale_duration(self.max_delay, time_scale);
        self
    }
}

/// How one attempt failed.
#[derive(Debug)]
pub enum Failure<E> {
    /// Worth another attempt, after `retry_after` when the other side said so.
    Transient {
        error: E,
        retry_after: Option<Duration>,
    },
    /// Another attempt would fail the same way.
    Permanent(E),
}

impl<E> Failure<E> {
    pub fn transient(error: E) -> Self {
        Failure::Transient {
            error,
            retry_after: None,
        }
    }

    pub fn permanent(error: E) -> Self {
        Failure::Permanent(error)
    }
}

/// The error of the last attempt and how many attempts were made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryError<E> {
    pub error: E,
    pub attempts: u32,
}

/// Runs `operation` (given the attempt number, from 1) until it succeeds, fails
/// permanently, or has failed `policy.max_attempts` times.
pub async fn retry<T, E, F, Fut>(policy: &RetryPolicy, mut operation: F) -> Result<T, RetryError<E>>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, Failure<E>>>,
{
    let schedule = ExponentialBackoffBuilder::new()
        .with_initial_interval(policy.initial_delay)
        .with_max_interval(policy.max_delay)
        .with_multiplier(policy.multiplier)
        .with_randomization_factor(policy.jitter)
        .with_max_elapsed_time(None)
        .build();
    let max_attempts = policy.max_attempts.max(1);
    let max_delay = policy.max_delay;
    let attempts = AtomicU32::new(0);
    let outcome = backoff::future::retry(schedule, || {
        let attempt = attempts.fetch_add(1, Ordering::Relaxed) + 1;
        let pending = operation(attempt);
        async move {
            match pending.await {
                Ok(value) => Ok(value),
                Err(Failure::Transient { error, .. }) if attempt >= max_attempts => {
                    Err(backoff::Error::Permanent(error))
                }
                Err(Failure::Transient { error, retry_after }) => Err(backoff::Error::Transient {
                    err: error,
                    retry_after: retry_after.map(|delay| delay.min(max_delay)),
                }),
                Err(Failure::Permanent(error)) => Err(backoff::Error::Permanent(error)),
            }
        }
    })
    .await;
    outcome.map_err(|error| RetryError {
        error,
        attempts: attempts.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick(max_attempts: u32) -> RetryPolicy {
        RetryPolicy::new(max_attempts, Duration::from_millis(1)).scaled(0.0)
    }

    #[tokio::test]
    async fn retries_transient_failures_until_success() {
        let result = retry(&quick(5), |attempt| async move {
            if attempt < 3 {
                Err(Failure::transient(attempt))
            } else {
                Ok(attempt)
            }
        })
        .await;
        assert_eq!(result, Ok(3));
    }

    #[tokio::test]
    async fn stops_after_max_attempts_with_the_last_error() {
        let result: Result<(), _> = retry(&quick(4), |attempt| async move {
            Err(Failure::transient(format!("failure {attempt}")))
        })
        .await;
        assert_eq!(
            result,
            Err(RetryError {
                error: "failure 4".to_owned(),
                attempts: 4
            })
        );
    }

    #[tokio::test]
    async fn permanent_failure_stops_at_once() {
        let result: Result<(), _> = retry(&quick(5), |attempt| async move {
            Err(Failure::permanent(attempt))
        })
        .await;
        assert_eq!(
            result,
            Err(RetryError {
                error: 1,
                attempts: 1
            })
        );
    }

    #[tokio::test]
    async fn honours_retry_after_capped_by_max_delay() {
        let mut policy = RetryPolicy::new(2, Duration::ZERO);
        policy.max_delay = Duration::from_millis(20);
        let started = std::time::Instant::now();
        let result = retry(&policy, |attempt| async move {
            if attempt == 1 {
                Err(Failure::Transient {
                    error: (),
                    retry_after: Some(Duration::from_secs(3600)),
                })
            } else {
                Ok(())
            }
        })
        .await;
        assert_eq!(result, Ok(()));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(20) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
    }
}
