//! Bounded exponential backoff with jitter, as a pure state machine: the
//! caller supplies the randomness, so tests need neither a clock nor luck.

use std::time::Duration;

/// The delays between reconnection attempts: each failure doubles the
/// delay, up to `max`; a success resets it to `min`. Each delay is drawn in
/// `[d/2, d]` so that a fleet that lost etcd together does not return in
/// lockstep.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        let max = max.max(min);
        Backoff { min, max, current: min }
    }

    /// The delay before the next attempt, with `jitter` in `[0, 1)`.
    pub(crate) fn next(&mut self, jitter: f64) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        let jitter = jitter.clamp(0.0, 1.0);
        d / 2 + (d / 2).mul_f64(jitter)
    }

    /// After a success: the next delay is `min` again.
    pub(crate) fn reset(&mut self) {
        self.current = self.min;
    }
}

/// A number in `[0, 1)` that differs between processes and calls.
pub(crate) fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_up_to_the_ceiling_and_resets() {
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        let full: Vec<_> = (0..6).map(|_| b.next(1.0)).collect();
        assert_eq!(full, [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]);
        b.reset();
        assert_eq!(b.next(0.0), 50 * MS);
        assert_eq!(b.next(0.5), 150 * MS);
    }

    #[test]
    fn a_ceiling_below_the_floor_is_the_floor() {
        let mut b = Backoff::new(100 * MS, 10 * MS);
        assert_eq!(b.next(1.0), 100 * MS);
        assert_eq!(b.next(1.0), 100 * MS);
    }

    #[test]
    fn jitter_is_in_range_and_varies() {
        let draws: Vec<f64> = (0..100).map(|_| jitter()).collect();
        assert!(draws.iter().all(|j| (0.0..1.0).contains(j)));
        assert!(draws.windows(2).any(|w| w[0] != w[1]));
    }
}
