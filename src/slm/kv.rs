//! The KV cache of one sequence and the engine's KV budget.
//!
//! Each sequence owns its cache, sized at admission for `prompt + max_tokens` positions (the engine
//! reserves that much of the budget up front, so a running sequence never needs more memory and is
//! never preempted). Per layer and KV head the keys are stored in tiles of 8 positions, each tile
//! `[head_dim × 8]` contiguous (the layout `kernels::cpu::attention::attend_tiled` reads: 8 consecutive
//! positions form one vector, and attention streams the cache front to back) and the values
//! row-major (`v[j·hd + c]`).

use crate::kernels::cpu::attention::{tiled_key_index, KEY_TILE};

/// Shape of every cache of one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvShape {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl KvShape {
    /// Bytes one cached position costs across all layers (keys + values, f32).
    pub fn bytes_per_token(&self) -> usize {
        self.layers * self.kv_heads * self.head_dim * 2 * std::mem::size_of::<f32>()
    }
}

/// The cache of one sequence: positions `0..len` are filled, room for `capacity` positions.
#[derive(Debug, Clone)]
pub struct SeqKv {
    shape: KvShape,
    /// Positions the buffers hold (a multiple of 8 ≥ the requested capacity).
    cap: usize,
    requested: usize,
    len: usize,
    /// `[layer][kv_head][cap/8 tiles × head_dim × 8]`, flattened.
    kt: Vec<f32>,
    /// `[layer][kv_head][cap × head_dim]`, flattened.
    v: Vec<f32>,
}

impl SeqKv {
    /// An empty cache with room for `capacity` positions.
    pub fn new(shape: KvShape, capacity: usize) -> Self {
        let cap = capacity.max(1).div_ceil(KEY_TILE) * KEY_TILE;
        let n = shape.layers * shape.kv_heads * shape.head_dim * cap;
        SeqKv { shape, cap, requested: capacity, len: 0, kt: vec![0.0; n], v: vec![0.0; n] }
    }

    /// A new cache holding a copy of this one's positions, with room for `capacity` positions in all
    /// (label scoring: every label continues the same prompt without recomputing it).
    pub fn fork(&self, capacity: usize) -> Self {
        assert!(capacity >= self.len, "fork: capacity below the cached length");
        let mut out = SeqKv::new(self.shape, capacity);
        let hd = self.shape.head_dim;
        // Whole tiles: the tiles holding positions 0..len are a prefix of each head's key buffer.
        let tiled = self.len.div_ceil(KEY_TILE) * KEY_TILE * hd;
        for lh in 0..self.shape.layers * self.shape.kv_heads {
            let (src, dst) = (lh * hd * self.cap, lh * hd * out.cap);
            out.kt[dst..dst + tiled].copy_from_slice(&self.kt[src..src + tiled]);
            out.v[dst..dst + self.len * hd].copy_from_slice(&self.v[src..src + self.len * hd]);
        }
        out.len = self.len;
        out
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions this cache was created for.
    pub fn capacity(&self) -> usize {
        self.requested
    }

    /// Positions the buffers hold (the capacity rounded up to whole key tiles).
    pub fn padded_capacity(&self) -> usize {
        self.cap
    }

    pub fn shape(&self) -> KvShape {
        self.shape
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        (self.kt.len() + self.v.len()) * std::mem::size_of::<f32>()
    }

    /// Writes key `k` and value `v` (`head_dim` floats each) of `layer`/`head` at position `pos`.
    pub fn write(&mut self, layer: usize, head: usize, pos: usize, k: &[f32], v: &[f32]) {
        let hd = self.shape.head_dim;
        assert!(pos < self.requested, "kv write past the sequence's capacity");
        let base = (layer * self.shape.kv_heads + head) * hd * self.cap;
        for (c, &kc) in k[..hd].iter().enumerate() {
            self.kt[base + tiled_key_index(hd, pos, c)] = kc;
        }
        self.v[base + pos * hd..base + (pos + 1) * hd].copy_from_slice(&v[..hd]);
    }

    /// Marks positions up to `len` as filled (after every layer wrote them).
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.requested, "kv length past the sequence's capacity");
        self.len = len;
    }

    /// Tiled keys (`[padded_capacity/8 × head_dim × 8]`, see the module docs) and values
    /// (`[padded_capacity × head_dim]`) of one layer/head.
    pub fn head(&self, layer: usize, head: usize) -> (&[f32], &[f32]) {
        let n = self.shape.head_dim * self.cap;
        let base = (layer * self.shape.kv_heads + head) * n;
        (&self.kt[base..base + n], &self.v[base..base + n])
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

    const SHAPE: KvShape = KvShape { layers: 2, kv_heads: 3, head_dim: 4 };

    #[test]
    fn write_read_and_fork() {
        let mut kv = SeqKv::new(SHAPE, 5);
        assert_eq!(kv.padded_capacity(), 8);
        for pos in 0..3 {
            for l in 0..2 {
                for h in 0..3 {
                    let base = (pos * 100 + l * 10 + h) as f32;
                    let k = [base, base + 0.1, base + 0.2, base + 0.3];
                    let v = [-base, -base - 0.1, -base - 0.2, -base - 0.3];
                    kv.write(l, h, pos, &k, &v);
                }
            }
        }
        kv.set_len(3);
        let f = kv.fork(9);
        assert_eq!((f.len(), f.capacity(), f.padded_capacity()), (3, 9, 16));
        for l in 0..2 {
            for h in 0..3 {
                let (kt, v) = kv.head(l, h);
                let (fkt, fv) = f.head(l, h);
                for pos in 0..3 {
                    for c in 0..4 {
                        assert_eq!(kt[tiled_key_index(4, pos, c)], fkt[tiled_key_index(4, pos, c)]);
                        assert_eq!(v[pos * 4 + c], fv[pos * 4 + c]);
                    }
                    assert_eq!(fkt[2 * 8 + pos], (pos * 100 + l * 10 + h) as f32 + 0.2);
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "capacity")]
    fn write_past_capacity_panics() {
        let mut kv = SeqKv::new(SHAPE, 2);
        kv.write(0, 0, 2, &[0.0; 4], &[0.0; 4]);
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
