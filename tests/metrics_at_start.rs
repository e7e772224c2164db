//! A fresh server's first scrape, before any request but the scrape itself, already has every metric
//! that the Grafana dashboard, the Prometheus rules and the metrics adapter query (tests/common/queries.rs
//! reads them from deploy/), for every model of the default config, with every label value the server
//! declares (rejection reasons, priority classes): all registered at zero, so rates and ratios have a
//! series from the start and no panel or alert waits for a first event.

mod common;

use common::queries::{queried_metrics, root, scraped_names};
use slate::config::{Config, ModelKind};
use slate::metrics;

/// Whether `scrape` has a sample of `metric` whose labels include every one of `labels`.
fn has_series(scrape: &str, metric: &str, labels: &[String]) -> bool {
    scrape.lines().any(|l| {
        l.strip_prefix(metric)
            .and_then(|rest| rest.strip_prefix('{'))
            .is_some_and(|rest| labels.iter().all(|want| rest.contains(want.as_str())))
    })
}

/// Whether `metric` has a series per model of `kind` (the rest are per server, like in-flight requests).
fn per_model(metric: &str, kind: ModelKind) -> bool {
    if metric.starts_with("slate_requests_in_flight") || metric.starts_with("slate_build_info") {
        false
    } else if metric.starts_with("slate_slm_") {
        kind == ModelKind::Slm
    } else if metric.starts_with("slate_rank_") || metric.starts_with("slate_history_cache_") {
        kind == ModelKind::Ranker
    } else {
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_scrape_has_every_queried_metric_for_every_default_model() {
    common::smollm2();
    let text = std::fs::read_to_string(root("config/default.toml")).unwrap();
    let config = Config::parse(&text, "config/default.toml").unwrap_or_else(|e| panic!("{e}"));
    let kinds: Vec<ModelKind> = config.models.iter().map(|m| m.kind).collect();
    assert!(
        kinds.contains(&ModelKind::Ranker) && kinds.contains(&ModelKind::Slm),
        "the default config serves a ranker and an SLM: {kinds:?}"
    );

    let slate = common::Slate::start(&text);
    let resp = reqwest::get(slate.url("/metrics")).await.expect("GET /metrics");
    assert_eq!(resp.status(), 200);
    let scrape = resp.text().await.unwrap();

    let queried = queried_metrics();
    assert!(queried.len() > 20, "{} queried metrics: {queried:?}", queried.len());
    let live = scraped_names(&scrape);
    let absent: Vec<_> = queried.iter().filter(|(n, _)| !live.contains(*n)).collect();
    assert_eq!(
        absent,
        Vec::<(&String, _)>::new(),
        "absent from the first scrape (metric, queried by):\n{scrape}"
    );

    // Per model: each queried metric of its kind has the model's own series.
    for m in &config.models {
        let model = format!("model=\"{}\"", m.name);
        let missing: Vec<&String> = queried
            .keys()
            .filter(|n| per_model(n, m.kind))
            .filter(|n| !has_series(&scrape, n, std::slice::from_ref(&model)))
            .collect();
        assert_eq!(missing, Vec::<&String>::new(), "{}: no series at start:\n{scrape}", m.name);

        let reasons: &[&str] = match m.kind {
            ModelKind::Ranker => &metrics::RANKER_REJECTIONS,
            ModelKind::Slm => &metrics::SLM_REJECTIONS,
            ModelKind::Trees | ModelKind::Additive | ModelKind::SoftTrees => &metrics::TREES_REJECTIONS,
        };
        for reason in reasons {
            let labels = [model.clone(), format!("reason=\"{reason}\"")];
            assert!(has_series(&scrape, metrics::REJECTIONS_TOTAL, &labels), "{labels:?}:\n{scrape}");
        }
        if m.kind == ModelKind::Ranker {
            for class in &config.priorities.classes {
                let labels = [model.clone(), format!("priority=\"{class}\"")];
                assert!(has_series(&scrape, metrics::RANK_QUEUED, &labels), "{labels:?}:\n{scrape}");
            }
        }
    }
    let server_wide = [
        format!("model=\"{}\"", metrics::NO_MODEL),
        format!("reason=\"{}\"", metrics::REJECT_MAX_CONCURRENT),
    ];
    assert!(has_series(&scrape, metrics::REJECTIONS_TOTAL, &server_wide), "{server_wide:?}:\n{scrape}");
}
