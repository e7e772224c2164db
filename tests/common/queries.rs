//! The metric names the deployment artifacts query (Grafana dashboard, Prometheus rules, the
//! Prometheus Operator rule, the metrics adapter), and the names on a scrape, for tests that hold the
//! server's exposition against them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub fn root(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// deploy/prometheus/*.yml, sorted.
pub fn rule_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root("deploy/prometheus"))
        .expect("deploy/prometheus exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    v.sort();
    assert!(v.len() >= 2, "recording and alerting rule files: {v:?}");
    v
}

/// Metric-like tokens in `text` that start with `prefix` (`slate_` for metrics, `slate:` for recording
/// rules).
pub fn tokens(text: &str, prefix: &str) -> BTreeSet<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().next_back();
        let tail = &rest[i..];
        let end = tail.find(|c: char| !is_ident(c)).unwrap_or(tail.len());
        if !before.is_some_and(is_ident) {
            out.insert(tail[..end].to_string());
        }
        rest = &tail[end.max(1)..];
    }
    out
}

/// The Grafana dashboard, parsed.
pub fn dashboard() -> serde_json::Value {
    let path = root("deploy/grafana/slate-dashboard.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every `expr` (and variable query) in a Grafana dashboard.
pub fn dashboard_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    ("query", serde_json::Value::Object(q)) => {
                        if let Some(s) = q.get("query").and_then(|s| s.as_str()) {
                            out.push(s.to_string());
                        }
                    }
                    _ => dashboard_queries(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| dashboard_queries(x, out)),
        _ => {}
    }
}

/// Every `slate_*` metric a deployment artifact queries, with the artifacts that query it: the
/// dashboard's queries, deploy/prometheus/*.yml, deploy/k8s/prometheusrule.yaml, and the adapter's
/// series queries.
pub fn queried_metrics() -> std::collections::BTreeMap<String, BTreeSet<String>> {
    let mut sources: Vec<(String, BTreeSet<String>)> = Vec::new();
    let mut queries = Vec::new();
    dashboard_queries(&dashboard(), &mut queries);
    assert!(queries.len() > 20, "the dashboard has {} queries", queries.len());
    let dash = queries.iter().flat_map(|q| tokens(q, "slate_")).collect();
    sources.push(("deploy/grafana/slate-dashboard.json".into(), dash));
    let mut rules: Vec<PathBuf> = rule_files();
    rules.push(root("deploy/k8s/prometheusrule.yaml"));
    for f in rules {
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        sources.push((f.strip_prefix(root("")).unwrap_or(&f).display().to_string(), tokens(&text, "slate_")));
    }
    let adapter = std::fs::read_to_string(root("deploy/k8s/prometheus-adapter.yaml")).unwrap();
    let series =
        adapter.lines().filter(|l| l.contains("seriesQuery")).flat_map(|l| tokens(l, "slate_")).collect();
    sources.push(("deploy/k8s/prometheus-adapter.yaml (seriesQuery)".into(), series));

    let mut out = std::collections::BTreeMap::<String, BTreeSet<String>>::new();
    for (source, names) in sources {
        assert!(!names.is_empty(), "{source} queries no slate_ metric");
        for n in names {
            out.entry(n).or_default().insert(source.clone());
        }
    }
    out
}

/// Metric names in a Prometheus text exposition.
pub fn scraped_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l[..l.find(['{', ' ']).unwrap_or(l.len())].to_string())
        .collect()
}
