//! The loops that send load: open (a schedule of arrivals, whatever the answers) and closed (workers that
//! wait for each answer). One run = an unmeasured warm-up followed, without a pause, by the measured
//! window; only requests *scheduled* inside the window are counted, and every one of them is waited for
//! (each is bounded by the client timeout), so `sent = ok + errors + rejected` holds exactly.

use crate::client::Client;
use crate::report::RunReport;
use crate::scenario::{Load, LoopMode};
use crate::schedule::Schedule;
use crate::stats::{Outcome, Recorder, Status};
use crate::workload::Workload;
use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Live counters for the progress bar.
#[derive(Default)]
pub struct Live {
    pub sent: AtomicU64,
    pub ok: AtomicU64,
    pub rejected: AtomicU64,
    pub errors: AtomicU64,
    pub in_flight: AtomicU64,
}

impl Live {
    fn done(&self, o: &Outcome) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let c = match o.status {
            Status::Ok => &self.ok,
            Status::Rejected => &self.rejected,
            Status::Error(_) => &self.errors,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

pub struct Ctx {
    pub client: Arc<Client>,
    pub workload: Arc<Workload>,
    pub load: Load,
    pub seed: u64,
    pub streaming: bool,
}

/// Counts of one run besides the histograms.
#[derive(Default)]
struct Counts {
    scheduled: u64,
    sent: u64,
    skipped: u64,
    max_lag: Duration,
}

/// One measured run at `rate` (open loop) or with the scenario's workers (closed loop).
pub async fn run_once(ctx: &Ctx, rate: Option<f64>, salt: u64, bar: &ProgressBar) -> RunReport {
    let live = Arc::new(Live::default());
    let warmup = Duration::from_secs_f64(ctx.load.warmup_s);
    let window = Duration::from_secs_f64(ctx.load.duration_s);
    bar.reset();
    bar.set_length((warmup + window).as_millis() as u64);
    let ticker = {
        let (bar, live) = (bar.clone(), Arc::clone(&live));
        let what = match (ctx.load.mode, rate) {
            (LoopMode::Open, Some(r)) => format!("{r:.1} rps"),
            _ => format!("{} workers", ctx.load.concurrency),
        };
        let start = Instant::now();
        tokio::spawn(async move {
            loop {
                bar.set_position(start.elapsed().as_millis() as u64);
                bar.set_message(format!(
                    "{what}: sent {} ok {} rejected {} errors {} in flight {}",
                    live.sent.load(Ordering::Relaxed),
                    live.ok.load(Ordering::Relaxed),
                    live.rejected.load(Ordering::Relaxed),
                    live.errors.load(Ordering::Relaxed),
                    live.in_flight.load(Ordering::Relaxed),
                ));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let started = Instant::now();
    let (rec, counts) = match (ctx.load.mode, rate) {
        (LoopMode::Open, Some(r)) => open_loop(ctx, r, warmup, window, salt, &live).await,
        _ => closed_loop(ctx, rate, warmup, window, salt, &live).await,
    };
    ticker.abort();
    let elapsed = started.elapsed().saturating_sub(warmup);
    RunReport::new(
        match ctx.load.mode {
            LoopMode::Open => rate,
            LoopMode::Closed => None,
        },
        (ctx.load.mode == LoopMode::Closed).then_some(ctx.load.concurrency),
        window,
        elapsed,
        counts.scheduled,
        counts.sent,
        counts.skipped,
        counts.max_lag,
        &rec,
    )
}

/// The open loop. Its dispatcher runs on a blocking-pool thread of its own and waits for each arrival
/// with `std::thread::sleep` (the kernel's high-resolution timers: tens of µs late), not on tokio's
/// timer, which has millisecond granularity: a `sleep_until` wakes up to 1 ms after the arrival it
/// waits for, and that lag counts in every latency (from the intended time), too much where the SLO
/// is a few milliseconds. Requests run on the runtime as tasks, as before.
async fn open_loop(
    ctx: &Ctx,
    rate: f64,
    warmup: Duration,
    window: Duration,
    salt: u64,
    live: &Arc<Live>,
) -> (Recorder, Counts) {
    let handle = tokio::runtime::Handle::current();
    let (client, workload, live) = (Arc::clone(&ctx.client), Arc::clone(&ctx.workload), Arc::clone(live));
    let (seed, max_requests, max_in_flight, arrival) =
        (ctx.seed, ctx.load.max_requests, ctx.load.max_in_flight, ctx.load.arrival);
    let streaming = ctx.streaming;
    let dispatcher = tokio::task::spawn_blocking(move || {
        let mut rng = StdRng::seed_from_u64(seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        // The warm-up sends at the same rate; its requests are not counted or capped.
        let warm_max = (rate * warmup.as_secs_f64()).ceil() as u64 + 1;
        let sched = Schedule::new(
            arrival,
            rate,
            warmup + window,
            warm_max.saturating_add(max_requests),
            StdRng::seed_from_u64(seed.wrapping_add(salt).wrapping_add(1)),
        );
        let mut rec = Recorder { streaming, ..Recorder::default() };
        let mut c = Counts::default();
        let mut set: JoinSet<(bool, Outcome)> = JoinSet::new();
        let start = Instant::now();
        for offset in sched {
            let measured = offset >= warmup;
            if measured && c.scheduled >= max_requests {
                break;
            }
            while let Some(r) = set.try_join_next() {
                keep(&mut rec, r);
            }
            let due = start + offset;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if measured {
                c.scheduled += 1;
                c.max_lag = c.max_lag.max(Instant::now() - due);
            }
            if set.len() >= max_in_flight {
                if measured {
                    c.skipped += 1;
                }
                continue;
            }
            let draw = workload.draw(&mut rng);
            if measured {
                c.sent += 1;
                live.sent.fetch_add(1, Ordering::Relaxed);
            }
            live.in_flight.fetch_add(1, Ordering::Relaxed);
            let (client, workload, live) = (Arc::clone(&client), Arc::clone(&workload), Arc::clone(&live));
            set.spawn_on(
                async move {
                    let o = client.send(&workload, draw, due).await;
                    live.done(&o);
                    (measured, o)
                },
                &handle,
            );
        }
        (rec, c, set)
    });
    let (mut rec, c, mut set) =
        dispatcher.await.expect("the open-loop dispatcher does not panic; this is a bug");
    while let Some(r) = set.join_next().await {
        keep(&mut rec, r);
    }
    (rec, c)
}

fn keep(rec: &mut Recorder, r: Result<(bool, Outcome), tokio::task::JoinError>) {
    match r {
        Ok((true, o)) => rec.record(&o),
        Ok((false, _)) => {}
        // A send never panics by design; if one did, count it rather than lose it.
        Err(_) => {
            rec.record(&Outcome::new(Status::Error("client_panic".into()), Duration::ZERO, Duration::ZERO))
        }
    }
}

async fn closed_loop(
    ctx: &Ctx,
    rate: Option<f64>,
    warmup: Duration,
    window: Duration,
    salt: u64,
    live: &Arc<Live>,
) -> (Recorder, Counts) {
    let workers = ctx.load.concurrency;
    let budget = Arc::new(AtomicU64::new(ctx.load.max_requests));
    let start = Instant::now();
    let end = start + warmup + window;
    let mut set = JoinSet::new();
    for wi in 0..workers {
        let (client, workload, live, budget) =
            (Arc::clone(&ctx.client), Arc::clone(&ctx.workload), Arc::clone(live), Arc::clone(&budget));
        let seed =
            ctx.seed ^ salt.wrapping_mul(31).wrapping_add(wi as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let streaming = ctx.streaming;
        // With a rate, each worker has its own fixed schedule (staggered), wrk2-style: a late answer makes
        // the next request late, and its latency counts from when it was due.
        let interval = rate.map(|r| Duration::from_secs_f64(workers as f64 / r));
        let stagger = rate.map_or(Duration::ZERO, |r| Duration::from_secs_f64(wi as f64 / r));
        set.spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut rec = Recorder { streaming, ..Recorder::default() };
            let mut c = Counts::default();
            let mut k = 0u32;
            loop {
                let due = match interval {
                    Some(iv) => start + stagger + iv * k,
                    None => Instant::now(),
                };
                k += 1;
                if due >= end {
                    break;
                }
                let measured = due >= start + warmup;
                if measured
                    && budget
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                        .is_err()
                {
                    break;
                }
                tokio::time::sleep_until(due).await;
                let draw = workload.draw(&mut rng);
                if measured {
                    c.scheduled += 1;
                    c.sent += 1;
                    c.max_lag = c.max_lag.max(Instant::now() - due);
                    live.sent.fetch_add(1, Ordering::Relaxed);
                }
                live.in_flight.fetch_add(1, Ordering::Relaxed);
                let o = client.send(&workload, draw, due).await;
                live.done(&o);
                if measured {
                    rec.record(&o);
                }
            }
            (rec, c)
        });
    }
    let mut rec = Recorder { streaming: ctx.streaming, ..Recorder::default() };
    let mut c = Counts::default();
    while let Some(r) = set.join_next().await {
        let (wr, wc) = r.expect("closed-loop workers do not panic; this is a bug");
        rec.merge(&wr);
        c.scheduled += wc.scheduled;
        c.sent += wc.sent;
        c.max_lag = c.max_lag.max(wc.max_lag);
    }
    (rec, c)
}
