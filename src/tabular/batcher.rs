//! Dynamic batching of one tabular model: requests from both front ends (HTTP and gRPC) queue by
//! priority class; one batcher thread (not tokio's) gathers them until `max_batch_rows` rows are
//! queued or the oldest has waited `max_queue_delay_us`, drops those past their deadline or whose
//! caller left, runs one `predict` over the concatenated rows, and hands each request its own rows of
//! the result. Trees (and every tabular kind) score each row alone, so a request's answer is the same
//! to the bit as predicting it alone.
//!
//! ```text
//! Batcher::predict (caller's tokio task)   priority class, deadline; 429 / RESOURCE_EXHAUSTED at once
//!        │ Mutex<Queue> + Condvar          when `max_queued_requests` are queued; then awaits its answer
//!        ▼
//! batcher thread                           waits out the batch window, takes requests queued
//!                                          `promote_after` first, then the highest classes first
//!                                          (FIFO within one), computes, answers each request
//! ```
//! The thread keeps its buffers (the concatenated rows, the batch) from batch to batch; a batch of one
//! request runs on that request's own rows, without copying them.

use super::{Outputs, Prediction, TabularModel};
use crate::config::TreesSettings;
use crate::error::Error;
use crate::metrics;
use crate::serving::{DeadlinePolicy, Faults, PriorityClasses};
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A tabular model behind its batcher; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    shared: Arc<Shared>,
}

/// The batching settings of one model (`[models.trees]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Rows one batch gathers at most (a larger request runs alone).
    pub max_batch_rows: usize,
    /// How long the oldest queued request waits for others to join it.
    pub max_queue_delay: Duration,
    /// Requests queued at most; more are refused at once.
    pub max_queued_requests: usize,
    /// A request queued this long goes first, whatever its class.
    pub promote_after: Duration,
}

impl BatchPolicy {
    pub fn from_settings(s: &TreesSettings) -> Self {
        BatchPolicy {
            max_batch_rows: s.max_batch_rows,
            max_queue_delay: Duration::from_micros(s.max_queue_delay_us),
            max_queued_requests: s.max_queued_requests,
            promote_after: Duration::from_millis(s.promote_after_ms),
        }
    }
}

struct Shared {
    name: String,
    model: Arc<TabularModel>,
    policy: BatchPolicy,
    classes: PriorityClasses,
    deadlines: DeadlinePolicy,
    queue: Mutex<Queue>,
    arrived: Condvar,
    faults: Arc<Faults>,
}

/// One queued request.
struct Pending {
    rows: Vec<f32>,
    n: usize,
    outputs: Outputs,
    enqueued: Instant,
    deadline: Instant,
    reply: oneshot::Sender<Result<Prediction, Error>>,
}

/// The queue: one FIFO per priority class, highest first.
struct Queue {
    classes: Vec<VecDeque<Pending>>,
    len: usize,
    rows: usize,
}

impl Queue {
    /// When the oldest queued request arrived.
    fn oldest(&self) -> Option<Instant> {
        self.classes.iter().filter_map(|c| c.front().map(|p| p.enqueued)).min()
    }
}

impl Batcher {
    /// Starts the batcher thread of model `name`.
    pub fn start(
        name: &str,
        model: Arc<TabularModel>,
        policy: BatchPolicy,
        classes: PriorityClasses,
        deadlines: DeadlinePolicy,
    ) -> Batcher {
        let shared = Arc::new(Shared::new(name, model, policy, classes, deadlines));
        let thread = Arc::clone(&shared);
        let watch = shared.faults.watch_thread(format!("the batcher of '{name}'"));
        std::thread::Builder::new()
            .name(format!("trees-{name}"))
            .spawn(move || {
                let _watch = watch;
                crate::compute::lower_current_thread();
                thread.run();
            })
            .expect("spawning a batcher thread");
        Batcher { shared }
    }

    pub fn model(&self) -> &Arc<TabularModel> {
        &self.shared.model
    }

    /// Faults of the batcher thread (see [`crate::serving::fault`]).
    pub fn faults(&self) -> &Arc<Faults> {
        &self.shared.faults
    }

