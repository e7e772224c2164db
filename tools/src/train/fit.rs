//! The training loop: data-parallel AdamW steps over shuffled, length-grouped batches with a linear
//! warm-up and decay of the learning rate, and the worker plumbing it runs on.

use super::batch::{make_batch, Sample};
use super::data::{train_samples, Split};
use super::graph::{bce_with_logits_sum, forward, Weights};
use super::TrainArgs;
use anyhow::{bail, Result};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use slate::ranking::config::RankerConfig;
use std::time::Instant;

/// Training allocates and frees many same-sized multi-MB tensors per step. glibc serves those with
/// fresh `mmap`s (or trims the heap), so every step pays page faults for zeroed pages — a third of the
/// run time here. Keep large blocks in the heap instead. Process-wide; meant for the training command.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(super) fn keep_freed_memory() {
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    // SAFETY: mallopt only sets glibc allocator parameters; it is thread-safe and takes plain ints.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 32 << 20);
        mallopt(M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(super) fn keep_freed_memory() {}

/// Training and evaluation worker threads: `--threads`, or one per CPU for 0.
pub(super) fn workers(args: &TrainArgs) -> usize {
    if args.threads == 0 {
        num_cpus::get().max(1)
    } else {
        args.threads
    }
}

/// `f(0..n)` on `workers` scoped threads (round-robin), results in index order.
pub(super) fn par_map<T: Send>(
    n: usize,
    workers: usize,
    f: impl Fn(usize) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let workers = workers.clamp(1, n.max(1));
    if workers == 1 {
        return (0..n).map(&f).collect();
    }
    let f = &f;
    let per_worker: Vec<Vec<(usize, Result<T>)>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..workers)
            .map(|t| sc.spawn(move || (t..n).step_by(workers).map(|i| (i, f(i))).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().map(|h| h.join().expect("training worker panicked")).collect()
    });
    let mut slots: Vec<Option<Result<T>>> = (0..n).map(|_| None).collect();
    for (i, r) in per_worker.into_iter().flatten() {
        slots[i] = Some(r);
    }
    slots.into_iter().map(|r| r.expect("every index is computed")).collect()
}

/// One epoch's line in metrics.json.
#[derive(Debug, Serialize)]
pub(super) struct EpochLog {
    epoch: usize,
    loss: f64,
    seconds: f64,
    samples: usize,
}

/// Trains from a fresh initialization (`--seed`) for `--epochs` epochs; `after_epoch` sees the weights
/// after each. Returns the weights and the per-epoch log.
pub(super) fn train(
    cfg: &RankerConfig,
    split: &Split,
    args: &TrainArgs,
    mut after_epoch: impl FnMut(&Weights) -> Result<()>,
) -> Result<(Weights, Vec<EpochLog>)> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let w = Weights::init(cfg, &mut rng)?;
    let params = ParamsAdamW { lr: args.lr, weight_decay: args.weight_decay, ..Default::default() };
    let mut opt = AdamW::new(w.all_vars(), params)?;
    let bs = args.batch_size.max(1);
    let n_workers = workers(args);
    // Estimate the step count for the schedule from the first epoch's sample count.
    let mut total_steps = 0usize;
    let mut step = 0usize;
    let mut log = Vec::new();
    for epoch in 0..args.epochs {
        let t0 = Instant::now();
        let mut samples = train_samples(cfg, split, args, &mut rng);
        samples.shuffle(&mut rng);
        // Group samples of similar history length (less padding): sort within chunks of 16 batches.
        for chunk in samples.chunks_mut(bs * 16) {
            chunk.sort_by_key(|s| s.hist.len());
        }
        let mut batches: Vec<&[Sample]> = samples.chunks(bs).collect();
        batches.shuffle(&mut rng);
        if total_steps == 0 {
            total_steps = batches.len() * args.epochs;
        }
        let warmup = (total_steps / 20).clamp(1, 200);
        let (mut loss_sum, mut n) = (0f64, 0usize);
        for chunk in batches {
            let lr = if step < warmup {
                args.lr * (step + 1) as f64 / warmup as f64
            } else {
                let frac = (step - warmup) as f64 / (total_steps.saturating_sub(warmup)).max(1) as f64;
                args.lr * (1.0 - 0.9 * frac.min(1.0))
            };
            opt.set_learning_rate(lr);
            // Data parallel: each worker takes a contiguous shard, backpropagates its share of the
            // batch-mean loss, and the gradients are summed in shard order (deterministic).
            let n_elems = (chunk.len() * chunk[0].cands.len() * cfg.tasks.len()) as f64;
            let shards: Vec<&[Sample]> = chunk.chunks(chunk.len().div_ceil(n_workers)).collect();
            let results = par_map(shards.len(), n_workers, |i| {
                let refs: Vec<&Sample> = shards[i].iter().collect();
                let batch = make_batch(cfg, &refs, true)?;
                let z = forward(cfg, &w, &batch)?;
                let loss_sum = bce_with_logits_sum(&z, batch.labels.as_ref().expect("labels"))?;
                let grads = (&loss_sum / n_elems)?.backward()?;
                Ok((grads, f64::from(loss_sum.to_scalar::<f32>()?)))
            })?;
            let mut results = results.into_iter();
            let (mut grads, mut l) = results.next().expect("at least one shard");
            for (g, li) in results {
                l += li;
                for var in w.vars.values() {
                    if let Some(gi) = g.get(var.as_tensor()) {
                        let sum = match grads.get(var.as_tensor()) {
                            Some(g0) => (g0 + gi)?,
                            None => gi.clone(),
                        };
                        grads.insert(var.as_tensor(), sum);
                    }
                }
            }
            opt.step(&grads)?;
            let l = l / n_elems;
            if !l.is_finite() {
                bail!("training diverged (loss {l}) at epoch {epoch} step {step}; lower --lr");
            }
            loss_sum += l * chunk.len() as f64;
            n += chunk.len();
            step += 1;
        }
        let secs = t0.elapsed().as_secs_f64();
        let loss = loss_sum / n.max(1) as f64;
        println!("epoch {:>2}/{}: loss {loss:.4}  ({n} samples, {secs:.1} s)", epoch + 1, args.epochs);
        log.push(EpochLog { epoch: epoch + 1, loss, seconds: secs, samples: n });
        after_epoch(&w)?;
    }
    Ok((w, log))
}
