//! Tests of the batch builder, on paused tokio time.

use super::*;
use tokio::time::{advance, Instant as TokioInstant};

fn policy() -> BatchPolicy {
    BatchPolicy {
        max_step_tokens: 100,
        max_wait: Duration::from_millis(2),
        promote_after: Duration::from_millis(50),
        micro_batch: 16,
    }
}

fn now() -> Instant {
    TokioInstant::now().into_std()
}

fn pending(id: u64, class: usize, history: usize, cands: usize) -> Pending {
    let t = now();
    Pending {
        id,
        class,
        enqueued: t,
        deadline: t + Duration::from_secs(1),
        history_tokens: history,
        candidates: cands,
        work: history + cands,
    }
}

fn tokens(units: &[Unit], hist: &dyn Fn(u64) -> usize) -> usize {
    units
        .iter()
        .map(|u| match &u.kind {
            UnitKind::History => hist(u.id),
            UnitKind::Candidates(r) => r.len(),
        })
        .sum()
}

#[tokio::test(start_paused = true)]
async fn waits_for_max_wait_then_cuts() {
    let mut b = BatchBuilder::new(policy(), 3);
    b.push(pending(1, 0, 10, 5));
    assert_eq!(b.next_step(now()), None, "under budget and not waited long enough");
    assert_eq!(b.next_wakeup(true), Some(now() + Duration::from_millis(2)));
    advance(Duration::from_millis(2)).await;
    let step = b.next_step(now()).expect("due after max_wait");
    assert_eq!(
        step,
        vec![
            Unit { id: 1, kind: UnitKind::History, last: false },
            Unit { id: 1, kind: UnitKind::Candidates(0..5), last: true },
        ]
    );
    assert!(b.is_empty());
    assert_eq!(b.queued_tokens(), 0);
}

#[tokio::test(start_paused = true)]
async fn full_budget_cuts_at_once_and_is_respected() {
    let mut b = BatchBuilder::new(policy(), 1);
    for id in 0..5 {
        b.push(pending(id, 0, 20, 16));
    }
    assert_eq!(b.queued_tokens(), 5 * 36);
    let step = b.next_step(now()).expect("budget reached: no waiting");
    let hist = |_| 20;
    assert!(tokens(&step, &hist) <= 100, "{step:?}");
    // Two whole requests (72 tokens) fit; the third's history (20) still fits, its micro-batch not.
    assert_eq!(tokens(&step, &hist), 92);
    assert!(step.iter().filter(|u| u.last).count() == 2);
    // The third request is running; its remaining micro-batch waits for its history, computed by
    // whichever worker took the first step, then goes next without waiting for max_wait.
    assert_eq!(b.next_step(now()), None, "history not computed yet");
    b.history_ready(2);
    let step2 = b.next_step(now()).expect("running request continues");
    assert_eq!(step2[0], Unit { id: 2, kind: UnitKind::Candidates(0..16), last: true });
}

#[tokio::test(start_paused = true)]
async fn large_request_is_split_and_shares_steps() {
    let mut b = BatchBuilder::new(policy(), 1);
    b.push(pending(1, 0, 10, 200)); // 210 tokens: several steps
    b.push(pending(2, 0, 5, 3));
    let mut seen_small = false;
    let mut steps = 0;
    let mut covered = 0;
    while let Some(step) = b.next_step(now()) {
        steps += 1;
        // The worker computes the step's histories.
        for u in step.iter().filter(|u| u.kind == UnitKind::History) {
            b.history_ready(u.id);
        }
        let hist = |id| if id == 1 { 10 } else { 5 };
        assert!(tokens(&step, &hist) <= 100);
        for u in &step {
            if let (1, UnitKind::Candidates(r)) = (u.id, &u.kind) {
                assert_eq!(r.start, covered, "micro-batches in order");
                covered = r.end;
            }
            seen_small |= u.id == 2;
        }
        if b.is_empty() {
            break;
        }
    }
    assert_eq!(covered, 200);
    assert!(seen_small);
    assert!(steps >= 3);
}

#[tokio::test(start_paused = true)]
async fn higher_class_first_then_promotion() {
    let mut b = BatchBuilder::new(policy(), 3);
    b.push(pending(1, 2, 60, 0)); // batch class, first in
    b.push(pending(2, 0, 60, 0)); // feed class
    b.push(pending(3, 1, 60, 0)); // ads class
    advance(Duration::from_millis(2)).await;
    // 60 + 60 > 100: one request per step, highest class first.
    let order: Vec<u64> = (0..3).flat_map(|_| b.next_step(now()).unwrap()).map(|u| u.id).collect();
    assert_eq!(order, vec![2, 3, 1]);

    // Promotion: a low-class request that waited ≥ promote_after goes before fresh feed requests.
    b.push(pending(10, 2, 100, 0));
    advance(Duration::from_millis(60)).await;
    b.push(pending(11, 0, 100, 0));
    let first = b.next_step(now()).unwrap();
    assert_eq!(first[0].id, 10, "promoted after waiting 60 ms ≥ 50 ms");
    assert_eq!(b.next_step(now()).unwrap()[0].id, 11);
}

