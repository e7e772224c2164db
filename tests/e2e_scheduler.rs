//! The ranking scheduler end to end, through the real binary over real HTTP and gRPC: batched answers
//! equal solo answers, a history-cache hit equals a miss, overload is refused at once while admitted
//! requests complete, an expired deadline never reaches compute, and a cancelled call is counted.

mod common;

use common::Slate;
use slate::proto::slate::v1 as pb;
use slate::ranking::{Fusion, RankRequest, RankResponse, RankerConfig, RankerModel};
use slate_tools::testkit::{random_request, small_config};
use std::time::{Duration, Instant};

fn save(dir: &std::path::Path, cfg: &RankerConfig, seed: u64) -> RankerModel {
    RankerModel::random(cfg, seed).save(dir).expect("save model");
    RankerModel::load(dir).expect("load model")
}

fn model_toml(name: &str, dir: &std::path::Path, settings: &str) -> String {
    format!(
        "[[models]]\nname = \"{name}\"\nkind = \"ranker\"\npath = \"{}\"\nranker = {{ {settings} }}\n",
        dir.display()
    )
}

async fn post_rank(
    slate: &Slate,
    req: &RankRequest,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut b = reqwest::Client::new().post(slate.url("/v1/rank")).json(req);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let r = b.send().await.expect("send");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.expect("body"))
}

