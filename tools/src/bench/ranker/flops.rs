//! Analytic FLOP counts of one ranker request (same formulas as tools/onnx/ranker_onnx.py).

use slate::ranking::RankerConfig;

/// Analytic FLOP counts of one request. d = d_model, F = ffn_dim, N = layers, L = history,
/// m = candidates, S = L + 1:
/// - history per layer `8·L·d² + 4·L²·d + 4·L·d·F` (Q,K,V,O projections; QKᵀ and AV; FFN up + down);
/// - candidates per layer `4·m·d² + 4·m·L·d + 4·m·d·F` (Q,O projections; QKᵀ, AV over L keys; FFN);
/// - head `2·m·Σ in_i·out_i` over the hidden layers and the output layer;
/// - `nominal = N·history + N·candidates + head` (the figure GFLOP/s is quoted against; 0.319 GFLOP for
///   the reference workload);
/// - `executed = (N−1)·history + 4·L·d² + N·candidates + head` (the last layer's history rows only need
///   K and V: their outputs are never read);
/// - `per_candidate = m·N·(8·S·d² + 4·S²·d + 4·S·d·F) + head` (the literal `[history, c]` pass);
/// - `concat = m·(4·S·d² + N·(8·S·d² + 4·S²·d + 4·S·d·F)) + head` (concat projection then the encoder).
///
/// LayerNorm, softmax, GELU, biases and embedding lookups are not counted.
#[derive(Debug, Clone, Copy)]
pub(super) struct Flops {
    pub(super) nominal: f64,
    pub(super) executed: f64,
    pub(super) per_candidate: f64,
    pub(super) concat: f64,
}

#[derive(Debug, Clone)]
pub(super) struct Dims {
    pub(super) d: usize,
    pub(super) ffn: usize,
    pub(super) layers: usize,
    /// `[head input, hidden widths…, tasks]`.
    pub(super) head: Vec<usize>,
}

impl Flops {
    pub(super) fn of(dims: &Dims, l: usize, m: usize) -> Flops {
        let (d, f, n) = (dims.d as f64, dims.ffn as f64, dims.layers as f64);
        let (lf, mf, s) = (l as f64, m as f64, (l + 1) as f64);
        let hist = 8.0 * lf * d * d + 4.0 * lf * lf * d + 4.0 * lf * d * f;
        let cand = 4.0 * mf * d * d + 4.0 * mf * lf * d + 4.0 * mf * d * f;
        let head = 2.0 * mf * dims.head.windows(2).map(|w| (w[0] * w[1]) as f64).sum::<f64>();
        let enc_s = 8.0 * s * d * d + 4.0 * s * s * d + 4.0 * s * d * f;
        Flops {
            nominal: n * hist + n * cand + head,
            executed: (n - 1.0) * hist + 4.0 * lf * d * d + n * cand + head,
            per_candidate: mf * n * enc_s + head,
            concat: mf * (4.0 * s * d * d + n * enc_s) + head,
        }
    }
}

pub(super) fn gflops(flop: f64, ms: f64) -> f64 {
    flop / (ms * 1e6)
}

/// The dims the FLOP counts need, from a config.
pub(super) fn dims(cfg: &RankerConfig) -> Dims {
    let mut head = vec![cfg.head_input_dim()];
    head.extend(&cfg.mlp_dims);
    head.push(cfg.tasks.len());
    Dims { d: cfg.d_model, ffn: cfg.ffn_dim, layers: cfg.layers, head }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flop_formulas_match_the_guide() {
        // The shared guide's reference workload (head input 192): history ≈ 84 MFLOP, candidates ≈ 150,
        // head ≈ 84, total ≈ 0.319 GFLOP; per-candidate ≈ 43 GFLOP.
        let guide = Dims { d: 64, ffn: 256, layers: 2, head: vec![192, 256, 128, 3] };
        let f = Flops::of(&guide, 256, 512);
        assert_eq!(f.nominal, 83_886_080.0 + 150_994_944.0 + 84_279_296.0);
        assert!((f.per_candidate / 1e9 - 43.3).abs() < 0.1, "{}", f.per_candidate);
        // The last layer's history rows need only K and V: Q,O (2·2·L·d²), attention (4·L²·d), FFN.
        let tail = 4.0 * 256.0 * 64.0 * 64.0 + 4.0 * 256.0 * 256.0 * 64.0 + 4.0 * 256.0 * 64.0 * 256.0;
        assert_eq!(f.nominal - f.executed, tail);
        // The project's RankerConfig::reference_workload() has no member features (head input 64).
        let cfg = RankerConfig::reference_workload();
        let r = Flops::of(&dims(&cfg), cfg.max_history, 512);
        assert!((r.nominal / 1e9 - 0.2856).abs() < 1e-4, "{}", r.nominal);
    }
}
