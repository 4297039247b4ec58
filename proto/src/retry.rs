//! One backoff policy for every retry loop: exponential delays with a cap, a limit on tries
//! and a deadline. [`Backoff`] is pure: the caller passes how long it has been trying, so
//! tests drive it without a clock. [`retry`] is the one loop that runs it; it sleeps on
//! tokio's clock, which tests pause and advance.

use std::time::Duration;

/// When to try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub base: Duration,
    /// No delay is longer than this.
    pub max: Duration,
    /// At most this many tries in all (the first one included).
    pub max_tries: u32,
    /// No try starts later than this after the first.
    pub deadline: Duration,
}

impl Backoff {
    /// One object-store call (get, head, delete, put) that failed transiently.
    pub const STORE_CALL: Backoff = Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(2),
        max_tries: 4,
        deadline: Duration::from_secs(20),
    };

    /// Transient object-store errors on a read: a few quick tries.
    pub const STORE_READ: Backoff = Backoff {
        base: Duration::from_millis(50),
        max: Duration::from_secs(2),
        max_tries: 5,
        deadline: Duration::from_secs(30),
    };

    /// One batch's push: relocations and backpressure, then the map attempt fails.
    pub const PUSH: Backoff = Backoff {
        base: Duration::from_millis(20),
        max: Duration::from_secs(2),
        max_tries: 12,
        deadline: Duration::from_secs(120),
    };

    /// Registering with the masters at start: they may come up minutes after their workers.
    pub const REGISTER: Backoff = Backoff {
        base: Duration::from_millis(500),
        max: Duration::from_secs(10),
        max_tries: u32::MAX,
        deadline: Duration::from_secs(600),
    };

    /// One partition's spill: the store or the masters may be out for a while; past this the
    /// data stays local and readable, and a drain tries again at its next heartbeat.
    pub const SPILL: Backoff = Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(10),
        max_tries: 30,
        deadline: Duration::from_secs(300),
    };

    /// The delay before try number `tries + 1`, after `tries` failed ones over `elapsed`; `None`
    /// when the policy gives up.
    pub fn next_delay(&self, tries: u32, elapsed: Duration) -> Option<Duration> {
        if tries == 0 {
            return Some(Duration::ZERO);
        }
        if tries >= self.max_tries {
            return None;
        }
        let factor = 1u32.checked_shl(tries - 1).unwrap_or(u32::MAX);
        let delay = self.base.saturating_mul(factor).min(self.max);
        (elapsed.saturating_add(delay) <= self.deadline).then_some(delay)
    }
}

/// Runs `op` until it succeeds, fails with an error `retryable` refuses, or `policy` gives
/// up (then the last error is returned). `on_retry` sees each failure and the pause after it.
pub async fn retry<T, E, F, Fut>(
    policy: &Backoff,
    mut op: F,
    retryable: impl Fn(&E) -> bool,
    mut on_retry: impl FnMut(&E, Duration),
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let start = tokio::time::Instant::now();
    let mut tries = 0;
    loop {
        let e = match op().await {
            Err(e) if retryable(&e) => e,
            done => return done,
        };
        tries += 1;
        let Some(pause) = policy.next_delay(tries, start.elapsed()) else { return Err(e) };
        on_retry(&e, pause);
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let b = Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(35),
            max_tries: 5,
            deadline: Duration::from_secs(10),
        };
        let d: Vec<_> = (0..6).map(|t| b.next_delay(t, Duration::ZERO)).collect();
        let ms = |v| Some(Duration::from_millis(v));
        assert_eq!(d, vec![ms(0), ms(10), ms(20), ms(35), ms(35), None]);
        assert_eq!(b.next_delay(2, Duration::from_millis(9_990)), None, "past the deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn retry_stops_at_success_at_a_final_error_and_at_the_policy() {
        let policy = Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(4),
            max_tries: 4,
            deadline: Duration::from_secs(60),
        };
        let t0 = tokio::time::Instant::now();
        let mut calls = 0;
        let r: Result<u32, u32> = retry(
            &policy,
            || {
                calls += 1;
                let n = calls;
                async move {
                    if n < 3 {
                        Err(n)
                    } else {
                        Ok(n)
                    }
                }
            },
            |_| true,
            |_, _| {},
        )
        .await;
        assert_eq!(r, Ok(3));
        assert_eq!(t0.elapsed(), Duration::from_secs(3), "paused 1 s then 2 s");
        let mut calls = 0;
        let r: Result<(), u32> = retry(
            &policy,
            || {
                calls += 1;
                let n = calls;
                async move { Err(n) }
            },
            |e| *e != 2,
            |_, _| {},
        )
        .await;
        assert_eq!(r, Err(2), "a final error ends the loop at once");
        let mut seen = Vec::new();
        let r: Result<(), &str> = retry(&policy, || async { Err("down") }, |_| true, |_, d| seen.push(d)).await;
        assert_eq!(r, Err("down"));
        let s = Duration::from_secs;
        assert_eq!(seen, vec![s(1), s(2), s(4)], "four tries in all");
    }

    proptest! {
        /// Whatever the policy and history, a policy stops: never more tries than allowed,
        /// never a try past the deadline, never a delay over the cap.
        #[test]
        fn every_policy_stops_within_its_limits(
            base in 0u64..1000, max in 0u64..5000, tries in 1u32..50, deadline in 0u64..60_000,
            history in proptest::collection::vec(0u64..10_000, 0..60),
        ) {
            let b = Backoff {
                base: Duration::from_millis(base),
                max: Duration::from_millis(max),
                max_tries: tries,
                deadline: Duration::from_millis(deadline),
            };
            let mut elapsed = Duration::ZERO;
            let mut n = 0u32;
            for spent in history {
                let Some(d) = b.next_delay(n, elapsed) else { break };
                prop_assert!(d <= b.max.max(Duration::ZERO));
                elapsed += d;
                prop_assert!(n == 0 || elapsed <= b.deadline);
                n += 1;
                prop_assert!(n <= tries);
                elapsed += Duration::from_millis(spent);
            }
        }
    }
}
