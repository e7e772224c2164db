//! Tests of the sampler and its selections (against sorting the whole vocabulary) and of the
//! parameter validation.

use super::select::{argmax, desc, key, max_key, top_k, SCAN_MAX_K};
use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
    let mut p = SamplingParams::default();
    f(&mut p);
    p
}

/// A peaked but wide distribution over a 49152-token vocabulary.
fn logits(seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..49152).map(|_| rng.random::<f32>() * 8.0 - 4.0).collect()
}

#[test]
fn greedy_is_argmax_with_lowest_id_on_ties() {
    let mut s = Sampler::new(&params(|p| p.temperature = 0.0));
    assert_eq!(s.sample(&mut [0.1, 3.0, -1.0, 3.0]).token, 1);
    let mut l = logits(1);
    let want = l.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32;
    assert_eq!(s.sample(&mut l).token, want);
    // NaN is never chosen.
    assert_eq!(s.sample(&mut [f32::NAN, -5.0]).token, 1);
    // A temperature too small to invert is greedy too.
    let mut s = Sampler::new(&params(|p| p.temperature = 1e-45));
    assert_eq!(s.sample(&mut [0.1, 3.0, -1.0]).token, 1);
}

#[test]
fn vectorized_argmax_equals_the_plain_scan() {
    // The definition: first strict improvement over −∞, NaN never wins.
    fn scan(l: &[f32]) -> u32 {
        let (mut best, mut best_v) = (0, f32::NEG_INFINITY);
        for (i, &x) in l.iter().enumerate() {
            if key(x) > best_v {
                (best, best_v) = (i, x);
            }
        }
        best as u32
    }
    let mut rng = StdRng::seed_from_u64(7);
    for n in [1, 2, 7, 8, 9, 15, 16, 17, 63, 1000, 49152] {
        for _ in 0..20 {
            // Few distinct values, so ties are common; some NaN and −∞.
            let l: Vec<f32> = (0..n)
                .map(|_| match rng.random_range(0..10) {
                    0 => f32::NAN,
                    1 => f32::NEG_INFINITY,
                    _ => rng.random_range(-4..4) as f32,
                })
                .collect();
            assert_eq!(argmax(&l), scan(&l), "n = {n}");
        }
    }
    assert_eq!(argmax(&[f32::NAN, f32::NEG_INFINITY, f32::NAN]), 0);
    assert_eq!(argmax(&[f32::NEG_INFINITY; 11]), 0);
}

#[test]
fn same_seed_same_tokens() {
    let p = params(|p| {
        p.seed = Some(42);
        p.top_p = 0.9;
    });
    let run = |p: &SamplingParams| {
        let mut s = Sampler::new(p);
        (0..20).map(|i| s.sample(&mut logits(i)).token).collect::<Vec<_>>()
    };
    let a = run(&p);
    assert_eq!(a, run(&p));
    assert_ne!(a, run(&params(|q| q.seed = Some(43))));
    assert_eq!(Sampler::new(&p).seed(), 42);
}

#[test]
fn top_k_restricts_support() {
    let l = logits(7);
    let mut order: Vec<u32> = (0..l.len() as u32).collect();
    order.sort_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]));
    let top5: Vec<u32> = order[..5].to_vec();
    let mut s = Sampler::new(&params(|p| {
        p.top_k = 5;
        p.temperature = 5.0;
        p.seed = Some(1);
    }));
    let mut seen = std::collections::HashSet::new();
    for _ in 0..500 {
        let t = s.sample(&mut l.clone()).token;
        assert!(top5.contains(&t), "{t} not in top-5");
        seen.insert(t);
    }
    assert_eq!(seen.len(), 5, "a hot temperature should reach all five");

    // Past the scan's k, the selection path keeps the same support.
    let top100: std::collections::HashSet<u32> = order[..100].iter().copied().collect();
    let mut s = Sampler::new(&params(|p| {
        p.top_k = 100;
        p.temperature = 50.0;
        p.seed = Some(2);
    }));
    let mut seen = std::collections::HashSet::new();
    for _ in 0..2000 {
        let t = s.sample(&mut l.clone()).token;
        assert!(top100.contains(&t), "{t} not in top-100");
        seen.insert(t);
    }
    assert!(seen.len() > 90, "a hot temperature should reach most of the 100, got {}", seen.len());
}