    /// The class of Triton's numeric `priority` request parameter: 0 = the default class, 1 = the
    /// highest of `[priorities]`, 2 the next, … up to the number of classes.
    pub fn class_of_level(&self, level: u64) -> Result<Option<&str>, Error> {
        let names = &self.shared.classes.names;
        match usize::try_from(level) {
            Ok(0) => Ok(None),
            Ok(l) if l <= names.len() => Ok(Some(names[l - 1].as_str())),
            _ => Err(Error::invalid(
                "parameters.priority",
                format!(
                    "{level}: above the {} priority levels (1 = the highest, 0 = the default)",
                    names.len()
                ),
            )),
        }
    }

    /// Predicts `rows` (`n × num_features`, checked by the caller) in the next batch. `timeout`: the
    /// client's deadline (grpc-timeout / x-request-timeout-ms), `None` = the model's default;
    /// `priority`: the class name ("" or `None` = the default class).
    pub async fn predict(
        &self,
        rows: Vec<f32>,
        outputs: Outputs,
        timeout: Option<Duration>,
        priority: Option<&str>,
    ) -> Result<Prediction, Error> {
        let s = &*self.shared;
        let class = s.classes.resolve(priority.unwrap_or_default())?;
        let n = rows.len() / s.model.num_features().max(1);
        let enqueued = Instant::now();
        let deadline = s.deadlines.deadline(enqueued, timeout);
        let (reply, answer) = oneshot::channel();
        {
            let mut q = s.lock();
            if q.len >= s.policy.max_queued_requests {
                drop(q);
                metrics::rejection(&s.name, metrics::REJECT_QUEUE_FULL);
                return Err(Error::ResourceExhausted {
                    message: format!(
                        "model '{}' is at capacity: {} requests queued; retry later",
                        s.name, s.policy.max_queued_requests
                    ),
                    retry_after_ms: 1 + s.policy.max_queue_delay.as_millis() as u64,
                });
            }
            q.len += 1;
            q.rows += n;
            q.classes[class].push_back(Pending { rows, n, outputs, enqueued, deadline, reply });
        }
        s.arrived.notify_one();
        s.faults.answer_by(answer, &s.name, enqueued, deadline).await
    }
}

