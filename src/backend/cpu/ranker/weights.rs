//! The CPU ranker's weight layout, built from a model's host tensors: every linear weight packed into
//! column panels (`kernels::cpu::PackedLinear`), the attention's k and v fused into one `d → 2d` layer.
//! Embeddings stay with the model (featurization reads them); only the encoder and head live here.

use crate::kernels::cpu::PackedLinear;
use crate::ranking::config::{Fusion, RankerConfig};
use crate::ranking::weights::HostTensors;

#[derive(Debug, Clone, PartialEq)]
pub(super) struct LayerWeights {
    pub ln1_w: Vec<f32>,
    pub ln1_b: Vec<f32>,
    /// `d → d`
    pub q: PackedLinear,
    /// `d → 2d`: outputs `[k | v]`
    pub kv: PackedLinear,
    pub o: PackedLinear,
    pub ln2_w: Vec<f32>,
    pub ln2_b: Vec<f32>,
    pub up: PackedLinear,
    pub down: PackedLinear,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Weights {
    /// `2d → d` for `concat`
    pub concat: Option<PackedLinear>,
    pub layers: Vec<LayerWeights>,
    pub final_w: Vec<f32>,
    pub final_b: Vec<f32>,
    /// Hidden layers then `head.out` (always last).
    pub head: Vec<PackedLinear>,
}

impl Weights {
    /// Packs the encoder and head tensors of `t` (all of `expected_tensors(cfg)` but the embedding and
    /// member tables, already shape-checked).
    pub fn from_host(cfg: &RankerConfig, t: &HostTensors) -> Self {
        let get = |name: &str| t.get(name).to_vec();
        let linear = |prefix: &str, n_out: usize, n_in: usize| {
            PackedLinear::from_torch(
                t.get(&format!("{prefix}.weight")),
                n_out,
                n_in,
                get(&format!("{prefix}.bias")),
            )
        };
        let d = cfg.d_model;
        let mut layers = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let p = format!("layers.{l}");
            // k and v stacked: [2d × d] rows [k; v], bias [k_b; v_b].
            let kv_w = [t.get(&format!("{p}.attn.k.weight")), t.get(&format!("{p}.attn.v.weight"))].concat();
            let kv_b = [t.get(&format!("{p}.attn.k.bias")), t.get(&format!("{p}.attn.v.bias"))].concat();
            layers.push(LayerWeights {
                ln1_w: get(&format!("{p}.ln1.weight")),
                ln1_b: get(&format!("{p}.ln1.bias")),
                q: linear(&format!("{p}.attn.q"), d, d),
                kv: PackedLinear::from_torch(&kv_w, 2 * d, d, kv_b),
                o: linear(&format!("{p}.attn.o"), d, d),
                ln2_w: get(&format!("{p}.ln2.weight")),
                ln2_b: get(&format!("{p}.ln2.bias")),
                up: linear(&format!("{p}.ffn.up"), cfg.ffn_dim, d),
                down: linear(&format!("{p}.ffn.down"), d, cfg.ffn_dim),
            });
        }
        let concat = (cfg.fusion == Fusion::Concat).then(|| linear("concat", d, 2 * d));
        let mut head = Vec::new();
        let mut n_in = cfg.head_input_dim();
        for (i, &w) in cfg.mlp_dims.iter().enumerate() {
            head.push(linear(&format!("head.{i}"), w, n_in));
            n_in = w;
        }
        head.push(linear("head.out", cfg.tasks.len(), n_in));
        Weights { concat, layers, final_w: get("final_ln.weight"), final_b: get("final_ln.bias"), head }
    }
}
