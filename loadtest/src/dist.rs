//! Sampling: the value distributions scenarios use (history length, candidate count, prompt length…)
//! and a Zipf sampler for member ids, so the history cache sees a realistic mix of hot and cold members.

use rand::Rng;
use serde::Deserialize;

/// A distribution of non-negative integers, written in scenario TOML as one of
/// `{ fixed = 256 }`, `{ uniform = { min = 10, max = 300 } }`,
/// `{ lognormal = { median = 100, sigma = 0.8, min = 1, max = 1000 } }` or
/// `{ weighted = { values = [64, 256], weights = [3, 1] } }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Dist {
    Fixed(u64),
    Uniform(UniformDist),
    Lognormal(LognormalDist),
    Weighted(WeightedDist),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UniformDist {
    pub min: u64,
    pub max: u64,
}

/// Log-normal with the given median and shape `sigma`, rounded and clamped to `[min, max]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LognormalDist {
    pub median: f64,
    pub sigma: f64,
    pub min: u64,
    pub max: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedDist {
    pub values: Vec<u64>,
    pub weights: Vec<f64>,
}

impl Dist {
    /// Checks the parameters; `what` names the scenario key in messages.
    pub fn validate(&self, what: &str) -> Result<(), String> {
        match self {
            Dist::Fixed(_) => Ok(()),
            Dist::Uniform(u) if u.min > u.max => {
                Err(format!("{what}: uniform min {} > max {}", u.min, u.max))
            }
            Dist::Uniform(_) => Ok(()),
            Dist::Lognormal(l) => {
                if !(l.median.is_finite() && l.median > 0.0) {
                    return Err(format!("{what}: lognormal median must be > 0"));
                }
                if !(l.sigma.is_finite() && l.sigma >= 0.0) {
                    return Err(format!("{what}: lognormal sigma must be ≥ 0"));
                }
                if l.min > l.max {
                    return Err(format!("{what}: lognormal min {} > max {}", l.min, l.max));
                }
                Ok(())
            }
            Dist::Weighted(w) => {
                if w.values.is_empty() || w.values.len() != w.weights.len() {
                    return Err(format!("{what}: weighted needs as many weights as values (at least one)"));
                }
                weights_ok(&w.weights).map_err(|e| format!("{what}: {e}"))
            }
        }
    }

    /// The largest value this distribution can produce.
    pub fn max(&self) -> u64 {
        match self {
            Dist::Fixed(v) => *v,
            Dist::Uniform(u) => u.max,
            Dist::Lognormal(l) => l.max,
            Dist::Weighted(w) => w.values.iter().copied().max().unwrap_or(0),
        }
    }

    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        match self {
            Dist::Fixed(v) => *v,
            Dist::Uniform(u) => rng.random_range(u.min..=u.max),
            Dist::Lognormal(l) => {
                let v = l.median * (l.sigma * standard_normal(rng)).exp();
                (v.round().max(0.0) as u64).clamp(l.min, l.max)
            }
            Dist::Weighted(w) => w.values[weighted_index(&w.weights, rng)],
        }
    }
}

/// Weights must be finite, non-negative and not all zero.
pub fn weights_ok(weights: &[f64]) -> Result<(), String> {
    if weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) {
        return Err("weights must be finite and ≥ 0".into());
    }
    if weights.iter().sum::<f64>() <= 0.0 {
        return Err("weights must not all be 0".into());
    }
    Ok(())
}

/// An index drawn with probability proportional to `weights` (validated by [`weights_ok`]).
pub fn weighted_index<R: Rng + ?Sized>(weights: &[f64], rng: &mut R) -> usize {
    let total: f64 = weights.iter().sum();
    let mut x = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    // Rounding can leave x a hair above the last weight; the last non-zero one is the answer.
    weights.iter().rposition(|w| *w > 0.0).expect("weights were validated; this is a bug")
}

/// A standard normal variate (Box–Muller).
pub fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Zipf over ranks `1..=n`: P(k) ∝ k^-s. `s = 0` is uniform. Rejection-inversion (Hörmann and
/// Derflinger, "Rejection-inversion to generate variates from monotone discrete distributions", 1996):
/// O(1) per sample and no table, so `n` can be millions of members.
#[derive(Debug, Clone)]
pub struct Zipf {
    n: u64,
    s: f64,
    h_integral_x1: f64,
    h_integral_n: f64,
    squeeze: f64,
}

impl Zipf {
    pub fn new(n: u64, s: f64) -> Result<Zipf, String> {
        if n == 0 {
            return Err("zipf: n must be ≥ 1".into());
        }
        if !(s.is_finite() && s >= 0.0) {
            return Err(format!("zipf: exponent must be finite and ≥ 0, got {s}"));
        }
        let mut z = Zipf { n, s, h_integral_x1: 0.0, h_integral_n: 0.0, squeeze: 0.0 };
        z.h_integral_x1 = z.h_integral(1.5) - 1.0;
        z.h_integral_n = z.h_integral(n as f64 + 0.5);
        z.squeeze = 2.0 - z.h_integral_inv(z.h_integral(2.5) - z.h(2.0));
        Ok(z)
    }

    pub fn n(&self) -> u64 {
        self.n
    }

    /// A rank in `1..=n`.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        if self.s == 0.0 {
            return rng.random_range(1..=self.n);
        }
        loop {
            let u = self.h_integral_n + rng.random::<f64>() * (self.h_integral_x1 - self.h_integral_n);
            let x = self.h_integral_inv(u);
            let k = ((x + 0.5) as u64).clamp(1, self.n);
            let kf = k as f64;
            if kf - x <= self.squeeze || u >= self.h_integral(kf + 0.5) - self.h(kf) {
                return k;
            }
        }
    }

    /// Exact probability of rank `k` (for tests and reports): k^-s / Σ j^-s.
    pub fn pmf(&self, k: u64) -> f64 {
        let norm: f64 = (1..=self.n).map(|j| (j as f64).powf(-self.s)).sum();
        (k as f64).powf(-self.s) / norm
    }

    fn h(&self, x: f64) -> f64 {
        (-self.s * x.ln()).exp()
    }

    /// ∫ h: (x^(1-s) - 1) / (1 - s), continuous at s = 1 (ln x).
    fn h_integral(&self, x: f64) -> f64 {
        let lx = x.ln();
        helper_expm1_over_x((1.0 - self.s) * lx) * lx
    }

    fn h_integral_inv(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.s)).max(-1.0);
        (helper_ln1p_over_x(t) * x).exp()
    }
}

