//! What several targets share: the small models request validation runs against, built once.
#![allow(dead_code)] // each target uses its own part

use slate::ranking::{RankerConfig, RankerModel};
use slate::slm::chat::{ChatMessage, ChatTemplate};
use slate::slm::scheduler::Prompt;
use slate::slm::tokenizer::{tiny_tokenizer_metadata, SlmTokenizer};
use std::sync::LazyLock;

/// The demo ranker's config with dense features on (so their checks run), random weights.
pub static RANKER: LazyLock<RankerModel> = LazyLock::new(|| {
    let mut v: serde_json::Value =
        serde_json::from_str(include_str!("../../models/demo-ranker/config.json")).expect("demo config");
    v["event_dense_dim"] = 2.into();
    v["candidate_dense_dim"] = 3.into();
    v["member_dense_dim"] = 4.into();
    let cfg = RankerConfig::from_json(&v.to_string()).expect("demo config with dense features");
    RankerModel::random(&cfg, 1)
});

/// A request's arrival time for `prepare` (fixed, so runs are reproducible).
pub const NOW_MS: i64 = 1_700_000_000_000;

/// The tiny test tokenizer (ChatML template, byte-level BPE) prompts are rendered and encoded with.
pub static TOKENIZER: LazyLock<SlmTokenizer> = LazyLock::new(|| {
    let md = tiny_tokenizer_metadata().into_iter().collect();
    SlmTokenizer::from_gguf_metadata(&md).expect("tiny tokenizer")
});

pub static TEMPLATE: LazyLock<ChatTemplate> = LazyLock::new(|| {
    ChatTemplate::of_tokenizer(&TOKENIZER).expect("tiny template compiles").expect("tiny template present")
});

/// What the engine does with a tokenizer and its template on a request: render, encode, decode.
pub fn use_tokenizer(tok: &SlmTokenizer, template: Option<&ChatTemplate>, messages: &[ChatMessage]) {
    let text = match template {
        Some(t) => match t.render(messages, true) {
            Ok(text) => text,
            Err(_) => return,
        },
        None => messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n"),
    };
    for special in [true, false] {
        if let Ok(ids) = tok.encode_prompt(&text, special) {
            let _ = tok.decode(&ids, special);
        }
    }
}

/// What the engine does with a request's prompt before it runs: a chat rendered and tokenized, a
/// text tokenized, token ids decoded (for echo and logprobs).
pub fn use_prompt(p: &Prompt) {
    match p {
        Prompt::Chat(m) => use_tokenizer(&TOKENIZER, Some(&TEMPLATE), m),
        Prompt::Text(t) => {
            let _ = TOKENIZER.encode_prompt(t, true);
        }
        Prompt::Tokens(ids) => {
            let _ = TOKENIZER.decode(ids, false);
        }
    }
}
