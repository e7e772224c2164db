//! The label passes of a scoring request, in chunks under the step budget.
//!
//! Once the prompt ran, every label's first token is scored from the prompt's last logits row (one
//! log-sum-exp for all labels). Then each label's tokens but its last (whose logits would predict
//! nothing) run on their own fork of the prompt's cache, label after label, a chunk per step within
//! what the step has left: a long request never runs past `max_step_tokens`, shares its steps with
//! generations and other prompts (at most `score_tokens_per_shared_step` label tokens a step while
//! they run), and holds forks only for the labels in progress. Each logits row is reduced to the one
//! log-probability it is there for as soon as the step returns it, added to its label's sum in token
//! order — the same additions in the same order as one unchunked pass, so the result is the same bit
//! for bit whatever the chunking.

use super::api::ScoreResult;
use crate::error::Result;
use crate::slm::kv::SeqKv;
use crate::slm::scoring::{self, LogSoftmax};
use tokio::sync::oneshot;

/// A chunk of one label's pass: (label index, start, end) over the label's input tokens.
pub(super) type LabelChunk = (usize, usize, usize);

/// A scoring request's labels and how far their passes ran.
pub(super) struct ScoreState {
    pub(super) labels: Vec<Vec<u32>>,
    /// Per label, the sum of its tokens' log-probabilities so far (valid once `started`).
    sums: Vec<f64>,
    /// Whether the prompt ran and every label's first token was scored.
    started: bool,
    /// The first label whose passes have not all run, and how many of its input tokens ran.
    next: usize,
    ran: usize,
    /// Caches of the labels in progress, (label index, fork of the prompt's cache), in label order.
    forks: Vec<(usize, SeqKv)>,
    pub(super) reply: Option<oneshot::Sender<Result<ScoreResult>>>,
}

impl ScoreState {
    pub(super) fn new(labels: Vec<Vec<u32>>, reply: oneshot::Sender<Result<ScoreResult>>) -> Self {
        let n = labels.len();
        ScoreState {
            labels,
            sums: vec![0.0; n],
            started: false,
            next: 0,
            ran: 0,
            forks: Vec::new(),
            reply: Some(reply),
        }
    }

    /// Forgets all progress (the sequence was preempted: its prompt and labels run again).
    pub(super) fn reset(&mut self) {
        self.sums.iter_mut().for_each(|s| *s = 0.0);
        self.started = false;
        self.next = 0;
        self.ran = 0;
        self.forks.clear();
    }

    /// Whether the prompt ran (label passes are what is left).
    pub(super) fn started(&self) -> bool {
        self.started
    }

    /// Whether every label is scored.
    pub(super) fn finished(&self) -> bool {
        self.started && self.next == self.labels.len()
    }

    /// The tokens label `li`'s pass runs: all but its last.
    fn inputs(&self, li: usize) -> &[u32] {
        let l = &self.labels[li];
        &l[..l.len() - 1]
    }

    /// Scores every label's first token from the prompt's last logits row.
    pub(super) fn start(&mut self, first: &[f32]) {
        let ls = LogSoftmax::new(first);
        for (sum, label) in self.sums.iter_mut().zip(&self.labels) {
            *sum = ls.log_prob(first, label[0]);
        }
        self.started = true;
        self.next = 0;
        self.ran = 0;
        self.skip_done();
    }

    /// Moves `next` past labels with nothing left to run (one-token labels need no pass).
    fn skip_done(&mut self) {
        while self.next < self.labels.len() && self.ran == self.inputs(self.next).len() {
            self.next += 1;
            self.ran = 0;
        }
    }

    /// Appends to `out` the chunks of the next `budget` label tokens (at most), in label order;
    /// returns how many tokens they hold.
    pub(super) fn plan(&self, budget: usize, out: &mut Vec<LabelChunk>) -> usize {
        let (mut left, mut li, mut at) = (budget, self.next, self.ran);
        while left > 0 && li < self.labels.len() {
            let n = self.inputs(li).len();
            let take = (n - at).min(left);
            if take > 0 {
                out.push((li, at, at + take));
                left -= take;
            }
            li += 1;
            at = 0;
        }
        budget - left
    }

    /// Makes the forks the planned `chunks` run on (a chunk starting a label gets a new fork of
    /// `prompt`; a label in progress keeps its own), so that the forks line up with `chunks`.
    pub(super) fn fork_for(&mut self, chunks: &[LabelChunk], prompt: &SeqKv) {
        for &(li, a, _) in chunks {
            if a == 0 {
                let cap = prompt.len() + self.inputs(li).len();
                self.forks.push((li, prompt.fork(cap)));
            }
        }
        debug_assert!(self.forks.iter().map(|f| f.0).eq(chunks.iter().map(|c| c.0)));
    }

