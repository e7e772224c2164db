//! The requests themselves, drawn from a scenario. Reproducible: the dispatcher draws a [`Draw`] (member,
//! priority, per-request seed) from the scenario's seed, and the request is built from it. A member's
//! history and features depend only on (seed, member), so a member that comes back sends the same history
//! and the server's history cache can hit; candidates are new on every request.

use crate::dist::{weighted_index, Zipf};
use crate::proto;
use crate::scenario::{Generation, Infer, Ranking, Scenario};
use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// MovieLens-100K's time span (Unix ms); history timestamps fall inside it, like the demo ranker's data.
const EPOCH_MS: i64 = 874_724_710_000;
const SPAN_MS: i64 = 218_000_000_000;

/// What the dispatcher decides for one request; everything else follows from it.
#[derive(Debug, Clone, Copy)]
pub struct Draw {
    pub member: u64,
    pub priority: Option<usize>,
    pub seed: u64,
}

/// Draws requests for a scenario.
pub struct Workload {
    seed: u64,
    model: String,
    members: Option<Zipf>,
    priorities: Vec<(String, f64)>,
    ranking: Option<Ranking>,
    actions: Vec<(String, f64)>,
    generation: Option<Generation>,
    infer: Option<InferRows>,
}

impl Workload {
    pub fn new(s: &Scenario) -> Workload {
        let members = s.ranking.as_ref().map(|r| {
            Zipf::new(r.members.count, r.members.zipf_s).expect("validated with the scenario; this is a bug")
        });
        Workload {
            seed: s.seed,
            model: s.model.clone(),
            members,
            priorities: s.priorities.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            actions: s.ranking.as_ref().map(|r| r.actions.clone().into_iter().collect()).unwrap_or_default(),
            ranking: s.ranking.clone(),
            generation: s.generation.clone(),
            infer: None,
        }
    }

    /// Inference targets: the rows to draw from (made by [`InferRows::prepare`] once the server has
    /// described the model).
    pub fn set_infer(&mut self, rows: InferRows) {
        self.infer = Some(rows);
    }

    pub fn infer_rows(&self) -> Option<&InferRows> {
        self.infer.as_ref()
    }

