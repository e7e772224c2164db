//! Ranker weights on the host: the tensor list the format prescribes for a config (names + shapes, the
//! single source for load, save and random init) and [`HostTensors`], a model's tensors by name in file
//! layout, read and checked from `model.safetensors`. Backends build their own layout from them.

use super::config::{Fusion, RankerConfig};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashSet};

/// A tensor in file layout (PyTorch `[out, in]` for linear weights).
pub(crate) type FileTensor = (Vec<usize>, Vec<f32>);

/// Every tensor the format prescribes for `cfg`, in documentation order, with its shape.
pub fn expected_tensors(cfg: &RankerConfig) -> Vec<(String, Vec<usize>)> {
    let d = cfg.d_model;
    let mut t: Vec<(String, Vec<usize>)> = vec![
        ("item_embedding.weight".into(), vec![cfg.item_buckets, d]),
        ("action_embedding.weight".into(), vec![cfg.actions.len(), d]),
        ("time_embedding.weight".into(), vec![cfg.time_buckets, d]),
        ("position_embedding.weight".into(), vec![cfg.max_history, d]),
    ];
    if cfg.event_dense_dim > 0 {
        t.push(("event_dense.weight".into(), vec![d, cfg.event_dense_dim]));
    }
    t.push(("candidate_token".into(), vec![d]));
    if cfg.fusion == Fusion::Concat {
        t.push(("concat.weight".into(), vec![d, 2 * d]));
        t.push(("concat.bias".into(), vec![d]));
    }
    for l in 0..cfg.layers {
        let p = format!("layers.{l}.");
        t.push((format!("{p}ln1.weight"), vec![d]));
        t.push((format!("{p}ln1.bias"), vec![d]));
        for m in ["q", "k", "v", "o"] {
            t.push((format!("{p}attn.{m}.weight"), vec![d, d]));
            t.push((format!("{p}attn.{m}.bias"), vec![d]));
        }
        t.push((format!("{p}ln2.weight"), vec![d]));
        t.push((format!("{p}ln2.bias"), vec![d]));
        t.push((format!("{p}ffn.up.weight"), vec![cfg.ffn_dim, d]));
        t.push((format!("{p}ffn.up.bias"), vec![cfg.ffn_dim]));
        t.push((format!("{p}ffn.down.weight"), vec![d, cfg.ffn_dim]));
        t.push((format!("{p}ffn.down.bias"), vec![d]));
    }
    t.push(("final_ln.weight".into(), vec![d]));
    t.push(("final_ln.bias".into(), vec![d]));
    for f in &cfg.member_sparse {
        t.push((format!("member_sparse.{}.weight", f.name), vec![f.buckets + 1, cfg.member_sparse_dim]));
    }
    let mut n_in = cfg.head_input_dim();
    for (i, &w) in cfg.mlp_dims.iter().enumerate() {
        t.push((format!("head.{i}.weight"), vec![w, n_in]));
        t.push((format!("head.{i}.bias"), vec![w]));
        n_in = w;
    }
    t.push(("head.out.weight".into(), vec![cfg.tasks.len(), n_in]));
    t.push(("head.out.bias".into(), vec![cfg.tasks.len()]));
    t
}

/// Bytes of tensor data the format prescribes for `cfg` (f32 values; the file also holds a header).
/// `None` when the count overflows (a config that passed `validate` never does).
pub fn expected_data_bytes(cfg: &RankerConfig) -> Option<usize> {
    expected_tensors(cfg).iter().try_fold(0usize, |total, (_, shape)| {
        let n = shape.iter().try_fold(4usize, |a, &d| a.checked_mul(d))?;
        total.checked_add(n)
    })
}

/// A model's tensors by name, in file layout (PyTorch `[out, in]` for linear weights), every one of
/// them checked against the config it was read or made for.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensors(BTreeMap<String, FileTensor>);

