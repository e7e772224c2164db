//! Building a [`SlmTokenizer`] from GGUF metadata alone: the vocabulary, merges and token types, the
//! pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre`, the end-of-generation set, and the raw
//! bytes of every token.

use super::SlmTokenizer;
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
pub(super) const TOKEN_TYPE_CONTROL: i64 = 3;
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
pub(super) fn byte_to_char() -> [char; 256] {
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
        let max = crate::slm::model::LlamaConfig::MAX_VOCAB;
        if tokens.is_empty() || tokens.len() > max {
            return Err(load_err(format!("tokenizer.ggml.tokens has {} entries (1..={max})", tokens.len())));
        }
        let n = tokens.len();
        let merges = md_strings(md, "tokenizer.ggml.merges")?.unwrap_or_default();
        let types = token_types(md, n)?;
        let bos = token_id(md, "tokenizer.ggml.bos_token_id", n)?;
        let eos = token_id(md, "tokenizer.ggml.eos_token_id", n)?;
        let pre = md_str(md, "tokenizer.ggml.pre")?.unwrap_or("default");
        let add_bos = md_bool(md, "tokenizer.ggml.add_bos_token")?.unwrap_or(pre == "llama-bpe");
        let (stop_ids, control) = end_of_generation(md, &tokens, &types)?;
        let (bytes, offsets) = token_bytes(&tokens, &types, &control)?;
        let (special, plain) = bpe_tokenizers(&tokens, &merges, &types, &control, pre)?;

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
}

/// `tokenizer.ggml.token_type`, one per token (all normal when absent).
fn token_types(md: &HashMap<String, Value>, n: usize) -> Result<Vec<i64>> {
    Ok(match md_array(md, "tokenizer.ggml.token_type")? {
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
    })
}

/// A token id named by `key`, checked against the vocabulary size `n`.
fn token_id(md: &HashMap<String, Value>, key: &str, n: usize) -> Result<Option<u32>> {
    match md_int(md, key)? {
        None => Ok(None),
        // Some writers store -1 for "none".
        Some(id) if id < 0 => Ok(None),
        Some(id) if (id as usize) < n => Ok(Some(id as u32)),
        Some(id) => Err(load_err(format!("{key} = {id} is outside the vocabulary of {n} tokens"))),
    }
}

/// End of generation, as llama.cpp decides it: ids named in the metadata, then tokens by their
/// text. Returns the sorted stop ids and which tokens are control tokens (type 3, or an
/// end-of-generation text).
fn end_of_generation(
    md: &HashMap<String, Value>,
    tokens: &[&str],
    types: &[i64],
) -> Result<(Vec<u32>, Vec<bool>)> {
    let mut stop_ids = Vec::new();
    for key in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
        "tokenizer.ggml.fim_pad_token_id",
        "tokenizer.ggml.fim_rep_token_id",
        "tokenizer.ggml.fim_sep_token_id",
    ] {
        stop_ids.extend(token_id(md, key, tokens.len())?);
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
    Ok((stop_ids, control))
}

/// Raw bytes of each token, concatenated, and each token's start offset (plus the end). Normal
/// tokens are spelled in GPT-2's byte alphabet; control and user-defined tokens are their literal
/// text (llama.cpp's token_to_piece does the same).
fn token_bytes(tokens: &[&str], types: &[i64], control: &[bool]) -> Result<(Vec<u8>, Vec<u32>)> {
    let mut char_to_byte = HashMap::with_capacity(256);
    for (b, c) in byte_to_char().iter().enumerate() {
        char_to_byte.insert(*c, b as u8);
    }
    let mut bytes = Vec::with_capacity(tokens.iter().map(|t| t.len()).sum());
    let mut offsets = Vec::with_capacity(tokens.len() + 1);
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
    Ok((bytes, offsets))
}

/// The BPE model with `pre`'s pre-tokenizer, twice: with control tokens matched as single ids
/// (`parse_special`), and with them left to BPE as plain text.
fn bpe_tokenizers(
    tokens: &[&str],
    merges: &[&str],
    types: &[i64],
    control: &[bool],
    pre: &str,
) -> Result<(Tokenizer, Tokenizer)> {
    let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
    let merges = merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| load_err(format!("tokenizer.ggml.merges[{i}] = {m:?} is not 'left right'")))
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
    let added: Vec<AddedToken> = (0..tokens.len())
        .filter(|&id| control[id] || types[id] == TOKEN_TYPE_USER_DEFINED)
        .map(|id| AddedToken::from(tokens[id].to_string(), control[id]))
        .collect();
    special.add_special_tokens(added).map_err(|e| load_err(format!("registering control tokens: {e}")))?;
    let mut plain = special.clone();
    plain.set_encode_special_tokens(true);
    Ok((special, plain))
}
