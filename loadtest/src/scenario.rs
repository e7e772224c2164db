//! Scenario files (TOML, `loadtest/scenarios/*.toml`): what to send, how fast, for how long. Unknown
//! keys are errors, like the server's config; every validation message names the key.

use crate::dist::{weights_ok, Dist, Zipf};
use crate::schedule::Arrival;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Hard bounds: a load test always stops by itself.
pub const MAX_DURATION_S: f64 = 3600.0;
pub const MAX_REQUESTS: u64 = 10_000_000;
pub const MAX_RATE: f64 = 100_000.0;
pub const MAX_IN_FLIGHT: usize = 65_536;
pub const MAX_STEPS: u32 = 100;

/// What a request is and which endpoint it goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// `POST /v1/rank` (JSON).
    HttpRank,
    /// `slate.v1.Ranking/Rank`.
    GrpcRank,
    /// `POST /v1/completions` with `"stream": true` (OpenAI SSE).
    HttpCompletions,
    /// `POST /v1/chat/completions` with `"stream": true` (OpenAI SSE).
    HttpChat,
    /// `slate.v1.Generation/GenerateStream`.
    GrpcGenerateStream,
    /// `POST /v2/models/{model}/infer` (Open Inference Protocol, JSON): tabular rows for a tree,
    /// additive or soft-tree model.
    HttpInfer,
    /// `inference.GRPCInferenceService/ModelInfer` (Open Inference Protocol over gRPC).
    GrpcInfer,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::HttpRank => "http-rank",
            Target::GrpcRank => "grpc-rank",
            Target::HttpCompletions => "http-completions",
            Target::HttpChat => "http-chat",
            Target::GrpcGenerateStream => "grpc-generate-stream",
            Target::HttpInfer => "http-infer",
            Target::GrpcInfer => "grpc-infer",
        }
    }

    pub fn is_ranking(self) -> bool {
        matches!(self, Target::HttpRank | Target::GrpcRank)
    }

    /// Generation targets: streamed answers, timed token by token.
    pub fn is_generation(self) -> bool {
        matches!(self, Target::HttpCompletions | Target::HttpChat | Target::GrpcGenerateStream)
    }

    /// Open Inference Protocol targets (tabular models).
    pub fn is_infer(self) -> bool {
        matches!(self, Target::HttpInfer | Target::GrpcInfer)
    }

    pub fn is_grpc(self) -> bool {
        matches!(self, Target::GrpcRank | Target::GrpcGenerateStream | Target::GrpcInfer)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LoopMode {
    /// Arrivals on a schedule whatever the answers (the default; shows queueing).
    Open,
    /// `concurrency` workers, each sending its next request when the previous one is answered (and, with
    /// a `rate`, not before its own schedule says so).
    Closed,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Shown in reports.
    pub name: String,
    pub target: Target,
    /// The model the requests name.
    pub model: String,
    /// Seeds every random choice: the same scenario and seed send the same requests.
    #[serde(default = "default_seed")]
    pub seed: u64,
    pub load: Load,
    #[serde(default)]
    pub step: Step,
    /// Required for ranking targets.
    pub ranking: Option<Ranking>,
    /// Required for generation targets.
    pub generation: Option<Generation>,
    /// Inference targets: where rows come from (optional: random rows of the model's width).
    pub infer: Option<Infer>,
    /// Priority classes and their shares, e.g. `{ feed = 0.7, ads = 0.2, batch = 0.1 }`; empty = send
    /// none (the server's default class).
    #[serde(default)]
    pub priorities: BTreeMap<String, f64>,
}

fn default_seed() -> u64 {
    42
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    #[serde(default = "default_mode")]
    pub mode: LoopMode,
    #[serde(default = "default_arrival")]
    pub arrival: Arrival,
    /// Offered requests/s (open loop; closed loop: total target rate over all workers, optional).
    pub rate: Option<f64>,
    /// Closed-loop workers.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Seconds of measured load (per step in step mode).
    pub duration_s: f64,
    /// Seconds of unmeasured load before it (each step included).
    #[serde(default)]
    pub warmup_s: f64,
    /// At most this many requests are sent (per step in step mode), whatever the duration.
    #[serde(default = "default_max_requests")]
    pub max_requests: u64,
    /// Client-side limit per request (the whole stream, for streaming targets); also sent to the server
    /// as the request deadline (`x-request-timeout-ms` / `grpc-timeout`) when `send_deadline`.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_true")]
    pub send_deadline: bool,
    /// Open loop: a scheduled request finding this many still outstanding is not sent and is counted as
    /// `skipped` (the generator's memory stays bounded when the server stops answering).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Connections to spread load over (HTTP/2 channels for gRPC; the HTTP/1.1 pool grows as needed).
    #[serde(default = "default_connections")]
    pub connections: usize,
}

fn default_mode() -> LoopMode {
    LoopMode::Open
}
fn default_arrival() -> Arrival {
    Arrival::Poisson
}
fn default_concurrency() -> usize {
    4
}
fn default_max_requests() -> u64 {
    1_000_000
}
fn default_timeout_ms() -> u64 {
    5000
}
fn default_true() -> bool {
    true
}
fn default_max_in_flight() -> usize {
    2048
}
fn default_connections() -> usize {
    2
}

/// Step mode: raise the offered rate step by step and report the highest rate whose p99 stays within
/// the SLO (with few enough failures).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Step {
    pub start_rate: f64,
    /// Added at each step (when `factor` is 1).
    pub increment: f64,
    /// Multiplies the rate at each step (when > 1; `increment` is then ignored).
    pub factor: f64,
    pub max_rate: f64,
    pub slo_p99_ms: f64,
    /// A step fails when (errors + rejected + skipped) / scheduled exceeds this.
    pub max_failure_ratio: f64,
    /// Bisection steps between the last passing and the first failing rate.
    pub refine: u32,
    /// Bisection stops when the bracket is narrower than this (requests/s).
    pub resolution: f64,
    /// Idle seconds between steps, so a step starts on a drained server.
    pub pause_s: f64,
}

