//! The core ranking request/response types, shared by both front ends. HTTP deserializes JSON straight
//! into them; gRPC converts from the prost messages here, so both protocols validate the same way.

use crate::proto::slate::v1 as pb;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How candidates are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Encode the history once, then score candidates in micro-batches against its K/V.
    Amortized,
    /// One full encoder pass over `[history, candidate]` per candidate (the literal computation).
    PerCandidate,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Amortized => "amortized",
            Mode::PerCandidate => "per_candidate",
        }
    }

    /// Parses the request field; `""` means the model's default (returned as `None`).
    pub fn parse_field(s: &str) -> Result<Option<Mode>, crate::Error> {
        match s {
            "" => Ok(None),
            "amortized" => Ok(Some(Mode::Amortized)),
            "per_candidate" => Ok(Some(Mode::PerCandidate)),
            other => Err(crate::Error::invalid(
                "mode",
                format!("unknown mode '{other}', expected 'amortized' or 'per_candidate'"),
            )),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HistoryEvent {
    pub item_id: u64,
    pub action: String,
    pub timestamp_ms: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dense: Vec<f32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    pub item_id: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dense: Vec<f32>,
}

/// One ranking request, as both protocols carry it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RankRequest {
    pub model: String,
    pub member_id: u64,
    #[serde(default)]
    pub member_sparse: BTreeMap<String, u64>,
    #[serde(default)]
    pub member_dense: Vec<f32>,
    #[serde(default)]
    pub history: Vec<HistoryEvent>,
    pub candidates: Vec<Candidate>,
    /// Empty = all of the model's tasks.
    #[serde(default)]
    pub tasks: Vec<String>,
    #[serde(default)]
    pub top_k: Option<u32>,
    /// `""`/absent = the model's default; else `amortized` or `per_candidate`.
    #[serde(default)]
    pub mode: String,
    /// Reference time for event ages (Unix ms); default: the server's clock at arrival.
    #[serde(default)]
    pub request_time_ms: Option<i64>,
    #[serde(default)]
    pub priority: String,
}

impl RankRequest {
    /// Request-level limits from the server config, checked before queueing (model-level checks
    /// happen in `RankerModel::prepare`).
    pub fn check_limits(&self, limits: &crate::config::Limits) -> crate::Result<()> {
        use crate::Error;
        if self.candidates.is_empty() {
            return Err(Error::invalid("candidates", "must contain at least one candidate"));
        }
        if self.candidates.len() > limits.max_candidates {
            return Err(Error::invalid(
                "candidates",
                format!(
                    "{} candidates is over the limit of {}",
                    self.candidates.len(),
                    limits.max_candidates
                ),
            ));
        }
        if self.history.len() > limits.max_history_events {
            return Err(Error::invalid(
                "history",
                format!("{} events is over the limit of {}", self.history.len(), limits.max_history_events),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CandidateScores {
    pub item_id: u64,
    /// One probability per task, in the order of `RankResponse::tasks`.
    pub scores: Vec<f32>,
    /// Σ weight_t · score_t over the model's tasks (all of them, whatever `tasks` selected).
    pub objective: f32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Timing {
    pub queue_ms: f64,
    pub history_encode_ms: f64,
    pub candidates_ms: f64,
    pub total_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RankResponse {
    pub model: String,
    pub weights_hash: String,
    pub tasks: Vec<String>,
    pub candidates: Vec<CandidateScores>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k_indices: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k_item_ids: Option<Vec<u64>>,
    pub timing: Timing,
    pub history_used: u32,
    pub history_truncated: u32,
    pub mode: String,
    pub cache_hit: bool,
}

impl From<pb::RankRequest> for RankRequest {
    fn from(r: pb::RankRequest) -> Self {
        RankRequest {
            model: r.model,
            member_id: r.member_id,
            member_sparse: r.member_sparse.into_iter().collect(),
            member_dense: r.member_dense,
            history: r
                .history
                .into_iter()
                .map(|e| HistoryEvent {
                    item_id: e.item_id,
                    action: e.action,
                    timestamp_ms: e.timestamp_ms,
                    dense: e.dense,
                })
                .collect(),
            candidates: r
                .candidates
                .into_iter()
                .map(|c| Candidate { item_id: c.item_id, dense: c.dense })
                .collect(),
            tasks: r.tasks,
            top_k: r.top_k,
            mode: r.mode,
            request_time_ms: r.request_time_ms,
            priority: r.priority,
        }
    }
}

impl From<RankRequest> for pb::RankRequest {
    fn from(r: RankRequest) -> Self {
        pb::RankRequest {
            model: r.model,
            member_id: r.member_id,
            member_sparse: r.member_sparse.into_iter().collect(),
            member_dense: r.member_dense,
            history: r
                .history
                .into_iter()
                .map(|e| pb::HistoryEvent {
                    item_id: e.item_id,
                    action: e.action,
                    timestamp_ms: e.timestamp_ms,
                    dense: e.dense,
                })
                .collect(),
            candidates: r
                .candidates
                .into_iter()
                .map(|c| pb::Candidate { item_id: c.item_id, dense: c.dense })
                .collect(),
            tasks: r.tasks,
            top_k: r.top_k,
            mode: r.mode,
            request_time_ms: r.request_time_ms,
            priority: r.priority,
        }
    }
}

impl From<RankResponse> for pb::RankResponse {
    fn from(r: RankResponse) -> Self {
        pb::RankResponse {
            model: r.model,
            weights_hash: r.weights_hash,
            tasks: r.tasks,
            candidates: r
                .candidates
                .into_iter()
                .map(|c| pb::CandidateScores { item_id: c.item_id, scores: c.scores, objective: c.objective })
                .collect(),
            top_k_indices: r.top_k_indices.unwrap_or_default(),
            top_k_item_ids: r.top_k_item_ids.unwrap_or_default(),
            timing: Some(pb::Timing {
                queue_ms: r.timing.queue_ms,
                history_encode_ms: r.timing.history_encode_ms,
                candidates_ms: r.timing.candidates_ms,
                total_ms: r.timing.total_ms,
            }),
            history_used: r.history_used,
            history_truncated: r.history_truncated,
            mode: r.mode,
            cache_hit: r.cache_hit,
        }
    }
}

impl From<pb::RankResponse> for RankResponse {
    fn from(r: pb::RankResponse) -> Self {
        let t = r.timing.unwrap_or_default();
        let has_top_k = !r.top_k_indices.is_empty();
        RankResponse {
            model: r.model,
            weights_hash: r.weights_hash,
            tasks: r.tasks,
            candidates: r
                .candidates
                .into_iter()
                .map(|c| CandidateScores { item_id: c.item_id, scores: c.scores, objective: c.objective })
                .collect(),
            top_k_indices: has_top_k.then_some(r.top_k_indices),
            top_k_item_ids: has_top_k.then_some(r.top_k_item_ids),
            timing: Timing {
                queue_ms: t.queue_ms,
                history_encode_ms: t.history_encode_ms,
                candidates_ms: t.candidates_ms,
                total_ms: t.total_ms,
            },
            history_used: r.history_used,
            history_truncated: r.history_truncated,
            mode: r.mode,
            cache_hit: r.cache_hit,
        }
    }
}