    /// An inference request for `d`: `rows_per_request` rows, each drawn uniformly from the file (or
    /// random), with the scores the file expects for them.
    pub fn infer_request(&self, d: &Draw) -> InferBody<'_> {
        let r = self.infer.as_ref().expect("inference targets get their rows before the run; this is a bug");
        let mut rng = StdRng::seed_from_u64(d.seed);
        let n = r.rows_per_request;
        let mut values = Vec::with_capacity(n * r.features);
        let mut expected = match &r.source {
            RowSource::File { expected: Some(_), .. } => Some(Vec::with_capacity(n)),
            _ => None,
        };
        for _ in 0..n {
            match &r.source {
                RowSource::File { rows, expected: want } => {
                    let i = rng.random_range(0..rows.len());
                    values.extend_from_slice(&rows[i]);
                    if let (Some(out), Some(want)) = (expected.as_mut(), want) {
                        out.push(want[i]);
                    }
                }
                RowSource::Random { lo, hi, missing } => {
                    values.extend((0..r.features).map(|_| {
                        if *missing > 0.0 && rng.random_bool(*missing) {
                            f32::NAN
                        } else {
                            rng.random_range(*lo..*hi) as f32
                        }
                    }));
                }
            }
        }
        InferBody {
            model: &self.model,
            rows: n,
            features: r.features,
            values,
            outputs: &r.outputs,
            expected,
            priority: self.priority_name(d),
        }
    }

    /// The next request's choices, from the dispatcher's generator.
    pub fn draw<R: Rng>(&self, rng: &mut R) -> Draw {
        let member = self.members.as_ref().map_or(0, |z| z.sample(rng));
        let priority = (!self.priorities.is_empty()).then(|| {
            let w: Vec<f64> = self.priorities.iter().map(|(_, w)| *w).collect();
            weighted_index(&w, rng)
        });
        Draw { member, priority, seed: rng.random() }
    }

    pub fn priority_name(&self, d: &Draw) -> Option<&str> {
        d.priority.map(|i| self.priorities[i].0.as_str())
    }

    /// A ranking request for `d` (JSON body for HTTP, the same content as a proto for gRPC).
    pub fn rank_request(&self, d: &Draw) -> RankBody {
        let r = self.ranking.as_ref().expect("ranking targets have a [ranking] table; this is a bug");
        // The member's stable part: features and history from (seed, member) alone.
        let mut mrng = StdRng::seed_from_u64(mix(self.seed, d.member));
        let member_sparse =
            r.member_sparse.iter().map(|(k, &n)| (k.clone(), mrng.random_range(0..n))).collect();
        let len = r.history_len.sample(&mut mrng) as usize;
        let mut t = EPOCH_MS + mrng.random_range(0..SPAN_MS / 2);
        let aw: Vec<f64> = self.actions.iter().map(|(_, w)| *w).collect();
        let history = (0..len)
            .map(|_| {
                t += mrng.random_range(1_000..6 * 3_600_000);
                HistoryEvent {
                    item_id: mrng.random_range(r.items.min..=r.items.max),
                    action: self.actions[weighted_index(&aw, &mut mrng)].0.clone(),
                    timestamp_ms: t,
                }
            })
            .collect();
        let request_time_ms = t + 60_000;

        // The request's own part: candidates and dense features.
        let mut rng = StdRng::seed_from_u64(d.seed);
        let m = r.candidates.sample(&mut rng).max(1) as usize;
        let candidates =
            (0..m).map(|_| Candidate { item_id: rng.random_range(r.items.min..=r.items.max) }).collect();
        let member_dense = (0..r.member_dense_dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        RankBody {
            model: self.model.clone(),
            member_id: d.member,
            member_sparse,
            member_dense,
            history,
            candidates,
            top_k: r.top_k,
            mode: r.mode.clone(),
            request_time_ms,
            priority: self.priority_name(d).unwrap_or("").to_string(),
        }
    }

    /// A generation request for `d`: the prompt text and how many tokens to ask for.
    pub fn generation_request(&self, d: &Draw) -> GenBody {
        let g =
            self.generation.as_ref().expect("generation targets have a [generation] table; this is a bug");
        let mut rng = StdRng::seed_from_u64(d.seed);
        let words = g.prompt_tokens.sample(&mut rng).max(1) as usize;
        let prompt =
            (0..words).map(|_| WORDS[rng.random_range(0..WORDS.len())]).collect::<Vec<_>>().join(" ");
        GenBody {
            model: self.model.clone(),
            prompt,
            system: g.system.clone(),
            max_tokens: g.max_tokens.sample(&mut rng).max(1) as u32,
            temperature: g.temperature,
            seed: d.seed,
            priority: self.priority_name(d).unwrap_or("").to_string(),
        }
    }
}

/// A tabular model's shapes, as the server describes them (`GET /v2/models/{model}` or gRPC
/// `ModelMetadata`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InferMeta {
    /// The input's width (`inputs[0].shape` = `[-1, features]`).
    pub features: usize,
    /// The `score` output's shape, `-1` for the rows: `[-1]`, or `[-1, K]` for K classes.
    pub score_shape: Vec<i64>,
}

/// Where the rows of inference requests come from, ready to draw.
#[derive(Debug, Clone)]
pub struct InferRows {
    features: usize,
    rows_per_request: usize,
    source: RowSource,
    outputs: Vec<String>,
    /// The `score` shape every answer must have (`rows_per_request` for the rows).
    pub score_shape: Vec<i64>,
}

#[derive(Debug, Clone)]
enum RowSource {
    /// Rows from a file (NaN = missing), and the score the file expects for each, when it has them.
    File {
        rows: Vec<Vec<f32>>,
        expected: Option<Vec<f32>>,
    },
    Random {
        lo: f64,
        hi: f64,
        missing: f64,
    },
}

/// How far an answered score may be from the rows file's expected one: the demo models' parity tests
/// (tests/e2e_demo_tabular.rs) hold 1e-6 for trees and EBMs, 1e-5 for soft trees.
pub const SCORE_TOLERANCE: f32 = 1e-5;

