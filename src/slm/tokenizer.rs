//! The tokenizer of a GGUF language model (`tokenizer.ggml.model = "gpt2"`: byte-level BPE), built from
//! the GGUF metadata alone (tokens, merges, token types), so no `tokenizer.json` or hub download is needed.
//! Encoding matches llama.cpp's `llama_tokenize`: the pre-tokenizer follows `tokenizer.ggml.pre` the way
//! llama.cpp's `llm_tokenizer_bpe` does, control tokens (token type 3) are matched as single ids only when
//! `parse_special`, and the end-of-generation set is llama.cpp's (eos, eot/eom, FIM and `<|im_end|>`-like
//! tokens found by their text). Decoding maps each token back to its raw bytes (a table built once).

use crate::{Error, Result};
use candle_core::quantized::gguf_file::Value;
use std::collections::HashMap;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Token texts llama.cpp treats as end of generation (`special_eog_ids`), FIM pad/repo/sep included.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
    // FIM pad / repo / sep: llama.cpp adds the first one found of each kind to the EOG set.
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
    "<|file_sep|>",
];

/// llama.cpp's pre-tokenizer regexes (`llm_tokenizer_bpe`), for the `tokenizer.ggml.pre` values we support.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

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

fn load_err(msg: impl std::fmt::Display) -> Error {
    Error::Internal(format!("GGUF tokenizer: {msg}"))
}

fn md_str<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<Option<&'a str>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(v) => Err(load_err(format!("{key} must be a string, found {:?}", v.value_type()))),
    }
}

/// Any integer value as i64 (GGUF writers differ: token ids are u32 in most files, i32 in some).
fn as_int(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(x) => *x as i64,
        Value::I8(x) => *x as i64,
        Value::U16(x) => *x as i64,
        Value::I16(x) => *x as i64,
        Value::U32(x) => *x as i64,
        Value::I32(x) => *x as i64,
        Value::U64(x) => i64::try_from(*x).ok()?,
        Value::I64(x) => *x,
        _ => return None,
    })
}

fn md_int(md: &HashMap<String, Value>, key: &str) -> Result<Option<i64>> {
    match md.get(key) {
        None => Ok(None),
        Some(v) => as_int(v).map(Some).ok_or_else(|| load_err(format!("{key} must be an integer"))),
    }
}

fn md_bool(md: &HashMap<String, Value>, key: &str) -> Result<Option<bool>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(load_err(format!("{key} must be a bool"))),
    }
}

fn md_array<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<Option<&'a [Value]>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a.as_slice())),
        Some(_) => Err(load_err(format!("{key} must be an array"))),
    }
}

fn md_strings<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<Option<Vec<&'a str>>> {
    let Some(arr) = md_array(md, key)? else { return Ok(None) };
    arr.iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s.as_str()),
            _ => Err(load_err(format!("{key}[{i}] must be a string"))),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// GPT-2's byte ↔ printable-char table: byte-level BPE tokens spell byte `b` as `byte_to_char()[b]`.
fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            n += 1;
            char::from_u32(255 + n).expect("256..=323 are valid chars")
        };
    }
    table
}

/// The pre-tokenizer llama.cpp uses for this `tokenizer.ggml.pre`, and whether merges are ignored for
/// words that are already whole tokens (llama.cpp's `ignore_merges`, set for llama3).
fn pre_tokenizer(pre: &str) -> Result<(PreTokenizerWrapper, bool)> {
    // GPT-2's regex, applied by ByteLevel itself; no prefix space (llama.cpp never adds one for BPE).
    let gpt2 = || PreTokenizerWrapper::from(ByteLevel::new(false, true, true));
    let with_regex = |regex: &str| -> Result<PreTokenizerWrapper> {
        let split =
            Split::new(SplitPattern::Regex(regex.to_string()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| load_err(format!("pre-tokenizer regex: {e}")))?;
        Ok(Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into())
    };
    Ok(match pre {
        "default" | "gpt-2" | "gpt2" => (gpt2(), false),
        // llama.cpp: "\p{N}" (each digit alone) then GPT-2's regex; HF spells it Digits + ByteLevel.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => {
            (Sequence::new(vec![Digits::new(true).into(), gpt2()]).into(), false)
        }
        "llama-bpe" | "llama3" => (with_regex(LLAMA3_REGEX)?, true),
        "qwen2" => (with_regex(QWEN2_REGEX)?, false),
        other => {
            return Err(load_err(format!(
                "unsupported tokenizer.ggml.pre '{other}' (supported: default, gpt2, smollm, starcoder, \
                 refact, command-r, codeshell, exaone, minerva, llama-bpe, qwen2)"
            )))
        }
    })
}

