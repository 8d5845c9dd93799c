//! The result cache: outputs of identical calls (same agent or capability, action, input
//! and instructions) reused for a while, in process memory, bounded.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::metrics::{CacheLabels, Metrics};

/// A cache key: SHA-256 over what determines a call's result.
pub type Key = [u8; 32];

/// The key of a call.
pub fn key(target: &str, action: &str, input: &Value, instructions: Option<&str>) -> Key {
    let mut h = Sha256::new();
    for part in [
        target,
        action,
        &input.to_string(),
        instructions.unwrap_or(""),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

struct State {
    entries: HashMap<Key, (Instant, Value)>,
    order: VecDeque<Key>,
}

/// The cache.
pub struct ResultCache {
    state: Mutex<State>,
    max: usize,
    hits: Counter,
    misses: Counter,
}

impl ResultCache {
    /// A cache of at most `max` results, counted in `cache_requests_total`.
    pub fn new(max: usize, metrics: &Metrics) -> Self {
        let hits = metrics
            .cache_requests
            .get_or_create(&CacheLabels {
                result: "hit".into(),
            })
            .clone();
        let misses = metrics
            .cache_requests
            .get_or_create(&CacheLabels {
                result: "miss".into(),
            })
            .clone();
        Self {
            state: Mutex::new(State {
                entries: HashMap::new(),
                order: VecDeque::new(),
            }),
            max: max.max(1),
            hits,
            misses,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A live result for `key`, if any.
    pub fn get(&self, key: &Key) -> Option<Value> {
        let found = {
            let mut st = self.lock();
            match st.entries.get(key) {
                Some((expires, v)) if *expires > Instant::now() => Some(v.clone()),
                Some(_) => {
                    st.entries.remove(key);
                    None
                }
                None => None,
            }
        };
        if found.is_some() {
            self.hits.inc()
        } else {
            self.misses.inc()
        };
        found
    }

    /// Keeps `value` for `ttl`, dropping the oldest entries beyond the bound.
    pub fn put(&self, key: Key, value: Value, ttl: Duration) {
        let mut st = self.lock();
        if st
            .entries
            .insert(key, (Instant::now() + ttl, value))
            .is_none()
        {
            st.order.push_back(key);
        }
        while st.entries.len() > self.max {
            match st.order.pop_front() {
                Some(old) => {
                    st.entries.remove(&old);
                }
                None => break,
            }
        }
        // Keys replaced or expired leave stale places in `order`; compact now and then.
        if st.order.len() > 2 * self.max {
            let State { entries, order } = &mut *st;
            order.retain(|k| entries.contains_key(k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test(start_paused = true)]
    async fn hits_expire_and_stay_bounded() {
        let m = Metrics::new();
        let cache = ResultCache::new(2, &m);
        let k1 = key("a", "act", &json!({"x": 1}), None);
        assert_ne!(k1, key("a", "act", &json!({"x": 2}), None));
        assert_ne!(k1, key("a", "act", &json!({"x": 1}), Some("be brief")));
        assert!(cache.get(&k1).is_none());
        cache.put(k1, json!("one"), Duration::from_secs(10));
        assert_eq!(cache.get(&k1), Some(json!("one")));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(cache.get(&k1).is_none(), "expired");
        for i in 0..5 {
            cache.put(
                key("a", "act", &json!(i), None),
                json!(i),
                Duration::from_secs(60),
            );
        }
        assert!(
            cache.get(&key("a", "act", &json!(0), None)).is_none(),
            "oldest evicted"
        );
        assert_eq!(cache.get(&key("a", "act", &json!(4), None)), Some(json!(4)));
    }
}
