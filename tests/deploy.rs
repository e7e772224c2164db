//! Deployment artifacts (deploy/) checked by real tools and against the real server:
//! - `promtool check rules` on deploy/prometheus/*.yml (and a broken copy must fail);
//! - the Kubernetes manifests validated strictly against the Kubernetes schemas (deploy/check_manifests.py:
//!   PyPI `kubernetes-validate`, and the Prometheus Operator's CRD schema for ServiceMonitor and
//!   PrometheusRule), plus cross-checks: the ConfigMap's TOML passes the server's own config parser, the
//!   termination grace covers preStop + `shutdown_grace_s`, the HPA's metrics come from the adapter rules;
//! - a live scrape of the server after it served ranking (HTTP and gRPC) and SLM (streaming completion and
//!   /v1/score) requests passes `promtool check metrics`, and every metric the Grafana dashboard, the rules
//!   and the adapter query exists on it;
//! - the nginx member-affinity config in front of two servers sends each member to one replica.
//!
//! Needs promtool and nginx (Debian packages `prometheus`, `nginx`), the project's Python environment with
//! kubernetes-validate and cloudcoil-models-prometheus-operator (tests/common's `python()`), and the
//! default SLM file: scripts/test.sh provides them all; each test fails, saying so, without its own.

mod common;

use common::queries::{
    dashboard, dashboard_queries, queried_metrics, root, rule_files, scraped_names, tokens,
};
use common::tool;
use slate_loadtest::workload::{Draw, Workload};
use slate_loadtest::{Endpoints, Options, Scenario};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn prometheus_rules_pass_promtool() {
    let out = Command::new(tool("promtool", "prometheus"))
        .args(["check", "rules"])
        .args(rule_files())
        .output()
        .expect("run promtool");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool check rules failed:\n{text}");
    for f in rule_files() {
        let t = std::fs::read_to_string(&f).unwrap();
        assert!(t.contains("record:") || t.contains("alert:"), "{} has rules", f.display());
    }
    // The alerts the issue asks for.
    let alerts = std::fs::read_to_string(root("deploy/prometheus/slate-alerts.yml")).unwrap();
    for a in
        ["SlateRankLatencyP99OverSLO", "SlateErrorRatioHigh", "SlateRejectionRatioHigh", "SlateModelNotReady"]
    {
        assert!(alerts.contains(&format!("alert: {a}")), "alert {a}");
    }
}

#[test]
fn promtool_catches_a_broken_rule() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root("deploy/prometheus/slate-recording.yml")).unwrap();
    let broken = dir.path().join("broken.yml");
    std::fs::write(&broken, text.replacen("sum by (model, method, protocol, code) (", "sum by (model (", 1))
        .unwrap();
    let out =
        Command::new(tool("promtool", "prometheus")).args(["check", "rules"]).arg(&broken).output().unwrap();
    assert!(!out.status.success(), "a PromQL syntax error must fail promtool");
}

/// Runs deploy/check_manifests.py on `files` (none: every manifest); (exit ok, stdout, stderr).
fn check_manifests(files: &[&Path]) -> (bool, String, String) {
    let python = common::python();
    let out = Command::new(&python)
        .arg(root("deploy/check_manifests.py"))
        .arg("--json")
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("run {} deploy/check_manifests.py: {e}", python.display()));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "deploy/check_manifests.py needs kubernetes-validate and cloudcoil-models-prometheus-operator in \
         {} (scripts/test.sh installs them):\n{stderr}",
        python.display()
    );
    (out.status.success(), stdout, stderr)
}

fn find<'a>(docs: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    docs.iter()
        .map(|d| &d["doc"])
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in deploy/k8s"))
}

