//! A circuit breaker for a remote backend: after `threshold` consecutive failures to reach it, calls fail at
//! once with `Unavailable` for `cooldown`; then one probe call is let through, and its outcome closes the
//! circuit again or keeps it open for another cooldown. Errors the backend answered (conflicts, bad queries)
//! are not failures to reach it and never open the circuit.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is in flight; everyone else still fails fast.
    Probing,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    backend: &'static str,
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

impl CircuitBreaker {
    pub fn new(backend: &'static str, threshold: u32, cooldown: Duration) -> Self {
        Self { backend, threshold: threshold.max(1), cooldown, state: Mutex::new(State::Closed { failures: 0 }) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a call may go to the backend now.
    pub fn admit(&self) -> Result<(), StoreError> {
        let mut state = self.state();
        match *state {
            State::Closed { .. } => Ok(()),
            State::Open { until } if Instant::now() >= until => {
                *state = State::Probing;
                Ok(())
            }
            State::Open { .. } | State::Probing => {
                Err(StoreError::Unavailable(format!("{} is unreachable (circuit open)", self.backend)))
            }
        }
    }

    /// Records the outcome of an admitted call.
    pub fn record<T>(&self, outcome: &Result<T, StoreError>) {
        let mut state = self.state();
        match outcome {
            Err(StoreError::Unavailable(_)) => {
                let failures = match *state {
                    State::Closed { failures } => failures + 1,
                    State::Open { .. } | State::Probing => self.threshold,
                };
                *state = if failures >= self.threshold {
                    State::Open { until: Instant::now() + self.cooldown }
                } else {
                    State::Closed { failures }
                };
            }
            _ => *state = State::Closed { failures: 0 },
        }
    }

    pub fn is_open(&self) -> bool {
        !matches!(*self.state(), State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down() -> Result<(), StoreError> {
        Err(StoreError::Unavailable("refused".into()))
    }

    #[test]
    fn opens_after_threshold_and_probes_after_cooldown() {
        let breaker = CircuitBreaker::new("neo4j", 2, Duration::from_millis(30));
        breaker.admit().unwrap();
        breaker.record(&down());
        assert!(!breaker.is_open(), "one failure is below the threshold");
        breaker.record(&down());
        assert!(breaker.is_open());
        assert!(matches!(breaker.admit(), Err(StoreError::Unavailable(_))));
        std::thread::sleep(Duration::from_millis(40));
        breaker.admit().expect("one probe after the cooldown");
        assert!(breaker.admit().is_err(), "only one probe at a time");
        breaker.record(&down());
        assert!(breaker.admit().is_err(), "a failed probe opens the circuit again");
        std::thread::sleep(Duration::from_millis(40));
        breaker.admit().unwrap();
        breaker.record(&Ok(()));
        assert!(!breaker.is_open());
        breaker.admit().unwrap();
    }

    #[test]
    fn answered_errors_do_not_count() {
        let breaker = CircuitBreaker::new("neo4j", 1, Duration::from_secs(60));
        breaker.record::<()>(&Err(StoreError::Conflict("taken".into())));
        breaker.record::<()>(&Err(StoreError::NotFound));
        assert!(!breaker.is_open());
    }
}