#[tokio::test(start_paused = true)]
async fn deadlines_drop_before_compute() {
    let mut b = BatchBuilder::new(policy(), 1);
    let mut p = pending(1, 0, 10, 10);
    p.deadline = now() + Duration::from_millis(5);
    b.push(p);
    let mut q = pending(2, 0, 10, 10);
    q.deadline = now() + Duration::from_millis(100);
    b.push(q);
    // 1 µs per token: request 2 (20 tokens, 100 ms left) fits; nothing expired yet.
    assert!(b.drop_doomed(now(), Duration::from_micros(1), |_| false).is_empty());
    advance(Duration::from_millis(6)).await;
    let dropped = b.drop_doomed(now(), Duration::ZERO, |_| false);
    assert_eq!(dropped, vec![(1, DropReason::Expired)]);
    // At 10 ms per token request 2 (20 tokens = 200 ms) cannot finish in its remaining 94 ms.
    let dropped = b.drop_doomed(now(), Duration::from_millis(10), |_| false);
    assert_eq!(dropped, vec![(2, DropReason::WouldMissDeadline)]);
    assert!(b.is_empty());
    assert_eq!(b.queued_tokens(), 0);
}

#[tokio::test(start_paused = true)]
async fn would_miss_deadline_counts_work_not_tokens() {
    // Per-candidate scoring: 10 candidates each re-running a 10-event history = 110 token passes,
    // though only 20 tokens are queued. At 1 ms per pass it needs 110 ms; 50 ms are left.
    let mut b = BatchBuilder::new(policy(), 1);
    let mut p = pending(1, 0, 10, 10);
    p.work = 10 * (10 + 1);
    p.deadline = now() + Duration::from_millis(50);
    b.push(p);
    let mut q = pending(2, 0, 10, 10);
    q.deadline = now() + Duration::from_millis(50);
    b.push(q);
    let dropped = b.drop_doomed(now(), Duration::from_millis(1), |_| false);
    assert_eq!(dropped, vec![(1, DropReason::WouldMissDeadline)]);
    assert_eq!(b.queued_tokens(), 20);
}

#[tokio::test(start_paused = true)]
async fn running_request_stops_when_its_deadline_passes() {
    let mut pol = policy();
    pol.max_step_tokens = 20;
    let mut b = BatchBuilder::new(pol, 1);
    let mut p = pending(1, 0, 4, 64);
    p.deadline = now() + Duration::from_millis(10);
    b.push(p);
    let step = b.next_step(now()).unwrap();
    assert_eq!(step.len(), 2, "history + one micro-batch of 16 fit in 20 tokens: {step:?}");
    advance(Duration::from_millis(11)).await;
    // Started requests are not judged by the cost estimate, only by their deadline.
    let dropped = b.drop_doomed(now(), Duration::from_secs(1), |_| false);
    assert_eq!(dropped, vec![(1, DropReason::Expired)]);
    assert_eq!(b.next_step(now()), None);
}

#[tokio::test(start_paused = true)]
async fn cancelled_requests_free_their_slot() {
    let mut b = BatchBuilder::new(policy(), 2);
    b.push(pending(1, 0, 10, 10));
    b.push(pending(2, 1, 10, 10));
    let dropped = b.drop_doomed(now(), Duration::ZERO, |id| id == 1);
    assert_eq!(dropped, vec![(1, DropReason::Cancelled)]);
    assert_eq!(b.len_by_class(), vec![0, 1]);
    assert_eq!(b.queued_tokens(), 20);
}

