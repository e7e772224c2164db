//! Slow and greedy clients against the real server: slow bodies hold no admission slot, slow headers,
//! bodies and idle connections are cut off, the connection cap holds, oversized gRPC Rank messages are
//! refused before decoding with bounded memory, `auth.required` refuses to start without keys, and a
//! configuration that could hold more than the memory budget refuses to start.

mod common;

use common::{rank_body, Slate, SlowRequest};
use slate::proto::slate::v1 as pb;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Whether the server closes `stream` within `within` (a read returns EOF or a reset).
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {} // a response (e.g. 408); keep reading until the close
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
        if Instant::now() > deadline {
            return false;
        }
    }
}

/// Peak resident memory of the server process so far (VmHWM), in bytes.
fn peak_rss(pid: nix::unistd::Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kb * 1024
}

async fn metric(slate: &Slate, line_start: &str) -> f64 {
    let text = reqwest::get(slate.url("/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no `{line_start}` in the scrape:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_slow_bodies_do_not_keep_a_normal_request_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::random_ranker(dir.path(), 11);
    let slate = Slate::start(&common::ranker_toml("demo", dir.path()));
    slate.wait_ready(Duration::from_secs(60)).await;
    let body = serde_json::to_string(&common::ranker_request(&cfg, "demo", 16)).unwrap();
    let client = reqwest::Client::new();
    let rank =
        || client.post(slate.url("/v1/rank")).header("content-type", "application/json").body(body.clone());
    assert_eq!(rank().send().await.unwrap().status(), 200, "warm-up");

    // 600 connections that send one byte of a 100-byte body and stop: more than the 512 admission
    // slots of the default limits.
    let addr = slate.http;
    let slow: Vec<SlowRequest> = tokio::task::spawn_blocking(move || {
        let padded = format!("{:<100}", rank_body("demo"));
        (0..600).map(|_| SlowRequest::start(addr, "/v1/rank", "", &padded, 1)).collect()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(metric(&slate, "slate_connections_open{listener=\"http\"}").await >= 600.0);

    let started = Instant::now();
    let resp = rank().send().await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    assert!(elapsed < Duration::from_secs(1), "a normal request took {elapsed:?} behind 600 slow bodies");
    eprintln!("normal /v1/rank behind 600 slow-body connections: {:.1} ms", elapsed.as_secs_f64() * 1e3);
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_bodies_and_idle_connections_are_cut_off() {
    let slate = Slate::start(
        "[limits]\nbody_read_timeout_s = 1.0\nheader_read_timeout_s = 1.0\nidle_timeout_s = 1.5\n",
    );
    let addr = slate.http;
    let checks = tokio::task::spawn_blocking(move || {
        // A body that stops arriving: 408, then the connection closes.
        let slow = SlowRequest::start(addr, "/v1/rank", "", &format!("{:<100}", rank_body("x")), 5);
        let started = Instant::now();
        let (status, head, body) = slow.read_response();
        let body_cut = started.elapsed();
        assert_eq!(status, 408, "{head}\n{body}");
        assert!(body.contains("request_timeout") && body.contains("body_read_timeout_s"), "{body}");

        // Headers that never end.
        let mut partial = TcpStream::connect(addr).unwrap();
        partial.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n").unwrap();
        let started = Instant::now();
        assert!(closed_within(&mut partial, Duration::from_secs(5)), "a half-sent header was kept open");
        let header_cut = started.elapsed();

        // A kept-alive connection with nothing in flight.
        let mut idle = TcpStream::connect(addr).unwrap();
        idle.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 1024];
        let n = idle.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
        let started = Instant::now();
        assert!(closed_within(&mut idle, Duration::from_secs(5)), "an idle connection was kept open");
        let idle_cut = started.elapsed();
        (body_cut, header_cut, idle_cut)
    })
    .await
    .unwrap();
    let (body_cut, header_cut, idle_cut) = checks;
    assert!(body_cut >= Duration::from_millis(900), "408 came before the timeout: {body_cut:?}");
    assert!(header_cut >= Duration::from_millis(900), "closed before the header timeout: {header_cut:?}");
    assert!(idle_cut >= Duration::from_millis(900), "closed before the idle timeout: {idle_cut:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed_at_once() {
    let slate = Slate::start("[limits]\nmax_connections = 3\n");
    let addr = slate.http;
    let held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut extra = TcpStream::connect(addr).unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut extra, Duration::from_secs(3)), "a 4th connection was kept");
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(held);
    drop(extra);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused =
        metric(&slate, "slate_connections_refused_total{listener=\"http\",reason=\"max_connections\"}").await;
    assert!(refused >= 1.0, "refused = {refused}");
}

/// A gRPC Rank of `n` empty history events: 2 bytes each on the wire.
fn empty_events(n: usize) -> pb::RankRequest {
    pb::RankRequest {
        model: "demo".into(),
        member_id: 1,
        history: vec![pb::HistoryEvent::default(); n],
        candidates: vec![pb::Candidate { item_id: 1, ..Default::default() }],
        ..Default::default()
    }
}

async fn eight_at_once(slate: &Slate, req: &pb::RankRequest) -> Vec<tonic::Status> {
    let channel = slate.grpc_channel().await;
    let calls = (0..8).map(|_| {
        let mut client =
            pb::ranking_client::RankingClient::new(channel.clone()).max_encoding_message_size(usize::MAX);
        let req = req.clone();
        async move { client.rank(req).await.expect_err("refused") }
    });
    futures::future::join_all(calls).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_grpc_rank_messages_are_refused_before_decoding() {
    let dir = tempfile::tempdir().unwrap();
    common::random_ranker(dir.path(), 5);
    let model = common::ranker_toml("demo", dir.path());
    // 4,000,000 empty events: an 8,000,000-byte message (decoded, hundreds of MB).
    let req = empty_events(4_000_000);

    // The default rank route limit (1 MiB) refuses it by size.
    let slate = Slate::start(&model);
    slate.wait_ready(Duration::from_secs(60)).await;
    for status in eight_at_once(&slate, &req).await {
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("1048576"), "{status:?}");
    }
    drop(slate);

    // With the route raised to 8 MiB, the pre-scan counts the events without decoding them.
    let slate = Slate::start(&format!("[limits.route_max_body_bytes]\nrank = 8388608\n{model}"));
    slate.wait_ready(Duration::from_secs(60)).await;
    let before = peak_rss(slate.pid());
    for status in eight_at_once(&slate, &req).await {
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert_eq!(status.message(), "history: 4000000 events is over the limit of 8192");
    }
    let growth = peak_rss(slate.pid()).saturating_sub(before);
    eprintln!("peak RSS growth over 8 concurrent 8 MB Rank messages: {:.1} MB", growth as f64 / 1e6);
    assert!(growth < 200_000_000, "peak RSS grew by {growth} bytes");
}

#[test]
fn auth_required_without_keys_refuses_to_start() {
    let out = common::run_to_exit("[auth]\nrequired = true\n");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("auth.required = true but no API key is configured"), "{text}");
}

#[test]
fn a_configuration_over_the_memory_budget_refuses_to_start_naming_its_parts() {
    // The defaults hold 1.25 GiB of bodies and decoded requests before any model.
    let out = common::run_to_exit("[limits]\nmemory_budget_bytes = 1073741824\n");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("limits.memory_budget_bytes: the configuration lets the server hold up to 1.25 GiB but the budget (limits.memory_budget_bytes) is 1.00 GiB"),
        "{text}"
    );
    assert!(text.contains("request bodies (limits.max_buffered_body_bytes) = 0.25 GiB"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_within_the_memory_budget_logs_its_estimate() {
    let slate = Slate::start("[limits]\nmemory_budget_bytes = 2147483648\n");
    slate.wait_ready(Duration::from_secs(30)).await;
    let logs = slate.logs();
    assert!(logs.contains("the configuration fits the memory budget"), "{logs}");
    assert!(logs.contains("estimate_bytes=1342177280"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_without_auth_says_so_at_start() {
    let slate = Slate::start("");
    slate.wait_ready(Duration::from_secs(30)).await;
    assert!(slate.logs().contains("auth is off"), "{}", slate.logs());
    let keyed = Slate::start_with("", &[("SLATE_API_KEYS", "k1")]);
    keyed.wait_ready(Duration::from_secs(30)).await;
    assert!(!keyed.logs().contains("auth is off"), "{}", keyed.logs());
    assert!(!keyed.logs().contains("k1"), "a key reached the logs:\n{}", keyed.logs());
}
