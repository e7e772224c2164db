//! The `ranker` model family: a DLRM whose user-history Transformer encodes a member's events once and
//! scores many appended candidates against the encoded history (M-FALCON-style amortization).
//! Format: docs/ranker-format.md. Reference: tools/reference/ranker.py.

pub mod api;
pub mod batcher;
pub mod cache;
pub mod config;
pub mod encoder;
pub mod features;
pub mod model;
pub mod scheduler;
pub mod warmup;
pub mod weights;

pub use api::{Candidate, CandidateScores, HistoryEvent, Mode, RankRequest, RankResponse, Timing};
pub use config::{Fusion, RankerConfig};
pub use encoder::{EncodedHistory, Scratch};
pub use features::Prepared;
pub use model::{RankerLoadError, RankerModel};
pub use scheduler::RankerHandle;
// Priority classes belong to every model family (`crate::serving`); the ranker API names them too.
pub use crate::serving::PriorityClasses;
