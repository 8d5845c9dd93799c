//! A concurrency limit that serves waiters by priority (then first come, first served).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};

use flotilla_spec::Priority;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::oneshot;

/// The limit.
#[derive(Debug)]
pub struct Gate {
    state: Mutex<State>,
    queued: Gauge,
}

#[derive(Debug)]
struct State {
    available: usize,
    waiters: BinaryHeap<Waiter>,
    seq: u64,
}

#[derive(Debug)]
struct Waiter {
    priority: Priority,
    seq: u64,
    tx: oneshot::Sender<Permit>,
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiter {
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// Held while a call runs; dropping it lets the next waiter in.
#[derive(Debug)]
pub struct Permit {
    gate: Option<Arc<Gate>>,
}

impl Gate {
    /// A gate admitting `limit` holders at once; `queued` counts waiters.
    pub fn new(limit: usize, queued: Gauge) -> Arc<Gate> {
        Arc::new(Gate {
            state: Mutex::new(State {
                available: limit.max(1),
                waiters: BinaryHeap::new(),
                seq: 0,
            }),
            queued,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a place. Cancel-safe: a waiter dropped before it is served loses nothing.
    pub async fn acquire(self: &Arc<Self>, priority: Priority) -> Permit {
        let rx = {
            let mut st = self.lock();
            if st.available > 0 && st.waiters.is_empty() {
                st.available -= 1;
                return Permit {
                    gate: Some(self.clone()),
                };
            }
            let (tx, rx) = oneshot::channel();
            st.seq += 1;
            let seq = st.seq;
            st.waiters.push(Waiter { priority, seq, tx });
            self.queued.inc();
            rx
        };
        match rx.await {
            Ok(permit) => permit,
            // The gate dropped its waiters; nothing to hand out, so run unbounded.
            Err(_) => Permit { gate: None },
        }
    }

    fn release(self: &Arc<Self>) {
        loop {
            let waiter = {
                let mut st = self.lock();
                match st.waiters.pop() {
                    Some(w) => w,
                    None => {
                        st.available += 1;
                        return;
                    }
                }
            };
            self.queued.dec();
            match waiter.tx.send(Permit {
                gate: Some(self.clone()),
            }) {
                Ok(()) => return,
                // The waiter went away: take the permit back without releasing it twice.
                Err(mut permit) => {
                    permit.gate = None;
                }
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(gate) = self.gate.take() {
            gate.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_by_priority_then_order() {
        let gate = Gate::new(1, Gauge::default());
        let held = gate.acquire(Priority::Medium).await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = tokio::task::JoinSet::new();
        for (name, p) in [
            ("low", Priority::Low),
            ("med1", Priority::Medium),
            ("high", Priority::High),
            ("med2", Priority::Medium),
        ] {
            let gate = gate.clone();
            let tx = tx.clone();
            tasks.spawn(async move {
                let _p = gate.acquire(p).await;
                tx.send(name).unwrap();
            });
            tokio::task::yield_now().await;
        }
        tokio::task::yield_now().await;
        assert_eq!(gate.queued.get(), 4);
        drop(held);
        let mut order = Vec::new();
        for _ in 0..4 {
            order.push(rx.recv().await.unwrap());
        }
        assert_eq!(order, ["high", "med1", "med2", "low"]);
        assert_eq!(gate.queued.get(), 0);
    }

    #[tokio::test]
    async fn dropped_waiter_does_not_leak_a_place() {
        let gate = Gate::new(1, Gauge::default());
        let held = gate.acquire(Priority::Medium).await;
        let g2 = gate.clone();
        let waiting = tokio::spawn(async move { g2.acquire(Priority::High).await });
        tokio::task::yield_now().await;
        waiting.abort();
        let _ = waiting.await;
        drop(held);
        let _again = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            gate.acquire(Priority::Low),
        )
        .await
        .expect("the place came back");
    }
}