#[test]
fn kubernetes_manifests_validate_and_agree_with_the_server() {
    let (ok, stdout, stderr) = check_manifests(&[]);
    assert!(ok, "manifests do not validate:\n{stderr}");
    let docs: Vec<serde_json::Value> = serde_json::from_str(&stdout).expect("checker prints JSON");
    let kinds: BTreeSet<String> =
        docs.iter().map(|d| d["doc"]["kind"].as_str().unwrap().to_string()).collect();
    for k in [
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
        "Ingress",
    ] {
        assert!(kinds.contains(k), "deploy/k8s has a {k}");
    }

    // The ConfigMap's TOML is a config the server accepts (unknown keys are errors there).
    let toml =
        find(&docs, "ConfigMap", "slate-config")["data"]["slate.toml"].as_str().expect("slate.toml key");
    let cfg = slate::config::Config::parse(toml, "deploy/k8s/configmap.yaml slate.toml")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.server.http_addr.ip().is_unspecified(), "binds 0.0.0.0 in a pod");
    assert!(cfg.server.grpc_addr.ip().is_unspecified(), "binds 0.0.0.0 in a pod");

    // Probes, ports and the termination budget.
    let dep = find(&docs, "Deployment", "slate");
    let pod = &dep["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/health/live");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/health/ready");
    let ports: Vec<u64> =
        c["ports"].as_array().unwrap().iter().map(|p| p["containerPort"].as_u64().unwrap()).collect();
    assert_eq!(ports, vec![u64::from(cfg.server.http_addr.port()), u64::from(cfg.server.grpc_addr.port())]);
    let pre_stop: f64 = c["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .and_then(|a| a.last()?.as_str()?.parse().ok())
        .expect("preStop: [sleep, N]");
    let grace = pod["terminationGracePeriodSeconds"].as_f64().expect("terminationGracePeriodSeconds");
    assert!(
        pre_stop + cfg.server.shutdown_grace_s < grace,
        "preStop {pre_stop} s + shutdown_grace_s {} s must fit in terminationGracePeriodSeconds {grace}",
        cfg.server.shutdown_grace_s
    );
    assert!(c["resources"]["requests"]["cpu"].is_string() && c["resources"]["limits"]["memory"].is_string());
    // The pod's memory limit is the budget the server checks its configuration against at start
    // (cgroup memory.max): the ConfigMap's configuration must fit it, or the pod would not start.
    let limit = c["resources"]["limits"]["memory"].as_str().unwrap();
    let gib: u64 = limit.strip_suffix("Gi").and_then(|n| n.parse().ok()).expect("memory limit in Gi");
    let estimate = slate::config::memory::Estimate::of(&cfg);
    slate::config::memory::check(&estimate, gib << 30, slate::config::memory::BudgetSource::Cgroup)
        .unwrap_or_else(|e| panic!("deploy/k8s: {e}"));
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let mount = c["volumeMounts"][0]["mountPath"].as_str().unwrap();
    assert_eq!(args, vec!["serve", "--config", &format!("{mount}/slate.toml")], "serves the ConfigMap");

    // Services expose both ports by name; the ServiceMonitor scrapes the http port of one of them.
    let svc = find(&docs, "Service", "slate");
    let names: Vec<&str> =
        svc["spec"]["ports"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["http", "grpc"]);
    let sm = find(&docs, "ServiceMonitor", "slate");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "http");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    let sel = sm["spec"]["selector"]["matchLabels"].as_object().unwrap();
    let scraped: Vec<&str> = docs
        .iter()
        .map(|d| &d["doc"])
        .filter(|d| d["kind"] == "Service")
        .filter(|d| sel.iter().all(|(k, v)| &d["metadata"]["labels"][k] == v))
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(scraped, vec!["slate"], "exactly one Service scraped (no double counting)");

    // The HPA asks for metrics the adapter rules produce.
    let adapter =
        find(&docs, "ConfigMap", "prometheus-adapter-slate")["data"]["config.yaml"].as_str().unwrap();
    let produced: BTreeSet<&str> =
        adapter.lines().filter_map(|l| l.trim().strip_prefix("as: ")).map(|s| s.trim_matches('"')).collect();
    let hpa = find(&docs, "HorizontalPodAutoscaler", "slate");
    for m in hpa["spec"]["metrics"].as_array().unwrap() {
        let name = m["pods"]["metric"]["name"].as_str().expect("Pods metrics");
        assert!(
            produced.contains(name),
            "HPA metric {name} is not produced by the adapter rules {produced:?}"
        );
    }

    // kustomization.yaml lists every manifest.
    let kust = std::fs::read_to_string(root("deploy/k8s/kustomization.yaml")).unwrap();
    let files: BTreeSet<String> = docs.iter().map(|d| d["file"].as_str().unwrap().to_string()).collect();
    for f in &files {
        assert!(kust.contains(&format!("- {f}")), "kustomization.yaml lists {f}");
    }
}

