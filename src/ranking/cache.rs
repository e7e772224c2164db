//! Member history cache: the encoded history (every layer's K/V) of a member's recent events, so a feed
//! refresh or an ads request right after a feed request skips the history pass.
//!
//! Keyed by the model's weights hash, the member id and a fingerprint of exactly what the history pass
//! reads (each kept event's item, action, age bucket and dense values, in order), so a hit gives
//! bit-identical scores to a miss. Bounded in bytes (LRU eviction) with an optional TTL.

use super::api::RankRequest;
use super::config::RankerConfig;
use super::encoder::EncodedHistory;
use super::features::time_bucket;
use crate::metrics;
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// SHA-256 over the weights hash, member id and every field the history pass depends on.
pub type CacheKey = [u8; 32];

/// The cache key of `req`'s history under `cfg` and reference time `now_ms` (used when the request has
/// no `request_time_ms`), or `None` when the history is empty (nothing worth caching).
pub fn fingerprint(
    cfg: &RankerConfig,
    weights_hash: &str,
    req: &RankRequest,
    now_ms: i64,
) -> Option<CacheKey> {
    let keep = req.history.len().min(cfg.max_history);
    if keep == 0 {
        return None;
    }
    let t_ref = req.request_time_ms.unwrap_or(now_ms);
    let mut h = Sha256::new();
    h.update(weights_hash.as_bytes());
    h.update([0u8]);
    h.update(req.member_id.to_le_bytes());
    h.update((keep as u64).to_le_bytes());
    for e in &req.history[req.history.len() - keep..] {
        h.update(e.item_id.to_le_bytes());
        h.update((e.action.len() as u64).to_le_bytes());
        h.update(e.action.as_bytes());
        h.update((time_bucket(t_ref, e.timestamp_ms, cfg.time_buckets) as u64).to_le_bytes());
        h.update((e.dense.len() as u64).to_le_bytes());
        for v in &e.dense {
            h.update(v.to_bits().to_le_bytes());
        }
    }
    Some(h.finalize().into())
}

struct Entry {
    hist: Arc<EncodedHistory>,
    inserted: Instant,
    bytes: usize,
}

struct Inner {
    lru: lru::LruCache<CacheKey, Entry>,
    bytes: usize,
}

/// A byte-bounded LRU of encoded histories for one model.
pub struct HistoryCache {
    model: String,
    max_bytes: usize,
    ttl: Option<Duration>,
    inner: Mutex<Inner>,
}

impl HistoryCache {
    pub fn new(model: &str, max_bytes: usize, ttl: Option<Duration>) -> Self {
        HistoryCache {
            model: model.to_string(),
            max_bytes,
            ttl,
            inner: Mutex::new(Inner { lru: lru::LruCache::unbounded(), bytes: 0 }),
        }
    }

    /// The cached history for `key`, refreshing its recency; expired entries are removed (a miss).
    pub fn get(&self, key: &CacheKey, now: Instant) -> Option<Arc<EncodedHistory>> {
        let mut inner = self.inner.lock().expect("cache lock poisoned");
        let expired = match inner.lru.get(key) {
            None => {
                drop(inner);
                metrics::cache_lookup(&self.model, false);
                return None;
            }
            Some(e) => self.ttl.is_some_and(|ttl| now.duration_since(e.inserted) >= ttl),
        };
        if expired {
            if let Some(e) = inner.lru.pop(key) {
                inner.bytes -= e.bytes;
                metrics::cache_evicted(&self.model, metrics::EVICT_TTL, inner.bytes);
            }
            drop(inner);
            metrics::cache_lookup(&self.model, false);
            return None;
        }
        let hist = inner.lru.get(key).map(|e| Arc::clone(&e.hist));
        drop(inner);
        metrics::cache_lookup(&self.model, true);
        hist
    }

    /// Stores `hist` under `key`, evicting least recently used entries to stay within the byte bound.
    /// An entry larger than the whole bound is not stored.
    pub fn insert(&self, key: CacheKey, hist: Arc<EncodedHistory>, now: Instant) {
        let bytes = hist.size_bytes() + std::mem::size_of::<CacheKey>();
        if bytes > self.max_bytes {
            return;
        }
        let mut inner = self.inner.lock().expect("cache lock poisoned");
        if let Some(old) = inner.lru.put(key, Entry { hist, inserted: now, bytes }) {
            inner.bytes -= old.bytes;
        }
        inner.bytes += bytes;
        while inner.bytes > self.max_bytes {
            match inner.lru.pop_lru() {
                Some((_, e)) => {
                    inner.bytes -= e.bytes;
                    metrics::cache_evicted(&self.model, metrics::EVICT_SIZE, inner.bytes);
                }
                None => break,
            }
        }
        metrics::cache_bytes(&self.model, inner.bytes);
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.inner.lock().expect("cache lock poisoned").bytes
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("cache lock poisoned").lru.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