impl InferRows {
    /// Checks the scenario's `[infer]` table (its defaults when absent) against the server's model and
    /// reads the rows file.
    pub fn prepare(cfg: Option<&Infer>, model: &str, meta: &InferMeta) -> anyhow::Result<InferRows> {
        let default = Infer::default();
        let cfg = cfg.unwrap_or(&default);
        if let Some(f) = cfg.features {
            if f != meta.features {
                bail!(
                    "infer.features: {f}, but the server's model '{model}' takes {} features",
                    meta.features
                );
            }
        }
        let source = match &cfg.rows_file {
            Some(path) => {
                let RowsFile { rows, expected } = read_rows_file(path, model)?;
                if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != meta.features) {
                    bail!(
                        "{}: row {i} has {} values, but the server's model '{model}' takes {} features",
                        path.display(),
                        r.len(),
                        meta.features
                    );
                }
                // Expected scores are checked only where one value per row comes back.
                let expected = expected.filter(|_| meta.score_shape.len() == 1);
                RowSource::File { rows, expected }
            }
            None => {
                let [lo, hi] = cfg.random_range;
                RowSource::Random { lo, hi, missing: cfg.missing }
            }
        };
        let n = cfg.rows_per_request as i64;
        let score_shape = meta.score_shape.iter().map(|&d| if d < 0 { n } else { d }).collect();
        Ok(InferRows {
            features: meta.features,
            rows_per_request: cfg.rows_per_request,
            source,
            outputs: cfg.outputs.clone(),
            score_shape,
        })
    }

    /// Rows in the file (`None`: random rows).
    pub fn file_rows(&self) -> Option<usize> {
        match &self.source {
            RowSource::File { rows, .. } => Some(rows.len()),
            RowSource::Random { .. } => None,
        }
    }

    /// Whether answers' scores are checked against the file's expected values.
    pub fn checks_values(&self) -> bool {
        matches!(self.source, RowSource::File { expected: Some(_), .. })
    }
}

/// A rows file's rows (NaN = missing) and, when it has them, the scores `model` is expected to give.
#[derive(Debug, Clone)]
pub struct RowsFile {
    pub rows: Vec<Vec<f32>>,
    pub expected: Option<Vec<f32>>,
}

/// Reads `{"rows": [[…], …], "expected": {MODEL: {"score": […]}}}` (the demo rows file; `expected`
/// optional) or a bare `[[…], …]`; `null` values become NaN (missing).
pub fn read_rows_file(path: &std::path::Path, model: &str) -> anyhow::Result<RowsFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("infer.rows_file: cannot read {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("infer.rows_file: {} is not JSON", path.display()))?;
    let rows_v = if v.is_array() { &v } else { &v["rows"] };
    let Some(list) = rows_v.as_array() else {
        bail!("infer.rows_file: {}: expected {{\"rows\": [[...], ...]}} or [[...], ...]", path.display());
    };
    if list.is_empty() {
        bail!("infer.rows_file: {}: no rows", path.display());
    }
    let number = |x: &serde_json::Value| -> Option<f32> {
        if x.is_null() {
            Some(f32::NAN)
        } else {
            x.as_f64().map(|f| f as f32)
        }
    };
    let mut rows = Vec::with_capacity(list.len());
    for (i, r) in list.iter().enumerate() {
        let row = r
            .as_array()
            .and_then(|vals| vals.iter().map(number).collect::<Option<Vec<f32>>>())
            .with_context(|| {
                format!("infer.rows_file: {}: row {i} is not a list of numbers or nulls", path.display())
            })?;
        rows.push(row);
    }
    let expected = v
        .pointer(&format!("/expected/{}/score", model.replace('~', "~0").replace('/', "~1")))
        .and_then(|s| s.as_array())
        .and_then(|s| s.iter().map(|x| x.as_f64().map(|f| f as f32)).collect::<Option<Vec<f32>>>())
        .filter(|s| s.len() == rows.len());
    Ok(RowsFile { rows, expected })
}

/// One Open Inference Protocol request: `rows × features` values (NaN = missing), as JSON for HTTP or
/// the gRPC message.
#[derive(Debug, Clone)]
pub struct InferBody<'a> {
    pub model: &'a str,
    pub rows: usize,
    pub features: usize,
    pub values: Vec<f32>,
    pub outputs: &'a [String],
    /// The scores the rows file expects, one per row, when it has them.
    pub expected: Option<Vec<f32>>,
    pub priority: Option<&'a str>,
}

#[derive(Serialize)]
struct InferJson<'a> {
    inputs: [InputJson; 1],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    outputs: Vec<OutputJson<'a>>,
}