impl Default for Step {
    fn default() -> Self {
        Step {
            start_rate: 10.0,
            increment: 10.0,
            factor: 1.0,
            max_rate: 500.0,
            slo_p99_ms: 50.0,
            max_failure_ratio: 0.01,
            refine: 2,
            resolution: 1.0,
            pause_s: 2.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ranking {
    /// Events per member history (drawn once per member: a member sends the same history each time,
    /// so the server's history cache can hit).
    pub history_len: Dist,
    /// Candidates per request (drawn per request).
    pub candidates: Dist,
    #[serde(default)]
    pub members: Members,
    #[serde(default)]
    pub items: Items,
    /// Action names and their shares.
    #[serde(default = "default_actions")]
    pub actions: BTreeMap<String, f64>,
    /// Member sparse features: name → number of values (drawn once per member).
    #[serde(default = "default_member_sparse")]
    pub member_sparse: BTreeMap<String, u64>,
    /// Member dense features per request (the model's `member_dense_dim`).
    #[serde(default)]
    pub member_dense_dim: usize,
    pub top_k: Option<u32>,
    /// `""` (the model's default), `amortized` or `per_candidate`.
    #[serde(default)]
    pub mode: String,
}

fn default_actions() -> BTreeMap<String, f64> {
    // MovieLens-100K's rating mix mapped to the demo ranker's actions (1→dislike … 5→love).
    [("dislike", 0.06), ("impression", 0.11), ("click", 0.27), ("like", 0.34), ("love", 0.22)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

fn default_member_sparse() -> BTreeMap<String, u64> {
    // The demo ranker's member features (README): gender, age bucket, occupation.
    [("gender", 2), ("age", 7), ("occupation", 21)].into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Member ids `1..=count`, drawn from Zipf(`zipf_s`) by rank (`zipf_s = 0`: uniform).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Members {
    pub count: u64,
    pub zipf_s: f64,
}

impl Default for Members {
    fn default() -> Self {
        Members { count: 1_000_000, zipf_s: 0.0 }
    }
}

/// Item ids (history events and candidates), uniform in `min..=max`. The default is the demo ranker's
/// vocabulary: MovieLens-100K item ids 1..=1682.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Items {
    pub min: u64,
    pub max: u64,
}

impl Default for Items {
    fn default() -> Self {
        Items { min: 1, max: 1682 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generation {
    /// Approximate prompt length in tokens (the prompt is that many common English words).
    pub prompt_tokens: Dist,
    pub max_tokens: Dist,
    #[serde(default)]
    pub temperature: f32,
    /// Chat targets: an optional system message before the user's.
    #[serde(default)]
    pub system: Option<String>,
}

/// Open Inference Protocol requests: `rows_per_request` rows of the model's features, each drawn
/// uniformly from `rows_file`, or random. The model's width and output shapes come from the server's
/// model metadata (`GET /v2/models/{model}` / `ModelMetadata`) before the run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Infer {
    /// A JSON file of rows: `{"rows": [[…], …]}` (like `models/ads-ctr-demo-rows.json`, whose
    /// `expected.MODEL.score` values are then checked against the answers) or a bare `[[…], …]`;
    /// `null` is a missing value. Relative to the working directory. Absent: random rows.
    pub rows_file: Option<PathBuf>,
    /// Features per row; checked against the file and the server's model when given.
    pub features: Option<usize>,
    #[serde(default = "default_rows_per_request")]
    pub rows_per_request: usize,
    /// Random rows: values uniform in `[min, max)`.
    #[serde(default = "default_random_range")]
    pub random_range: [f64; 2],
    /// Random rows: the share of values sent missing (`null` / NaN).
    #[serde(default)]
    pub missing: f64,
    /// Outputs asked for by name; empty = the server's default (`score` and `margin`). The answer's
    /// `score` is checked, so a non-empty list must name it.
    #[serde(default = "default_infer_outputs")]
    pub outputs: Vec<String>,
}

fn default_rows_per_request() -> usize {
    1
}
fn default_random_range() -> [f64; 2] {
    [0.0, 1.0]
}
fn default_infer_outputs() -> Vec<String> {
    vec!["score".into()]
}

impl Default for Infer {
    fn default() -> Self {
        Infer {
            rows_file: None,
            features: None,
            rows_per_request: default_rows_per_request(),
            random_range: default_random_range(),
            missing: 0.0,
            outputs: default_infer_outputs(),
        }
    }
}

/// Most rows in one inference request (the server's default `max_rows`).
pub const MAX_INFER_ROWS: usize = 65_536;

impl Infer {
    pub fn validate(&self) -> Result<(), String> {
        if self.rows_per_request == 0 || self.rows_per_request > MAX_INFER_ROWS {
            return Err(format!("infer.rows_per_request: must be in 1..={MAX_INFER_ROWS}"));
        }
        if self.features == Some(0) {
            return Err("infer.features: must be at least 1".into());
        }
        let [lo, hi] = self.random_range;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(format!("infer.random_range: must be finite with min < max, got [{lo}, {hi}]"));
        }
        if !(0.0..=1.0).contains(&self.missing) {
            return Err(format!("infer.missing: must be in [0, 1], got {}", self.missing));
        }
        if !self.outputs.is_empty() && !self.outputs.iter().any(|o| o == "score") {
            return Err(
                "infer.outputs: must name \"score\" (the answers' score is checked), or be empty".into()
            );
        }
        Ok(())
    }
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates; `origin` prefixes messages.
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, String> {
        let s: Scenario =
            toml::from_str(text).map_err(|e| format!("{origin}: {}", e.to_string().trim_end()))?;
        s.validate().map_err(|e| format!("{origin}: {e}"))?;
        Ok(s)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.model.is_empty() {
            return Err("model: must not be empty".into());
        }
        let l = &self.load;
        if !(l.duration_s.is_finite() && l.duration_s > 0.0 && l.duration_s <= MAX_DURATION_S) {
            return Err(format!("load.duration_s: must be in (0, {MAX_DURATION_S}], got {}", l.duration_s));
        }
        if !(l.warmup_s.is_finite() && l.warmup_s >= 0.0 && l.warmup_s <= MAX_DURATION_S) {
            return Err(format!("load.warmup_s: must be in [0, {MAX_DURATION_S}]"));
        }
        if l.max_requests == 0 || l.max_requests > MAX_REQUESTS {
            return Err(format!("load.max_requests: must be in 1..={MAX_REQUESTS}"));
        }
        if let Some(r) = l.rate {
            if !(r.is_finite() && r > 0.0 && r <= MAX_RATE) {
                return Err(format!("load.rate: must be in (0, {MAX_RATE}], got {r}"));
            }
        }
        if l.mode == LoopMode::Open && l.rate.is_none() {
            return Err("load.rate: the open loop needs a rate (requests/s)".into());
        }
        if l.concurrency == 0 || l.concurrency > MAX_IN_FLIGHT {
            return Err(format!("load.concurrency: must be in 1..={MAX_IN_FLIGHT}"));
        }
        if l.max_in_flight == 0 || l.max_in_flight > MAX_IN_FLIGHT {
            return Err(format!("load.max_in_flight: must be in 1..={MAX_IN_FLIGHT}"));
        }
        if l.connections == 0 || l.connections > 64 {
            return Err("load.connections: must be in 1..=64".into());
        }
        if l.timeout_ms == 0 || l.timeout_ms > 600_000 {
            return Err("load.timeout_ms: must be in 1..=600000".into());
        }
        self.step.validate()?;
        if !self.priorities.is_empty() {
            let w: Vec<f64> = self.priorities.values().copied().collect();
            weights_ok(&w).map_err(|e| format!("priorities: {e}"))?;
        }
        if self.target.is_ranking() && self.ranking.is_none() {
            return Err(format!("ranking: target {} needs a [ranking] table", self.target.as_str()));
        }
        if self.target.is_generation() && self.generation.is_none() {
            return Err(format!("generation: target {} needs a [generation] table", self.target.as_str()));
        }
        if let Some(i) = &self.infer {
            i.validate()?;
        }
        if let Some(r) = &self.ranking {
            r.history_len.validate("ranking.history_len")?;
            r.candidates.validate("ranking.candidates")?;
            if r.candidates.max() == 0 {
                return Err("ranking.candidates: must allow at least one candidate".into());
            }
            Zipf::new(r.members.count, r.members.zipf_s).map_err(|e| format!("ranking.members: {e}"))?;
            if r.items.min > r.items.max {
                return Err(format!("ranking.items: min {} > max {}", r.items.min, r.items.max));
            }
            if r.actions.is_empty() {
                return Err("ranking.actions: name at least one action".into());
            }
            let w: Vec<f64> = r.actions.values().copied().collect();
            weights_ok(&w).map_err(|e| format!("ranking.actions: {e}"))?;
            if let Some((k, _)) = r.member_sparse.iter().find(|(_, &n)| n == 0) {
                return Err(format!("ranking.member_sparse.{k}: must have at least one value"));
            }
        }
        if let Some(g) = &self.generation {
            g.prompt_tokens.validate("generation.prompt_tokens")?;
            g.max_tokens.validate("generation.max_tokens")?;
            if !(g.temperature.is_finite() && g.temperature >= 0.0) {
                return Err("generation.temperature: must be ≥ 0".into());
            }
        }
        Ok(())
    }
}

impl Step {
    pub fn validate(&self) -> Result<(), String> {
        let pos = |v: f64| v.is_finite() && v > 0.0;
        if !pos(self.start_rate) || self.start_rate > MAX_RATE {
            return Err(format!("step.start_rate: must be in (0, {MAX_RATE}]"));
        }
        if !pos(self.max_rate) || self.max_rate > MAX_RATE || self.max_rate < self.start_rate {
            return Err(format!("step.max_rate: must be in [start_rate, {MAX_RATE}]"));
        }
        if !(self.factor.is_finite() && self.factor >= 1.0) {
            return Err("step.factor: must be ≥ 1".into());
        }
        if self.factor == 1.0 && !pos(self.increment) {
            return Err("step.increment: must be > 0 (or set factor > 1)".into());
        }
        if !pos(self.slo_p99_ms) {
            return Err("step.slo_p99_ms: must be > 0".into());
        }
        if !(0.0..=1.0).contains(&self.max_failure_ratio) {
            return Err("step.max_failure_ratio: must be in [0, 1]".into());
        }
        if !pos(self.resolution) {
            return Err("step.resolution: must be > 0".into());
        }
        if !(self.pause_s.is_finite() && (0.0..=600.0).contains(&self.pause_s)) {
            return Err("step.pause_s: must be in [0, 600]".into());
        }
        if self.refine > 20 {
            return Err("step.refine: at most 20".into());
        }
        let climbs = if self.factor > 1.0 {
            (self.max_rate / self.start_rate).ln() / self.factor.ln()
        } else {
            (self.max_rate - self.start_rate) / self.increment
        };
        if climbs.ceil() + 1.0 + f64::from(self.refine) > f64::from(MAX_STEPS) {
            return Err(format!(
                "step: more than {MAX_STEPS} steps; raise increment/factor or lower max_rate"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
target = "http-rank"
model = "demo-ranker"
[load]
rate = 10.0
duration_s = 2.0
[ranking]
history_len = { fixed = 256 }
candidates = { uniform = { min = 100, max = 512 } }
"#;

    #[test]
    fn minimal_scenario_parses_with_defaults() {
        let s = Scenario::parse(MINIMAL, "t.toml").unwrap();
        assert_eq!(s.target, Target::HttpRank);
        assert_eq!(s.load.mode, LoopMode::Open);
        assert_eq!(s.load.arrival, Arrival::Poisson);
        let r = s.ranking.unwrap();
        assert_eq!(r.items, Items { min: 1, max: 1682 });
        assert_eq!(r.history_len, Dist::Fixed(256));
        assert!(r.actions.contains_key("like"));
        assert_eq!(s.seed, 42);
    }

    #[test]
    fn unknown_keys_are_rejected_and_named() {
        for (bad, key) in [
            (MINIMAL.replace("duration_s", "durashun_s"), "durashun_s"),
            (format!("{MINIMAL}bogus = 1\n"), "bogus"),
            (MINIMAL.replace("[load]", "[load]\nrps = 3"), "rps"),
            (MINIMAL.replace("{ fixed = 256 }", "{ fixed = 256, extra = 1 }"), "extra"),
            (MINIMAL.replace("{ min = 100, max = 512 }", "{ min = 100, max = 512, mean = 3 }"), "mean"),
            (MINIMAL.replace("{ fixed = 256 }", "{ gaussian = 256 }"), "gaussian"),
            (format!("{MINIMAL}[step]\nslo_ms = 5\n"), "slo_ms"),
            (format!("{MINIMAL}members = {{ count = 5, zipf = 1 }}\n"), "zipf"),
        ] {
            let e = Scenario::parse(&bad, "t.toml").unwrap_err();
            assert!(e.starts_with("t.toml: "), "{e}");
            assert!(e.contains(key), "expected '{key}' in: {e}");
        }
    }

    #[test]
    fn invalid_values_are_named() {
        for (bad, key) in [
            (MINIMAL.replace("rate = 10.0", "rate = 0.0"), "load.rate"),
            (MINIMAL.replace("rate = 10.0\n", ""), "load.rate"),
            (MINIMAL.replace("duration_s = 2.0", "duration_s = 99999.0"), "load.duration_s"),
            (MINIMAL.replace("min = 100, max = 512", "min = 600, max = 512"), "ranking.candidates"),
            (MINIMAL.replace("target = \"http-rank\"", "target = \"http-chat\""), "generation"),
            (format!("{MINIMAL}members = {{ count = 0 }}\n"), "ranking.members"),
            (format!("{MINIMAL}[step]\nstart_rate = 10.0\nincrement = 0.001\n"), "step"),
            (format!("{MINIMAL}[priorities]\nfeed = -1.0\n"), "priorities"),
        ] {
            let e = Scenario::parse(&bad, "t.toml").unwrap_err();
            assert!(e.contains(key), "expected '{key}' in: {e}");
        }
    }

    const INFER: &str = r#"
name = "t"
target = "http-infer"
model = "ads-ctr"
[load]
rate = 1000.0
duration_s = 2.0
"#;

    #[test]
    fn infer_targets_need_no_table_and_check_theirs() {
        let s = Scenario::parse(INFER, "t.toml").unwrap();
        assert!(s.target.is_infer() && !s.target.is_ranking() && !s.target.is_generation());
        assert!(s.infer.is_none(), "random rows of the model's width");
        let g = Scenario::parse(&INFER.replace("http-infer", "grpc-infer"), "t.toml").unwrap();
        assert!(g.target.is_grpc() && g.target.is_infer());
        let with = format!("{INFER}[infer]\nrows_file = \"rows.json\"\n");
        let i = Scenario::parse(&with, "t.toml").unwrap().infer.unwrap();
        assert_eq!(i.rows_file.as_deref(), Some(Path::new("rows.json")));
        assert_eq!(
            (i.rows_per_request, i.outputs.clone(), i.random_range),
            (1, vec!["score".into()], [0.0, 1.0])
        );
        for (bad, key) in [
            ("rows_per_request = 0", "infer.rows_per_request"),
            ("features = 0", "infer.features"),
            ("random_range = [1.0, 1.0]", "infer.random_range"),
            ("missing = 1.5", "infer.missing"),
            ("outputs = [\"margin\"]", "infer.outputs"),
            ("rows = 3", "rows"),
        ] {
            let e = Scenario::parse(&format!("{INFER}[infer]\n{bad}\n"), "t.toml").unwrap_err();
            assert!(e.contains(key), "expected '{key}' in: {e}");
        }
        // An empty list asks for the server's default outputs (score among them).
        assert!(Scenario::parse(&format!("{INFER}[infer]\noutputs = []\n"), "t.toml").is_ok());
    }

    #[test]
    fn unknown_target_is_named() {
        let e = Scenario::parse(&MINIMAL.replace("http-rank", "smtp"), "t.toml").unwrap_err();
        assert!(e.contains("smtp"), "{e}");
    }

    #[test]
    fn shipped_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 5, "{n} scenarios in {}", dir.display());
    }
}