/// The value of one metric series (first line that starts with `prefix`), or 0.
async fn metric(slate: &Slate, prefix: &str) -> f64 {
    let text = reqwest::get(slate.url("/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn assert_same_scores(got: &RankResponse, want: &RankResponse) {
    assert_eq!(got.tasks, want.tasks);
    assert_eq!(got.candidates.len(), want.candidates.len());
    for (g, w) in got.candidates.iter().zip(&want.candidates) {
        assert_eq!(g.item_id, w.item_id);
        // Bit-identical: the scheduler runs the same kernels on the same micro-batches.
        assert_eq!(g.scores, w.scores, "item {}", g.item_id);
        assert_eq!(g.objective.to_bits(), w.objective.to_bits());
    }
    assert_eq!(got.top_k_indices, want.top_k_indices);
    assert_eq!(got.history_used, want.history_used);
    assert_eq!(got.mode, want.mode);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_answers_equal_solo_answers_for_random_mixes() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cross = save(d1.path(), &small_config(Fusion::AppendCross, 21), 21);
    let selfm = save(d2.path(), &small_config(Fusion::AppendSelf, 22), 22);
    // A small step budget so requests are split into micro-batches that share steps.
    // No bound by estimated wait: 32 requests arrive at once and must all be computed.
    let settings = "max_step_tokens = 64, max_wait_ms = 2.0, max_queue_delay_ms = 0.0, cache_bytes = 0";
    let toml =
        format!("{}{}", model_toml("cross", d1.path(), settings), model_toml("self", d2.path(), settings));
    let slate = Slate::start(&toml);
    slate.wait_ready(Duration::from_secs(30)).await;

    let mut tasks = Vec::new();
    for i in 0..32u64 {
        let (name, model) = if i % 2 == 0 { ("cross", &cross) } else { ("self", &selfm) };
        let cfg = model.config();
        let hist = [0, 1, 7, cfg.max_history, cfg.max_history + 3][(i % 5) as usize];
        let m = [1, 2, 63, 64, 65, 150][(i % 6) as usize];
        let mut req = random_request(cfg, 100 + i, hist, m);
        req.model = name.into();
        req.top_k = Some(5);
        if i % 7 == 3 {
            req.mode = "per_candidate".into();
        }
        let solo = model.rank(&req, 0).expect("solo rank");
        let url = slate.url("/v1/rank");
        tasks.push(tokio::spawn(async move {
            let r = reqwest::Client::new().post(url).json(&req).send().await.unwrap();
            assert_eq!(r.status(), 200);
            (r.json::<RankResponse>().await.unwrap(), solo)
        }));
    }
    for t in tasks {
        let (got, solo) = t.await.unwrap();
        assert_same_scores(&got, &solo);
    }
    // Requests really were merged: some step held more than one request's history pass.
    let steps = metric(&slate, "slate_rank_step_requests_count{model=\"cross\"}").await;
    let single = metric(&slate, "slate_rank_step_requests_bucket{model=\"cross\",le=\"1\"}").await;
    assert!(steps > 0.0 && single < steps, "steps {steps}, steps with ≤ 1 request {single}");
}

#[tokio::test]
async fn cache_hit_equals_miss() {
    let dir = tempfile::tempdir().unwrap();
    let model = save(dir.path(), &small_config(Fusion::AppendSelf, 5), 5);
    let slate = Slate::start(&model_toml("m", dir.path(), "cache_bytes = 1048576"));
    slate.wait_ready(Duration::from_secs(30)).await;

    let mut feed = random_request(model.config(), 9, model.config().max_history, 40);
    feed.model = "m".into();
    let (s, _, body) = post_rank(&slate, &feed, &[]).await;
    assert_eq!(s, 200, "{body}");
    let miss: RankResponse = serde_json::from_str(&body).unwrap();
    assert!(!miss.cache_hit);

    // An ads request for the same member and history right after, other candidates: a hit.
    let mut ads = random_request(model.config(), 10, 0, 25);
    ads.model = "m".into();
    ads.member_id = feed.member_id;
    ads.member_sparse = feed.member_sparse.clone();
    ads.member_dense = feed.member_dense.clone();
    ads.history = feed.history.clone();
    ads.priority = "ads".into();
    let (s, _, body) = post_rank(&slate, &ads, &[]).await;
    assert_eq!(s, 200, "{body}");
    let hit: RankResponse = serde_json::from_str(&body).unwrap();
    assert!(hit.cache_hit, "same member and history: the encoded history is reused");
    assert_same_scores(&hit, &model.rank(&ads, 0).unwrap());

    // The feed refresh over gRPC also hits, and equals its own miss bit for bit.
    let mut client = pb::ranking_client::RankingClient::new(slate.grpc_channel().await);
    let again =
        RankResponse::from(client.rank(pb::RankRequest::from(feed.clone())).await.unwrap().into_inner());
    assert!(again.cache_hit);
    assert_same_scores(&again, &miss);

    // A changed history misses.
    let mut changed = feed.clone();
    changed.history.last_mut().unwrap().item_id += 1;
    let (_, _, body) = post_rank(&slate, &changed, &[]).await;
    assert!(!serde_json::from_str::<RankResponse>(&body).unwrap().cache_hit);

    assert_eq!(metric(&slate, "slate_history_cache_lookups_total{model=\"m\",result=\"hit\"}").await, 2.0);
    assert!(metric(&slate, "slate_history_cache_bytes").await > 0.0);
}

/// A model big enough that per-candidate requests take tens of milliseconds.
fn slow_model(dir: &std::path::Path) -> RankerModel {
    let mut cfg = RankerConfig::reference_workload();
    cfg.item_buckets = 1024;
    save(dir, &cfg, 7)
}

fn slow_request(model: &RankerModel, seed: u64, m: usize) -> RankRequest {
    let mut req = random_request(model.config(), seed, model.config().max_history, m);
    req.model = "slow".into();
    req.mode = "per_candidate".into();
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_is_refused_at_once_while_admitted_requests_complete() {
    let dir = tempfile::tempdir().unwrap();
    let model = slow_model(dir.path());
    let slate = Slate::start(&model_toml(
        "slow",
        dir.path(),
        "workers = 1, max_queued_requests = 2, cache_bytes = 0",
    ));
    slate.wait_ready(Duration::from_secs(60)).await;

    let mut tasks = Vec::new();
    for i in 0..12u64 {
        let req = slow_request(&model, i, 4);
        let url = slate.url("/v1/rank");
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let r = reqwest::Client::new().post(url).json(&req).send().await.unwrap();
            let retry = r.headers().get("retry-after").is_some();
            (r.status().as_u16(), retry, t0.elapsed())
        }));
    }
    let grpc_req = {
        let mut client = pb::ranking_client::RankingClient::new(slate.grpc_channel().await);
        let req = pb::RankRequest::from(slow_request(&model, 99, 4));
        tokio::spawn(async move {
            let mut codes = Vec::new();
            for _ in 0..6 {
                codes.push(client.rank(req.clone()).await.map(|_| ()).map_err(|s| s.code()));
            }
            codes
        })
    };
    let (mut ok, mut rejected) = (0, 0);
    for t in tasks {
        let (status, retry_after, _elapsed) = t.await.unwrap();
        match status {
            200 => ok += 1,
            429 => {
                assert!(retry_after, "429 carries retry-after");
                rejected += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    let codes = grpc_req.await.unwrap();
    assert!(codes.iter().all(|c| matches!(c, Ok(()) | Err(tonic::Code::ResourceExhausted))), "{codes:?}");
    assert!(ok >= 1, "admitted requests complete");
    assert!(rejected >= 1, "12 concurrent slow requests against 2 slots: some are refused");
    assert!(metric(&slate, "slate_rejections_total{model=\"slow\",reason=\"queue_requests\"}").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn work_that_would_wait_past_the_queue_delay_bound_is_refused_at_once() {
    let (slate, refused, _dir) = burst_of_slow_requests(
        "workers = 1, max_queue_delay_ms = 1.0, max_queued_requests = 64, cache_bytes = 0",
    )
    .await;
    assert_eq!(
        metric(&slate, "slate_rejections_total{model=\"slow\",reason=\"queue_delay\"}").await,
        refused as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standing_queue_is_refused_by_the_overload_bound() {
    // A roomy bound that never refuses here, and an overload bound of 1 ms that applies as soon as the
    // queue is not short (overload_after_ms = 0): the burst is refused by the tighter one.
    let (slate, refused, _dir) = burst_of_slow_requests(
        "workers = 1, max_queue_delay_ms = 60000.0, overload_queue_delay_ms = 1.0, \
         overload_after_ms = 0.0, max_queued_requests = 64, cache_bytes = 0",
    )
    .await;
    let by = |reason: &str| format!("slate_rejections_total{{model=\"slow\",reason=\"{reason}\"}}");
    assert_eq!(metric(&slate, &by("queue_delay_overload")).await, refused as f64);
    assert_eq!(metric(&slate, &by("queue_delay")).await, 0.0);
}

/// Starts the slow model with `settings`, calibrates the cost estimate one request at a time, then
/// sends eight requests at once; asserts some are answered and some refused at once (429 with a
/// retry hint). Returns the server, the number refused and the model folder (kept while it runs).
async fn burst_of_slow_requests(settings: &str) -> (Slate, usize, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let model = slow_model(dir.path());
    let slate = Slate::start(&model_toml("slow", dir.path(), settings));
    slate.wait_ready(Duration::from_secs(60)).await;
    // The cost per work token is an EWMA of measured steps (readiness ran one small amortized
    // request): calibrate it on this shape, one request at a time (one alone is always admitted).
    for i in 0..12 {
        let (s, _, body) = post_rank(&slate, &slow_request(&model, i, 16), &[]).await;
        assert_eq!(s, 200, "{body}");
    }

    // Eight at once: each is ≥ 16 full 257-token passes (milliseconds), so any request behind another
    // would wait more than 1 ms.
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let req = slow_request(&model, 100 + i, 16);
        let url = slate.url("/v1/rank");
        tasks.push(tokio::spawn(async move {
            let r = reqwest::Client::new().post(url).json(&req).send().await.unwrap();
            let retry_ms =
                r.headers().get("retry-after-ms").map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            (r.status().as_u16(), retry_ms)
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            (200, _) => ok += 1,
            (429, Some(ms)) => {
                assert!((10..=10_000).contains(&ms), "retry hint from the backlog, got {ms} ms");
                refused += 1;
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(ok >= 1 && refused >= 1, "ok {ok}, refused {refused}");
    (slate, refused, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_deadline_never_reaches_compute_and_cancel_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let model = slow_model(dir.path());
    // No bound by estimated wait: this test needs requests to queue behind the slow ones.
    let slate = Slate::start(&model_toml(
        "slow",
        dir.path(),
        "workers = 1, max_wait_ms = 0.0, max_queue_delay_ms = 0.0, cache_bytes = 0",
    ));
    slate.wait_ready(Duration::from_secs(60)).await;
    let computed_before = metric(&slate, "slate_rank_compute_total").await;

    // Occupy the only worker (and the step in hand) with slow requests.
    let mut busy = Vec::new();
    for i in 0..3 {
        let req = slow_request(&model, i, 64);
        let url = slate.url("/v1/rank");
        busy.push(tokio::spawn(async move {
            let r = reqwest::Client::new().post(url).header("x-request-timeout-ms", "60000").json(&req);
            r.send().await.unwrap().status().as_u16()
        }));
    }
    tokio::time::sleep(Duration::from_millis(30)).await;

    // A 5 ms deadline behind them: answered 504 without being computed.
    let (s, _, body) =
        post_rank(&slate, &slow_request(&model, 50, 2), &[("x-request-timeout-ms", "5")]).await;
    assert_eq!(s, 504, "{body}");
    assert!(body.contains("deadline_exceeded"), "{body}");

    // A gRPC call whose client gives up (drops the call) while it is queued is cancelled.
    let mut client = pb::ranking_client::RankingClient::new(slate.grpc_channel().await);
    let req = pb::RankRequest::from(slow_request(&model, 51, 2));
    let call = tokio::spawn(async move { client.rank(req).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    call.abort();

    for b in busy {
        assert_eq!(b.await.unwrap(), 200);
    }
    // The actor notices drops on its next wake-up; give it a moment.
    let t0 = Instant::now();
    while (metric(&slate, "slate_deadline_drops_total").await < 1.0
        || metric(&slate, "slate_cancellations_total").await < 1.0)
        && t0.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(metric(&slate, "slate_deadline_drops_total").await >= 1.0);
    assert!(metric(&slate, "slate_cancellations_total").await >= 1.0);
    // Only the three slow requests were computed: neither the expired nor the cancelled one.
    assert_eq!(metric(&slate, "slate_rank_compute_total").await - computed_before, 3.0);
}
