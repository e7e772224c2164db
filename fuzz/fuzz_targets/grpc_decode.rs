//! gRPC request messages: the front layer's pre-scan of the framed body (`count_grpc_fields`, and
//! for Rank `check_rank_counts` under the default limits), prost decoding into the `slate.v1` types,
//! then the conversions and checks that run before a model computes. The first byte picks the
//! message (Rank, Generate, Score); the rest is the message as it travels in one gRPC frame.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use slate::config::Limits;
use slate::proto::slate::v1 as pb;
use slate::ranking::{Mode, RankRequest};
use slate::server::body::count_grpc_fields;
use slate::server::grpc::{generate_request, score_request};
use slate::server::layer::check_rank_counts;

fuzz_target!(|data: &[u8]| {
    let Some((&which, msg)) = data.split_first() else { return };
    // The fuzzer's bytes as a whole body too (its own framing, possibly wrong).
    let _ = count_grpc_fields(data, [1, 5, 6]);
    let mut framed = Vec::with_capacity(msg.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(msg);
    match which % 3 {
        0 => {
            if check_rank_counts(&framed, &Limits::default()).is_err() {
                return;
            }
            let Ok(m) = pb::RankRequest::decode(msg) else { return };
            let req = RankRequest::from(m);
            if req.check_limits(&Limits::default()).is_err() || Mode::parse_field(&req.mode).is_err() {
                return;
            }
            let _ = common::RANKER.prepare(&req, common::NOW_MS);
        }
        1 => {
            let _ = count_grpc_fields(&framed, [1, 2, 3, 4]);
            let Ok(m) = pb::GenerateRequest::decode(msg) else { return };
            if let Ok((_, g)) = generate_request(m, None, None) {
                if g.params.validate().is_ok() {
                    common::use_prompt(&g.prompt);
                }
            }
        }
        _ => {
            let _ = count_grpc_fields(&framed, [1, 2, 3, 4]);
            let Ok(m) = pb::ScoreRequest::decode(msg) else { return };
            if let Ok((_, _, s)) = score_request(m, None, None) {
                common::use_prompt(&s.prompt);
            }
        }
    }
});
