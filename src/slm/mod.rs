//! Small language models: GGUF loading, tokenizer and chat template, the llama-family forward pass,
//! sampling, the KV cache, the continuous-batching engine and label scoring.

pub mod chat;
pub mod compressed;
pub mod gguf;
pub mod kv;
pub mod model;
pub mod sampling;
pub mod scheduler;
pub mod scoring;
pub mod tokenizer;

use crate::config::SlmSettings;
use crate::serving::PriorityClasses;
use scheduler::{GenEvent, GenerateRequest, Prompt, SlmHandle};
use std::path::Path;

/// A model ready to serve: the forward pass, the tokenizer (with its chat template) and the version
/// shown in /v1/models.
pub struct Opened {
    pub model: model::LlamaModel,
    pub tokenizer: tokenizer::SlmTokenizer,
    pub version: String,
}

/// Opens a GGUF file or a compressed model folder ([`compressed`]): its weights, tokenizer and chat
/// template; the version is the hash of the weights file.
pub fn open(path: &Path) -> Result<Opened, String> {
    open_capped(path, 0)
}

/// [`open`] with the context shortened to `context_cap` (a configured `context_length`; 0 = the
/// model's own), so RoPE tables are built for it only and a file claiming a longer context than
/// [`model::LlamaConfig::MAX_CONTEXT`] can still be served.
pub fn open_capped(path: &Path, context_cap: usize) -> Result<Opened, String> {
    let at = |e: String| format!("{}: {e}", path.display());
    if path.is_dir() {
        let c = compressed::open(path).map_err(at)?;
        return open_compressed(c, context_cap).map_err(at);
    }
    let file = gguf::GgufFile::open(path)?;
    let (model, tokenizer) = open_gguf(&file, context_cap).map_err(at)?;
    Ok(Opened { model, tokenizer, version: file.content_hash() })
}

/// The model and tokenizer of a parsed GGUF file, checked against each other (the GGUF half of
/// [`open_capped`]; also what `fuzz/` drives with hostile bytes). Errors do not name the file.
pub fn open_gguf(
    file: &gguf::GgufFile,
    context_cap: usize,
) -> Result<(model::LlamaModel, tokenizer::SlmTokenizer), String> {
    let tokenizer = tokenizer::SlmTokenizer::from_gguf_metadata(file.metadata())
        .map_err(|e| format!("tokenizer: {e}"))?;
    let model = model::LlamaModel::from_gguf_capped(file, context_cap)?;
    check_vocab(&model, &tokenizer)?;
    Ok((model, tokenizer))
}

/// The model and tokenizer of an opened compressed folder (the folder half of [`open_capped`]).
/// Errors do not name the folder.
pub fn open_compressed(mut c: compressed::CompressedModel, context_cap: usize) -> Result<Opened, String> {
    if context_cap > 0 {
        c.config.context_length = c.config.context_length.min(context_cap);
    }
    let tokenizer = tokenizer::SlmTokenizer::from_gguf_metadata(&c.tokenizer_metadata)
        .map_err(|e| format!("tokenizer: {e}"))?;
    let backend = crate::backend::cpu::slm_compressed(&c.config, c.matrices, &c.vectors)?;
    let model = model::LlamaModel::with_backend(c.config, backend);
    check_vocab(&model, &tokenizer)?;
    Ok(Opened { model, tokenizer, version: c.content_hash })
}

/// Every token id the tokenizer can produce must have an embedding row.
fn check_vocab(model: &model::LlamaModel, tokenizer: &tokenizer::SlmTokenizer) -> Result<(), String> {
    if tokenizer.vocab_size() > model.config().vocab {
        return Err(format!(
            "tokenizer.ggml.tokens has {} tokens but token_embd.weight only {} rows",
            tokenizer.vocab_size(),
            model.config().vocab
        ));
    }
    Ok(())
}

/// Loads a model (see [`open`]) and starts its engine.
pub fn load(
    name: &str,
    path: &Path,
    settings: &SlmSettings,
    max_prompt_tokens: usize,
    classes: PriorityClasses,
) -> Result<SlmHandle, String> {
    let Opened { mut model, tokenizer, mut version } = open_capped(path, settings.context_length)?;
    if settings.quantize == crate::config::SlmQuantize::Int8 {
        let n = model
            .quantize_float_weights_int8()
            .map_err(|e| format!("{}: quantize = \"int8\": {e}", path.display()))?;
        tracing::info!(model = name, matrices = n, "float weight matrices re-quantized to int8 per channel");
        // Different weights, different outputs: the version says so.
        if n > 0 {
            version.push_str("+int8");
        }
    }
    SlmHandle::start(name, version, model, tokenizer, settings, max_prompt_tokens, classes)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Warm-up: one short greedy generation through the engine (thread pools, buffers).
pub fn warm_up(handle: &SlmHandle) -> Result<(), String> {
    let req = GenerateRequest {
        prompt: Prompt::Text("Hello".into()),
        params: sampling::SamplingParams { temperature: 0.0, ..Default::default() },
        max_tokens: Some(2),
        stop: Vec::new(),
        ignore_eos: false,
        priority: String::new(),
        timeout: None,
    };
    let mut stream = handle.generate(req).map_err(|e| format!("warm-up: {e}"))?;
    while let Some(ev) = stream.events.blocking_recv() {
        match ev {
            GenEvent::Token { .. } => {}
            GenEvent::Finished { .. } => return Ok(()),
            GenEvent::Failed(e) => return Err(format!("warm-up generation failed: {e}")),
        }
    }
    Err("warm-up: the engine stopped".into())
}