    /// The planned chunks' tokens with their forks, in the order of `chunks`.
    pub(super) fn chunk_inputs<'a>(
        &'a mut self,
        chunks: &'a [LabelChunk],
    ) -> impl Iterator<Item = (&'a mut SeqKv, &'a [u32])> + 'a {
        let labels = &self.labels;
        self.forks.iter_mut().zip(chunks).map(move |((fli, kv), &(li, a, b))| {
            debug_assert_eq!(*fli, li, "forks line up with the planned chunks");
            (kv, &labels[li][a..b])
        })
    }

    /// Adds the log-probabilities of one chunk's rows (`vocab` floats each; row j is the logits after
    /// input token `a + j`, so it predicts label token `a + j + 1`) to the label's sum, in order.
    pub(super) fn add_rows(&mut self, (li, a, b): LabelChunk, rows: &[f32], vocab: usize) {
        debug_assert_eq!(rows.len(), (b - a) * vocab);
        let label = &self.labels[li];
        let sum = &mut self.sums[li];
        for (j, row) in rows.chunks_exact(vocab).enumerate() {
            *sum += scoring::log_prob(row, label[a + j + 1]);
        }
    }

    /// Records that the planned `chunks` ran: finished labels drop their forks.
    pub(super) fn advance(&mut self, chunks: &[LabelChunk]) {
        for &(li, a, b) in chunks {
            debug_assert!(li == self.next && a == self.ran, "label chunks run in order");
            self.ran = b;
            if b == self.inputs(li).len() {
                self.forks.retain(|f| f.0 != li);
            }
            self.skip_done();
        }
    }

    /// The scores, once [`Self::finished`].
    pub(super) fn result(&self, prompt_tokens: usize) -> ScoreResult {
        debug_assert!(self.finished());
        let sums: Vec<(f64, usize)> =
            self.sums.iter().zip(&self.labels).map(|(&s, l)| (s, l.len())).collect();
        ScoreResult { prompt_tokens, labels: scoring::finish(&sums) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slm::kv::{KvDtype, KvShape};

    fn state(lens: &[usize]) -> ScoreState {
        let labels = lens.iter().map(|&n| (0..n as u32).collect()).collect();
        ScoreState::new(labels, oneshot::channel().0)
    }

    /// Runs the whole request in steps of `budget` label tokens; returns each step's chunks.
    fn run(st: &mut ScoreState, budget: usize) -> Vec<Vec<LabelChunk>> {
        let prompt = SeqKv::new(KvShape { layers: 1, kv_heads: 1, head_dim: 2, dtype: KvDtype::F32 }, 4);
        st.start(&[0.0; 8]);
        let mut steps = Vec::new();
        while !st.finished() {
            let mut chunks = Vec::new();
            let n = st.plan(budget, &mut chunks);
            assert!(n > 0 && n <= budget, "a step runs 1..=budget label tokens, got {n}");
            assert_eq!(n, chunks.iter().map(|c| c.2 - c.1).sum::<usize>());
            st.fork_for(&chunks, &prompt);
            assert_eq!(st.chunk_inputs(&chunks).count(), chunks.len());
            st.advance(&chunks);
            // Only the label left in progress keeps a fork.
            assert!(st.forks.len() <= 1, "{} forks held between steps", st.forks.len());
            steps.push(chunks);
            assert!(steps.len() < 1000, "no progress");
        }
        steps
    }

    #[test]
    fn chunks_cover_every_input_token_once_in_order() {
        for budget in [1, 2, 3, 5, 8, 100] {
            let mut st = state(&[4, 1, 7, 2, 1, 3]);
            let steps = run(&mut st, budget);
            let flat: Vec<(usize, usize)> =
                steps.iter().flatten().flat_map(|&(li, a, b)| (a..b).map(move |t| (li, t))).collect();
            // Inputs are all but each label's last token; one-token labels run nothing.
            let want: Vec<(usize, usize)> = [(0, 3), (2, 6), (3, 1), (5, 2)]
                .iter()
                .flat_map(|&(li, n)| (0..n).map(move |t| (li, t)))
                .collect();
            assert_eq!(flat, want, "budget {budget}");
            let total: usize = want.len();
            assert_eq!(
                steps.len(),
                total.div_ceil(budget),
                "budget {budget}: every step but the last is full"
            );
        }
    }

    #[test]
    fn one_token_labels_finish_with_the_prompt() {
        let mut st = state(&[1, 1, 1]);
        st.start(&[1.0, 2.0, 3.0, 4.0]);
        assert!(st.finished());
        let mut chunks = Vec::new();
        assert_eq!(st.plan(10, &mut chunks), 0);
        let r = st.result(5);
        assert_eq!(r.prompt_tokens, 5);
        let total: f64 = r.labels.iter().map(|l| l.probability).sum();
        assert!((total - 1.0).abs() < 1e-12);
        assert_eq!(r.labels[0].logprob_sum, scoring::log_prob(&[1.0, 2.0, 3.0, 4.0], 0));
    }

    #[test]
    fn reset_forgets_progress() {
        let mut st = state(&[5, 5]);
        st.start(&[0.0; 8]);
        let mut chunks = Vec::new();
        st.plan(3, &mut chunks);
        let prompt = SeqKv::new(KvShape { layers: 1, kv_heads: 1, head_dim: 2, dtype: KvDtype::F32 }, 4);
        st.fork_for(&chunks, &prompt);
        st.advance(&chunks);
        assert_eq!(st.forks.len(), 1);
        st.reset();
        assert!(!st.started() && !st.finished() && st.forks.is_empty());
        assert_eq!((st.next, st.ran), (0, 0));
    }

    #[test]
    fn rows_add_in_token_order() {
        let mut st = state(&[3]);
        let vocab = 4;
        let first = [0.0f32, 1.0, 0.5, -1.0];
        st.start(&first);
        let rows = [1.0f32, 3.0, 0.0, 0.0, 0.0, 0.0, 2.0, 1.0];
        st.add_rows((0, 0, 2), &rows, vocab);
        st.advance(&[(0, 0, 2)]);
        assert!(st.finished());
        let want = scoring::label_logprob(&first, &rows, &[0, 1, 2], vocab);
        assert_eq!(st.sums[0], want);
    }
}
