//! One backoff policy for every retry loop: exponential delays with a cap, a limit on tries
//! and a deadline. Pure: the caller passes how long it has been trying and sleeps itself, so
//! tests drive it without a clock.

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
    /// Transient object-store errors on a read: a few quick tries.
    pub const STORE_READ: Backoff = Backoff {
        base: Duration::from_millis(50),
        max: Duration::from_secs(2),
        max_tries: 5,
        deadline: Duration::from_secs(30),
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