#[test]
fn top_p_restricts_support() {
    // Probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.7 keeps the first two.
    let base: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
    let mut s = Sampler::new(&params(|p| {
        p.top_p = 0.7;
        p.seed = Some(3);
    }));
    let mut counts = [0u32; 4];
    for _ in 0..2000 {
        counts[s.sample(&mut base.clone()).token as usize] += 1;
    }
    assert_eq!(counts[2] + counts[3], 0, "{counts:?}");
    // Renormalized 0.625 / 0.375.
    let frac = counts[0] as f64 / 2000.0;
    assert!((frac - 0.625).abs() < 0.05, "{counts:?}");

    // A wide vocabulary needs the growing head: the nucleus is larger than 64 tokens.
    let l = logits(9);
    let mut order: Vec<u32> = (0..l.len() as u32).collect();
    order.sort_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]));
    let probs: Vec<f64> = {
        let m = l.iter().cloned().fold(f32::MIN, f32::max);
        let w: Vec<f64> = l.iter().map(|&x| ((x - m) as f64).exp()).collect();
        let t: f64 = w.iter().sum();
        w.into_iter().map(|x| x / t).collect()
    };
    let mut cum = 0.0;
    let nucleus = order.iter().take_while(|&&i| {
        let before = cum;
        cum += probs[i as usize];
        before < 0.5
    });
    let nucleus: std::collections::HashSet<u32> = nucleus.copied().collect();
    assert!(nucleus.len() > 1000);
    let mut s = Sampler::new(&params(|p| {
        p.top_p = 0.5;
        p.seed = Some(5);
    }));
    for _ in 0..200 {
        let t = s.sample(&mut l.clone()).token;
        assert!(nucleus.contains(&t), "{t} outside the nucleus");
    }
}

#[test]
fn top_k_equals_sorting_everything() {
    let mut rng = StdRng::seed_from_u64(5);
    for v in [1usize, 2, 40, 41, 64, 65, 1000, 49152] {
        // Both paths (the scan up to SCAN_MAX_K, the selection above), up to k = the vocabulary.
        for k in [1usize, 2, 40, SCAN_MAX_K, SCAN_MAX_K + 1, 1000, v.saturating_sub(1).max(1), v, v + 3] {
            // Coarse values (many ties), some NaN and −∞.
            let logits: Vec<f32> = (0..v)
                .map(|_| match rng.random_range(0..20) {
                    0 => f32::NAN,
                    1 => f32::NEG_INFINITY,
                    _ => rng.random_range(-20..20) as f32 * 0.5,
                })
                .collect();
            let mut want: Vec<u32> = (0..v as u32).collect();
            want.sort_by(|&a, &b| desc(&logits, a, b));
            want.truncate(k);
            let mut got = Vec::new();
            top_k(&logits, k, &mut Vec::new(), &mut got);
            assert_eq!(got, want, "v = {v}, k = {k}");
        }
    }
}

#[test]
fn top_p_candidates_are_the_sorted_nucleus() {
    // After a draw, the candidates left are exactly the shortest most-likely-first prefix holding
    // top_p of the weight, computed here by sorting the whole vocabulary.
    let mut rng = StdRng::seed_from_u64(11);
    for (v, top_p, temp) in
        [(49152, 0.9, 0.7), (49152, 0.5, 1.0), (1000, 0.99, 1.3), (37, 0.3, 1.0), (5, 0.999, 0.1)]
    {
        let mut logits: Vec<f32> = (0..v).map(|_| rng.random_range(-6.0..6.0f32)).collect();
        logits[v / 2] = f32::NAN;
        logits[v / 3] = f32::NEG_INFINITY;
        let mut s = Sampler::new(&params(|p| {
            p.top_p = top_p;
            p.temperature = temp;
            p.seed = Some(3);
        }));
        let tok = s.draw(&logits);
        let max = max_key(&logits);
        let w = |i: usize| if logits[i].is_nan() { 0.0 } else { (((logits[i] - max) / temp) as f64).exp() };
        let mut order: Vec<usize> = (0..v).collect();
        order.sort_by(|&a, &b| desc(&logits, a as u32, b as u32));
        let total: f64 = (0..v).map(w).sum();
        let mut cum = 0.0;
        let cut = order.iter().position(|&i| {
            cum += w(i);
            cum >= top_p as f64 * total
        });
        let want: Vec<u32> = order[..=cut.unwrap()].iter().map(|&i| i as u32).collect();
        assert_eq!(s.idx, want, "v = {v}, top_p = {top_p}");
        assert!(want.contains(&tok));
    }
}

