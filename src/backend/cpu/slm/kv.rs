//! The CPU storage of one sequence's KV cache. Per layer and KV head the keys are stored in tiles of 8
//! positions, each tile `[head_dim × 8]` contiguous (the layout `kernels::cpu::attention::attend_tiled`
//! reads: 8 consecutive positions form one vector, and attention streams the cache front to back) and
//! the values row-major (`v[j·hd + c]`). Elements are f32, or f16 (`models[].slm.kv_cache_dtype`): keys
//! and values rounded to nearest as they are written, half the bytes per position.

use crate::backend::KvState;
use crate::config::KvDtype;
use crate::kernels::cpu::attention::{tiled_key_index, KEY_TILE};
use crate::slm::kv::KvShape;
use half::f16;

/// Key and value buffers of every layer/head, in the cache's element type.
#[derive(Debug, Clone)]
enum Buffers {
    F32 { kt: Vec<f32>, v: Vec<f32> },
    F16 { kt: Vec<f16>, v: Vec<f16> },
}

/// Tiled keys and row-major values of one layer/head (see [`TiledKv::head`]), in the cache's element
/// type: the forward pass dispatches `attend_tiled` on it.
#[derive(Debug, Clone, Copy)]
pub(super) enum KvHead<'a> {
    F32 { kt: &'a [f32], v: &'a [f32] },
    F16 { kt: &'a [f16], v: &'a [f16] },
}

/// One sequence's keys and values in the tiled layout, room for `capacity` positions.
#[derive(Debug, Clone)]
pub(super) struct TiledKv {
    shape: KvShape,
    /// Positions the buffers hold (a multiple of 8 ≥ the requested capacity).
    cap: usize,
    requested: usize,
    /// Keys `[layer][kv_head][cap/8 tiles × head_dim × 8]` and values `[layer][kv_head][cap ×
    /// head_dim]`, flattened.
    buf: Buffers,
}

impl TiledKv {
    /// Zeroed storage for `capacity` positions.
    pub fn new(shape: KvShape, capacity: usize) -> Self {
        let cap = capacity.max(1).div_ceil(KEY_TILE) * KEY_TILE;
        let n = shape.layers * shape.kv_heads * shape.head_dim * cap;
        let buf = match shape.dtype {
            KvDtype::F32 => Buffers::F32 { kt: vec![0.0; n], v: vec![0.0; n] },
            KvDtype::F16 => Buffers::F16 { kt: vec![f16::ZERO; n], v: vec![f16::ZERO; n] },
        };
        TiledKv { shape, cap, requested: capacity, buf }
    }

    /// Positions the buffers hold (the capacity rounded up to whole key tiles).
    #[cfg(test)]
    fn padded_capacity(&self) -> usize {
        self.cap
    }

    /// Writes key `k` and value `v` (`head_dim` floats each) of `layer`/`head` at position `pos`
    /// (rounded to nearest for an f16 cache).
    pub fn write(&mut self, layer: usize, head: usize, pos: usize, k: &[f32], v: &[f32]) {
        let hd = self.shape.head_dim;
        assert!(pos < self.requested, "kv write past the sequence's capacity");
        let base = (layer * self.shape.kv_heads + head) * hd * self.cap;
        let (k, v) = (&k[..hd], &v[..hd]);
        let vals = base + pos * hd..base + (pos + 1) * hd;
        match &mut self.buf {
            Buffers::F32 { kt, v: vb } => {
                for (c, &kc) in k.iter().enumerate() {
                    kt[base + tiled_key_index(hd, pos, c)] = kc;
                }
                vb[vals].copy_from_slice(v);
            }
            Buffers::F16 { kt, v: vb } => {
                for (c, &kc) in k.iter().enumerate() {
                    kt[base + tiled_key_index(hd, pos, c)] = f16::from_f32(kc);
                }
                for (d, &x) in vb[vals].iter_mut().zip(v) {
                    *d = f16::from_f32(x);
                }
            }
        }
    }

    /// Tiled keys (`[padded_capacity/8 × head_dim × 8]`, see the module docs) and values
    /// (`[padded_capacity × head_dim]`) of one layer/head.
    pub fn head(&self, layer: usize, head: usize) -> KvHead<'_> {
        let n = self.shape.head_dim * self.cap;
        let r = (layer * self.shape.kv_heads + head) * n..(layer * self.shape.kv_heads + head + 1) * n;
        match &self.buf {
            Buffers::F32 { kt, v } => KvHead::F32 { kt: &kt[r.clone()], v: &v[r] },
            Buffers::F16 { kt, v } => KvHead::F16 { kt: &kt[r.clone()], v: &v[r] },
        }
    }

    /// New storage holding a copy of positions `0..len`, with room for `capacity` positions.
    fn fork_tiled(&self, len: usize, capacity: usize) -> Self {
        let mut out = TiledKv::new(self.shape, capacity);
        let hd = self.shape.head_dim;
        // Whole tiles: the tiles holding positions 0..len are a prefix of each head's key buffer.
        let tiled = len.div_ceil(KEY_TILE) * KEY_TILE * hd;
        let (vals, heads) = (len * hd, self.shape.layers * self.shape.kv_heads);
        let (sc, dc) = (self.cap, out.cap);
        fn copy<T: Copy>(src: &[T], dst: &mut [T], heads: usize, per: usize, n: usize, sc: usize, dc: usize) {
            for lh in 0..heads {
                let (s, d) = (lh * per * sc, lh * per * dc);
                dst[d..d + n].copy_from_slice(&src[s..s + n]);
            }
        }
        match (&self.buf, &mut out.buf) {
            (Buffers::F32 { kt, v }, Buffers::F32 { kt: okt, v: ov }) => {
                copy(kt, okt, heads, hd, tiled, sc, dc);
                copy(v, ov, heads, hd, vals, sc, dc);
            }
            (Buffers::F16 { kt, v }, Buffers::F16 { kt: okt, v: ov }) => {
                copy(kt, okt, heads, hd, tiled, sc, dc);
                copy(v, ov, heads, hd, vals, sc, dc);
            }
            _ => unreachable!("fork: TiledKv::new keeps the shape's dtype, this is a bug"),
        }
        out
    }
}

