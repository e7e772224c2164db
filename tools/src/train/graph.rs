//! The training graph: the ranker's forward pass in candle (exactly the served computation, with autograd)
//! over a [`Batch`], its weights (initialization, safetensors load and save) and the loss.

use super::batch::Batch;
use super::ops::{Gelu, Normalize, Softmax};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::Rng;
use slate::ranking::config::RankerConfig;
use slate::ranking::weights::expected_tensors;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The trainable tensors by their serving-format names (docs/ranker-format.md).
pub(super) struct Weights {
    pub(super) vars: BTreeMap<String, Var>,
}

impl Weights {
    pub(super) fn get(&self, name: &str) -> &Tensor {
        self.vars.get(name).unwrap_or_else(|| panic!("internal: missing tensor {name}")).as_tensor()
    }

    pub(super) fn init(cfg: &RankerConfig, rng: &mut StdRng) -> Result<Weights> {
        let mut vars = BTreeMap::new();
        for (name, shape) in expected_tensors(cfg) {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = if name.ends_with("ln1.weight")
                || name.ends_with("ln2.weight")
                || name == "final_ln.weight"
            {
                vec![1.0; n]
            } else if name.ends_with(".bias") {
                vec![0.0; n]
            } else if shape.len() == 2 && (name.starts_with("layers.") || name.starts_with("head.")) {
                // PyTorch nn.Linear default: U(−1/√in, 1/√in).
                let bound = 1.0 / (shape[1] as f32).sqrt();
                (0..n).map(|_| rng.random_range(-bound..bound)).collect()
            } else {
                // Embeddings and the candidate token: N(0, 0.05²).
                (0..n).map(|_| 0.05 * normal(rng)).collect()
            };
            vars.insert(name, Var::from_tensor(&Tensor::from_vec(data, shape, &Device::Cpu)?)?);
        }
        Ok(Weights { vars })
    }

    pub(super) fn load(cfg: &RankerConfig, dir: &Path) -> Result<Weights> {
        let path = dir.join("model.safetensors");
        let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut vars = BTreeMap::new();
        for (name, shape) in expected_tensors(cfg) {
            let t =
                tensors.remove(&name).ok_or_else(|| anyhow!("{}: missing tensor {name}", path.display()))?;
            if t.dims() != shape.as_slice() || t.dtype() != DType::F32 {
                bail!(
                    "{}: tensor {name} is {:?} {:?}, expected F32 {shape:?}",
                    path.display(),
                    t.dtype(),
                    t.dims()
                );
            }
            vars.insert(name, Var::from_tensor(&t)?);
        }
        if let Some(extra) = tensors.keys().next() {
            bail!("{}: unexpected tensor {extra}", path.display());
        }
        Ok(Weights { vars })
    }

    pub(super) fn save(&self, path: &Path) -> Result<()> {
        let map: HashMap<String, Tensor> =
            self.vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect();
        candle_core::safetensors::save(&map, path).with_context(|| format!("writing {}", path.display()))?;
        #[cfg(unix)]
        {
            // The safetensors writer creates the file owner-only; a model is meant to be shared.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
        }
        Ok(())
    }

    pub(super) fn all_vars(&self) -> Vec<Var> {
        self.vars.values().cloned().collect()
    }
}

pub(super) fn normal(rng: &mut StdRng) -> f32 {
    // Box–Muller.
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// `x·wᵀ + b` for `x: [N, in]`.
fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    x.matmul(&w.t()?)?.broadcast_add(b)
}

fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Normalize { eps: eps as f32 })?.broadcast_mul(w)?.broadcast_add(b)
}

/// `[B·n, d]` → `[B, heads, n, head_dim]`.
fn split_heads(x: &Tensor, b: usize, n: usize, heads: usize) -> candle_core::Result<Tensor> {
    let d = x.dim(1)?;
    x.reshape((b, n, heads, d / heads))?.transpose(1, 2)?.contiguous()
}

