//! Writing a folder: everything goes to `DIR.tmp-<pid>`, is read back with [`super::open`] (so a
//! writer bug can never leave an unloadable folder), and the temporary folder is renamed to `DIR`.

use super::layout::{encode_matrix, OwnedTensor};
use super::{
    expected_matrices, expected_vectors, layer_info, CompressionJson, COMPRESSION_FILE, CONFIG_FILE,
    MODEL_FILE, TOKENIZER_FILE,
};
use crate::kernels::cpu::compressed::CMatrix;
use crate::slm::model::LlamaConfig;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::QTensor;
use safetensors::tensor::TensorView;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where a folder came from (recorded in `compression.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// The source GGUF's file name.
    pub name: String,
    /// First 16 hex digits of its SHA-256.
    pub sha256: String,
    /// How the folder was made (e.g. the compressor's arguments).
    pub method: String,
}

/// Writes a folder at `dir` (which must not exist yet): `config`, the `tokenizer.*` entries of
/// `tokenizer_metadata`, every matrix and vector the config needs (names as in GGUF), and
/// `compression.json`.
///
/// # Errors
/// When the folder exists, a file cannot be written, or the result does not open (a missing or
/// misshapen tensor, …).
pub fn write(
    dir: &Path,
    config: &LlamaConfig,
    tokenizer_metadata: &HashMap<String, Value>,
    matrices: &HashMap<String, CMatrix>,
    vectors: &HashMap<String, Vec<f32>>,
    source: &Source,
) -> Result<(), String> {
    write_with(dir, config, tokenizer_metadata, matrices, vectors, source, &[])
}

/// [`write`](fn@write), plus `extra` files (name, content) written into the folder before it
/// appears under its name, e.g. the compressor's per-layer report. Their names must be plain file
/// names that the format does not use.
///
/// # Errors
/// As [`write`](fn@write); and an extra name that is not a plain file name or is one of the format's.
pub fn write_with(
    dir: &Path,
    config: &LlamaConfig,
    tokenizer_metadata: &HashMap<String, Value>,
    matrices: &HashMap<String, CMatrix>,
    vectors: &HashMap<String, Vec<f32>>,
    source: &Source,
    extra: &[(&str, &[u8])],
) -> Result<(), String> {
    let reserved = [CONFIG_FILE, TOKENIZER_FILE, MODEL_FILE, COMPRESSION_FILE];
    if let Some((name, _)) = extra
        .iter()
        .find(|(n, _)| reserved.contains(n) || n.is_empty() || n.contains(['/', '\\']) || n.starts_with('.'))
    {
        return Err(format!("{name:?} cannot be an extra file of a compressed model folder"));
    }
    if dir.exists() {
        return Err(format!("{} already exists", dir.display()));
    }
    let mut tmp_name =
        dir.file_name().ok_or_else(|| format!("{}: not a folder name", dir.display()))?.to_owned();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp: PathBuf = dir.with_file_name(tmp_name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let result = write_files(&tmp, config, tokenizer_metadata, matrices, vectors, source)
        .and_then(|()| {
            extra.iter().try_for_each(|(name, bytes)| {
                std::fs::write(tmp.join(name), bytes).map_err(|e| format!("{name}: {e}"))
            })
        })
        .and_then(|()| {
            super::open(&tmp).map(drop).map_err(|e| format!("the written folder does not open: {e}"))
        })
        .and_then(|()| std::fs::rename(&tmp, dir).map_err(|e| format!("{}: {e}", dir.display())));
    if result.is_err() {
        // Leave nothing half-written behind.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn write_files(
    tmp: &Path,
    config: &LlamaConfig,
    tokenizer_metadata: &HashMap<String, Value>,
    matrices: &HashMap<String, CMatrix>,
    vectors: &HashMap<String, Vec<f32>>,
    source: &Source,
) -> Result<(), String> {
    let put =
        |name: &str, bytes: &[u8]| std::fs::write(tmp.join(name), bytes).map_err(|e| format!("{name}: {e}"));
    let json = serde_json::to_vec_pretty(config).map_err(|e| format!("{CONFIG_FILE}: {e}"))?;
    put(CONFIG_FILE, &json)?;

    let mut md: Vec<(&str, &Value)> = tokenizer_metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    md.sort_by_key(|(k, _)| *k);
    let mut gguf = std::io::Cursor::new(Vec::new());
    let no_tensors: [(&str, &QTensor); 0] = [];
    gguf_file::write(&mut gguf, &md, &no_tensors).map_err(|e| format!("{TOKENIZER_FILE}: {e}"))?;
    put(TOKENIZER_FILE, gguf.get_ref())?;

    let mut tensors: Vec<OwnedTensor> = Vec::new();
    let mut meta = HashMap::new();
    let mut layers = Vec::new();
    let (mut total, mut dense, mut kept, mut all) = (0usize, 0usize, 0f64, 0f64);
    for (name, ..) in expected_matrices(config) {
        if let Some(m) = matrices.get(&name) {
            meta.insert(name.clone(), encode_matrix(&name, m, &mut tensors));
            layers.push(layer_info(&name, m));
            total += m.bytes();
            dense += 4 * m.rows() * m.cols();
            kept += m.s_kept() as f64;
            all += (m.rows() * m.cols()) as f64;
        }
    }
    for (name, ..) in expected_vectors(config) {
        if let Some(v) = vectors.get(&name) {
            let data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            tensors.push(OwnedTensor { name, dtype: safetensors::Dtype::F32, shape: vec![v.len()], data });
        }
    }
    let views = tensors
        .iter()
        .map(|t| {
            let view =
                TensorView::new(t.dtype, t.shape.clone(), &t.data).map_err(|e| format!("{}: {e}", t.name))?;
            Ok((t.name.as_str(), view))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| format!("{MODEL_FILE}: {e}"))?;
    put(MODEL_FILE, &bytes)?;

    let density = if all == 0.0 { 1.0 } else { kept / all };
    let compression = CompressionJson {
        source: source.clone(),
        layers,
        total_bytes: total,
        dense_f32_bytes: dense,
        density,
    };
    let json = serde_json::to_vec_pretty(&compression).map_err(|e| format!("{COMPRESSION_FILE}: {e}"))?;
    put(COMPRESSION_FILE, &json)
}
