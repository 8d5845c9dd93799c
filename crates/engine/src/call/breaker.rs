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

/// Leave to make one call, given back by [`Admission::record`] with the call's result. A
/// call that never ends (cancelled with its run, a lost lease, shutdown) drops its
/// admission unrecorded: a half-open probe's slot is then given back, so the circuit can
/// still close.
#[must_use = "record the call's result on it"]
#[derive(Debug)]
pub struct Admission<'a> {
    breaker: &'a Breaker,
    probe: bool,
    recorded: bool,
}

impl Admission<'_> {
    /// Records the call's result.
    pub fn record(mut self, ok: bool, now: Instant) -> Transition {
        self.recorded = true;
        self.breaker.record(ok, now)
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if !self.recorded && self.probe {
            self.breaker.abandon_probe();
        }
    }
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
    pub fn try_acquire(&self, now: Instant) -> Result<Admission<'_>, Rejected> {
        let admitted = |probe| Admission {
            breaker: self,
            probe,
            recorded: false,
        };
        let mut mode = self.lock();
        match *mode {
            Mode::Closed { .. } => Ok(admitted(false)),
            Mode::Open { until } if now < until => Err(Rejected {
                retry_in: until - now,
            }),
            Mode::Open { .. } => {
                *mode = Mode::HalfOpen {
                    successes: 0,
                    probes: 1,
                };
                Ok(admitted(true))
            }
            Mode::HalfOpen { successes, probes } => {
                if successes + probes < self.cfg.half_open_successes {
                    *mode = Mode::HalfOpen {
                        successes,
                        probes: probes + 1,
                    };
                    Ok(admitted(true))
                } else {
                    Err(Rejected {
                        retry_in: Duration::from_millis(100),
                    })
                }
            }
        }
    }

    /// A probe that ended without a result gives its slot back.
    fn abandon_probe(&self) {
        if let Mode::HalfOpen { probes, .. } = &mut *self.lock() {
            *probes = probes.saturating_sub(1);
        }
    }

    /// Records a call's result.
    fn record(&self, ok: bool, now: Instant) -> Transition {
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

    fn fail(b: &Breaker, now: Instant) -> Transition {
        b.try_acquire(now).unwrap().record(false, now)
    }

    #[test]
    fn full_cycle() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..2 {
            assert_eq!(fail(&b, t0), Transition::None);
        }
        assert_eq!(fail(&b, t0), Transition::Opened);
        assert_eq!(b.state(t0), CircuitState::Open);
        let rejected = b.try_acquire(t0 + Duration::from_secs(4)).unwrap_err();
        assert_eq!(rejected.retry_in, Duration::from_secs(6));
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.state(later), CircuitState::HalfOpen);
        let first = b.try_acquire(later).unwrap();
        let second = b.try_acquire(later).unwrap();
        assert!(
            b.try_acquire(later).is_err(),
            "only as many probes as successes needed"
        );
        assert_eq!(first.record(true, later), Transition::None);
        assert_eq!(second.record(true, later), Transition::Closed);
        assert_eq!(b.state(later), CircuitState::Closed);
    }

    #[test]
    fn half_open_failure_reopens() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            fail(&b, t0);
        }
        let later = t0 + Duration::from_secs(11);
        assert_eq!(fail(&b, later), Transition::Opened);
        assert_eq!(b.state(later), CircuitState::Open);
    }

    #[test]
    fn success_resets_the_failure_count() {
        let b = breaker();
        let t0 = Instant::now();
        fail(&b, t0);
        fail(&b, t0);
        b.try_acquire(t0).unwrap().record(true, t0);
        fail(&b, t0);
        fail(&b, t0);
        assert_eq!(b.state(t0), CircuitState::Closed);
    }

    #[test]
    fn a_cancelled_probe_gives_its_slot_back() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            fail(&b, t0);
        }
        let later = t0 + Duration::from_secs(10);
        // Many probes admitted and dropped mid-call (their runs cancelled): the circuit
        // still admits probes, and closes once two succeed.
        for _ in 0..100 {
            let a = b.try_acquire(later).unwrap();
            let c = b.try_acquire(later).unwrap();
            drop((a, c));
        }
        let a = b.try_acquire(later).unwrap();
        let c = b.try_acquire(later).unwrap();
        a.record(true, later);
        assert_eq!(c.record(true, later), Transition::Closed);
    }
}