#[tokio::test(start_paused = true)]
async fn candidates_split_from_their_history_wait_until_it_is_computed() {
    let mut b = BatchBuilder::new(policy(), 2);
    b.push(pending(1, 0, 60, 64)); // 124 tokens: history + two micro-batches fit in 100
    let first = b.next_step(now()).unwrap();
    assert_eq!(first.len(), 3, "{first:?}");
    assert_eq!(first[0].kind, UnitKind::History, "history first: its candidates follow on the same worker");
    // Another worker is free, but request 1's history is still being computed: nothing to hand out,
    // and no wake-up before its deadline (history_ready is what wakes the caller).
    assert_eq!(b.next_step(now()), None);
    assert_eq!(b.next_wakeup(true), Some(now() + Duration::from_secs(1)));
    // Work of other requests is not held up by it.
    b.push(pending(2, 1, 10, 5));
    advance(Duration::from_millis(2)).await;
    let other = b.next_step(now()).unwrap();
    assert!(other.iter().all(|u| u.id == 2), "{other:?}");
    b.history_ready(1);
    assert!(b.next_wakeup(true).unwrap() <= now(), "ready candidates are due at once");
    let rest = b.next_step(now()).unwrap();
    assert_eq!(
        rest,
        vec![
            Unit { id: 1, kind: UnitKind::Candidates(32..48), last: false },
            Unit { id: 1, kind: UnitKind::Candidates(48..64), last: true },
        ]
    );
    assert!(b.is_empty());
    b.history_ready(1); // already fully scheduled: ignored
}

#[tokio::test(start_paused = true)]
async fn due_work_that_cannot_be_handed_out_wakes_only_for_deadlines() {
    let mut b = BatchBuilder::new(policy(), 2);
    b.push(pending(1, 0, 10, 5));
    b.push(pending(2, 1, 10, 5));
    advance(Duration::from_millis(5)).await;
    // Both are due (waited past max_wait): with a free worker, at once.
    assert!(b.next_wakeup(true).unwrap() <= now());
    // With every worker's steps in hand, not before the earliest deadline (1 s after enqueueing).
    assert_eq!(b.next_wakeup(false), Some(now() + Duration::from_millis(995)));
    // Nothing queued: nothing to wake for either way.
    let mut empty = BatchBuilder::new(policy(), 1);
    assert_eq!(empty.next_wakeup(false), None);
    assert_eq!(empty.next_step(now()), None);
}

#[tokio::test(start_paused = true)]
async fn with_idle_workers_a_small_queue_is_spread_over_them() {
    // Budget 100, micro-batches of 16: one request of 10 history tokens + 40 candidates.
    let gathering = BatchBuilder::new(policy(), 1);
    assert_eq!(gathering.spread_budget(2), 100, "with a max_wait, steps are not spread");
    let mut b = BatchBuilder::new(BatchPolicy { max_wait: Duration::ZERO, ..policy() }, 1);
    b.push(pending(1, 0, 10, 40));
    // 50 tokens over 2 workers: 25, rounded up to whole micro-batches: 32.
    assert_eq!(b.spread_budget(2), 32);
    assert_eq!(b.spread_budget(1), 64, "one worker: all of it (50, rounded up)");
    assert_eq!(b.spread_budget(0), 64, "no worker count: as one");
    let first = b.next_step_within(now(), b.spread_budget(2)).unwrap();
    assert_eq!(
        first,
        vec![
            Unit { id: 1, kind: UnitKind::History, last: false },
            Unit { id: 1, kind: UnitKind::Candidates(0..16), last: false },
        ],
        "history and one micro-batch (26 tokens; another would make 42 > 32)"
    );
    b.history_ready(1);
    // The remaining 24 candidates, spread: 24 ÷ 2 → one micro-batch per step.
    assert_eq!(b.spread_budget(2), 16);
    let second = b.next_step_within(now(), b.spread_budget(2)).unwrap();
    assert_eq!(second, vec![Unit { id: 1, kind: UnitKind::Candidates(16..32), last: false }]);
    let third = b.next_step_within(now(), 16).unwrap();
    assert_eq!(third, vec![Unit { id: 1, kind: UnitKind::Candidates(32..40), last: true }]);
    assert!(b.is_empty());
    // A long queue is never cut above max_step_tokens.
    for id in 2..10 {
        b.push(pending(id, 0, 10, 40));
    }
    assert_eq!(b.spread_budget(2), 100);
    assert_eq!(
        b.next_step_within(now(), usize::MAX).map(|u| u.len()),
        Some(8),
        "two whole requests: 100 tokens"
    );
}

#[tokio::test(start_paused = true)]
async fn cache_hit_request_has_only_candidate_units() {
    let mut b = BatchBuilder::new(policy(), 1);
    b.push(pending(1, 0, 0, 20));
    advance(Duration::from_millis(2)).await;
    let step = b.next_step(now()).unwrap();
    assert_eq!(step[0], Unit { id: 1, kind: UnitKind::History, last: false });
    assert_eq!(
        step[1..].iter().map(|u| u.kind.clone()).collect::<Vec<_>>(),
        vec![UnitKind::Candidates(0..16), UnitKind::Candidates(16..20)]
    );
}
