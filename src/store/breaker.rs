//! A circuit breaker for a remote backend: after `threshold` consecutive failures to reach it, calls fail at
//! once with `Unavailable` for `cooldown`; then one probe call is let through, and its outcome closes the
//! circuit again or keeps it open for another cooldown. Errors the backend answered (conflicts, bad queries)
//! are not failures to reach it and never open the circuit.
//!
//! A call is admitted as an `Admission` guard. A probe whose call is cancelled (its request dropped, a
//! readiness check's timeout) never reports an outcome, so its guard reopens the circuit with no cooldown
//! when dropped: the next call probes again, and the breaker can never stay stuck half-open.

use std::future::Future;
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

    /// Whether a call may go to the backend now: the guard records its outcome.
    pub fn admit(&self) -> Result<Admission<'_>, StoreError> {
        let mut state = self.state();
        let probe = match *state {
            State::Closed { .. } => false,
            State::Open { until } if Instant::now() >= until => {
                *state = State::Probing;
                true
            }
            State::Open { .. } | State::Probing => {
                return Err(StoreError::Unavailable(format!("{} is unreachable (circuit open)", self.backend)));
            }
        };
        Ok(Admission { breaker: self, probe, recorded: false })
    }

    /// Runs one call to the backend through the breaker, bounded by `limit`: a call that takes longer (a
    /// backend that accepts connections and never answers) fails with `Unavailable` and counts as a failure.
    pub async fn call<T>(
        &self,
        limit: Duration,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let admission = self.admit()?;
        let outcome = match tokio::time::timeout(limit, call).await {
            Ok(outcome) => outcome,
            Err(_) => {
                Err(StoreError::Unavailable(format!("{} did not answer within {} ms", self.backend, limit.as_millis())))
            }
        };
        admission.record(&outcome);
        outcome
    }

    /// Records the outcome of an admitted call.
    fn record<T>(&self, outcome: &Result<T, StoreError>) {
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

    /// A probe that ended without an outcome: the circuit is open again, due for a probe at once.
    fn abandon_probe(&self) {
        let mut state = self.state();
        if *state == State::Probing {
            *state = State::Open { until: Instant::now() };
        }
    }
}

/// One admitted call. `record` reports its outcome; dropping it unrecorded (the call was cancelled) lets the
/// next call probe when this one was the probe.
#[must_use = "record the outcome of the admitted call"]
pub struct Admission<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    recorded: bool,
}

impl Admission<'_> {
    pub fn record<T>(mut self, outcome: &Result<T, StoreError>) {
        self.recorded = true;
        self.breaker.record(outcome);
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            self.breaker.abandon_probe();
        }
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
        breaker.admit().unwrap().record(&down());
        assert!(!breaker.is_open(), "one failure is below the threshold");
        breaker.admit().unwrap().record(&down());
        assert!(breaker.is_open());
        assert!(matches!(breaker.admit(), Err(StoreError::Unavailable(_))));
        std::thread::sleep(Duration::from_millis(40));
        let probe = breaker.admit().expect("one probe after the cooldown");
        assert!(breaker.admit().is_err(), "only one probe at a time");
        probe.record(&down());
        assert!(breaker.admit().is_err(), "a failed probe opens the circuit again");
        std::thread::sleep(Duration::from_millis(40));
        breaker.admit().unwrap().record(&Ok(()));
        assert!(!breaker.is_open());
        breaker.admit().unwrap().record(&Ok(()));
    }

    #[test]
    fn a_cancelled_probe_lets_the_next_call_probe() {
        let breaker = CircuitBreaker::new("neo4j", 1, Duration::from_millis(10));
        breaker.admit().unwrap().record(&down());
        std::thread::sleep(Duration::from_millis(20));
        let probe = breaker.admit().expect("the probe");
        assert!(breaker.admit().is_err(), "others fail fast while it runs");
        drop(probe); // cancelled: no outcome
        breaker.admit().expect("the next call probes at once").record(&Ok(()));
        assert!(!breaker.is_open(), "and its success closes the circuit");
    }

    #[tokio::test]
    async fn a_call_that_never_answers_fails_as_unavailable_and_counts() {
        let breaker = CircuitBreaker::new("qdrant", 1, Duration::from_secs(60));
        let hung = breaker.call(Duration::from_millis(20), std::future::pending::<Result<(), StoreError>>()).await;
        assert!(matches!(hung, Err(StoreError::Unavailable(_))), "{hung:?}");
        assert!(breaker.is_open());
    }

    #[tokio::test]
    async fn a_probe_dropped_mid_call_does_not_stick() {
        let breaker = CircuitBreaker::new("neo4j", 1, Duration::from_millis(10));
        breaker.admit().unwrap().record(&down());
        tokio::time::sleep(Duration::from_millis(20)).await;
        let probe = breaker.call(Duration::from_secs(60), std::future::pending::<Result<(), StoreError>>());
        // The probe is cancelled the way a request timeout cancels it.
        assert!(tokio::time::timeout(Duration::from_millis(20), probe).await.is_err());
        breaker.call(Duration::from_secs(1), async { Ok(()) }).await.expect("a new probe runs and succeeds");
        assert!(!breaker.is_open());
    }

    #[test]
    fn answered_errors_do_not_count() {
        let breaker = CircuitBreaker::new("neo4j", 1, Duration::from_secs(60));
        breaker.admit().unwrap().record::<()>(&Err(StoreError::Conflict("taken".into())));
        breaker.admit().unwrap().record::<()>(&Err(StoreError::NotFound));
        assert!(!breaker.is_open());
    }
}
