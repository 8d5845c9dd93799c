//! What an agent's page shows beyond its counters: recent latency, circuit transitions and
//! LLM spend, kept lock-free so that a call pays a few atomic stores for them.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::call::agents::Usage;

/// Calls the latency percentile is taken over.
const WINDOW: usize = 128;

/// The latest calls' durations, a ring of microseconds (0: empty slot).
pub(crate) struct Observed {
    slots: [AtomicU32; WINDOW],
    next: AtomicUsize,
    /// Unix ms the circuit last opened (0: never).
    opened_at: AtomicI64,
    /// Unix ms the circuit last closed again (0: never).
    closed_at: AtomicI64,
    tokens: AtomicU64,
    /// Spend in millionths of a USD.
    micro_usd: AtomicU64,
}

impl Default for Observed {
    fn default() -> Self {
        Observed {
            slots: std::array::from_fn(|_| AtomicU32::new(0)),
            next: AtomicUsize::new(0),
            opened_at: AtomicI64::new(0),
            closed_at: AtomicI64::new(0),
            tokens: AtomicU64::new(0),
            micro_usd: AtomicU64::new(0),
        }
    }
}

impl Observed {
    /// Records a call's duration, and its usage when it had one.
    pub(crate) fn call(&self, took: Duration, usage: Option<&Usage>) {
        let us = u32::try_from(took.as_micros()).unwrap_or(u32::MAX).max(1);
        let i = self.next.fetch_add(1, Ordering::Relaxed) % WINDOW;
        self.slots[i].store(us, Ordering::Relaxed);
        if let Some(u) = usage {
            self.tokens.fetch_add(u.tokens(), Ordering::Relaxed);
            let micro = (u.cost_usd * 1e6).round().max(0.0) as u64;
            self.micro_usd.fetch_add(micro, Ordering::Relaxed);
        }
    }

    pub(crate) fn circuit_opened(&self) {
        self.opened_at
            .store(crate::clock::now_ms(), Ordering::Relaxed);
    }

    pub(crate) fn circuit_closed(&self) {
        self.closed_at
            .store(crate::clock::now_ms(), Ordering::Relaxed);
    }

    /// The 95th percentile of the latest calls' durations, in milliseconds.
    pub(crate) fn p95_ms(&self) -> Option<f64> {
        let mut us: Vec<u32> = self
            .slots
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|&v| v > 0)
            .collect();
        if us.is_empty() {
            return None;
        }
        us.sort_unstable();
        let rank = (us.len() * 95).div_ceil(100).max(1) - 1;
        Some(f64::from(us[rank]) / 1000.0)
    }

    /// Unix ms of the circuit's last opening and closing.
    pub(crate) fn circuit_times(&self) -> (Option<i64>, Option<i64>) {
        let at = |a: &AtomicI64| Some(a.load(Ordering::Relaxed)).filter(|&t| t > 0);
        (at(&self.opened_at), at(&self.closed_at))
    }

    /// Tokens and USD spent on the agent's LLM calls since start.
    pub(crate) fn spent(&self) -> (u64, f64) {
        (
            self.tokens.load(Ordering::Relaxed),
            self.micro_usd.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p95_covers_the_latest_calls_only() {
        let o = Observed::default();
        assert_eq!(o.p95_ms(), None);
        for ms in 1..=100 {
            o.call(Duration::from_millis(ms), None);
        }
        assert_eq!(o.p95_ms(), Some(95.0));
        // Older calls leave the window.
        for _ in 0..WINDOW {
            o.call(Duration::from_millis(2), None);
        }
        assert_eq!(o.p95_ms(), Some(2.0));
    }

    #[test]
    fn spend_adds_up() {
        let o = Observed::default();
        let u = Usage {
            prompt_tokens: 10,
            completion_tokens: 5,
            cost_usd: 0.25,
        };
        o.call(Duration::from_millis(1), Some(&u));
        o.call(Duration::from_millis(1), Some(&u));
        assert_eq!(o.spent(), (30, 0.5));
    }
}