#[test]
fn the_manifest_checker_rejects_invalid_manifests() {
    let dir = tempfile::tempdir().unwrap();
    let dep = std::fs::read_to_string(root("deploy/k8s/deployment.yaml")).unwrap();
    let sm = std::fs::read_to_string(root("deploy/k8s/servicemonitor.yaml")).unwrap();
    let cases = [
        (
            "unknown-field.yaml",
            dep.replacen("revisionHistoryLimit: 5", "revisionHistoryLimit: 5\n  replica: 3", 1),
        ),
        ("wrong-type.yaml", dep.replacen("containerPort: 8080", "containerPort: \"http\"", 1)),
        ("crd-field.yaml", sm.replacen("interval: 15s", "interval: 15s\n      scrapeEvery: 15s", 1)),
        ("unknown-kind.yaml", "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n".to_string()),
    ];
    for (name, text) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        let (ok, _, stderr) = check_manifests(&[&p]);
        assert!(!ok, "{name} must not validate; checker said:\n{stderr}");
    }
}

fn demo_slm_config(extra_ranker: &str) -> String {
    format!(
        "[[models]]\nname = \"demo-ranker\"\nkind = \"ranker\"\npath = \"models/demo-ranker\"\n\
         [models.ranker]\n{extra_ranker}\n\
         [[models]]\nname = \"smollm2-135m\"\nkind = \"slm\"\npath = \"{}\"\n",
        common::smollm2().display()
    )
}

fn rank_scenario(
    target: &str,
    rate: f64,
    duration_s: f64,
    history: &str,
    candidates: &str,
    arrival: &str,
) -> Scenario {
    Scenario::parse(
        &format!(
            "name = \"deploy-{target}\"\ntarget = \"{target}\"\nmodel = \"demo-ranker\"\n[load]\narrival = \"{arrival}\"\n\
             rate = {rate}\nduration_s = {duration_s}\ntimeout_ms = 10000\n[ranking]\nhistory_len = {history}\n\
             candidates = {candidates}\nmembers = {{ count = 20, zipf_s = 1.1 }}\n"
        ),
        "deploy.toml",
    )
    .unwrap()
}

