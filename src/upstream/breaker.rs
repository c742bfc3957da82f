//! A circuit breaker in front of the national database: after
//! `threshold` consecutive failures (errors or timeouts; "not found" is an
//! answer) calls are refused for `open_for`, then one probe is let through
//! (half-open); its success closes the circuit, its failure opens it again.
//! While open, apps get 503 with `retry-after` at once instead of waiting on
//! a failing link, and the national database is not hammered.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct State {
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    open_for: Duration,
    state: Mutex<State>,
}

/// While a probe is out, others wait this long before asking again.
const PROBE_WAIT: Duration = Duration::from_secs(1);

impl CircuitBreaker {
    pub fn new(threshold: u32, open_for: Duration) -> CircuitBreaker {
        CircuitBreaker {
            threshold: threshold.max(1),
            open_for,
            state: Mutex::new(State::default()),
        }
    }

    /// Whether a call may go out now; else how long to wait.
    pub fn allow(&self) -> Result<(), Duration> {
        self.allow_at(Instant::now())
    }

    pub fn allow_at(&self, now: Instant) -> Result<(), Duration> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.open_until {
            Some(until) if now < until => Err(until - now),
            Some(_) if s.probing => Err(PROBE_WAIT),
            Some(_) => {
                s.probing = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Records the outcome of a call that was allowed.
    pub fn record(&self, success: bool) {
        self.record_at(success, Instant::now());
    }

    pub fn record_at(&self, success: bool, now: Instant) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if success {
            *s = State::default();
            return;
        }
        s.failures += 1;
        if s.probing || s.failures >= self.threshold {
            if s.open_until.is_none() || s.probing {
                tracing::warn!(open_for = ?self.open_for, "national database failing: circuit open");
            }
            s.open_until = Some(now + self.open_for);
            s.probing = false;
            s.failures = 0;
        }
    }

    pub fn is_open(&self) -> bool {
        self.state.lock().map(|s| s.open_until.is_some()).unwrap_or(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_closes_after_a_good_probe() {
        let b = CircuitBreaker::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..2 {
            assert!(b.allow_at(t0).is_ok());
            b.record_at(false, t0);
        }
        assert!(b.allow_at(t0).is_ok(), "two failures do not open it");
        b.record_at(false, t0);
        assert_eq!(
            b.allow_at(t0 + Duration::from_secs(4)),
            Err(Duration::from_secs(6))
        );
        assert!(b.is_open());
        // Half-open: one probe, the others wait.
        let later = t0 + Duration::from_secs(10);
        assert!(b.allow_at(later).is_ok());
        assert_eq!(b.allow_at(later), Err(PROBE_WAIT));
        // A failed probe opens it again for the full period.
        b.record_at(false, later);
        assert_eq!(b.allow_at(later), Err(Duration::from_secs(10)));
        let again = later + Duration::from_secs(10);
        assert!(b.allow_at(again).is_ok());
        b.record_at(true, again);
        assert!(!b.is_open());
        assert!(b.allow_at(again).is_ok());
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = CircuitBreaker::new(2, Duration::from_secs(5));
        let t = Instant::now();
        b.record_at(false, t);
        b.record_at(true, t);
        b.record_at(false, t);
        assert!(b.allow_at(t).is_ok());
    }
}
