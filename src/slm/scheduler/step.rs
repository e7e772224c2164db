//! One engine step: plan the step's work (one decode token per decoding sequence, then prefill
//! chunks and label-pass chunks in admission order, under `max_step_tokens`; label tokens at most
//! `score_tokens_per_shared_step` while generations or prompts share the engine), run the model once over all of it, then sample
//! and stream each generation's next token, add label rows to their labels' sums, and answer
//! finished scoring requests.

use super::api::{FinishReason, GenEvent, TokenLogprob, Usage};
use super::engine::Engine;
use super::job::{GenState, Seq, SeqKind};
use super::labels::LabelChunk;
use crate::metrics;
use crate::slm::model::{Chunk, Want};
use crate::slm::tokenizer::SlmTokenizer;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// What a step runs for one running sequence (by its index in `running`).
enum Plan {
    /// Its tokens `start..end`, wanting the logits of `Want`.
    Tokens(usize, usize, Want),
    /// Chunks of a scoring request's label passes, each on its label's fork of the prompt's cache.
    Labels(Vec<LabelChunk>),
}

/// Whose logits a forward output is: the running index, and for label passes the chunk.
type Owner = (usize, Option<LabelChunk>);

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
        self.fork_labels(&plan);
        let started = Instant::now();
        let (outputs, step_tokens, prompt_tokens) = self.forward(&plan);
        metrics::slm_step(&self.name, plan.len(), step_tokens, prompt_tokens, started.elapsed());
        self.stats.steps.fetch_add(1, Ordering::AcqRel);

        // Results: sample generations, finish prompt passes, add label rows, answer finished scores.
        let now = Instant::now();
        let mut done: Vec<usize> = Vec::new();
        self.take_outputs(outputs, now, &mut done);
        self.finish_labels(&plan, now, &mut done);
        done.sort_unstable();
        for i in done.into_iter().rev() {
            let s = self.running.remove(i);
            self.budget.release(s.reserve);
        }
        Ok(())
    }

    /// Decodes first (one token each), then prefill chunks and label-pass chunks in admission order,
    /// within `max_step_tokens`. While a generation runs or a prompt is prefilling, label passes get
    /// at most `score_tokens_per_shared_step` tokens a step, so a long scoring request neither slows
    /// streams down nor starves later prompts (admitted after it, they come after it in the order).
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
        let cap = self.settings.score_tokens_per_shared_step;
        let shared = self.running.iter().any(|s| match &s.kind {
            SeqKind::Gen(_) => true,
            SeqKind::Score(st) => !st.started(),
        });
        let mut label_left = if shared && cap > 0 { cap } else { usize::MAX };
        for (i, s) in self.running.iter().enumerate() {
            if left == 0 {
                break;
            }
            let pending = s.pending();
            if let SeqKind::Score(st) = &s.kind {
                if st.started() {
                    let mut chunks = Vec::new();
                    let n = st.plan(left.min(label_left), &mut chunks);
                    if n > 0 {
                        plan.push((i, Plan::Labels(chunks)));
                        left -= n;
                        label_left -= n;
                    }
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

    /// Gives every planned label chunk its fork of the prompt's cache (new for a label's first chunk).
    fn fork_labels(&mut self, plan: &[(usize, Plan)]) {
        for (i, p) in plan {
            if let Plan::Labels(chunks) = p {
                let s = &mut self.running[*i];
                let SeqKind::Score(st) = &mut s.kind else { unreachable!() };
                st.fork_for(chunks, s.kv.as_ref().expect("running sequences have a cache"));
            }
        }
    }

    /// Runs the model once over the planned chunks (on the compute pool). Returns each output row
    /// with its owner, and the step's tokens and prompt tokens (for the metrics).
    fn forward(&mut self, plan: &[(usize, Plan)]) -> (Vec<(Owner, Vec<f32>)>, usize, usize) {
        let mut step_tokens = 0;
        let mut prompt_tokens = 0;
        let mut chunks: Vec<Chunk> = Vec::new();
        let mut owners: Vec<Owner> = Vec::new();
        let mut by_index: Vec<Option<&mut Seq>> = self.running.iter_mut().map(Some).collect();
        for (i, p) in plan {
            let s = by_index[*i].take().expect("one plan entry per sequence");
            match p {
                Plan::Tokens(a, b, want) => {
                    step_tokens += b - a;
                    prompt_tokens += s.prompt_len.saturating_sub(*a).min(b - a);
                    chunks.push(Chunk {
                        kv: s.kv.as_mut().expect("running sequences have a cache"),
                        tokens: &s.tokens[*a..*b],
                        want: *want,
                        generated: generated_in(*a, *b, s.prompt_len),
                    });
                    owners.push((*i, None));
                }
                Plan::Labels(planned) => {
                    let SeqKind::Score(st) = &mut s.kind else { unreachable!() };
                    for ((kv, tokens), c) in st.chunk_inputs(planned).zip(planned) {
                        step_tokens += tokens.len();
                        chunks.push(Chunk { kv, tokens, want: Want::All, generated: 0 });
                        owners.push((*i, Some(*c)));
                    }
                }
            }
        }
        let (model, scratch) = (&self.model, &mut self.scratch);
        let out = self.pool.install(|| model.forward(&mut chunks, scratch));
        (owners.into_iter().zip(out).collect(), step_tokens, prompt_tokens)
    }

    /// Samples and streams the generations' next tokens, scores the labels' first tokens of prefilled
    /// scoring prompts and adds label rows to their sums (each row reduced to its one log-probability
    /// and dropped); finished generations go to `done`.
    fn take_outputs(&mut self, outputs: Vec<(Owner, Vec<f32>)>, now: Instant, done: &mut Vec<usize>) {
        let vocab = self.model.config().vocab;
        for ((i, label), mut logits) in outputs {
            if logits.is_empty() {
                continue;
            }
            let s = &mut self.running[i];
            match &mut s.kind {
                SeqKind::Score(st) => match label {
                    Some(chunk) => st.add_rows(chunk, &logits, vocab),
                    None => st.start(&logits),
                },
                SeqKind::Gen(g) => {
                    let ctx = (self.context_length, s.arrived, now);
                    if emit_token(&self.name, &self.tok, &mut s.tokens, g, &mut logits, ctx) {
                        done.push(i);
                    }
                }
            }
        }
    }

    /// Records the label chunks that ran and answers every scoring request of the step whose labels
    /// are all scored (marking it done).
    fn finish_labels(&mut self, plan: &[(usize, Plan)], now: Instant, done: &mut Vec<usize>) {
        for (i, p) in plan {
            let s = &mut self.running[*i];
            let SeqKind::Score(st) = &mut s.kind else { continue };
            if let Plan::Labels(chunks) = p {
                st.advance(chunks);
            }
            if st.finished() {
                let result = st.result(s.prompt_len);
                if let Some(r) = st.reply.take() {
                    let _ = r.send(Ok(result));
                }
                metrics::slm_finished(&self.name, "scored", now - s.arrived);
                done.push(*i);
            }
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

/// How many of a sequence's tokens `a .. b` it generated, past its prompt of `prompt_len`: a decode
/// step's one, or a preempted sequence's recomputed after its prompt.
fn generated_in(a: usize, b: usize, prompt_len: usize) -> usize {
    b - a.max(prompt_len).min(b)
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_tokens_are_the_ones_past_the_prompt() {
        use super::generated_in;
        // (a, b, prompt_len) → generated: a prompt chunk, its tail, a decode step, a recomputed
        // sequence (prompt and generated tokens in one chunk, or in two).
        for (a, b, p, want) in [
            (0, 5, 5, 0),
            (3, 5, 5, 0),
            (5, 6, 5, 1),
            (9, 10, 5, 1),
            (0, 8, 5, 3),
            (4, 8, 5, 3),
            (6, 8, 5, 2),
        ] {
            assert_eq!(generated_in(a, b, p), want, "tokens {a}..{b} of a prompt of {p}");
        }
    }
}
