//! A circuit breaker per agent: closed → open after N consecutive failures → half-open after
//! the reset timeout → closed after M successes (or open again on a failure).

use std::sync::Mutex;
use std::time::Duration;

use flotilla_spec::CircuitBreakerConfig;
use tokio::time::Instant;

/// The externally visible state (also the `circuit_breaker_state` gauge value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls flow.
    Closed = 0,
    /// Probing: a few calls flow; one failure reopens.
    HalfOpen = 1,
    /// Calls fail fast.
    Open = 2,
}

impl CircuitState {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::HalfOpen => "half_open",
            CircuitState::Open => "open",
        }
    }
}

#[derive(Debug)]
enum Mode {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { successes: u32, probes: u32 },
}

/// The breaker.
#[derive(Debug)]
pub struct Breaker {
    cfg: CircuitBreakerConfig,
    mode: Mutex<Mode>,
}

/// A call was refused because the circuit is open.
#[derive(Debug, Clone, Copy)]
pub struct Rejected {
    /// Time left until a probe is let through.
    pub retry_in: Duration,
}

/// What a call's result did to the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing visible changed.
    None,
    /// It opened.
    Opened,
    /// It closed.
    Closed,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(cfg: CircuitBreakerConfig) -> Self {
        Self {
            cfg,
            mode: Mutex::new(Mode::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Mode> {
        self.mode.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state now (open turns half-open once its timeout has passed).
    pub fn state(&self, now: Instant) -> CircuitState {
        match *self.lock() {
            Mode::Closed { .. } => CircuitState::Closed,
            Mode::Open { until } if now >= until => CircuitState::HalfOpen,
            Mode::Open { .. } => CircuitState::Open,
            Mode::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// How long calls are still refused, while they are.
    pub fn retry_in(&self, now: Instant) -> Option<Duration> {
        match *self.lock() {
            Mode::Open { until } if now < until => Some(until - now),
            Mode::HalfOpen { successes, probes }
                if successes + probes >= self.cfg.half_open_successes =>
            {
                Some(Duration::from_millis(100))
            }
            _ => None,
        }
    }

    /// Asks to make a call.
    pub fn try_acquire(&self, now: Instant) -> Result<(), Rejected> {
        let mut mode = self.lock();
        match *mode {
            Mode::Closed { .. } => Ok(()),
            Mode::Open { until } if now < until => Err(Rejected {
                retry_in: until - now,
            }),
            Mode::Open { .. } => {
                *mode = Mode::HalfOpen {
                    successes: 0,
                    probes: 1,
                };
                Ok(())
            }
            Mode::HalfOpen { successes, probes } => {
                if successes + probes < self.cfg.half_open_successes {
                    *mode = Mode::HalfOpen {
                        successes,
                        probes: probes + 1,
                    };
                    Ok(())
                } else {
                    Err(Rejected {
                        retry_in: Duration::from_millis(100),
                    })
                }
            }
        }
    }

    /// Records a call's result.
    pub fn record(&self, ok: bool, now: Instant) -> Transition {
        let mut mode = self.lock();
        let reset = self.cfg.reset_timeout.0;
        match (&mut *mode, ok) {
            (Mode::Closed { failures }, true) => {
                *failures = 0;
                Transition::None
            }
            (Mode::Closed { failures }, false) => {
                *failures += 1;
                if *failures >= self.cfg.failure_threshold {
                    *mode = Mode::Open { until: now + reset };
                    Transition::Opened
                } else {
                    Transition::None
                }
            }
            (Mode::HalfOpen { successes, probes }, true) => {
                *successes += 1;
                *probes = probes.saturating_sub(1);
                if *successes >= self.cfg.half_open_successes {
                    *mode = Mode::Closed { failures: 0 };
                    Transition::Closed
                } else {
                    Transition::None
                }
            }
            (Mode::HalfOpen { .. }, false) => {
                *mode = Mode::Open { until: now + reset };
                Transition::Opened
            }
            // Results of calls admitted before the circuit opened change nothing.
            (Mode::Open { .. }, _) => Transition::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_spec::Dur;

    fn breaker() -> Breaker {
        Breaker::new(CircuitBreakerConfig {
            failure_threshold: 3,
            reset_timeout: Dur::secs(10),
            half_open_successes: 2,
        })
    }

    #[test]
    fn full_cycle() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..2 {
            assert!(b.try_acquire(t0).is_ok());
            assert_eq!(b.record(false, t0), Transition::None);
        }
        assert_eq!(b.record(false, t0), Transition::Opened);
        assert_eq!(b.state(t0), CircuitState::Open);
        let rejected = b.try_acquire(t0 + Duration::from_secs(4)).unwrap_err();
        assert_eq!(rejected.retry_in, Duration::from_secs(6));
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.state(later), CircuitState::HalfOpen);
        assert!(b.try_acquire(later).is_ok());
        assert!(b.try_acquire(later).is_ok());
        assert!(
            b.try_acquire(later).is_err(),
            "only as many probes as successes needed"
        );
        assert_eq!(b.record(true, later), Transition::None);
        assert_eq!(b.record(true, later), Transition::Closed);
        assert_eq!(b.state(later), CircuitState::Closed);
    }

    #[test]
    fn half_open_failure_reopens() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record(false, t0);
        }
        let later = t0 + Duration::from_secs(11);
        assert!(b.try_acquire(later).is_ok());
        assert_eq!(b.record(false, later), Transition::Opened);
        assert_eq!(b.state(later), CircuitState::Open);
    }

    #[test]
    fn success_resets_the_failure_count() {
        let b = breaker();
        let t0 = Instant::now();
        b.record(false, t0);
        b.record(false, t0);
        b.record(true, t0);
        b.record(false, t0);
        b.record(false, t0);
        assert_eq!(b.state(t0), CircuitState::Closed);
    }
}