/// Masked attention of pre-scaled queries `[B, h, n, hd]` over keys `kt: [B, h, hd, L]` (transposed)
/// and values `[B, h, L, hd]`. Padded keys get weight exactly 0 (exp underflow); a row with no real
/// key gets garbage that the caller zeroes. Returns `[B·n, d]`.
fn attend(q: &Tensor, kt: &Tensor, v: &Tensor, batch: &Batch) -> candle_core::Result<Tensor> {
    let (b, h, n, hd) = q.dims4()?;
    let p = q.matmul(kt)?.broadcast_add(&batch.key_bias)?.apply_op1(Softmax)?;
    p.matmul(v)?.transpose(1, 2)?.reshape((b * n, h * hd))
}

/// Logits `[B·C, T]`.
pub(super) fn forward(cfg: &RankerConfig, w: &Weights, batch: &Batch) -> candle_core::Result<Tensor> {
    let (b, l, c, heads, eps) = (batch.b, batch.l, batch.c, cfg.heads, f64::from(cfg.norm_eps));
    let scale = 1.0 / ((cfg.d_model / heads) as f64).sqrt();
    let mut xh = w
        .get("item_embedding.weight")
        .index_select(&batch.hist_item, 0)?
        .add(&w.get("action_embedding.weight").index_select(&batch.hist_action, 0)?)?
        .add(&w.get("time_embedding.weight").index_select(&batch.hist_time, 0)?)?
        .add(&w.get("position_embedding.weight").index_select(&batch.hist_pos, 0)?)?;
    let mut xc = w
        .get("item_embedding.weight")
        .index_select(&batch.cand_item, 0)?
        .broadcast_add(w.get("candidate_token"))?;
    for layer in 0..cfg.layers {
        let p = |s: &str| w.get(&format!("layers.{layer}.{s}"));
        let lin = |x: &Tensor, m: &str| linear(x, p(&format!("{m}.weight")), p(&format!("{m}.bias")));
        // Attention: history over history; candidates over the history only (append_cross).
        let hh = layer_norm(&xh, p("ln1.weight"), p("ln1.bias"), eps)?;
        let hc = layer_norm(&xc, p("ln1.weight"), p("ln1.bias"), eps)?;
        let q = split_heads(&(lin(&hh, "attn.q")? * scale)?, b, l, heads)?;
        let kt = split_heads(&lin(&hh, "attn.k")?, b, l, heads)?.transpose(2, 3)?.contiguous()?;
        let v = split_heads(&lin(&hh, "attn.v")?, b, l, heads)?;
        let ah = attend(&q, &kt, &v, batch)?;
        let qc = split_heads(&(lin(&hc, "attn.q")? * scale)?, b, c, heads)?;
        let ac = attend(&qc, &kt, &v, batch)?.broadcast_mul(&batch.cand_has_history)?;
        xh = (xh + lin(&ah, "attn.o")?)?;
        xc = (xc + lin(&ac, "attn.o")?)?;
        // FFN.
        let ffn = |x: &Tensor| -> candle_core::Result<Tensor> {
            let h = layer_norm(x, p("ln2.weight"), p("ln2.bias"), eps)?;
            lin(&lin(&h, "ffn.up")?.apply_op1(Gelu)?, "ffn.down")
        };
        xh = (&xh + ffn(&xh)?)?;
        xc = (&xc + ffn(&xc)?)?;
    }
    let yc = layer_norm(&xc, w.get("final_ln.weight"), w.get("final_ln.bias"), eps)?;
    let mut parts = vec![yc];
    for (f, feat) in cfg.member_sparse.iter().enumerate() {
        parts.push(
            w.get(&format!("member_sparse.{}.weight", feat.name)).index_select(&batch.member_rows[f], 0)?,
        );
    }
    let mut u = Tensor::cat(&parts, 1)?;
    for i in 0..cfg.mlp_dims.len() {
        u = linear(&u, w.get(&format!("head.{i}.weight")), w.get(&format!("head.{i}.bias")))?.relu()?;
    }
    linear(&u, w.get("head.out.weight"), w.get("head.out.bias"))
}

/// Summed binary cross-entropy with logits over all candidates and tasks.
pub(super) fn bce_with_logits_sum(z: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    let loss = ((z.relu()? - (z * y)?)? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    loss.sum_all()
}