impl KvState for TiledKv {
    fn bytes(&self) -> usize {
        match &self.buf {
            Buffers::F32 { kt, v } => (kt.len() + v.len()) * std::mem::size_of::<f32>(),
            Buffers::F16 { kt, v } => (kt.len() + v.len()) * std::mem::size_of::<f16>(),
        }
    }

    fn fork(&self, len: usize, capacity: usize) -> Box<dyn KvState> {
        Box::new(self.fork_tiled(len, capacity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: KvShape = KvShape { layers: 2, kv_heads: 3, head_dim: 4, dtype: KvDtype::F32 };

    /// Key and value component `c` of position `pos`, widened to f32.
    fn read(kv: &TiledKv, l: usize, h: usize, pos: usize, c: usize) -> (f32, f32) {
        let (ki, vi) = (tiled_key_index(4, pos, c), pos * 4 + c);
        match kv.head(l, h) {
            KvHead::F32 { kt, v } => (kt[ki], v[vi]),
            KvHead::F16 { kt, v } => (kt[ki].to_f32(), v[vi].to_f32()),
        }
    }

    /// Values with more mantissa than f16 keeps, so rounding shows.
    fn kv_at(pos: usize, l: usize, h: usize) -> ([f32; 4], [f32; 4]) {
        let base = (pos * 100 + l * 10 + h) as f32 + 0.123_456_7;
        ([base, base + 0.1, base + 0.2, base + 0.3], [-base, -base - 0.1, -base - 0.2, -base / 3.0])
    }

    /// Storage for 5 positions with positions 0..3 written.
    fn filled(shape: KvShape) -> TiledKv {
        let mut kv = TiledKv::new(shape, 5);
        assert_eq!(kv.padded_capacity(), 8);
        for pos in 0..3 {
            for l in 0..2 {
                for h in 0..3 {
                    let (k, v) = kv_at(pos, l, h);
                    kv.write(l, h, pos, &k, &v);
                }
            }
        }
        kv
    }

    #[test]
    fn write_read_and_fork() {
        for dtype in [KvDtype::F32, KvDtype::F16] {
            let kv = filled(SHAPE.with_dtype(dtype));
            let f = kv.fork_tiled(3, 9);
            assert_eq!((f.requested, f.padded_capacity()), (9, 16));
            for l in 0..2 {
                for h in 0..3 {
                    for pos in 0..3 {
                        let (k, v) = kv_at(pos, l, h);
                        for c in 0..4 {
                            // f16: exactly the nearest f16 of what was written.
                            let round = |x: f32| match dtype {
                                KvDtype::F32 => x,
                                KvDtype::F16 => f16::from_f32(x).to_f32(),
                            };
                            let want = (round(k[c]), round(v[c]));
                            assert_eq!(read(&kv, l, h, pos, c), want, "{dtype:?} l{l} h{h} pos {pos} c {c}");
                            assert_eq!(read(&f, l, h, pos, c), want, "fork {dtype:?} l{l} h{h} pos {pos}");
                            if dtype == KvDtype::F16 {
                                assert_ne!(want.0, k[c], "f16 rounding did not show");
                            }
                        }
                    }
                }
            }
            // The tiled layout is the same for both types: key component 2 of position p at 2·8 + p.
            match (f.head(1, 2), dtype) {
                (KvHead::F32 { kt, .. }, KvDtype::F32) => assert_eq!(kt[2 * 8 + 1], kv_at(1, 1, 2).0[2]),
                (KvHead::F16 { kt, .. }, KvDtype::F16) => {
                    assert_eq!(kt[2 * 8 + 1], f16::from_f32(kv_at(1, 1, 2).0[2]))
                }
                _ => panic!("{dtype:?} cache returned the other type"),
            }
        }
    }

    #[test]
    fn f16_halves_bytes() {
        let (f32s, f16s) = (SHAPE, SHAPE.with_dtype(KvDtype::F16));
        assert_eq!(TiledKv::new(f16s, 13).bytes() * 2, TiledKv::new(f32s, 13).bytes());
        assert_eq!(TiledKv::new(f16s, 13).bytes(), 16 * f16s.bytes_per_token());
    }

    #[test]
    #[should_panic(expected = "capacity")]
    fn write_past_capacity_panics() {
        let mut kv = TiledKv::new(SHAPE, 2);
        kv.write(0, 0, 2, &[0.0; 4], &[0.0; 4]);
    }
}
