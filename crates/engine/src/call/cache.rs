//! The result cache: outputs of identical calls (same agent or capability, action, input
//! and instructions) reused for a while: in process memory (bounded), or in Redis when
//! `cache.url` is set, shared by replicas. When Redis fails, calls go on uncached and a
//! warning is logged once per [`WARN_EVERY`], not per call.

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

/// How often a failing Redis is reported.
pub const WARN_EVERY: Duration = Duration::from_secs(30);
/// Longest a Redis command may take before the call goes on uncached.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

struct Redis {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    last_warning: Mutex<Option<Instant>>,
}

impl Redis {
    fn warn(&self, what: &str, e: &dyn std::fmt::Display) {
        let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(error = %e, "result cache: {what} failed; calls go on uncached (next warning in {WARN_EVERY:?} at the earliest)");
        }
    }

    async fn connection(&self) -> Option<redis::aio::MultiplexedConnection> {
        let mut conn = self.conn.lock().await;
        if conn.is_none() {
            match tokio::time::timeout(
                REDIS_TIMEOUT,
                self.client.get_multiplexed_async_connection(),
            )
            .await
            {
                Ok(Ok(c)) => *conn = Some(c),
                Ok(Err(e)) => self.warn("connecting to Redis", &e),
                Err(_) => self.warn("connecting to Redis", &"timed out"),
            }
        }
        conn.clone()
    }

    async fn forget_connection(&self) {
        *self.conn.lock().await = None;
    }

    async fn get(&self, key: &Key) -> Option<Value> {
        let mut conn = self.connection().await?;
        let cmd = redis::cmd("GET").arg(redis_key(key)).clone();
        match tokio::time::timeout(REDIS_TIMEOUT, cmd.query_async::<Option<String>>(&mut conn))
            .await
        {
            Ok(Ok(v)) => v.and_then(|s| serde_json::from_str(&s).ok()),
            Ok(Err(e)) => {
                self.warn("reading from Redis", &e);
                self.forget_connection().await;
                None
            }
            Err(_) => {
                self.warn("reading from Redis", &"timed out");
                None
            }
        }
    }

    async fn put(&self, key: &Key, value: &Value, ttl: Duration) {
        let Some(mut conn) = self.connection().await else {
            return;
        };
        let ms = ttl.as_millis().max(1) as u64;
        let cmd = redis::cmd("SET")
            .arg(redis_key(key))
            .arg(value.to_string())
            .arg("PX")
            .arg(ms)
            .clone();
        match tokio::time::timeout(REDIS_TIMEOUT, cmd.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.warn("writing to Redis", &e);
                self.forget_connection().await;
            }
            Err(_) => self.warn("writing to Redis", &"timed out"),
        }
    }
}

fn redis_key(key: &Key) -> String {
    format!("flotilla:cache:{}", hex::encode(key))
}

/// The cache.
pub struct ResultCache {
    state: Mutex<State>,
    redis: Option<Redis>,
    max: usize,
    hits: Counter,
    misses: Counter,
}

impl ResultCache {
    /// A cache of at most `max` results in memory, or in Redis at `url`, counted in
    /// `cache_requests_total`. Fails only on a malformed URL (Redis need not be up).
    pub fn new(max: usize, url: Option<&str>, metrics: &Metrics) -> Result<Self, String> {
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
        let redis = url
            .map(|u| {
                redis::Client::open(u).map(|client| Redis {
                    client,
                    conn: tokio::sync::Mutex::new(None),
                    last_warning: Mutex::new(None),
                })
            })
            .transpose()
            .map_err(|e| format!("cache.url: {e}"))?;
        Ok(Self {
            state: Mutex::new(State {
                entries: HashMap::new(),
                order: VecDeque::new(),
            }),
            redis,
            max: max.max(1),
            hits,
            misses,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A live result for `key`, if any.
    pub async fn get(&self, key: &Key) -> Option<Value> {
        if let Some(redis) = &self.redis {
            let found = redis.get(key).await;
            if found.is_some() {
                self.hits.inc()
            } else {
                self.misses.inc()
            };
            return found;
        }
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
    pub async fn put(&self, key: Key, value: Value, ttl: Duration) {
        if let Some(redis) = &self.redis {
            redis.put(&key, &value, ttl).await;
            return;
        }
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
        let cache = ResultCache::new(2, None, &m).unwrap();
        let k1 = key("a", "act", &json!({"x": 1}), None);
        assert_ne!(k1, key("a", "act", &json!({"x": 2}), None));
        assert_ne!(k1, key("a", "act", &json!({"x": 1}), Some("be brief")));
        assert!(cache.get(&k1).await.is_none());
        cache.put(k1, json!("one"), Duration::from_secs(10)).await;
        assert_eq!(cache.get(&k1).await, Some(json!("one")));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(cache.get(&k1).await.is_none(), "expired");
        for i in 0..5 {
            cache
                .put(
                    key("a", "act", &json!(i), None),
                    json!(i),
                    Duration::from_secs(60),
                )
                .await;
        }
        assert!(
            cache.get(&key("a", "act", &json!(0), None)).await.is_none(),
            "oldest evicted"
        );
        assert_eq!(
            cache.get(&key("a", "act", &json!(4), None)).await,
            Some(json!(4))
        );
    }
}