/// ln(1 + x) / x, accurate near 0.
fn helper_ln1p_over_x(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// (e^x - 1) / x, accurate near 0.
fn helper_expm1_over_x(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// Empirical frequencies of the first ranks match the exact pmf (4σ binomial tolerance).
    fn check_zipf(n: u64, s: f64) {
        let z = Zipf::new(n, s).unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let draws = 200_000;
        let mut counts = vec![0u64; n as usize + 1];
        for _ in 0..draws {
            let k = z.sample(&mut rng);
            assert!((1..=n).contains(&k), "rank {k} outside 1..={n}");
            counts[k as usize] += 1;
        }
        for k in [1, 2, 3, 5, 10, n / 2, n] {
            let p = z.pmf(k);
            let expected = p * draws as f64;
            let sd = (draws as f64 * p * (1.0 - p)).sqrt();
            let got = counts[k as usize] as f64;
            assert!(
                (got - expected).abs() <= 4.0 * sd + 2.0,
                "n={n} s={s} rank {k}: got {got}, expected {expected:.1} ± {sd:.1}"
            );
        }
    }

    #[test]
    fn zipf_matches_its_pmf() {
        check_zipf(1000, 1.1);
        check_zipf(1000, 1.0); // the s = 1 special case of the integral
        check_zipf(100, 0.6);
        check_zipf(50, 2.5);
    }

    #[test]
    fn zipf_zero_exponent_is_uniform_and_one_element_is_constant() {
        check_zipf(20, 0.0);
        let z = Zipf::new(1, 1.2).unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        assert!((0..1000).all(|_| z.sample(&mut rng) == 1));
    }

    #[test]
    fn zipf_rejects_bad_parameters() {
        assert!(Zipf::new(0, 1.0).is_err());
        assert!(Zipf::new(10, -1.0).is_err());
        assert!(Zipf::new(10, f64::NAN).is_err());
    }

    #[test]
    fn zipf_is_skewed_the_right_way() {
        // With s = 1.2 over a million members, the top 1% of members get well over half the draws.
        let z = Zipf::new(1_000_000, 1.2).unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        let top = (0..100_000).filter(|_| z.sample(&mut rng) <= 10_000).count();
        assert!(top > 60_000, "top 1% got {top} of 100000");
    }

    #[test]
    fn distributions_stay_in_range() {
        let mut rng = StdRng::seed_from_u64(5);
        let d = Dist::Lognormal(LognormalDist { median: 100.0, sigma: 0.8, min: 10, max: 400 });
        let xs: Vec<u64> = (0..20_000).map(|_| d.sample(&mut rng)).collect();
        assert!(xs.iter().all(|x| (10..=400).contains(x)));
        let mut sorted = xs.clone();
        sorted.sort_unstable();
        let median = sorted[sorted.len() / 2];
        assert!((90..=110).contains(&median), "median {median}");

        let d = Dist::Uniform(UniformDist { min: 3, max: 5 });
        assert!((0..1000).map(|_| d.sample(&mut rng)).all(|x| (3..=5).contains(&x)));

        let d = Dist::Weighted(WeightedDist { values: vec![1, 2], weights: vec![0.0, 1.0] });
        assert!((0..1000).all(|_| d.sample(&mut rng) == 2));
        assert_eq!(Dist::Fixed(9).sample(&mut rng), 9);
    }

    #[test]
    fn bad_distributions_are_named() {
        let e = Dist::Uniform(UniformDist { min: 5, max: 3 }).validate("ranking.history_len").unwrap_err();
        assert!(e.starts_with("ranking.history_len: "), "{e}");
        let e = Dist::Weighted(WeightedDist { values: vec![1], weights: vec![] }).validate("x").unwrap_err();
        assert!(e.contains("weights"), "{e}");
        let e =
            Dist::Weighted(WeightedDist { values: vec![1], weights: vec![0.0] }).validate("x").unwrap_err();
        assert!(e.contains("not all be 0"), "{e}");
    }
}
