//! Retries with exponential backoff and full jitter, honouring a server's
//! Retry-After as the minimum wait, up to the policy's maxBackoff.
//! Permanent errors return at once.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

use crate::config::RetryPolicy;

pub trait Transient {
    fn is_transient(&self) -> bool;
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

pub struct Backoff {
    delays: Box<dyn Iterator<Item = Duration> + Send>,
    /// The longest a server's Retry-After may make us wait.
    max_wait: Duration,
}

impl Backoff {
    pub fn new(policy: &RetryPolicy) -> Self {
        let builder = ExponentialBuilder::default()
            .with_min_delay(policy.initial_backoff)
            .with_max_delay(policy.max_backoff)
            .with_max_times(policy.attempts.saturating_sub(1) as usize)
            .with_jitter();
        Self {
            delays: Box::new(builder.build()),
            max_wait: policy.max_backoff,
        }
    }

    /// A fixed schedule that honours any Retry-After, for tests.
    pub fn fixed(delays: Vec<Duration>) -> Self {
        Self {
            delays: Box::new(delays.into_iter()),
            max_wait: Duration::MAX,
        }
    }
}

/// Runs `op` until it succeeds, fails permanently, runs out of attempts or
/// is cancelled (then the last error is returned).
pub async fn retry<T, E, F, Fut>(
    mut backoff: Backoff,
    cancel: &CancellationToken,
    mut op: F,
) -> Result<T, E>
where
    E: Transient + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    loop {
        let err = match op().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if !err.is_transient() {
            return Err(err);
        }
        let Some(mut delay) = backoff.delays.next() else {
            return Err(err);
        };
        // A Retry-After far out (a date, a day) must not park the pull.
        if let Some(after) = err.retry_after() {
            delay = delay.max(after.min(backoff.max_wait));
        }
        tracing::info!(error = %err, delay_ms = delay.as_millis() as u64, "transient error, retrying");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug)]
    struct E {
        transient: bool,
        after: Option<Duration>,
    }
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "e")
        }
    }
    impl Transient for E {
        fn is_transient(&self) -> bool {
            self.transient
        }
        fn retry_after(&self) -> Option<Duration> {
            self.after
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_until_success() {
        let calls = AtomicU32::new(0);
        let out: Result<u32, E> = retry(
            Backoff::fixed(vec![Duration::from_millis(1); 5]),
            &CancellationToken::new(),
            || async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n < 3 {
                    Err(E {
                        transient: true,
                        after: None,
                    })
                } else {
                    Ok(n)
                }
            },
        )
        .await;
        assert_eq!(out.unwrap(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let out: Result<(), E> = retry(
            Backoff::fixed(vec![Duration::from_millis(1); 5]),
            &CancellationToken::new(),
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(E {
                    transient: false,
                    after: None,
                })
            },
        )
        .await;
        assert!(out.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn honours_retry_after_and_gives_up() {
        let calls = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let out: Result<(), E> = retry(
            Backoff::fixed(vec![Duration::from_millis(1); 2]),
            &CancellationToken::new(),
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(E {
                    transient: true,
                    after: Some(Duration::from_secs(5)),
                })
            },
        )
        .await;
        assert!(out.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(start.elapsed() >= Duration::from_secs(10));
    }

    #[test]
    fn policy_bounds_attempts() {
        let p = RetryPolicy {
            attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        let delays: Vec<_> = Backoff::new(&p).delays.collect();
        assert_eq!(delays.len(), 3);
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
    }
}