/// Cost of one `sample` over SmolLM2's vocabulary (49,152) per parameter set:
/// `cargo test --release --lib slm::sampling::tests::timings -- --ignored --nocapture`.
#[test]
#[ignore]
fn timings() {
    let mut rng = StdRng::seed_from_u64(1);
    // Peaked like a language model's: a few likely tokens, a long tail.
    let logits: Vec<f32> =
        (0..49152).map(|i| rng.random_range(-8.0..2.0f32) + if i % 977 == 0 { 12.0 } else { 0.0 }).collect();
    type Set = (&'static str, fn(&mut SamplingParams));
    let sets: [Set; 7] = [
        ("greedy", |p| p.temperature = 0.0),
        ("greedy + logprobs", |p| {
            p.temperature = 0.0;
            p.logprobs = true;
        }),
        ("temperature 1", |_| {}),
        ("temperature 0.7, top_p 0.9", |p| {
            p.temperature = 0.7;
            p.top_p = 0.9;
        }),
        ("top_k 40", |p| p.top_k = 40),
        ("top_k 1000", |p| p.top_k = 1000),
        ("top_k 49151", |p| p.top_k = 49151),
    ];
    for (what, f) in sets {
        let mut s = Sampler::new(&params(f));
        let reps = 2000;
        let mut l = logits.clone();
        let t = std::time::Instant::now();
        for _ in 0..reps {
            l.copy_from_slice(&logits);
            std::hint::black_box(s.sample(&mut l));
        }
        println!("{what:<28} {:>8.1} µs per token", t.elapsed().as_secs_f64() * 1e6 / reps as f64);
    }
}

#[test]
fn penalties_change_the_choice() {
    let base = [2.0f32, 1.5, 0.0];
    let mut plain = Sampler::new(&params(|p| p.temperature = 0.0));
    assert_eq!(plain.sample(&mut base.clone()).token, 0);
    assert_eq!(plain.sample(&mut base.clone()).token, 0);

    // presence: 2.0 - 1.0 < 1.5 after the first pick.
    let mut s = Sampler::new(&params(|p| {
        p.temperature = 0.0;
        p.presence_penalty = 1.0;
    }));
    assert_eq!(s.sample(&mut base.clone()).token, 0);
    assert_eq!(s.sample(&mut base.clone()).token, 1);
    // Both were used once now: 1.0 vs 0.5 vs 0.0.
    assert_eq!(s.sample(&mut base.clone()).token, 0);

    // frequency grows with the count: 2.0 - 0.3n.
    let mut s = Sampler::new(&params(|p| {
        p.temperature = 0.0;
        p.frequency_penalty = 0.3;
    }));
    let picks: Vec<u32> = (0..4).map(|_| s.sample(&mut base.clone()).token).collect();
    assert_eq!(picks, vec![0, 0, 1, 0]);

    // Negative penalties encourage repetition.
    let mut s = Sampler::new(&params(|p| {
        p.temperature = 0.0;
        p.presence_penalty = -1.0;
    }));
    assert_eq!(s.sample(&mut [1.0, 1.5]).token, 1);
    assert_eq!(s.sample(&mut [2.0, 1.5]).token, 1);
}

#[test]
fn logprobs_are_raw_log_softmax() {
    let raw = [1.0f32, 3.0, 2.0, -1.0];
    let lse = raw.iter().map(|x| x.exp()).sum::<f32>().ln();
    let mut s = Sampler::new(&params(|p| {
        p.temperature = 0.0;
        p.presence_penalty = 2.0;
        p.logprobs = true;
        p.top_logprobs = 3;
    }));
    let a = s.sample(&mut raw.clone());
    assert_eq!(a.token, 1);
    assert!((a.logprob.unwrap() - (3.0 - lse)).abs() < 1e-5);
    let ids: Vec<u32> = a.top_logprobs.iter().map(|x| x.0).collect();
    assert_eq!(ids, vec![1, 2, 0]);
    for (id, lp) in &a.top_logprobs {
        assert!((lp - (raw[*id as usize] - lse)).abs() < 1e-5);
    }
    // The second pick is penalized (3 - 2 < 2) but its logprob is still of the raw logits.
    let b = s.sample(&mut raw.clone());
    assert_eq!(b.token, 2);
    assert!((b.logprob.unwrap() - (2.0 - lse)).abs() < 1e-5);
    assert_eq!(b.top_logprobs[0].0, 1);

    // Over a full vocabulary the probabilities sum to 1.
    let mut s = Sampler::new(&params(|p| {
        p.logprobs = true;
        p.top_logprobs = 20;
        p.seed = Some(1);
    }));
    let mut l = logits(3);
    let raw = l.clone();
    let out = s.sample(&mut l);
    let m = raw.iter().cloned().fold(f32::MIN, f32::max);
    let lse = m + raw.iter().map(|x| ((x - m) as f64).exp()).sum::<f64>().ln() as f32;
    let total: f64 = raw.iter().map(|x| ((x - lse) as f64).exp()).sum();
    assert!((total - 1.0).abs() < 1e-4);
    assert!((out.logprob.unwrap() - (raw[out.token as usize] - lse)).abs() < 1e-4);
    assert_eq!(out.top_logprobs.len(), 20);
    assert!(out.top_logprobs.windows(2).all(|w| w[0].1 >= w[1].1));
    let best = raw.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32;
    assert_eq!(out.top_logprobs[0].0, best);

    // Not requested: no list and no logprob.
    let mut s = Sampler::new(&params(|p| p.temperature = 0.0));
    let out = s.sample(&mut [0.0, 1.0]);
    assert!(out.top_logprobs.is_empty() && out.logprob.is_none());
}

#[test]
fn validate_names_the_field() {
    assert!(SamplingParams::default().validate().is_ok());
    let cases: Vec<(SamplingParams, &str)> = vec![
        (params(|p| p.temperature = -0.1), "temperature"),
        (params(|p| p.temperature = f32::NAN), "temperature"),
        (params(|p| p.temperature = f32::INFINITY), "temperature"),
        (params(|p| p.top_p = 0.0), "top_p"),
        (params(|p| p.top_p = 1.01), "top_p"),
        (params(|p| p.top_p = f32::NAN), "top_p"),
        (params(|p| p.frequency_penalty = 2.5), "frequency_penalty"),
        (params(|p| p.presence_penalty = -2.01), "presence_penalty"),
        (params(|p| p.presence_penalty = f32::NAN), "presence_penalty"),
        (
            params(|p| {
                p.logprobs = true;
                p.top_logprobs = 21;
            }),
            "top_logprobs",
        ),
        (params(|p| p.top_logprobs = 2), "top_logprobs"),
    ];
    for (p, field) in cases {
        let e = p.validate().unwrap_err();
        assert_eq!(e.http_status().as_u16(), 422);
        assert!(e.to_string().starts_with(&format!("{field}: ")), "{e}");
    }
    assert!(params(|p| {
        p.temperature = 0.0;
        p.top_p = 1.0;
        p.frequency_penalty = -2.0;
        p.presence_penalty = 2.0;
        p.logprobs = true;
        p.top_logprobs = 20;
    })
    .validate()
    .is_ok());
}
