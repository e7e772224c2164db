//! JSON request bodies of every HTTP route with a body, parsed into the server's request types
//! (`parse_json`, as `JsonBody` does) and through the checks and conversions that run before a model
//! computes: ranking limits, mode and featurization against a ranker; OpenAI fields to the engine's
//! request, sampling and stop checks, chat rendering and tokenizing. The first byte picks the route.
#![no_main]

#[path = "common.rs"]
mod common;

use bytes::Bytes;
use http::HeaderMap;
use libfuzzer_sys::fuzz_target;
use slate::config::Limits;
use slate::ranking::{Mode, RankRequest};
use slate::server::http::parse_json;
use slate::server::openai::{prompt_of, ChatRequest, CompletionRequest, ScoreBody, TokenizeRequest};
use slate::slm::scheduler::GenerateRequest;

fn generate(r: Result<GenerateRequest, slate::Error>) {
    if let Ok(g) = r {
        if g.params.validate().is_ok() {
            common::use_prompt(&g.prompt);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&route, body)) = data.split_first() else { return };
    let body = Bytes::copy_from_slice(body);
    let headers = HeaderMap::new();
    match route % 5 {
        0 => {
            let Ok(req) = parse_json::<RankRequest>(&body) else { return };
            if req.check_limits(&Limits::default()).is_err() || Mode::parse_field(&req.mode).is_err() {
                return;
            }
            let _ = common::RANKER.prepare(&req, common::NOW_MS);
        }
        1 => {
            let Ok(mut req) = parse_json::<CompletionRequest>(&body) else { return };
            generate(req.generate_request(&headers));
        }
        2 => {
            let Ok(mut req) = parse_json::<ChatRequest>(&body) else { return };
            generate(req.generate_request(&headers));
        }
        3 => {
            let Ok(req) = parse_json::<TokenizeRequest>(&body) else { return };
            if let Ok(p) = prompt_of(req.prompt, req.messages) {
                common::use_prompt(&p);
            }
        }
        _ => {
            let Ok(mut req) = parse_json::<ScoreBody>(&body) else { return };
            if let Ok(s) = req.score_request(&headers) {
                common::use_prompt(&s.prompt);
            }
        }
    }
});