#[derive(Serialize)]
struct InputJson {
    name: &'static str,
    shape: [usize; 2],
    datatype: &'static str,
    data: Vec<Option<f32>>,
}

#[derive(Serialize)]
struct OutputJson<'a> {
    name: &'a str,
}

impl InferBody<'_> {
    /// `POST /v2/models/{model}/infer` body: `{"inputs": [{"name": "input", "shape": [n, F],
    /// "datatype": "FP32", "data": [...]}], "outputs": [{"name": "score"}]}`, `null` for missing values.
    pub fn to_json(&self) -> Vec<u8> {
        let body = InferJson {
            inputs: [InputJson {
                name: "input",
                shape: [self.rows, self.features],
                datatype: "FP32",
                data: self.values.iter().map(|&v| (!v.is_nan()).then_some(v)).collect(),
            }],
            outputs: self.outputs.iter().map(|o| OutputJson { name: o }).collect(),
        };
        serde_json::to_vec(&body).expect("an inference body always serializes; this is a bug")
    }

    /// The same as a gRPC `ModelInferRequest`, values in `fp32_contents` (NaN = missing).
    pub fn to_proto(&self) -> proto::inference::ModelInferRequest {
        use proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
        proto::inference::ModelInferRequest {
            model_name: self.model.to_string(),
            inputs: vec![InferInputTensor {
                name: "input".into(),
                datatype: "FP32".into(),
                shape: vec![self.rows as i64, self.features as i64],
                contents: Some(proto::inference::InferTensorContents {
                    fp32_contents: self.values.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            outputs: self
                .outputs
                .iter()
                .map(|o| InferRequestedOutputTensor { name: o.clone(), ..Default::default() })
                .collect(),
            ..Default::default()
        }
    }
}

/// Checks an answer's `score` (shape and values, as f32) against what the request expects; the error
/// code otherwise.
pub fn check_score(
    shape: &[i64],
    values: &[f32],
    want_shape: &[i64],
    expected: Option<&[f32]>,
) -> Result<(), &'static str> {
    let count: i64 = shape.iter().product();
    if shape != want_shape || usize::try_from(count).ok() != Some(values.len()) {
        return Err("infer_score_shape");
    }
    if let Some(want) = expected {
        let close = |g: f32, w: f32| (g - w).abs() <= SCORE_TOLERANCE;
        if want.len() != values.len() || !values.iter().zip(want).all(|(&g, &w)| close(g, w)) {
            return Err("infer_score_value");
        }
    }
    Ok(())
}

/// splitmix64 of (seed, member): independent, reproducible per-member generators.
fn mix(seed: u64, member: u64) -> u64 {
    let mut z = seed ^ member.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Common short English words: each is about one token for byte-level BPE vocabularies.
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "you", "that", "it", "he", "was", "for", "on", "are", "as", "with",
    "his", "they", "at", "be", "this", "have", "from", "or", "one", "had", "by", "word", "but", "not",
    "what", "all", "were", "we", "when", "your", "can", "said", "there", "use", "an", "each", "which", "she",
    "do", "how", "their", "if", "will", "up", "other", "about", "out", "many", "then", "them", "these", "so",
    "some", "her", "would", "make", "like", "him", "into", "time", "has", "look", "two", "more", "write",
    "go", "see", "number", "no", "way", "could", "people", "my", "than", "first", "water", "been", "call",
    "who", "oil", "now", "find", "long", "down", "day", "did", "get", "come", "made", "may", "part", "movie",
    "film", "story",
];

/// `POST /v1/rank` body (docs/API.md); also converted to the gRPC message.
#[derive(Debug, Clone, Serialize)]
pub struct RankBody {
    pub model: String,
    pub member_id: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub member_sparse: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub member_dense: Vec<f32>,
    pub history: Vec<HistoryEvent>,
    pub candidates: Vec<Candidate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub mode: String,
    pub request_time_ms: i64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub priority: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryEvent {
    pub item_id: u64,
    pub action: String,
    pub timestamp_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub item_id: u64,
}

impl RankBody {
    pub fn to_proto(&self) -> proto::RankRequest {
        proto::RankRequest {
            model: self.model.clone(),
            member_id: self.member_id,
            member_sparse: self.member_sparse.iter().map(|(k, v)| (k.clone(), *v)).collect::<HashMap<_, _>>(),
            member_dense: self.member_dense.clone(),
            history: self
                .history
                .iter()
                .map(|e| proto::HistoryEvent {
                    item_id: e.item_id,
                    action: e.action.clone(),
                    timestamp_ms: e.timestamp_ms,
                    dense: Vec::new(),
                })
                .collect(),
            candidates: self
                .candidates
                .iter()
                .map(|c| proto::Candidate { item_id: c.item_id, dense: Vec::new() })
                .collect(),
            tasks: Vec::new(),
            top_k: self.top_k,
            mode: self.mode.clone(),
            request_time_ms: Some(self.request_time_ms),
            priority: self.priority.clone(),
        }
    }
}

/// One generation request, rendered per target (OpenAI completions / chat JSON, or the gRPC message).
#[derive(Debug, Clone)]
pub struct GenBody {
    pub model: String,
    pub prompt: String,
    pub system: Option<String>,
    pub max_tokens: u32,
    pub temperature: f32,
    pub seed: u64,
    pub priority: String,
}

impl GenBody {
    /// OpenAI `POST /v1/completions`, streaming. Only standard OpenAI fields: the priority class goes in
    /// the `priority` header.
    pub fn completions_json(&self) -> serde_json::Value {
        serde_json::json!({
            "model": self.model,
            "prompt": self.prompt,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stream": true,
        })
    }

    /// OpenAI `POST /v1/chat/completions`, streaming.
    pub fn chat_json(&self) -> serde_json::Value {
        let mut messages = Vec::new();
        if let Some(s) = &self.system {
            messages.push(serde_json::json!({"role": "system", "content": s}));
        }
        messages.push(serde_json::json!({"role": "user", "content": self.prompt}));
        serde_json::json!({
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stream": true,
        })
    }

    pub fn to_proto(&self) -> proto::GenerateRequest {
        proto::GenerateRequest {
            model: self.model.clone(),
            prompt: self.prompt.clone(),
            messages: Vec::new(),
            sampling: Some(proto::SamplingParams {
                max_tokens: self.max_tokens,
                temperature: Some(self.temperature),
                seed: Some(self.seed),
                ..Default::default()
            }),
            priority: self.priority.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;

    fn scenario(extra: &str) -> Scenario {
        Scenario::parse(
            &format!(
                "name = \"t\"\ntarget = \"http-rank\"\nmodel = \"m\"\n[load]\nrate = 1.0\nduration_s = 1.0\n\
                 [ranking]\nhistory_len = {{ uniform = {{ min = 5, max = 50 }} }}\ncandidates = {{ fixed = 7 }}\n\
                 members = {{ count = 100, zipf_s = 1.1 }}\n{extra}"
            ),
            "t.toml",
        )
        .unwrap()
    }

    #[test]
    fn a_member_always_sends_the_same_history_and_new_candidates() {
        let w = Workload::new(&scenario(""));
        let a = w.rank_request(&Draw { member: 9, priority: None, seed: 1 });
        let b = w.rank_request(&Draw { member: 9, priority: None, seed: 2 });
        let ser = |r: &RankBody| serde_json::to_string(&r.history).unwrap();
        assert_eq!(ser(&a), ser(&b));
        assert_eq!(a.member_sparse, b.member_sparse);
        assert_eq!(a.request_time_ms, b.request_time_ms);
        assert_ne!(
            a.candidates.iter().map(|c| c.item_id).collect::<Vec<_>>(),
            b.candidates.iter().map(|c| c.item_id).collect::<Vec<_>>()
        );
        let c = w.rank_request(&Draw { member: 10, priority: None, seed: 1 });
        assert_ne!(ser(&a), ser(&c));
        assert_eq!(a.candidates.len(), 7);
        assert!((5..=50).contains(&a.history.len()));
        assert!(a.history.windows(2).all(|e| e[0].timestamp_ms < e[1].timestamp_ms), "oldest first");
        assert!(a.history.iter().all(|e| (1..=1682).contains(&e.item_id)));
        assert!(a.member_sparse["occupation"] < 21);
    }

    #[test]
    fn priorities_follow_their_shares() {
        let w = Workload::new(&scenario("[priorities]\nfeed = 3.0\nbatch = 1.0\n"));
        let mut rng = StdRng::seed_from_u64(1);
        let n = 20_000;
        let feed = (0..n).filter(|_| w.priority_name(&w.draw(&mut rng)) == Some("feed")).count();
        assert!((feed as f64 / n as f64 - 0.75).abs() < 0.02, "{feed}");
        let body = serde_json::to_value(w.rank_request(&w.draw(&mut rng))).unwrap();
        assert!(body["priority"] == "feed" || body["priority"] == "batch", "{body}");
    }

    fn demo_rows() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/ads-ctr-demo-rows.json")
    }

    fn infer_workload(infer: Option<&Infer>, meta: &InferMeta) -> Workload {
        let s = Scenario::parse(
            "name = \"t\"\ntarget = \"http-infer\"\nmodel = \"ads-ctr\"\n[load]\nrate = 1.0\nduration_s = 1.0\n",
            "t.toml",
        )
        .unwrap();
        let mut w = Workload::new(&s);
        w.set_infer(InferRows::prepare(infer, "ads-ctr", meta).unwrap());
        w
    }

    #[test]
    fn the_demo_rows_file_gives_single_rows_with_their_expected_scores() {
        let RowsFile { rows, expected } = read_rows_file(&demo_rows(), "ads-ctr").unwrap();
        assert_eq!(rows.len(), 200);
        assert!(rows.iter().all(|r| r.len() == 28));
        assert!(rows.iter().any(|r| r.iter().any(|v| v.is_nan())), "some values missing (null)");
        let expected = expected.expect("the file has ads-ctr's scores");
        assert_eq!(expected.len(), 200);
        assert!(read_rows_file(&demo_rows(), "no-such-model").unwrap().expected.is_none());

        let meta = InferMeta { features: 28, score_shape: vec![-1] };
        let cfg = Infer { rows_file: Some(demo_rows()), ..Infer::default() };
        let w = infer_workload(Some(&cfg), &meta);
        let r = w.infer_rows().unwrap();
        assert_eq!((r.file_rows(), r.checks_values(), r.score_shape.clone()), (Some(200), true, vec![1]));
        let mut seen = std::collections::HashSet::new();
        for seed in 0..400 {
            let b = w.infer_request(&Draw { member: 0, priority: None, seed });
            assert_eq!((b.rows, b.features, b.values.len()), (1, 28, 28));
            // The row is one of the file's, with that row's expected score.
            let i = rows
                .iter()
                .position(|r| r.iter().zip(&b.values).all(|(a, v)| a == v || (a.is_nan() && v.is_nan())))
                .expect("a row of the file");
            assert_eq!(b.expected.as_deref(), Some(&expected[i..=i]));
            seen.insert(i);
        }
        assert!(seen.len() > 100, "rows drawn across the file: {}", seen.len());
        let same = |seed| w.infer_request(&Draw { member: 0, priority: None, seed }).values;
        assert_eq!(format!("{:?}", same(7)), format!("{:?}", same(7)), "reproducible");

        // JSON: one input [1, 28] with null for missing, score asked for.
        let nan_row = (0..400)
            .map(|seed| w.infer_request(&Draw { member: 0, priority: None, seed }))
            .find(|b| b.values.iter().any(|v| v.is_nan()))
            .expect("some drawn row has a missing value");
        let v: serde_json::Value = serde_json::from_slice(&nan_row.to_json()).unwrap();
        assert_eq!(v["inputs"][0]["name"], "input");
        assert_eq!(v["inputs"][0]["shape"], serde_json::json!([1, 28]));
        assert_eq!(v["inputs"][0]["datatype"], "FP32");
        let data = v["inputs"][0]["data"].as_array().unwrap();
        assert_eq!(data.len(), 28);
        assert!(data.iter().any(|x| x.is_null()));
        assert_eq!(v["outputs"], serde_json::json!([{"name": "score"}]));
        let p = nan_row.to_proto();
        assert_eq!((p.model_name.as_str(), p.inputs[0].shape.clone()), ("ads-ctr", vec![1, 28]));
        assert_eq!(p.inputs[0].contents.as_ref().unwrap().fp32_contents.len(), 28);
        assert_eq!(p.outputs[0].name, "score");
    }

    #[test]
    fn rows_must_fit_the_servers_model() {
        let cfg = Infer { rows_file: Some(demo_rows()), ..Infer::default() };
        let e = InferRows::prepare(Some(&cfg), "m", &InferMeta { features: 27, score_shape: vec![-1] })
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 0 has 28 values") && e.contains("27 features"), "{e}");
        let cfg = Infer { features: Some(10), ..Infer::default() };
        let e = InferRows::prepare(Some(&cfg), "m", &InferMeta { features: 28, score_shape: vec![-1] })
            .unwrap_err()
            .to_string();
        assert!(e.contains("infer.features: 10"), "{e}");
        let cfg = Infer { rows_file: Some("no/such/file.json".into()), ..Infer::default() };
        let meta = InferMeta { features: 28, score_shape: vec![-1] };
        assert!(InferRows::prepare(Some(&cfg), "m", &meta).unwrap_err().to_string().contains("cannot read"));
        let dir = tempfile_dir();
        let bare = dir.join("bare.json");
        std::fs::write(&bare, "[[1, null], [2.5, 3]]").unwrap();
        let RowsFile { rows, expected } = read_rows_file(&bare, "m").unwrap();
        assert_eq!(rows[1], vec![2.5, 3.0]);
        assert!(rows[0][1].is_nan() && expected.is_none());
        std::fs::write(&bare, r#"{"rows": [[1, "x"]]}"#).unwrap();
        assert!(read_rows_file(&bare, "m").unwrap_err().to_string().contains("row 0"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "slate-loadtest-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn random_rows_have_the_models_width_and_their_missing_share() {
        let meta = InferMeta { features: 12, score_shape: vec![-1, 3] };
        let cfg = Infer { rows_per_request: 4, missing: 0.25, random_range: [-2.0, 2.0], ..Infer::default() };
        let w = infer_workload(Some(&cfg), &meta);
        assert_eq!(w.infer_rows().unwrap().score_shape, vec![4, 3]);
        assert!(!w.infer_rows().unwrap().checks_values());
        let (mut nan, mut all) = (0, 0);
        for seed in 0..500 {
            let b = w.infer_request(&Draw { member: 0, priority: None, seed });
            assert_eq!((b.rows, b.values.len()), (4, 48));
            assert!(b.expected.is_none());
            nan += b.values.iter().filter(|v| v.is_nan()).count();
            all += b.values.len();
            assert!(b.values.iter().all(|v| v.is_nan() || (-2.0..2.0).contains(v)));
        }
        assert!((nan as f64 / all as f64 - 0.25).abs() < 0.02, "{nan} of {all}");
        // No [infer] table: random rows in [0, 1), single rows, nothing missing.
        let w = infer_workload(None, &InferMeta { features: 5, score_shape: vec![-1] });
        let b = w.infer_request(&Draw { member: 0, priority: None, seed: 1 });
        assert_eq!(b.values.len(), 5);
        assert!(b.values.iter().all(|v| (0.0..1.0).contains(v)));
    }

    #[test]
    fn scores_are_checked_for_shape_and_value() {
        assert_eq!(check_score(&[1], &[0.5], &[1], Some(&[0.500001])), Ok(()));
        assert_eq!(check_score(&[1], &[0.5], &[1], None), Ok(()));
        assert_eq!(check_score(&[2], &[0.5, 0.1], &[1], None), Err("infer_score_shape"));
        assert_eq!(check_score(&[1], &[0.5, 0.1], &[1], None), Err("infer_score_shape"));
        assert_eq!(check_score(&[1, 3], &[0.1, 0.2, 0.7], &[1, 3], None), Ok(()));
        assert_eq!(check_score(&[1], &[0.6], &[1], Some(&[0.5])), Err("infer_score_value"));
        assert_eq!(check_score(&[1], &[f32::NAN], &[1], Some(&[0.5])), Err("infer_score_value"));
    }

    #[test]
    fn proto_matches_json() {
        let w = Workload::new(&scenario("top_k = 3\n"));
        let b = w.rank_request(&Draw { member: 3, priority: None, seed: 5 });
        let p = b.to_proto();
        assert_eq!(p.member_id, 3);
        assert_eq!(p.candidates.len(), b.candidates.len());
        assert_eq!(p.history.len(), b.history.len());
        assert_eq!(p.top_k, Some(3));
        assert_eq!(p.member_sparse.len(), 3);
    }
}
