use super::*;

#[test]
fn latency_buckets_span_100us_to_30s() {
    let b = latency_buckets();
    assert_eq!(b.len(), 36);
    assert!((b[0] - 1e-4).abs() < 1e-12);
    assert!((b[35] - 30.0).abs() < 1e-9);
    assert!(b.windows(2).all(|w| w[0] < w[1]));
}

/// Renders what `f` registers or records, through a recorder of its own (the global one is shared
/// by every test of the process).
fn render_local(f: impl FnOnce()) -> String {
    let recorder = builder().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, f);
    handle.render()
}

/// The sample lines of `text` whose series is `series` (name and labels, as rendered).
fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
    text.lines().find(|l| l.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')))
}

#[test]
fn registered_series_render_at_zero() {
    let text = render_local(|| {
        register_server();
        register_requests("r", [("http", "rank")]);
        register_ranker("r", &["feed".to_string(), "batch".to_string()]);
        register_slm("s");
    });
    let zero = |series: &str| {
        let line = sample(&text, series).unwrap_or_else(|| panic!("{series} is not rendered:\n{text}"));
        assert!(line.ends_with(" 0"), "{line}");
    };
    // Histograms: every bucket and the count at zero.
    zero(r#"slate_rank_queue_duration_seconds_count{model="r"}"#);
    zero(r#"slate_rank_queue_duration_seconds_bucket{model="r",le="+Inf"}"#);
    zero(
        r#"slate_request_duration_seconds_count{model="r",method="rank",protocol="http",status_class="2xx"}"#,
    );
    zero(r#"slate_slm_time_to_first_token_seconds_count{model="s"}"#);
    zero(r#"slate_rank_step_tokens_count{model="r"}"#);
    for stage in RANK_STAGES {
        zero(&format!(r#"slate_rank_stage_duration_seconds_count{{model="r",stage="{stage}"}}"#));
    }
    // Counters and gauges of every declared label value.
    zero(r#"slate_requests_total{model="r",method="rank",protocol="http",code="ok"}"#);
    zero(&format!(r#"slate_rejections_total{{model="{NO_MODEL}",reason="{REJECT_MAX_CONCURRENT}"}}"#));
    for reason in RANKER_REJECTIONS {
        zero(&format!(r#"slate_rejections_total{{model="r",reason="{reason}"}}"#));
    }
    zero(r#"slate_rejections_total{model="s",reason="queue_full"}"#);
    for reason in SLM_FINISH_REASONS {
        zero(&format!(r#"slate_slm_sequences_finished_total{{model="s",reason="{reason}"}}"#));
        zero(&format!(r#"slate_slm_sequence_duration_seconds_count{{model="s",reason="{reason}"}}"#));
    }
    for reason in EVICTION_REASONS {
        zero(&format!(r#"slate_history_cache_evictions_total{{model="r",reason="{reason}"}}"#));
    }
    for model in ["r", "s"] {
        zero(&format!(r#"slate_deadline_drops_total{{model="{model}"}}"#));
        zero(&format!(r#"slate_model_ready{{model="{model}"}}"#));
    }
    zero(r#"slate_rank_history_truncated_total{model="r"}"#);
    zero(r#"slate_rank_queued_requests{model="r",priority="batch"}"#);
    zero(r#"slate_requests_in_flight{protocol="grpc"}"#);
    zero(r#"slate_slm_kv_usage_ratio{model="s"}"#);
    // Each kind has only its own series.
    assert!(sample(&text, r#"slate_rank_compute_total{model="s",mode="amortized"}"#).is_none());
    assert!(sample(&text, r#"slate_slm_preemptions_total{model="r"}"#).is_none());
}

#[test]
fn registering_again_keeps_the_values() {
    let text = render_local(|| {
        register_ranker("r", &[]);
        rejection("r", REJECT_QUEUE_TOKENS);
        model_ready("r", true);
        rank_computed("r", "amortized", Duration::from_millis(2), 0.001, 0.002, 0.0005, 8, 3);
        register_ranker("r", &[]);
    });
    let value = |series: &str| sample(&text, series).and_then(|l| l.rsplit(' ').next()).map(str::to_string);
    assert_eq!(value(r#"slate_rejections_total{model="r",reason="queue_tokens"}"#).as_deref(), Some("1"));
    assert_eq!(value(r#"slate_model_ready{model="r"}"#).as_deref(), Some("1"));
    assert_eq!(value(r#"slate_rank_history_truncated_total{model="r"}"#).as_deref(), Some("3"));
    assert_eq!(value(r#"slate_rank_queue_duration_seconds_count{model="r"}"#).as_deref(), Some("1"));
}

#[test]
fn status_classes() {
    assert_eq!(status_class(200), "2xx");
    assert_eq!(status_class(422), "4xx");
    assert_eq!(status_class(503), "5xx");
}
