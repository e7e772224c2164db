//! One engine step: plan the step's work (one decode token per decoding sequence, then prefill
//! chunks and label passes in admission order, under `max_step_tokens`), run the model once over all
//! of it, then sample and stream each generation's next token and answer finished scoring requests.

use super::api::{FinishReason, GenEvent, ScoreResult, TokenLogprob, Usage};
use super::engine::Engine;
use super::job::{GenState, Seq, SeqKind};
use crate::metrics;
use crate::slm::kv::SeqKv;
use crate::slm::model::{Chunk, Want};
use crate::slm::scoring;
use crate::slm::tokenizer::SlmTokenizer;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// What a step runs for one running sequence (by its index in `running`).
enum Plan {
    /// Its tokens `start..end`, wanting the logits of `Want`.
    Tokens(usize, usize, Want),
    /// Every label of a scoring request, each on its own fork of the prompt's cache.
    Labels,
}

/// Whose logits a forward output row is: the running index, and the label index for label passes.
type Owner = (usize, Option<usize>);

impl Engine {
    /// Builds and runs one step.
    pub(super) fn step(&mut self) -> std::result::Result<(), String> {
        if self.running.is_empty() {
            return Ok(());
        }
        let plan = self.plan();
        if plan.is_empty() {
            return Ok(());
        }
        // Label passes fork the prompt's cache once per label.
        let mut forks = self.fork_labels(&plan);
        let started = Instant::now();
        let (outputs, step_tokens, prompt_tokens) = self.forward(&plan, &mut forks);
        drop(forks);
        metrics::slm_step(&self.name, plan.len(), step_tokens, prompt_tokens, started.elapsed());
        self.stats.steps.fetch_add(1, Ordering::AcqRel);

        // Results: sample generations, finish prompt passes and label passes.
        let now = Instant::now();
        let mut done: Vec<usize> = Vec::new();
        let label_rows = self.take_outputs(outputs, now, &mut done);
        self.answer_labels(label_rows, now, &mut done);
        done.sort_unstable();
        for i in done.into_iter().rev() {
            let s = self.running.remove(i);
            self.budget.release(s.reserve);
        }
        Ok(())
    }

    /// Decodes first (one token each), then prefill chunks and label passes in admission order,
    /// within `max_step_tokens`.
    fn plan(&self) -> Vec<(usize, Plan)> {
        let mut left = self.settings.max_step_tokens;
        let mut plan: Vec<(usize, Plan)> = Vec::new();
        for (i, s) in self.running.iter().enumerate() {
            if s.pending() == 1 && matches!(s.kind, SeqKind::Gen(_)) && left > 0 {
                let a = s.tokens.len() - 1;
                plan.push((i, Plan::Tokens(a, a + 1, Want::Last)));
                left -= 1;
            }
        }
        for (i, s) in self.running.iter().enumerate() {
            if left == 0 {
                break;
            }
            let pending = s.pending();
            if let SeqKind::Score(st) = &s.kind {
                if pending == 0 && st.first.is_some() {
                    // All labels run in one step, even past the budget: deferring them could starve
                    // the request behind a steady stream of decodes, and labels are short.
                    let total: usize = st.labels.iter().map(Vec::len).sum();
                    plan.push((i, Plan::Labels));
                    left = left.saturating_sub(total);
                    continue;
                }
            }
            if pending > 1 || (pending == 1 && matches!(s.kind, SeqKind::Score(_))) {
                let a = s.kv.as_ref().map_or(0, |k| k.len());
                let n = pending.min(left);
                let want = if a + n == s.tokens.len() { Want::Last } else { Want::None };
                plan.push((i, Plan::Tokens(a, a + n, want)));
                left -= n;
            }
        }
        plan
    }

    /// For each label plan, one fork of the prompt's cache per label (sized for prompt + label).
    fn fork_labels(&self, plan: &[(usize, Plan)]) -> Vec<(usize, Vec<SeqKv>)> {
        let mut forks: Vec<(usize, Vec<SeqKv>)> = Vec::new();
        for (i, p) in plan {
            if let Plan::Labels = p {
                let s = &self.running[*i];
                let SeqKind::Score(st) = &s.kind else { unreachable!() };
                let kv = s.kv.as_ref().expect("running sequences have a cache");
                let fk = st.labels.iter().map(|l| kv.fork(kv.len() + l.len())).collect();
                forks.push((*i, fk));
            }
        }
        forks
    }

    /// Runs the model once over the planned chunks (on the compute pool). Returns each output row
    /// with its owner, and the step's tokens and prompt tokens (for the metrics).
    fn forward(
        &mut self,
        plan: &[(usize, Plan)],
        forks: &mut [(usize, Vec<SeqKv>)],
    ) -> (Vec<(Owner, Vec<f32>)>, usize, usize) {
        let mut step_tokens = 0;
        let mut prompt_tokens = 0;
        let mut chunks: Vec<Chunk> = Vec::new();
        let mut owners: Vec<Owner> = Vec::new();
        let mut fork_iter = forks.iter_mut();
        let mut by_index: Vec<Option<&mut Seq>> = self.running.iter_mut().map(Some).collect();
        for (i, p) in plan {
            match p {
                Plan::Tokens(a, b, want) => {
                    let s = by_index[*i].take().expect("one plan entry per sequence");
                    step_tokens += b - a;
                    prompt_tokens += s.prompt_len.saturating_sub(*a).min(b - a);
                    chunks.push(Chunk {
                        kv: s.kv.as_mut().expect("running sequences have a cache"),
                        tokens: &s.tokens[*a..*b],
                        want: *want,
                    });
                    owners.push((*i, None));
                }
                Plan::Labels => {
                    let s = by_index[*i].take().expect("one plan entry per sequence");
                    let SeqKind::Score(st) = &s.kind else { unreachable!() };
                    let (_, fk) = fork_iter.next().expect("a fork per label plan");
                    for (li, (kv, label)) in fk.iter_mut().zip(&st.labels).enumerate() {
                        step_tokens += label.len();
                        chunks.push(Chunk { kv, tokens: label, want: Want::All });
                        owners.push((*i, Some(li)));
                    }
                }
            }
        }
        let (model, scratch) = (&self.model, &mut self.scratch);
        let out = self.pool.install(|| model.forward(&mut chunks, scratch));
        (owners.into_iter().zip(out).collect(), step_tokens, prompt_tokens)
    }

