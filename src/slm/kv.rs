//! The KV cache of one sequence (a handle over backend storage) and the engine's KV budget.
//!
//! Each sequence owns its cache, sized at admission for `prompt + max_tokens` positions (the engine
//! reserves that much of the budget up front, so a running sequence never needs more memory and is
//! never preempted). Elements are f32, or f16 (`models[].slm.kv_cache_dtype`): half the bytes per
//! position. The storage layout is the backend's (`backend::cpu` keeps keys in tiles of 8 positions).

pub use crate::backend::KvState;
pub use crate::config::KvDtype;
use std::any::Any;

/// Shape of every cache of one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvShape {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub dtype: KvDtype,
}

impl KvShape {
    /// The same shape stored as `dtype`.
    pub fn with_dtype(self, dtype: KvDtype) -> Self {
        KvShape { dtype, ..self }
    }

    /// Bytes one cached position costs across all layers (keys + values).
    pub fn bytes_per_token(&self) -> usize {
        self.layers * self.kv_heads * self.head_dim * 2 * self.dtype.size()
    }
}

/// The cache of one sequence: positions `0..len` are filled, room for `capacity` positions. A handle:
/// the storage is the backend's, made on the sequence's first step (`LlamaModel::forward` asks the
/// model's backend for it), so the engine sizes and reserves caches without knowing their layout.
#[derive(Debug)]
pub struct SeqKv {
    shape: KvShape,
    capacity: usize,
    len: usize,
    storage: Option<Box<dyn KvState>>,
}

impl SeqKv {
    /// An empty cache with room for `capacity` positions.
    pub fn new(shape: KvShape, capacity: usize) -> Self {
        SeqKv { shape, capacity, len: 0, storage: None }
    }

    /// A new cache holding a copy of this one's positions, with room for `capacity` positions in all
    /// (label scoring: every label continues the same prompt without recomputing it).
    pub fn fork(&self, capacity: usize) -> Self {
        assert!(capacity >= self.len, "fork: capacity below the cached length");
        let storage = self.storage.as_ref().map(|s| s.fork(self.len, capacity));
        SeqKv { shape: self.shape, capacity, len: self.len, storage }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions this cache was created for.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn shape(&self) -> KvShape {
        self.shape
    }

    /// Bytes of storage held (none before the first step).
    pub fn bytes(&self) -> usize {
        self.storage.as_ref().map_or(0, |s| s.bytes())
    }

    /// Marks positions up to `len` as filled (after a step wrote them).
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.capacity, "kv length past the sequence's capacity");
        self.len = len;
    }

    /// Drops positions `len..`: the next step continues at `len`, overwriting them.
    pub fn truncate(&mut self, len: usize) {
        assert!(len <= self.len, "truncate: length past the cached positions");
        self.len = len;
    }

    /// Gives the cache storage from `make(shape, capacity)` if it has none yet.
    pub fn ensure_storage(&mut self, make: impl FnOnce(KvShape, usize) -> Box<dyn KvState>) {
        if self.storage.is_none() {
            self.storage = Some(make(self.shape, self.capacity));
        }
    }

    /// The storage as the backend's type `T`, if it has storage of that type.
    pub fn storage<T: KvState>(&self) -> Option<&T> {
        self.storage.as_deref().and_then(|s| (s as &dyn Any).downcast_ref())
    }

    /// Mutable [`Self::storage`].
    pub fn storage_mut<T: KvState>(&mut self) -> Option<&mut T> {
        self.storage.as_deref_mut().and_then(|s| (s as &mut dyn Any).downcast_mut())
    }
}

/// Positions of KV cache the engine may hold at once, reserved per sequence at admission.
#[derive(Debug, Clone)]
pub struct KvBudget {
    total_tokens: usize,
    reserved: usize,
}

impl KvBudget {
    pub fn new(total_bytes: usize, shape: KvShape) -> Self {
        KvBudget { total_tokens: total_bytes / shape.bytes_per_token().max(1), reserved: 0 }
    }

    pub fn total_tokens(&self) -> usize {
        self.total_tokens
    }

    pub fn reserved(&self) -> usize {
        self.reserved
    }

    /// Share of the budget reserved (0..1).
    pub fn usage(&self) -> f64 {
        if self.total_tokens == 0 {
            1.0
        } else {
            self.reserved as f64 / self.total_tokens as f64
        }
    }

    /// Reserves `tokens` positions if they fit.
    pub fn try_reserve(&mut self, tokens: usize) -> bool {
        if self.reserved + tokens <= self.total_tokens {
            self.reserved += tokens;
            true
        } else {
            false
        }
    }

    pub fn release(&mut self, tokens: usize) {
        debug_assert!(tokens <= self.reserved, "released more KV than reserved");
        self.reserved = self.reserved.saturating_sub(tokens);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: KvShape = KvShape { layers: 2, kv_heads: 3, head_dim: 4, dtype: KvDtype::F32 };

    #[test]
    fn f16_halves_bytes_per_token_and_doubles_the_budget() {
        let (f32s, f16s) = (SHAPE, SHAPE.with_dtype(KvDtype::F16));
        assert_eq!(f32s.bytes_per_token(), 2 * 3 * 4 * 2 * 4);
        assert_eq!(f16s.bytes_per_token() * 2, f32s.bytes_per_token());
        let bytes = f32s.bytes_per_token() * 10 + 7;
        assert_eq!(KvBudget::new(bytes, f32s).total_tokens(), 10);
        assert_eq!(KvBudget::new(bytes, f16s).total_tokens(), 20);
    }

    /// Storage that records what it was made and forked with.
    #[derive(Debug)]
    struct Probe {
        capacity: usize,
        copied: usize,
    }

    impl KvState for Probe {
        fn bytes(&self) -> usize {
            self.capacity
        }
        fn fork(&self, len: usize, capacity: usize) -> Box<dyn KvState> {
            Box::new(Probe { capacity, copied: len })
        }
    }

    #[test]
    fn handle_lengths_storage_and_fork() {
        let mut kv = SeqKv::new(SHAPE, 5);
        assert_eq!((kv.len(), kv.capacity(), kv.bytes()), (0, 5, 0));
        assert!(kv.storage::<Probe>().is_none(), "no storage before the first step");
        kv.ensure_storage(|shape, cap| {
            assert_eq!(shape, SHAPE);
            Box::new(Probe { capacity: cap, copied: 0 })
        });
        kv.ensure_storage(|_, _| panic!("storage is made once"));
        assert_eq!(kv.bytes(), 5);
        kv.set_len(3);
        let f = kv.fork(9);
        assert_eq!((f.len(), f.capacity(), f.shape()), (3, 9, SHAPE));
        let p = f.storage::<Probe>().expect("forked storage");
        assert_eq!((p.capacity, p.copied), (9, 3));
        kv.truncate(1);
        assert_eq!(kv.len(), 1);
    }

    #[test]
    #[should_panic(expected = "capacity")]
    fn length_past_capacity_panics() {
        SeqKv::new(SHAPE, 2).set_len(3);
    }

    #[test]
    fn budget_reserves_and_releases() {
        let mut b = KvBudget::new(SHAPE.bytes_per_token() * 10, SHAPE);
        assert_eq!(b.total_tokens(), 10);
        assert!(b.try_reserve(6));
        assert!(!b.try_reserve(5));
        assert!(b.try_reserve(4));
        assert!((b.usage() - 1.0).abs() < 1e-12);
        b.release(6);
        assert_eq!(b.reserved(), 4);
    }
}
