//! Selecting candidate tokens from logits without sorting the vocabulary: the argmax for greedy
//! decoding, the top-k by one scan (small k) or a selection (large k), and the top-p nucleus by
//! sorting a growing head.

use std::cmp::Ordering;

/// Logit ordering key: NaN counts as -inf, so a broken logit is never chosen over a real one.
#[inline]
pub(super) fn key(x: f32) -> f32 {
    if x.is_nan() {
        f32::NEG_INFINITY
    } else {
        x
    }
}

/// Descending by logit, ties by ascending id: a total order, so selections are deterministic.
#[inline]
pub(super) fn desc(logits: &[f32], a: u32, b: u32) -> Ordering {
    key(logits[b as usize]).total_cmp(&key(logits[a as usize])).then(a.cmp(&b))
}

/// Index of the largest logit, lowest id on ties.
pub(super) fn argmax(logits: &[f32]) -> u32 {
    let max = max_key(logits);
    if max == f32::NEG_INFINITY {
        // Nothing beats −∞ (all −∞ or NaN): the first id, as a strict-improvement scan gives.
        return 0;
    }
    logits.iter().position(|&x| x == max).expect("the maximum is one of the logits") as u32
}

/// The largest logit, NaN counted as −∞. Eight independent lane maxima, so the compiler vectorizes
/// the scan (a decode step runs it over the whole vocabulary once per sequence).
pub(super) fn max_key(logits: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = logits.chunks_exact(8);
    let rest = chunks.remainder();
    for ch in chunks {
        for (m, &x) in lanes.iter_mut().zip(ch) {
            // `x > m` is false for NaN: NaN never wins, as if it were −∞.
            if x > *m {
                *m = x;
            }
        }
    }
    lanes.iter().chain(rest).fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// Largest `k` [`top_k`] serves with its one-scan buffer; larger ones select over the vocabulary.
pub(super) const SCAN_MAX_K: usize = 64;

/// The `k` most likely token ids, most likely first (the [`desc`] order: ties by lower id), into
/// `out`. For `k` ≤ [`SCAN_MAX_K`], one scan keeping a sorted buffer of the best `k` so far: most
/// logits lose to the buffer's last entry at once, so this costs about one comparison per token (a
/// selection over the whole vocabulary costs several), and an insertion moves at most `k` entries.
/// For larger `k` (up to the whole vocabulary), where insertions would cost O(k) each and O(vocab·k)
/// in all: a selection over all ids in `out` (O(vocab)), then a sort of the `k` kept (O(k log k)).
/// `best` is scratch; `out` is reused (both kept by the sampler, so steady-state decoding does not
/// allocate).
pub(super) fn top_k(logits: &[f32], k: usize, best: &mut Vec<(f32, u32)>, out: &mut Vec<u32>) {
    out.clear();
    if k > SCAN_MAX_K {
        out.extend(0..logits.len() as u32);
        if k < out.len() {
            out.select_nth_unstable_by(k - 1, |&a, &b| desc(logits, a, b));
            out.truncate(k);
        }
        out.sort_unstable_by(|&a, &b| desc(logits, a, b));
        return;
    }
    best.clear();
    best.reserve(k + 1);
    for (i, &x) in logits.iter().enumerate() {
        let x = key(x);
        // Ids arrive in increasing order, so an equal logit ranks below every entry already kept.
        if best.len() == k && x <= best[k - 1].0 {
            continue;
        }
        let at = best.partition_point(|&(b, _)| b >= x);
        best.insert(at, (x, i as u32));
        best.truncate(k);
    }
    out.extend(best.iter().map(|&(_, i)| i));
}

/// Sorts the heaviest candidates of `idx` (most likely first) until they hold `target` of the
/// weight, truncates `idx` to them and returns their weight; `None` (with `idx` reordered but whole)
/// when all of `idx` is short of the target. Sorts a head of the candidates, growing it as needed:
/// LLM distributions are peaked, so a few dozen tokens usually suffice.
pub(super) fn nucleus(idx: &mut Vec<u32>, logits: &[f32], weights: &[f32], target: f64) -> Option<f64> {
    let len = idx.len();
    let mut head = 64.min(len);
    loop {
        if head < len {
            idx.select_nth_unstable_by(head - 1, |&a, &b| desc(logits, a, b));
        }
        idx[..head].sort_unstable_by(|&a, &b| desc(logits, a, b));
        let mut cum = 0.0f64;
        let cut = idx[..head].iter().position(|&i| {
            cum += weights[i as usize] as f64;
            cum >= target
        });
        match cut {
            Some(pos) => {
                idx.truncate(pos + 1);
                return Some(cum);
            }
            None if head == len => return None,
            None => head = (head * 4).min(len),
        }
    }
}
