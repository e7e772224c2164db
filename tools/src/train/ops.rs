//! Fused CPU ops with hand-written backward passes for the training graph: softmax, GELU and the
//! normalization of LayerNorm. Candle composes these out of many elementwise ops, each a pass over
//! memory (and twice as many in the backward); fused, training runs a few times faster. Each works
//! row-wise over the contiguous last dimension.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};

fn f32_rows<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<(&'a [f32], usize)> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("fused op: f32 input required") };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("fused op: contiguous input required")
    };
    Ok((&v[a..b], l.dims().last().copied().unwrap_or(1).max(1)))
}

/// Softmax over the last dimension.
pub(super) struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "slate-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, n) = f32_rows(s, l)?;
        let mut out = vec![0f32; x.len()];
        for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            let max = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (o, &v) in or.iter_mut().zip(xr) {
                *o = (v - max).exp();
                sum += *o;
            }
            let inv = 1.0 / sum;
            or.iter_mut().for_each(|o| *o *= inv);
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(res.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBwd)?))
    }
}

/// `dx = p ⊙ (g − Σ g⊙p)`.
struct SoftmaxBwd;

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "slate-softmax-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let ((p, n), (g, _)) = (f32_rows(s1, l1)?, f32_rows(s2, l2)?);
        let mut out = vec![0f32; p.len()];
        for ((pr, gr), or) in p.chunks_exact(n).zip(g.chunks_exact(n)).zip(out.chunks_exact_mut(n)) {
            let dot: f32 = pr.iter().zip(gr).map(|(a, b)| a * b).sum();
            for ((o, &pv), &gv) in or.iter_mut().zip(pr).zip(gr) {
                *o = pv * (gv - dot);
            }
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

const GELU_K: f32 = 0.797_884_6; // sqrt(2/π)
const GELU_C: f32 = 0.044_715;

/// `gelu(x) = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
pub(super) struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "slate-gelu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, _) = f32_rows(s, l)?;
        let out = x.iter().map(|&v| 0.5 * v * (1.0 + (GELU_K * (v + GELU_C * v * v * v)).tanh())).collect();
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &GeluBwd)?))
    }
}

struct GeluBwd;

impl CustomOp2 for GeluBwd {
    fn name(&self) -> &'static str {
        "slate-gelu-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let ((x, _), (g, _)) = (f32_rows(s1, l1)?, f32_rows(s2, l2)?);
        let out = x
            .iter()
            .zip(g)
            .map(|(&v, &gv)| {
                let t = (GELU_K * (v + GELU_C * v * v * v)).tanh();
                gv * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * GELU_K * (1.0 + 3.0 * GELU_C * v * v))
            })
            .collect();
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `(x − mean) / sqrt(var + eps)` per row (biased variance); the affine part stays in autograd.
pub(super) struct Normalize {
    pub(super) eps: f32,
}

impl CustomOp1 for Normalize {
    fn name(&self) -> &'static str {
        "slate-normalize"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, n) = f32_rows(s, l)?;
        let mut out = vec![0f32; x.len()];
        for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            let mean = xr.iter().sum::<f32>() / n as f32;
            let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n as f32;
            let inv = 1.0 / (var + self.eps).sqrt();
            for (o, &v) in or.iter_mut().zip(xr) {
                *o = (v - mean) * inv;
            }
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.contiguous()?.apply_op3_no_bwd(
            &res.contiguous()?,
            &grad.contiguous()?,
            &NormalizeBwd { eps: self.eps },
        )?))
    }
}

/// `dx = (g − mean(g) − x̂·mean(g⊙x̂)) / sqrt(var + eps)`.
struct NormalizeBwd {
    eps: f32,
}

impl CustomOp3 for NormalizeBwd {
    fn name(&self) -> &'static str {
        "slate-normalize-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let ((x, n), (xh, _), (g, _)) = (f32_rows(s1, l1)?, f32_rows(s2, l2)?, f32_rows(s3, l3)?);
        let mut out = vec![0f32; x.len()];
        for (((xr, hr), gr), or) in
            x.chunks_exact(n).zip(xh.chunks_exact(n)).zip(g.chunks_exact(n)).zip(out.chunks_exact_mut(n))
        {
            let mean = xr.iter().sum::<f32>() / n as f32;
            let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n as f32;
            let inv = 1.0 / (var + self.eps).sqrt();
            let mg = gr.iter().sum::<f32>() / n as f32;
            let mgh = gr.iter().zip(hr).map(|(a, b)| a * b).sum::<f32>() / n as f32;
            for ((o, &gv), &hv) in or.iter_mut().zip(gr).zip(hr) {
                *o = (gv - mg - hv * mgh) * inv;
            }
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::graph::normal;
    use candle_core::{Device, Var};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn rand_tensor(rng: &mut StdRng, shape: (usize, usize)) -> Tensor {
        let v: Vec<f32> = (0..shape.0 * shape.1).map(|_| 2.0 * normal(rng)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Value and gradient of `Σ f(x)⊙r` for the fused op and candle's composite reference.
    fn check(
        fused: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
        reference: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    ) {
        let mut rng = StdRng::seed_from_u64(3);
        let x = Var::from_tensor(&rand_tensor(&mut rng, (7, 13))).unwrap();
        let r = rand_tensor(&mut rng, (7, 13));
        let run = |f: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>| {
            let y = f(x.as_tensor()).unwrap();
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            (
                y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                g.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        };
        let (ya, ga) = run(&fused);
        let (yb, gb) = run(&reference);
        for (a, b) in ya.iter().zip(&yb).chain(ga.iter().zip(&gb)) {
            assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn fused_ops_match_candle() {
        check(|x| x.apply_op1(Softmax), |x| candle_nn::ops::softmax(x, 1));
        check(|x| x.apply_op1(Gelu), |x| x.gelu());
        check(
            |x| x.apply_op1(Normalize { eps: 1e-5 }),
            |x| {
                let xc = x.broadcast_sub(&x.mean_keepdim(1)?)?;
                xc.broadcast_div(&(xc.sqr()?.mean_keepdim(1)? + 1e-5)?.sqrt()?)
            },
        );
    }
}
