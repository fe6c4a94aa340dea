//! Reconnect delays: exponential backoff with jitter.
//!
//! The nominal delay starts at [`INITIAL`], doubles after every failed attempt and is
//! capped at [`MAX`]; each actual delay is drawn uniformly from `[d/2, d]`, so a fleet
//! of agents that lost the coordinator together does not come back in lock step
//! ("equal jitter"). A session that stayed up longer than [`STABLE_SESSION`] resets
//! the sequence.

use std::time::Duration;

use rand::Rng;

/// The first nominal delay.
pub const INITIAL: Duration = Duration::from_millis(200);
/// The largest nominal delay: a restarted coordinator sees its agents back within
/// about this long.
pub const MAX: Duration = Duration::from_secs(5);
/// A session that lasted longer than this was a success: the next delay starts over.
pub const STABLE_SESSION: Duration = Duration::from_secs(10);

/// A backoff sequence drawing its jitter from `R` (seeded in tests).
#[derive(Debug)]
pub struct Backoff<R> {
    rng: R,
    nominal: Duration,
    initial: Duration,
    max: Duration,
}

impl<R: Rng> Backoff<R> {
    /// The agent's sequence: [`INITIAL`] doubling up to [`MAX`].
    pub fn new(rng: R) -> Backoff<R> {
        Backoff::with_bounds(INITIAL, MAX, rng)
    }

    /// A sequence from `initial` doubling up to `max` (`max` is raised to `initial` if
    /// it is smaller).
    pub fn with_bounds(initial: Duration, max: Duration, rng: R) -> Backoff<R> {
        Backoff {
            rng,
            nominal: initial,
            initial,
            max: max.max(initial),
        }
    }

    /// The delay before the next attempt, in `[d/2, d]` for the current nominal delay
    /// `d`; then `d` doubles (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.nominal;
        self.nominal = d.saturating_mul(2).min(self.max);
        self.rng.random_range(d / 2..=d)
    }

    /// Start over from the initial delay.
    pub fn reset(&mut self) {
        self.nominal = self.initial;
    }

    /// Start over if a session lasted long enough to count as a success.
    pub fn reset_after(&mut self, session: Duration) {
        if session > STABLE_SESSION {
            self.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delays_double_up_to_the_cap_with_jitter_in_the_upper_half() {
        let nominal = [200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000];
        for seed in 0..200 {
            let mut b = Backoff::new(StdRng::seed_from_u64(seed));
            for (i, d) in nominal.iter().enumerate() {
                let got = b.next_delay();
                assert!(
                    got >= ms(d / 2) && got <= ms(*d),
                    "seed {seed}, attempt {i}: {got:?} not in [{}ms, {d}ms]",
                    d / 2
                );
            }
        }
    }

    #[test]
    fn jitter_spreads_the_delays() {
        let mut b = Backoff::with_bounds(ms(1000), ms(1000), StdRng::seed_from_u64(7));
        let delays: Vec<Duration> = (0..100).map(|_| b.next_delay()).collect();
        let (min, max) = (
            delays.iter().min().copied().unwrap_or_default(),
            delays.iter().max().copied().unwrap_or_default(),
        );
        assert!(min < ms(600) && max > ms(900), "{min:?}..{max:?}");
    }

    #[test]
    fn same_seed_same_sequence() {
        let run = |seed| {
            let mut b = Backoff::new(StdRng::seed_from_u64(seed));
            (0..10).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn resets_only_after_a_stable_session() {
        let mut b = Backoff::new(StdRng::seed_from_u64(1));
        for _ in 0..10 {
            b.next_delay();
        }
        b.reset_after(Duration::from_secs(3));
        assert!(b.next_delay() >= ms(2500), "a short session does not reset");
        b.reset_after(Duration::from_secs(11));
        assert!(b.next_delay() <= INITIAL, "a stable session resets");
        b.reset();
        assert!(b.next_delay() <= INITIAL);
    }
}