impl Shared {
    fn new(
        name: &str,
        model: Arc<TabularModel>,
        policy: BatchPolicy,
        classes: PriorityClasses,
        deadlines: DeadlinePolicy,
    ) -> Shared {
        let queue =
            Queue { classes: (0..classes.names.len()).map(|_| VecDeque::new()).collect(), len: 0, rows: 0 };
        Shared {
            name: name.to_string(),
            model,
            policy,
            classes,
            deadlines,
            queue: Mutex::new(queue),
            arrived: Condvar::new(),
            faults: Arc::new(Faults::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().expect("batcher queue lock poisoned")
    }

    fn run(&self) {
        let bm = metrics::TreesBatchMetrics::new(&self.name);
        let mut batch: Vec<Pending> = Vec::new();
        let mut rows: Vec<f32> = Vec::new();
        loop {
            self.next_batch(&mut batch, &bm);
            if !batch.is_empty() {
                self.compute(&mut batch, &mut rows, &bm);
            }
        }
    }

    /// Waits for a request, then for the batch window (until `max_batch_rows` rows are queued or the
    /// oldest request has waited `max_queue_delay`), then takes requests up to `max_batch_rows` rows
    /// (at least one request): first those queued `promote_after` or longer, oldest first whatever
    /// their class, then by class, FIFO within one. Requests past their deadline or whose caller left
    /// are answered (or dropped) here, before any compute.
    fn next_batch(&self, batch: &mut Vec<Pending>, bm: &metrics::TreesBatchMetrics) {
        let mut q = self.lock();
        loop {
            let Some(oldest) = q.oldest() else {
                q = self.arrived.wait(q).expect("batcher queue lock poisoned");
                continue;
            };
            let due = oldest + self.policy.max_queue_delay;
            let now = Instant::now();
            if q.rows >= self.policy.max_batch_rows || now >= due {
                break;
            }
            q = self.arrived.wait_timeout(q, due - now).expect("batcher queue lock poisoned").0;
        }
        let now = Instant::now();
        let mut rows = 0;
        // Bounded starvation: the fronts (each class's oldest) that waited `promote_after`, oldest
        // first.
        loop {
            let promoted = q
                .classes
                .iter()
                .enumerate()
                .filter_map(|(c, class)| class.front().map(|p| (p.enqueued, c)))
                .filter(|&(at, _)| now.duration_since(at) >= self.policy.promote_after)
                .min();
            let Some((_, c)) = promoted else { break };
            if !self.take_front(&mut q, c, now, batch, &mut rows, bm) {
                return;
            }
        }
        for c in 0..q.classes.len() {
            while !q.classes[c].is_empty() {
                if !self.take_front(&mut q, c, now, batch, &mut rows, bm) {
                    return;
                }
            }
        }
    }

    /// Moves class `c`'s front request into `batch` (its `rows` counted), or answers it when it is
    /// past its deadline or its caller left; false, taking nothing, when it would overfill the batch.
    fn take_front(
        &self,
        q: &mut Queue,
        c: usize,
        now: Instant,
        batch: &mut Vec<Pending>,
        rows: &mut usize,
        bm: &metrics::TreesBatchMetrics,
    ) -> bool {
        let Some(p) = q.classes[c].front() else { return true };
        if !batch.is_empty() && *rows + p.n > self.policy.max_batch_rows {
            return false;
        }
        let p = q.classes[c].pop_front().expect("a front element");
        q.len -= 1;
        q.rows -= p.n;
        if now >= p.deadline {
            // Its caller has usually given up at the deadline already; a drop all the same.
            metrics::deadline_drop(&self.name);
            let _ = p
                .reply
                .send(Err(Error::DeadlineExceeded("deadline passed while queued; not computed".into())));
        } else if p.reply.is_closed() {
            metrics::cancellation(&self.name);
        } else {
            bm.queued(now.duration_since(p.enqueued));
            *rows += p.n;
            batch.push(p);
        }
        true
    }

    /// Runs one batch and answers each of its requests with its own rows of the result.
    fn compute(&self, batch: &mut Vec<Pending>, buf: &mut Vec<f32>, bm: &metrics::TreesBatchMetrics) {
        let rows: usize = batch.iter().map(|p| p.n).sum();
        bm.batch(batch.len(), rows);
        if let [one] = &batch[..] {
            let result = self.predict(&one.rows, one.outputs);
            let p = batch.pop().expect("one request");
            let _ = p.reply.send(result);
            return;
        }
        let outputs = batch.iter().fold(Outputs::default(), |a, p| Outputs {
            margin: a.margin || p.outputs.margin,
            score: a.score || p.outputs.score,
            contributions: a.contributions || p.outputs.contributions,
        });
        buf.clear();
        for p in batch.iter() {
            buf.extend_from_slice(&p.rows);
        }
        match self.predict(buf, outputs) {
            Ok(all) => {
                let m = &self.model;
                let widths = (m.num_groups(), m.score_width(), m.num_groups() * (m.num_features() + 1));
                let mut at = 0;
                for p in batch.drain(..) {
                    let part = |v: &Option<Vec<f32>>, wanted: bool, w: usize| {
                        v.as_ref().filter(|_| wanted).map(|v| v[at * w..(at + p.n) * w].to_vec())
                    };
                    let own = Prediction {
                        margin: part(&all.margin, p.outputs.margin, widths.0),
                        score: part(&all.score, p.outputs.score, widths.1),
                        contributions: part(&all.contributions, p.outputs.contributions, widths.2),
                    };
                    at += p.n;
                    let _ = p.reply.send(Ok(own));
                }
            }
            // A batch the model refuses (e.g. contributions it cannot explain, asked by one request)
            // runs request by request, so each gets its own answer.
            Err(_) => {
                for p in batch.drain(..) {
                    let result = self.predict(&p.rows, p.outputs);
                    let _ = p.reply.send(result);
                }
            }
        }
    }

    /// One `predict`, a panic in it an internal error of this batch only.
    fn predict(&self, rows: &[f32], outputs: Outputs) -> Result<Prediction, Error> {
        crate::serving::fault::inject("trees-batcher", &self.name);
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.model.predict(rows, outputs))) {
            Ok(p) => p.map_err(|e| Error::invalid("outputs", e)),
            Err(p) => {
                Err(Error::Internal(format!("the model panicked: {}", crate::error::panic_message(&*p))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Priorities;

    /// Two trees over 3 features, binary logistic: margins differ row by row.
    fn model() -> Arc<TabularModel> {
        let tree = |f: usize, t: f32| {
            serde_json::json!({
                "left_children": [1, -1, -1], "right_children": [2, -1, -1], "split_indices": [f, 0, 0],
                "split_conditions": [t, -0.25, 0.75], "default_left": [1, 0, 0], "split_type": [0, 0, 0]
            })
        };
        let json = serde_json::json!({"learner": {
            "gradient_booster": {"name": "gbtree", "model": {"tree_info": [0, 0], "trees": [tree(0, 0.5), tree(2, -1.0)]}},
            "learner_model_param": {"base_score": "5E-1", "num_class": "0", "num_feature": "3", "num_target": "1"},
            "objective": {"name": "binary:logistic"}
        }});
        Arc::new(TabularModel::from_bytes(json.to_string().as_bytes()).unwrap())
    }

    fn classes() -> PriorityClasses {
        PriorityClasses::from_config(&Priorities {
            classes: vec!["high".into(), "low".into()],
            default: "low".into(),
        })
    }

    fn start(max_batch_rows: usize, delay_us: u64, max_queued_requests: usize) -> Batcher {
        let policy = BatchPolicy {
            max_batch_rows,
            max_queue_delay: Duration::from_micros(delay_us),
            max_queued_requests,
            promote_after: Duration::from_millis(50),
        };
        Batcher::start("t", model(), policy, classes(), DeadlinePolicy::from_millis(5000))
    }

    /// `n` rows of 3 features, some missing, different for each `seed`.
    fn rows(seed: usize, n: usize) -> Vec<f32> {
        (0..n * 3)
            .map(|i| {
                let x = ((seed * 7919 + i * 104_729) % 1000) as f32 / 250.0 - 2.0;
                if (seed + i).is_multiple_of(5) {
                    f32::NAN
                } else {
                    x
                }
            })
            .collect()
    }

    const ALL: Outputs = Outputs { margin: true, score: true, contributions: false };

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_get_what_each_gets_alone_to_the_bit() {
        let b = start(64, 20_000, 100);
        let m = model();
        let mut tasks = Vec::new();
        for seed in 0..40 {
            let (b, r) = (b.clone(), rows(seed, 1 + seed % 7));
            let outputs = match seed % 3 {
                0 => ALL,
                1 => Outputs { margin: true, ..Default::default() },
                _ => Outputs { score: true, ..Default::default() },
            };
            tasks.push(tokio::spawn(async move { (seed, outputs, b.predict(r, outputs, None, None).await) }));
        }
        for t in tasks {
            let (seed, outputs, got) = t.await.unwrap();
            let got = got.unwrap();
            let alone = m.predict(&rows(seed, 1 + seed % 7), outputs).unwrap();
            let bits =
                |v: &Option<Vec<f32>>| v.as_ref().map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
            assert_eq!(bits(&got.margin), bits(&alone.margin), "request {seed}");
            assert_eq!(bits(&got.score), bits(&alone.score), "request {seed}");
            assert!(got.contributions.is_none());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_refuses_at_once_and_expired_requests_are_not_computed() {
        // The window is long: the first request waits in the queue.
        let b = start(1 << 20, 300_000, 1);
        let first = tokio::spawn({
            let b = b.clone();
            async move { b.predict(rows(1, 1), ALL, Some(Duration::from_millis(50)), None).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let e = b.predict(rows(2, 1), ALL, None, None).await.unwrap_err();
        assert!(matches!(e, Error::ResourceExhausted { .. }), "{e}");
        assert!(e.to_string().contains("1 requests queued"), "{e}");
        let e = first.await.unwrap().unwrap_err();
        assert!(matches!(e, Error::DeadlineExceeded(_)), "{e}");
        let e = b.predict(rows(3, 1), ALL, None, Some("urgent")).await.unwrap_err();
        assert!(e.to_string().starts_with("priority: unknown priority class 'urgent'"), "{e}");
    }

    /// A batcher's shared state (no thread) with requests `(class, rows, queued for)` queued in
    /// order, request `i`'s rows all `i`; their answers.
    fn queued(
        promote_after: Duration,
        requests: &[(usize, usize, Duration)],
    ) -> (Shared, Vec<oneshot::Receiver<Result<Prediction, Error>>>) {
        let policy = BatchPolicy {
            max_batch_rows: 3,
            max_queue_delay: Duration::ZERO,
            max_queued_requests: 10,
            promote_after,
        };
        let s = Shared::new("t", model(), policy, classes(), DeadlinePolicy::from_millis(5000));
        let mut answers = Vec::new();
        let now = Instant::now();
        for (id, &(class, n, age)) in requests.iter().enumerate() {
            let (reply, rx) = oneshot::channel();
            answers.push(rx);
            let mut q = s.lock();
            q.len += 1;
            q.rows += n;
            q.classes[class].push_back(Pending {
                rows: vec![id as f32; n * 3],
                n,
                outputs: ALL,
                enqueued: now - age,
                deadline: now + Duration::from_secs(5),
                reply,
            });
        }
        (s, answers)
    }

    fn ids(b: &[Pending]) -> Vec<usize> {
        b.iter().map(|p| p.rows[0] as usize).collect()
    }

    #[test]
    fn batches_take_the_higher_class_first_and_fifo_within_one_up_to_the_row_limit() {
        let fresh = Duration::ZERO;
        let (s, _answers) = queued(
            Duration::from_secs(60),
            &[(1, 1, fresh), (1, 1, fresh), (0, 2, fresh), (0, 1, fresh), (1, 1, fresh)],
        );
        let bm = metrics::TreesBatchMetrics::new("t");
        let mut batch = Vec::new();
        s.next_batch(&mut batch, &bm);
        assert_eq!(ids(&batch), [2, 3], "the high class first, FIFO, 3 rows");
        batch.clear();
        s.next_batch(&mut batch, &bm);
        assert_eq!(ids(&batch), [0, 1, 4]);
        let q = s.lock();
        assert_eq!((q.len, q.rows), (0, 0));
    }

    #[test]
    fn triton_priority_levels_name_the_classes() {
        let b = start(8, 0, 8);
        assert_eq!(b.class_of_level(0).unwrap(), None, "0: the default class");
        assert_eq!(b.class_of_level(1).unwrap(), Some("high"));
        assert_eq!(b.class_of_level(2).unwrap(), Some("low"));
        let e = b.class_of_level(3).unwrap_err().to_string();
        assert!(e.contains("parameters.priority: 3: above the 2 priority levels"), "{e}");
        assert!(b.class_of_level(u64::MAX).is_err());
    }

    #[test]
    fn low_class_requests_that_waited_promote_after_go_first_oldest_first() {
        let ms = Duration::from_millis;
        // Low-class requests 0 and 1 have waited past promote_after (1 the longer), 4 has not; the
        // high class (2, 3) is fresh.
        let (s, _answers) =
            queued(ms(50), &[(1, 1, ms(80)), (1, 1, ms(200)), (0, 1, ms(0)), (0, 1, ms(0)), (1, 1, ms(10))]);
        let bm = metrics::TreesBatchMetrics::new("t");
        let mut batch = Vec::new();
        s.next_batch(&mut batch, &bm);
        // Within a class FIFO holds: 1 waits behind 0, so the class's front (0) is promoted, then 1.
        assert_eq!(ids(&batch), [0, 1, 2], "the promoted low-class requests, then the high class");
        batch.clear();
        s.next_batch(&mut batch, &bm);
        assert_eq!(ids(&batch), [3, 4]);
    }
}