impl SlmTokenizer {
    /// Builds the tokenizer from GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`).
    /// Errors (`Error::Internal`) name the key that is missing or malformed.
    pub fn from_gguf_metadata(md: &HashMap<String, Value>) -> Result<Self> {
        let model = md_str(md, "tokenizer.ggml.model")?.unwrap_or("(missing)");
        if model != "gpt2" {
            return Err(load_err(format!(
                "tokenizer.ggml.model is '{model}'; only 'gpt2' (byte-level BPE) is supported"
            )));
        }
        let tokens = md_strings(md, "tokenizer.ggml.tokens")?
            .ok_or_else(|| load_err("tokenizer.ggml.tokens is missing"))?;
        if tokens.is_empty() || tokens.len() > u32::MAX as usize {
            return Err(load_err(format!("tokenizer.ggml.tokens has {} entries", tokens.len())));
        }
        let n = tokens.len();
        let merges = md_strings(md, "tokenizer.ggml.merges")?.unwrap_or_default();
        let types: Vec<i64> = match md_array(md, "tokenizer.ggml.token_type")? {
            None => vec![1; n],
            Some(arr) if arr.len() == n => arr
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    as_int(v)
                        .ok_or_else(|| load_err(format!("tokenizer.ggml.token_type[{i}] must be an integer")))
                })
                .collect::<Result<_>>()?,
            Some(arr) => {
                return Err(load_err(format!(
                    "tokenizer.ggml.token_type has {} entries but there are {n} tokens",
                    arr.len()
                )))
            }
        };
        let id_key = |key: &str| -> Result<Option<u32>> {
            match md_int(md, key)? {
                None => Ok(None),
                // Some writers store -1 for "none".
                Some(id) if id < 0 => Ok(None),
                Some(id) if (id as usize) < n => Ok(Some(id as u32)),
                Some(id) => Err(load_err(format!("{key} = {id} is outside the vocabulary of {n} tokens"))),
            }
        };
        let bos = id_key("tokenizer.ggml.bos_token_id")?;
        let eos = id_key("tokenizer.ggml.eos_token_id")?;
        let pre = md_str(md, "tokenizer.ggml.pre")?.unwrap_or("default");
        let add_bos = md_bool(md, "tokenizer.ggml.add_bos_token")?.unwrap_or(pre == "llama-bpe");

        // End of generation, as llama.cpp decides it: ids named in the metadata, then tokens by their text.
        let mut stop_ids = Vec::new();
        for key in [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
            "tokenizer.ggml.fim_pad_token_id",
            "tokenizer.ggml.fim_rep_token_id",
            "tokenizer.ggml.fim_sep_token_id",
        ] {
            stop_ids.extend(id_key(key)?);
        }
        let mut control: Vec<bool> = types.iter().map(|&t| t == TOKEN_TYPE_CONTROL).collect();
        for (id, text) in tokens.iter().enumerate() {
            if EOG_TEXTS.contains(text) {
                stop_ids.push(id as u32);
                // llama.cpp overrides the type of control-looking tokens that were not marked control.
                control[id] = true;
            }
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();

        // Raw bytes of each token: normal tokens are spelled in GPT-2's byte alphabet; control and
        // user-defined tokens are their literal text (llama.cpp's token_to_piece does the same).
        let mut char_to_byte = HashMap::with_capacity(256);
        for (b, c) in byte_to_char().iter().enumerate() {
            char_to_byte.insert(*c, b as u8);
        }
        let mut bytes = Vec::with_capacity(tokens.iter().map(|t| t.len()).sum());
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0u32);
        for (id, text) in tokens.iter().enumerate() {
            if control[id] || types[id] == TOKEN_TYPE_USER_DEFINED {
                bytes.extend_from_slice(text.as_bytes());
            } else {
                for c in text.chars() {
                    match char_to_byte.get(&c) {
                        Some(b) => bytes.push(*b),
                        // Not in the byte alphabet: a malformed vocabulary; keep the char's own bytes.
                        None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                }
            }
            let end = u32::try_from(bytes.len()).map_err(|_| load_err("token texts exceed 4 GiB"))?;
            offsets.push(end);
        }

        let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
        let merges = merges
            .iter()
            .enumerate()
            .map(|(i, m)| {
                m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).ok_or_else(|| {
                    load_err(format!("tokenizer.ggml.merges[{i}] = {m:?} is not 'left right'"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let (pre_tok, ignore_merges) = pre_tokenizer(pre)?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(ignore_merges)
            .build()
            .map_err(|e| load_err(format!("building BPE: {e}")))?;
        let mut special = Tokenizer::new(bpe);
        special.with_pre_tokenizer(Some(pre_tok));
        // Control tokens are special (matched only when parse_special); user-defined tokens are always
        // matched whole, as llama.cpp does. Both keep their GGUF ids (they are in the BPE vocabulary).
        let added: Vec<AddedToken> = (0..n)
            .filter(|&id| control[id] || types[id] == TOKEN_TYPE_USER_DEFINED)
            .map(|id| AddedToken::from(tokens[id].to_string(), control[id]))
            .collect();
        special
            .add_special_tokens(added)
            .map_err(|e| load_err(format!("registering control tokens: {e}")))?;
        let mut plain = special.clone();
        plain.set_encode_special_tokens(true);

        let text_of = |id: Option<u32>| id.map(|i| tokens[i as usize].to_string());
        Ok(SlmTokenizer {
            special,
            plain,
            bytes,
            offsets,
            control,
            bos,
            eos,
            add_bos,
            stop_ids,
            chat_template: md_str(md, "tokenizer.chat_template")?.map(str::to_string),
            bos_token: text_of(bos),
            eos_token: text_of(eos),
        })
    }

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

    fn bytes_of(&self, id: u32) -> &[u8] {
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

/// Streaming detokenizer: feed token ids, get back newly completed UTF-8 text. Bytes of an incomplete
/// multi-byte character are held back until the next token completes them; control tokens produce ""
/// (they are never shown in generated text). Invalid sequences come out as U+FFFD, like `decode`.
#[derive(Debug, Default)]
pub struct IncrementalDecoder {
    pending: Vec<u8>,
}

impl IncrementalDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, tok: &SlmTokenizer, id: u32) -> String {
        if tok.is_control(id) {
            return String::new();
        }
        self.pending.extend_from_slice(tok.bytes_of(id));
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = start + e.valid_up_to();
                    out.push_str(
                        std::str::from_utf8(&self.pending[start..valid]).expect("checked valid prefix"),
                    );
                    match e.error_len() {
                        // An incomplete character at the end: wait for the next token.
                        None => {
                            start = valid;
                            break;
                        }
                        Some(len) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start = valid + len;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    /// What is still held back (an incomplete character, shown as U+FFFD), when generation ends.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

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
