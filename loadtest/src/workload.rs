//! The requests themselves, drawn from a scenario. Reproducible: the dispatcher draws a [`Draw`] (member,
//! priority, per-request seed) from the scenario's seed, and the request is built from it. A member's
//! history and features depend only on (seed, member), so a member that comes back sends the same history
//! and the server's history cache can hit; candidates are new on every request.

use crate::dist::{weighted_index, Zipf};
use crate::proto;
use crate::scenario::{Generation, Ranking, Scenario};
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
