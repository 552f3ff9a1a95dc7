//! Retry timing for webhook deliveries, as a pure function of the attempt
//! number so that it is tested without sleeping.

use std::time::Duration;

/// Exponential backoff: `initial`, then twice that, and so on, capped at
/// `max`, for at most `retries` retries after the first attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the first retry.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
    /// How many retries follow a failed first attempt.
    pub retries: u32,
}

impl Backoff {
    /// The delay before retry `retry` (1-based), or `None` once retries are
    /// used up.
    pub fn delay(&self, retry: u32) -> Option<Duration> {
        if retry == 0 || retry > self.retries {
            return None;
        }
        let factor = 1u32.checked_shl(retry - 1).unwrap_or(u32::MAX);
        Some(self.initial.saturating_mul(factor).min(self.max))
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered.
    Done,
    /// Failed in a way that may pass (a connection error, 5xx, 408, 429).
    Retry,
    /// Failed in a way that will not pass by trying again (other 4xx).
    GiveUp,
}

/// The outcome of an HTTP status code.
pub fn outcome(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Done,
        408 | 429 | 500..=599 => Outcome::Retry,
        _ => Outcome::GiveUp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_stops() {
        let b = Backoff { initial: Duration::from_millis(500), max: Duration::from_secs(3), retries: 5 };
        let delays: Vec<_> = (1..=6).map(|r| b.delay(r).map(|d| d.as_millis())).collect();
        assert_eq!(delays, [Some(500), Some(1000), Some(2000), Some(3000), Some(3000), None]);
        assert_eq!(b.delay(0), None);
        let huge = Backoff { retries: u32::MAX, ..b };
        assert_eq!(huge.delay(40), Some(Duration::from_secs(3)));
    }

    #[test]
    fn statuses() {
        assert_eq!(outcome(204), Outcome::Done);
        assert_eq!(outcome(503), Outcome::Retry);
        assert_eq!(outcome(429), Outcome::Retry);
        assert_eq!(outcome(404), Outcome::GiveUp);
    }
}
