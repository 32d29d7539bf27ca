//! Open-loop pacing: when each sender should start its next operation.
//!
//! A fixed total rate is split evenly over the senders, and the senders'
//! schedules are staggered so that starts are spread evenly in time. A
//! sender that falls behind starts its next operation at once but keeps
//! its schedule, and its latency is measured from the intended start. So a
//! stalled system is charged for the operations it delayed (no coordinated
//! omission).

use std::time::Duration;

/// The start schedule of one sender within an open-loop run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// Time from the run's start to this sender's first operation.
    first: Duration,
    /// Time between two of this sender's operations.
    period: Duration,
}

impl Schedule {
    /// Returns the schedule of sender `sender` (0-based) of `senders`
    /// sharing `rate_per_second` operations per second.
    pub fn new(sender: usize, senders: usize, rate_per_second: f64) -> Schedule {
        assert!(senders > 0, "an open-loop run needs at least one sender");
        assert!(
            sender < senders,
            "sender {sender} is out of range 0..{senders}"
        );
        assert!(
            rate_per_second > 0.0 && rate_per_second.is_finite(),
            "the rate must be positive and finite, not {rate_per_second}"
        );
        Schedule {
            first: Duration::from_secs_f64(sender as f64 / rate_per_second),
            period: Duration::from_secs_f64(senders as f64 / rate_per_second),
        }
    }

    /// Returns when operation `index` (0-based) should start, relative to
    /// the run's start.
    pub fn start_of(&self, index: u64) -> Duration {
        self.first + self.period.mul_f64(index as f64)
    }

    pub fn period(&self) -> Duration {
        self.period
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_sender_gets_the_whole_rate() {
        let schedule = Schedule::new(0, 1, 100.0);
        assert_eq!(schedule.start_of(0), Duration::ZERO);
        assert_eq!(schedule.start_of(1), Duration::from_millis(10));
        assert_eq!(schedule.start_of(100), Duration::from_secs(1));
    }

    #[test]
    fn senders_are_staggered_evenly() {
        let senders = 4;
        let starts: Vec<Duration> = (0..senders)
            .map(|sender| Schedule::new(sender, senders, 1_000.0).start_of(0))
            .collect();
        let expected: Vec<Duration> = (0..4).map(Duration::from_millis).collect();
        assert_eq!(starts, expected);
        assert_eq!(
            Schedule::new(3, senders, 1_000.0).period(),
            Duration::from_millis(4)
        );
    }

    #[test]
    fn total_rate_is_kept_over_a_second() {
        let senders = 10;
        let starts_in_first_second: usize = (0..senders)
            .map(|sender| {
                let schedule = Schedule::new(sender, senders, 500.0);
                (0..1_000u64)
                    .take_while(|index| schedule.start_of(*index) < Duration::from_secs(1))
                    .count()
            })
            .sum();
        assert_eq!(starts_in_first_second, 500);
    }

    #[test]
    #[should_panic(expected = "the rate must be positive")]
    fn zero_rate_is_rejected() {
        Schedule::new(0, 1, 0.0);
    }
}
