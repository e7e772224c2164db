//! The tokenizer of a GGUF language model (`tokenizer.ggml.model = "gpt2"`: byte-level BPE), built from
//! the GGUF metadata alone (tokens, merges, token types), so no `tokenizer.json` or hub download is needed.
//! Encoding matches llama.cpp's `llama_tokenize`: the pre-tokenizer follows `tokenizer.ggml.pre` the way
//! llama.cpp's `llm_tokenizer_bpe` does, control tokens (token type 3) are matched as single ids only when
//! `parse_special`, and the end-of-generation set is llama.cpp's (eos, eot/eom, FIM and `<|im_end|>`-like
//! tokens found by their text). Decoding maps each token back to its raw bytes (a table built once).

mod decoder;
mod load;
mod tiny;

pub use decoder::IncrementalDecoder;
pub use tiny::tiny_tokenizer_metadata;

use crate::{Error, Result};
use tokenizers::Tokenizer;

/// A GGUF byte-level BPE tokenizer. Cheap to share: `Send + Sync`, all methods take `&self`.
pub struct SlmTokenizer {
    /// Splits control and user-defined tokens out of the text before BPE (`parse_special = true`).
    special: Tokenizer,
    /// The same model with control tokens left to BPE as plain text (`parse_special = false`).
    plain: Tokenizer,
    /// Raw bytes of every token, concatenated; token `i` is `bytes[offsets[i]..offsets[i + 1]]`.
    bytes: Vec<u8>,
    offsets: Vec<u32>,
    control: Vec<bool>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    stop_ids: Vec<u32>,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl SlmTokenizer {
    /// Token ids of `text`; control tokens written in the text (e.g. "<|im_start|>") become their single
    /// ids when `parse_special`, else they are tokenized as plain text. Never adds BOS.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let tok = if parse_special { &self.special } else { &self.plain };
        let enc = tok.encode_fast(text, false).map_err(|e| Error::Internal(format!("tokenizing: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// `encode(text, parse_special)` with BOS prepended when the GGUF says `add_bos_token = true`.
    pub fn encode_prompt(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend(self.encode(text, parse_special)?);
        Ok(ids)
    }

    /// Text of `ids` (invalid UTF-8 replaced by U+FFFD). Control tokens are dropped when `skip_special`,
    /// else written as their text. Unknown ids are skipped.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut out = Vec::new();
        for &id in ids {
            if skip_special && self.is_control(id) {
                continue;
            }
            out.extend_from_slice(self.bytes_of(id));
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    pub(super) fn bytes_of(&self, id: u32) -> &[u8] {
        let i = id as usize;
        if i + 1 >= self.offsets.len() {
            return &[];
        }
        &self.bytes[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// Raw bytes of one token (control tokens: their text; unknown ids: empty).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.bytes_of(id).to_vec()
    }

    /// Lossy text of one token, for logprob listings (a token holding part of a UTF-8 character shows U+FFFD).
    pub fn token_str(&self, id: u32) -> String {
        String::from_utf8_lossy(self.bytes_of(id)).into_owned()
    }

    /// Bytes of the longest token (control tokens: their text). Byte-level BPE splits a text into
    /// tokens whose bytes concatenate to it, so a text of `n` bytes is at least `n / max_token_bytes`
    /// tokens: a bound that refuses oversized prompts before tokenizing them.
    pub fn max_token_bytes(&self) -> usize {
        self.offsets.windows(2).map(|w| (w[1] - w[0]) as usize).max().unwrap_or(0).max(1)
    }

    pub fn vocab_size(&self) -> usize {
        self.control.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Whether `encode_prompt` prepends BOS (`tokenizer.ggml.add_bos_token`).
    pub fn adds_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    /// End-of-generation ids, sorted: eos, eot/eom, plus `<|im_end|>`, `<|eot_id|>`, `<|endoftext|>` and
    /// the other texts llama.cpp recognizes (FIM pad/repo/sep included), when present.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// Whether generating `id` ends generation.
    pub fn is_stop(&self, id: u32) -> bool {
        self.stop_ids.binary_search(&id).is_ok()
    }

    /// Control tokens (GGUF token type 3, or end-of-generation texts): never shown in generated text.
    pub fn is_control(&self, id: u32) -> bool {
        self.control.get(id as usize).copied().unwrap_or(false)
    }

    /// `tokenizer.chat_template`, when the file has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::Value;
    use std::collections::HashMap;

    fn tiny() -> SlmTokenizer {
        let md: HashMap<String, Value> = tiny_tokenizer_metadata().into_iter().collect();
        SlmTokenizer::from_gguf_metadata(&md).expect("tiny tokenizer loads")
    }

    fn byte_id(b: u8) -> u32 {
        3 + b as u32
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<SlmTokenizer>();
    }

    #[test]
    fn tiny_merges_and_round_trip() {
        let t = tiny();
        assert_eq!(t.vocab_size(), 265);
        assert_eq!(t.encode("hello", true).unwrap(), vec![262]);
        assert_eq!(t.encode("hello the", true).unwrap(), vec![262, 264]);
        assert_eq!(t.encode("hi", true).unwrap(), vec![byte_id(b'h'), byte_id(b'i')]);
        // Digits are split one by one (smollm pre-tokenizer), even with no merges to split.
        assert_eq!(t.encode("12", true).unwrap(), vec![byte_id(b'1'), byte_id(b'2')]);
        for text in ["hello the world", "naïve café ☕ 日本 🎉", "tabs\tand\nnew lines  ", ""] {
            let ids = t.encode(text, true).unwrap();
            assert_eq!(t.decode(&ids, true), text);
        }
    }

    #[test]
    fn control_tokens_only_with_parse_special() {
        let t = tiny();
        assert_eq!(t.encode("<|im_start|>hello<|im_end|>", true).unwrap(), vec![1, 262, 2]);
        let plain = t.encode("<|im_start|>", false).unwrap();
        assert_eq!(plain, "<|im_start|>".bytes().map(byte_id).collect::<Vec<_>>());
        assert_eq!(t.decode(&plain, true), "<|im_start|>");
        assert_eq!(t.decode(&[1, 262, 2], false), "<|im_start|>hello<|im_end|>");
        assert_eq!(t.decode(&[1, 262, 2], true), "hello");
        assert!(t.is_control(0) && t.is_control(2) && !t.is_control(262));
        assert_eq!(t.token_str(2), "<|im_end|>");
        assert_eq!(t.token_bytes(byte_id(b' ')), b" ");
        assert_eq!(t.token_str(263), " t");
    }

    #[test]
    fn max_token_bytes_bounds_the_token_count() {
        let t = tiny();
        // The longest token of the tiny vocabulary is the control token "<|endoftext|>".
        assert_eq!(t.max_token_bytes(), "<|endoftext|>".len());
        for text in ["hello the world", "<|im_start|>hello<|im_end|>", "<|endoftext|><|endoftext|>", "x"] {
            let n = t.encode(text, true).unwrap().len();
            assert!(n >= text.len().div_ceil(t.max_token_bytes()), "{text:?}: {n} tokens");
        }
    }

    #[test]
    fn special_ids_and_stops() {
        let t = tiny();
        assert_eq!(t.bos_id(), Some(1));
        assert_eq!(t.eos_id(), Some(0));
        assert_eq!(t.bos_token(), Some("<|im_start|>"));
        assert_eq!(t.eos_token(), Some("<|endoftext|>"));
        assert_eq!(t.stop_ids(), &[0, 2]);
        assert!(t.is_stop(2) && !t.is_stop(1));
        assert!(!t.adds_bos());
        assert_eq!(t.encode_prompt("hello", true).unwrap(), vec![262]);
        assert!(t.chat_template().unwrap().contains("<|im_start|>"));
    }

    #[test]
    fn add_bos_token_prepends_bos() {
        let mut md: HashMap<String, Value> = tiny_tokenizer_metadata().into_iter().collect();
        md.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
        let t = SlmTokenizer::from_gguf_metadata(&md).unwrap();
        assert_eq!(t.encode_prompt("hello", true).unwrap(), vec![1, 262]);
        assert_eq!(t.encode("hello", true).unwrap(), vec![262]);
    }

    #[test]
    fn bad_metadata_is_an_internal_error_naming_the_key() {
        let mut md: HashMap<String, Value> = tiny_tokenizer_metadata().into_iter().collect();
        md.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
        let e = SlmTokenizer::from_gguf_metadata(&md).err().unwrap();
        assert!(matches!(e, Error::Internal(_)) && e.to_string().contains("tokenizer.ggml.model"), "{e}");

        let mut md: HashMap<String, Value> = tiny_tokenizer_metadata().into_iter().collect();
        md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(99_999));
        let e = SlmTokenizer::from_gguf_metadata(&md).err().unwrap();
        assert!(e.to_string().contains("eos_token_id"), "{e}");

        let mut md: HashMap<String, Value> = tiny_tokenizer_metadata().into_iter().collect();
        md.insert("tokenizer.ggml.pre".into(), Value::String("mystery".into()));
        let e = SlmTokenizer::from_gguf_metadata(&md).err().unwrap();
        assert!(e.to_string().contains("mystery"), "{e}");
    }

    #[test]
    fn incremental_decoder_holds_split_utf8() {
        let t = tiny();
        let text = "é🎉x";
        // Single-byte tokens split every multi-byte character.
        let ids: Vec<u32> = text.bytes().map(byte_id).collect();
        let mut dec = IncrementalDecoder::new();
        let pieces: Vec<String> = ids.iter().map(|&id| dec.push(&t, id)).collect();
        assert_eq!(pieces, vec!["", "é", "", "", "", "🎉", "x"]);
        assert_eq!(dec.finish(), "");

        // Control tokens produce nothing, even between the bytes of one character.
        let mut dec = IncrementalDecoder::new();
        let e = "é".as_bytes();
        assert_eq!(dec.push(&t, byte_id(e[0])), "");
        assert_eq!(dec.push(&t, 2), "");
        assert_eq!(dec.push(&t, byte_id(e[1])), "é");

        // An incomplete character at the end comes out as U+FFFD; an invalid byte at once.
        let mut dec = IncrementalDecoder::new();
        assert_eq!(dec.push(&t, byte_id(0xE6)), "");
        assert_eq!(dec.finish(), "\u{FFFD}");
        assert_eq!(dec.push(&t, byte_id(0xFF)), "\u{FFFD}");
        assert_eq!(dec.push(&t, 262), "hello");
    }
}
