//! A tiny GGUF tokenizer vocabulary for tests: a few control tokens, the 256 bytes and six merges.

use super::load::{byte_to_char, TOKEN_TYPE_CONTROL};
use candle_core::quantized::gguf_file::Value;

/// A plain ChatML template (no default system prompt) for the tiny test vocabulary.
const TINY_CHAT_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + \
     message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Test helper: GGUF tokenizer metadata for a tiny vocabulary, ready for candle's `gguf_file::write`.
/// Ids: 0 `<|endoftext|>` (eos, control), 1 `<|im_start|>` (bos, control, not added), 2 `<|im_end|>`
/// (control), 3..=258 the 256 single bytes (byte `b` is id `3 + b`), then the merges "h e", "l l",
/// "he ll", "hell o", "Ġ t", "Ġt he" as ids 259..=264 ("he", "ll", "hell", "hello", "Ġt", "Ġthe").
/// Pre-tokenizer `smollm`, and a ChatML `tokenizer.chat_template` without a default system prompt.
pub fn tiny_tokenizer_metadata() -> Vec<(String, Value)> {
    let controls = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "t"), ("Ġt", "he")];
    let mut tokens: Vec<String> = controls.iter().map(|s| s.to_string()).collect();
    let mut types: Vec<i32> = vec![TOKEN_TYPE_CONTROL as i32; controls.len()];
    for c in byte_to_char() {
        tokens.push(c.to_string());
        types.push(1);
    }
    for (a, b) in merges {
        tokens.push(format!("{a}{b}"));
        types.push(1);
    }
    let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
        ("tokenizer.ggml.tokens".into(), strings(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types.into_iter().map(Value::I32).collect())),
        ("tokenizer.ggml.merges".into(), strings(merges.iter().map(|(a, b)| format!("{a} {b}")).collect())),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(0)),
        ("tokenizer.ggml.padding_token_id".into(), Value::U32(0)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ("tokenizer.chat_template".into(), Value::String(TINY_CHAT_TEMPLATE.into())),
    ]
}