    /// Samples and streams the generations' next tokens and keeps prefilled scoring prompts' logits;
    /// finished generations go to `done`. Returns the label rows, for [`Self::answer_labels`].
    fn take_outputs(
        &mut self,
        outputs: Vec<(Owner, Vec<f32>)>,
        now: Instant,
        done: &mut Vec<usize>,
    ) -> Vec<(usize, usize, Vec<f32>)> {
        let mut label_rows: Vec<(usize, usize, Vec<f32>)> = Vec::new();
        for ((i, label), logits) in outputs {
            if let Some(li) = label {
                label_rows.push((i, li, logits));
                continue;
            }
            if logits.is_empty() {
                continue;
            }
            let s = &mut self.running[i];
            match &mut s.kind {
                SeqKind::Score(st) => st.first = Some(logits),
                SeqKind::Gen(g) => {
                    let mut logits = logits;
                    let ctx = (self.context_length, s.arrived, now);
                    if emit_token(&self.name, &self.tok, &mut s.tokens, g, &mut logits, ctx) {
                        done.push(i);
                    }
                }
            }
        }
        label_rows
    }

    /// Scores the labels of each scoring request whose label passes ran, answers it and marks it
    /// done.
    fn answer_labels(
        &mut self,
        mut label_rows: Vec<(usize, usize, Vec<f32>)>,
        now: Instant,
        done: &mut Vec<usize>,
    ) {
        if label_rows.is_empty() {
            return;
        }
        let vocab = self.model.config().vocab;
        label_rows.sort_by_key(|(i, li, _)| (*i, *li));
        let mut k = 0;
        while k < label_rows.len() {
            let i = label_rows[k].0;
            let s = &mut self.running[i];
            let SeqKind::Score(st) = &mut s.kind else { unreachable!() };
            let first = st.first.as_ref().expect("prompt logits before labels");
            let mut sums = Vec::with_capacity(st.labels.len());
            while k < label_rows.len() && label_rows[k].0 == i {
                let (_, li, rows) = &label_rows[k];
                let label = &st.labels[*li];
                sums.push((scoring::label_logprob(first, rows, label, vocab), label.len()));
                k += 1;
            }
            let result = ScoreResult { prompt_tokens: s.prompt_len, labels: scoring::finish(&sums) };
            if let Some(r) = st.reply.take() {
                let _ = r.send(Ok(result));
            }
            metrics::slm_finished(&self.name, "scored", now - s.arrived);
            done.push(i);
        }
    }
}

/// Samples the next token of a generation from its logits, streams it, and says whether the
/// generation is finished (then the final event has been sent).
fn emit_token(
    model: &str,
    tok: &SlmTokenizer,
    tokens: &mut Vec<u32>,
    g: &mut GenState,
    logits: &mut [f32],
    (context_length, arrived, now): (usize, Instant, Instant),
) -> bool {
    let sampled = g.sampler.sample(logits);
    tokens.push(sampled.token);
    g.generated += 1;
    let ttft = g.first_token_at.is_none().then(|| now - arrived);
    metrics::slm_token(model, ttft, g.last_token_at.map(|t| now - t));
    if g.first_token_at.is_none() {
        g.first_token_at = Some(now);
    }
    g.last_token_at = Some(now);
    let logprob = g.params.logprobs.then(|| TokenLogprob {
        id: sampled.token,
        token: tok.token_str(sampled.token),
        bytes: tok.token_bytes(sampled.token),
        logprob: sampled.logprob.expect("the sampler computes logprobs when they are asked for"),
        top: sampled.top_logprobs.iter().map(|&(id, lp)| (id, tok.token_str(id), lp)).collect(),
    });
    let usage =
        |g: &GenState| Usage { prompt_tokens: tokens.len() - g.generated, completion_tokens: g.generated };
    let finish = |g: &mut GenState, reason: FinishReason, text: String, usage: Usage| {
        let _ = g.events.send(GenEvent::Finished { text, reason, usage });
        metrics::slm_finished(model, reason.as_str(), now - arrived);
    };
    if !g.ignore_eos && tok.stop_ids().contains(&sampled.token) {
        let _ = g.events.send(GenEvent::Token { text: String::new(), logprob });
        let mut rest = g.decoder.finish();
        rest = {
            let (t, _) = g.stop.push(&rest);
            t + &g.stop.finish()
        };
        let u = usage(g);
        finish(g, FinishReason::Stop, rest, u);
        return true;
    }
    let piece = g.decoder.push(tok, sampled.token);
    let (text, stopped) = g.stop.push(&piece);
    let _ = g.events.send(GenEvent::Token { text, logprob });
    if stopped {
        let u = usage(g);
        finish(g, FinishReason::Stop, String::new(), u);
        return true;
    }
    if g.generated >= g.max_tokens || tokens.len() >= context_length {
        let tail = g.decoder.finish();
        let (mut t, stopped) = g.stop.push(&tail);
        if !stopped {
            t.push_str(&g.stop.finish());
        }
        let u = usage(g);
        let reason = if stopped { FinishReason::Stop } else { FinishReason::Length };
        finish(g, reason, t, u);
        return true;
    }
    false
}