impl HostTensors {
    /// Parses `model.safetensors` bytes and checks them against `cfg`: every prescribed tensor present,
    /// `F32`, the right shape, finite; no other tensor. Errors name the tensor.
    pub(crate) fn from_safetensors(cfg: &RankerConfig, bytes: &[u8]) -> Result<Self, String> {
        let st =
            safetensors::SafeTensors::deserialize(bytes).map_err(|e| format!("model.safetensors: {e}"))?;
        let expected = expected_tensors(cfg);
        let mut tensors = BTreeMap::new();
        for (name, shape) in &expected {
            let view = st.tensor(name).map_err(|_| format!("model.safetensors: missing tensor '{name}'"))?;
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(format!(
                    "model.safetensors: tensor '{name}' is {:?}, expected F32",
                    view.dtype()
                ));
            }
            if view.shape() != shape.as_slice() {
                return Err(format!(
                    "model.safetensors: tensor '{name}' has shape {:?}, expected {shape:?} (from config.json)",
                    view.shape()
                ));
            }
            let data: Vec<f32> =
                view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                return Err(format!(
                    "model.safetensors: tensor '{name}' has a non-finite value at flat index {i}"
                ));
            }
            tensors.insert(name.clone(), (shape.clone(), data));
        }
        let known: HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
        let mut extra: Vec<&str> = st.names().into_iter().filter(|n| !known.contains(n)).collect();
        extra.sort_unstable();
        if let Some(n) = extra.first() {
            return Err(format!(
                "model.safetensors: unexpected tensor '{n}' (not part of the format for this config.json)"
            ));
        }
        Ok(HostTensors(tensors))
    }

    /// The values of tensor `name`.
    ///
    /// # Panics
    /// When the tensor is not here: the list was checked against the config, so asking for another
    /// one is a bug.
    pub fn get(&self, name: &str) -> &[f32] {
        match self.0.get(name) {
            Some((_, data)) => data,
            None => panic!("tensor '{name}' is not among the checked tensors; this is a bug"),
        }
    }

    /// Removes tensor `name` and returns its values (panics as [`Self::get`]).
    pub(crate) fn take(&mut self, name: &str) -> Vec<f32> {
        match self.0.remove(name) {
            Some((_, data)) => data,
            None => panic!("tensor '{name}' is not among the checked tensors; this is a bug"),
        }
    }

    /// Puts tensor `name` (back) in.
    pub(crate) fn insert(&mut self, name: String, shape: Vec<usize>, data: Vec<f32>) {
        self.0.insert(name, (shape, data));
    }

    /// Every tensor in `expected_tensors` order (file layout).
    pub(crate) fn to_file_tensors(&self, cfg: &RankerConfig) -> Vec<(String, FileTensor)> {
        expected_tensors(cfg)
            .into_iter()
            .map(|(name, shape)| {
                let t = self.0.get(&name).expect("every prescribed tensor is here; this is a bug");
                debug_assert_eq!(t.0, shape, "{name}");
                (name, t.clone())
            })
            .collect()
    }

    /// Serialized `model.safetensors` bytes.
    pub(crate) fn to_safetensors(&self, cfg: &RankerConfig) -> Vec<u8> {
        let tensors = self.to_file_tensors(cfg);
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .into_iter()
            .map(|(name, (shape, data))| (name, shape, data.iter().flat_map(|v| v.to_le_bytes()).collect()))
            .collect();
        let views = bytes.iter().map(|(name, shape, b)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                .expect("shape and byte length agree by construction; this is a bug");
            (name.clone(), view)
        });
        safetensors::serialize(views, None).expect("serializing in-memory tensors cannot fail; this is a bug")
    }

    /// Random weights for `cfg` (seeded): embeddings ~ N(0, 0.5²), linear weights ~ N(0, gain²/in) (gain
    /// √2 before a ReLU), biases ~ N(0, 0.1²), layer-norm scales ~ 1 + N(0, 0.1²). Activations stay O(1)
    /// through the layers and the logits come out ~ N(0, 1), so calibrated scores spread over (0, 1).
    pub(crate) fn random(cfg: &RankerConfig, seed: u64) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut normal = move |std: f32| -> f32 {
            // Box–Muller.
            let u1: f32 = rng.random_range(f32::EPSILON..1.0);
            let u2: f32 = rng.random();
            std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        };
        let mut tensors = BTreeMap::new();
        for (name, shape) in expected_tensors(cfg) {
            let n: usize = shape.iter().product();
            let fan_in = *shape.last().expect("every tensor has a shape") as f32;
            let relu_follows = name.starts_with("head.") && !name.starts_with("head.out");
            let data: Vec<f32> = if name.ends_with("embedding.weight")
                || name.starts_with("member_sparse.")
                || name == "candidate_token"
            {
                (0..n).map(|_| normal(0.5)).collect()
            } else if name.contains("ln") && name.ends_with(".weight") {
                (0..n).map(|_| 1.0 + normal(0.1)).collect()
            } else if name.ends_with(".bias") {
                (0..n).map(|_| normal(0.1)).collect()
            } else {
                let gain = if relu_follows { std::f32::consts::SQRT_2 } else { 1.0 };
                (0..n).map(|_| normal(gain / fan_in.sqrt())).collect()
            };
            tensors.insert(name, (shape, data));
        }
        HostTensors(tensors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> RankerConfig {
        let mut c = RankerConfig::reference_workload();
        c.d_model = 8;
        c.heads = 2;
        c.ffn_dim = 12;
        c.max_history = 5;
        c.item_buckets = 17;
        c.mlp_dims = vec![6];
        c.event_dense_dim = 2;
        c.candidate_dense_dim = 1;
        c.member_sparse_dim = 3;
        c.member_sparse = vec![super::super::config::MemberSparseSpec { name: "geo".into(), buckets: 4 }];
        c.member_dense_dim = 2;
        c
    }

    #[test]
    fn random_save_load_round_trips_exactly() {
        for fusion in [Fusion::AppendCross, Fusion::AppendSelf, Fusion::Concat] {
            let mut cfg = small();
            cfg.fusion = fusion;
            let w = HostTensors::random(&cfg, 1);
            let bytes = w.to_safetensors(&cfg);
            assert_eq!(HostTensors::from_safetensors(&cfg, &bytes).unwrap(), w);
        }
    }

    #[test]
    fn expected_data_bytes_counts_every_prescribed_value() {
        let cfg = small();
        let w = HostTensors::random(&cfg, 3);
        let values: usize = w.to_file_tensors(&cfg).iter().map(|(_, (_, d))| d.len()).sum();
        assert_eq!(expected_data_bytes(&cfg), Some(4 * values));
        assert!(w.to_safetensors(&cfg).len() > 4 * values);
    }

    #[test]
    fn load_errors_name_the_tensor() {
        let cfg = small();
        let w = HostTensors::random(&cfg, 2);
        let mut tensors = w.to_file_tensors(&cfg);
        let write = |t: &[(String, FileTensor)]| {
            let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = t
                .iter()
                .map(|(n, (s, d))| (n.clone(), s.clone(), d.iter().flat_map(|v| v.to_le_bytes()).collect()))
                .collect();
            safetensors::serialize(
                bytes.iter().map(|(n, s, b)| {
                    (
                        n.clone(),
                        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
                    )
                }),
                None,
            )
            .unwrap()
        };
        // Missing.
        let missing: Vec<_> =
            tensors.iter().filter(|(n, _)| n != "layers.0.attn.k.weight").cloned().collect();
        let e = HostTensors::from_safetensors(&cfg, &write(&missing)).unwrap_err();
        assert_eq!(e, "model.safetensors: missing tensor 'layers.0.attn.k.weight'");
        // Extra.
        let mut extra = tensors.clone();
        extra.push(("bogus".into(), (vec![1], vec![0.0])));
        let e = HostTensors::from_safetensors(&cfg, &write(&extra)).unwrap_err();
        assert!(e.contains("unexpected tensor 'bogus'"), "{e}");
        // Wrong shape.
        let i = tensors.iter().position(|(n, _)| n == "head.0.weight").unwrap();
        tensors[i].1 = (vec![3, 4], vec![0.0; 12]);
        let e = HostTensors::from_safetensors(&cfg, &write(&tensors)).unwrap_err();
        assert!(
            e.starts_with("model.safetensors: tensor 'head.0.weight' has shape [3, 4], expected [6, 14]"),
            "{e}"
        );
        // Non-finite.
        tensors[i].1 = (vec![6, 14], vec![f32::NAN; 84]);
        let e = HostTensors::from_safetensors(&cfg, &write(&tensors)).unwrap_err();
        assert!(e.contains("'head.0.weight' has a non-finite value"), "{e}");
        // Truncated and garbage files: errors, not panics.
        let good = w.to_safetensors(&cfg);
        for cut in [0, 4, 8, 20, good.len() / 2, good.len() - 1] {
            assert!(HostTensors::from_safetensors(&cfg, &good[..cut])
                .unwrap_err()
                .starts_with("model.safetensors:"));
        }
        assert!(HostTensors::from_safetensors(&cfg, &[0xff; 64]).is_err());
    }
}