fn options(slate: &common::Slate) -> Options {
    Options {
        endpoints: Endpoints { http: slate.url(""), grpc: slate.grpc_url(), ..Endpoints::default() },
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_scrape_passes_promtool_and_has_every_metric_the_dashboard_and_rules_use() {
    // A small history cache (evictions), a short queue (rejections), and the SLM.
    let slate = common::Slate::start(&demo_slm_config("max_queued_requests = 4\ncache_bytes = 200000"));
    slate.wait_ready(Duration::from_secs(180)).await;

    // Ranking over HTTP and gRPC, Zipf members (cache hits and misses), histories longer than the demo
    // ranker's 100 events (truncation).
    for target in ["http-rank", "grpc-rank"] {
        let s = rank_scenario(
            target,
            10.0,
            2.0,
            "{ uniform = { min = 20, max = 150 } }",
            "{ uniform = { min = 8, max = 64 } }",
            "poisson",
        );
        let r = slate_loadtest::run(&s, &options(&slate)).await.expect("ranking load");
        assert!(r.runs[0].ok > 0, "{}", r.table());
    }
    // A burst of large requests overflows the queue of 4 (rejections).
    let s = rank_scenario("http-rank", 300.0, 1.0, "{ fixed = 100 }", "{ fixed = 512 }", "fixed");
    let r = slate_loadtest::run(&s, &options(&slate)).await.expect("burst");
    assert!(r.runs[0].rejected > 0, "the burst is rejected in part:\n{}", r.table());
    // Requests whose 1 ms deadline cannot be met are dropped before compute (deadline drops).
    let w = Workload::new(&s);
    let http = reqwest::Client::new();
    let mut drops = 0;
    for round in 0..20u64 {
        let sends = (0..4u64).map(|i| {
            let body = serde_json::to_vec(&w.rank_request(&Draw {
                member: 1000 + i,
                priority: None,
                seed: round * 10 + i,
            }))
            .unwrap();
            http.post(slate.url("/v1/rank"))
                .header("content-type", "application/json")
                .header("x-request-timeout-ms", "1")
                .body(body)
                .send()
        });
        drops += futures::future::join_all(sends)
            .await
            .into_iter()
            .filter(|r| r.as_ref().is_ok_and(|r| r.status() == 504))
            .count();
        if drops > 0 {
            break;
        }
    }
    assert!(drops > 0, "a 1 ms deadline on a 612-token request is missed");

    // The SLM: one streamed completion, one scoring call.
    let s = Scenario::parse(
        "name = \"deploy-slm\"\ntarget = \"http-completions\"\nmodel = \"smollm2-135m\"\n[load]\narrival = \"fixed\"\n\
         rate = 1.0\nduration_s = 1.0\ntimeout_ms = 60000\n[generation]\nprompt_tokens = { fixed = 16 }\n\
         max_tokens = { fixed = 4 }\n",
        "slm.toml",
    )
    .unwrap();
    let r = slate_loadtest::run(&s, &options(&slate)).await.expect("streamed completion");
    assert_eq!(r.runs[0].ok, 1, "{}", r.table());
    let score = http
        .post(slate.url("/v1/score"))
        .header("content-type", "application/json")
        .body(r#"{"model":"smollm2-135m","prompt":"Is this movie review positive? Great film!","labels":[" yes"," no"]}"#)
        .send()
        .await
        .expect("POST /v1/score");
    let status = score.status();
    assert_eq!(status, 200, "/v1/score: {}", score.text().await.unwrap_or_default());

    let scrape = reqwest::get(slate.url("/metrics")).await.unwrap().text().await.unwrap();

    // promtool's own checks of the exposition (format, naming conventions, help texts).
    let mut child = Command::new(tool("promtool", "prometheus"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(scrape.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every metric the dashboard, the rules and the adapter query is on it (tests/metrics_at_start.rs
    // holds a fresh server to the same list before any traffic).
    let live = scraped_names(&scrape);
    let missing: Vec<_> = queried_metrics().into_iter().filter(|(n, _)| !live.contains(n)).collect();
    assert_eq!(missing, vec![], "queried metrics missing from a live scrape (metric, queried by)");

    // Every recording rule the dashboard uses is defined in deploy/prometheus.
    let dash = dashboard();
    assert!(dash["panels"].as_array().is_some_and(|p| p.len() > 10), "the dashboard has panels");
    let mut queries = Vec::new();
    dashboard_queries(&dash, &mut queries);
    let rules_text: String = rule_files().iter().map(|f| std::fs::read_to_string(f).unwrap()).collect();
    let recorded: BTreeSet<String> = rules_text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record: ").or_else(|| l.trim().strip_prefix("record: ")))
        .map(|s| s.trim().to_string())
        .collect();
    let used_rules: BTreeSet<String> = queries.iter().flat_map(|q| tokens(q, "slate:")).collect();
    for r in &used_rules {
        assert!(
            recorded.contains(r),
            "the dashboard uses {r}, which no recording rule defines ({recorded:?})"
        );
    }
}

/// A free loopback port (bound, then released for nginx to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// nginx in the foreground, stopped gracefully on drop (SIGTERM to the master, which stops its workers;
/// a SIGKILL would orphan them).
struct Nginx {
    child: std::process::Child,
    error_log: PathBuf,
}

impl Nginx {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.error_log).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_member_affinity_sends_each_member_to_one_replica() {
    let nginx = tool("nginx", "nginx");
    let demo = "[[models]]\nname = \"demo-ranker\"\nkind = \"ranker\"\npath = \"models/demo-ranker\"\n";
    let (a, b) = (common::Slate::start(demo), common::Slate::start(demo));
    a.wait_ready(Duration::from_secs(60)).await;
    b.wait_ready(Duration::from_secs(60)).await;

    // deploy/nginx/slate.conf as shipped, with test ports, the two replicas and a private temp folder.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let (hp, gp) = (free_port(), free_port());
    let conf = std::fs::read_to_string(root("deploy/nginx/slate.conf")).unwrap();
    let rewrites = [
        ("listen 8080;".to_string(), format!("listen 127.0.0.1:{hp};")),
        ("listen 50051 http2;".to_string(), format!("listen 127.0.0.1:{gp} http2;")),
        ("10.0.0.11:8080".to_string(), a.http.to_string()),
        ("10.0.0.12:8080".to_string(), b.http.to_string()),
        ("10.0.0.11:50051".to_string(), a.grpc.to_string()),
        ("10.0.0.12:50051".to_string(), b.grpc.to_string()),
        ("/tmp/".to_string(), format!("{}/", dir.path().display())),
        ("worker_processes auto;".to_string(), "worker_processes 1;".to_string()),
        ("error_log stderr warn;".to_string(), format!("error_log {}/error.log warn;", dir.path().display())),
    ];
    let mut conf = conf;
    for (from, to) in &rewrites {
        assert!(conf.contains(from.as_str()), "deploy/nginx/slate.conf has `{from}`");
        conf = conf.replace(from.as_str(), to);
    }
    let conf_path = dir.path().join("slate.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let error_log = dir.path().join("error.log");
    let mut proxy = Nginx {
        child: Command::new(nginx)
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(&error_log)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx"),
        error_log,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", hp)).is_err()
        || std::net::TcpStream::connect(("127.0.0.1", gp)).is_err()
    {
        if let Ok(Some(status)) = proxy.child.try_wait() {
            panic!("nginx exited ({status}):\n{}", proxy.log());
        }
        assert!(Instant::now() < deadline, "nginx did not start listening:\n{}", proxy.log());
        std::thread::sleep(Duration::from_millis(50));
    }

    // A member sends the same history each time: with affinity every repeat is a history-cache hit.
    let s = rank_scenario("http-rank", 1.0, 1.0, "{ fixed = 50 }", "{ fixed = 16 }", "fixed");
    let w = Workload::new(&s);
    let http = reqwest::Client::new();
    let mut misses_on_repeat = Vec::new();
    for member in 1..=24u64 {
        for k in 0..3u64 {
            let body =
                serde_json::to_vec(&w.rank_request(&Draw { member, priority: None, seed: k })).unwrap();
            let resp = http
                .post(format!("http://127.0.0.1:{hp}/v1/rank"))
                .header("content-type", "application/json")
                .header("x-member-id", member.to_string())
                .body(body)
                .send()
                .await
                .expect("through nginx");
            assert_eq!(resp.status(), 200);
            let hit = slate_loadtest::client::cache_hit_field(&resp.bytes().await.unwrap());
            if k > 0 && hit != Some(true) {
                misses_on_repeat.push(("http", member, k));
            }
        }
    }
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{gp}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = slate_loadtest::proto::ranking_client::RankingClient::new(channel);
    for member in 101..=124u64 {
        for k in 0..3u64 {
            let mut req =
                tonic::Request::new(w.rank_request(&Draw { member, priority: None, seed: k }).to_proto());
            req.metadata_mut().insert("x-member-id", member.to_string().parse().unwrap());
            let resp = grpc.rank(req).await.expect("gRPC through nginx");
            if k > 0 && !resp.get_ref().cache_hit {
                misses_on_repeat.push(("grpc", member, k));
            }
        }
    }
    assert_eq!(misses_on_repeat, vec![], "repeats that reached another replica (protocol, member, repeat)");

    // And the hashing spreads members over both replicas, for both protocols.
    for (name, s) in [("a", &a), ("b", &b)] {
        let scrape = reqwest::get(s.url("/metrics")).await.unwrap().text().await.unwrap();
        for protocol in ["http", "grpc"] {
            let served = scrape.lines().any(|l| {
                l.starts_with("slate_requests_total{")
                    && l.contains("method=\"rank\"")
                    && l.contains(&format!("protocol=\"{protocol}\""))
            });
            assert!(served, "replica {name} served {protocol} rank requests");
        }
    }
}
