//! Compressed model folders (`docs/compressed-format.md`): `config.json`, `tokenizer.gguf`,
//! `model.safetensors` (every linear layer as a [`CMatrix`] of tiles, norms and biases as f32) and
//! `compression.json`. [`open`] checks everything a file can get wrong and names the tensor at fault;
//! `write` produces a folder atomically (a temporary folder renamed at the end).

mod layout;
mod write;

#[cfg(test)]
mod tests;

pub use write::{write, write_with, Source};

use super::model::LlamaConfig;
use crate::kernels::cpu::compressed::CMatrix;
use candle_core::quantized::gguf_file::Value;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// File names inside a folder.
pub const CONFIG_FILE: &str = "config.json";
pub const TOKENIZER_FILE: &str = "tokenizer.gguf";
pub const MODEL_FILE: &str = "model.safetensors";
pub const COMPRESSION_FILE: &str = "compression.json";

/// One compressed matrix as `compression.json` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerInfo {
    pub name: String,
    /// E.g. `2:4 int8`, `dense int8 | 2:4 int4`, `2:4 int8 + rank 64 int8` (see [`representation`]).
    pub representation: String,
    /// Kept entries of S over `rows × cols`.
    pub density: f64,
    pub rank: usize,
    /// Bytes held by the matrix (values, scales, masks, U and V).
    pub bytes: usize,
}

/// The whole `compression.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionJson {
    pub source: Source,
    pub layers: Vec<LayerInfo>,
    /// Sum of the layers' bytes.
    pub total_bytes: usize,
    /// Bytes of the same matrices as dense f32.
    pub dense_f32_bytes: usize,
    /// Kept entries of every S over every matrix's `rows × cols`.
    pub density: f64,
}

/// An opened, fully checked folder.
#[derive(Debug, Clone)]
pub struct CompressedModel {
    pub config: LlamaConfig,
    /// The source GGUF's `tokenizer.*` metadata (for `SlmTokenizer::from_gguf_metadata`).
    pub tokenizer_metadata: HashMap<String, Value>,
    /// GGUF tensor names → matrices.
    pub matrices: HashMap<String, CMatrix>,
    /// GGUF tensor names → norm weights and biases.
    pub vectors: HashMap<String, Vec<f32>>,
    pub layers: Vec<LayerInfo>,
    /// First 16 hex digits of the SHA-256 of `model.safetensors`.
    pub content_hash: String,
}

/// Whether `path` is a directory holding `config.json` and `model.safetensors` (a GGUF is a file).
pub fn is_compressed_folder(path: &Path) -> bool {
    path.is_dir() && path.join(CONFIG_FILE).is_file() && path.join(MODEL_FILE).is_file()
}

/// Whether a tensor is required or may be absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Required,
    Optional,
}

/// The matrices a config implies, in file order: `(name, rows, cols, need)`.
pub fn expected_matrices(c: &LlamaConfig) -> Vec<(String, usize, usize, Need)> {
    let (d, q, kv) = (c.d_model, c.heads * c.head_dim, c.kv_heads * c.head_dim);
    let mut out = vec![("token_embd.weight".to_string(), c.vocab, d, Need::Required)];
    for i in 0..c.layers {
        for (t, rows, cols) in [
            ("attn_q", q, d),
            ("attn_k", kv, d),
            ("attn_v", kv, d),
            ("attn_output", d, q),
            ("ffn_gate", c.ffn, d),
            ("ffn_up", c.ffn, d),
            ("ffn_down", d, c.ffn),
        ] {
            out.push((format!("blk.{i}.{t}.weight"), rows, cols, Need::Required));
        }
    }
    out.push(("output.weight".to_string(), c.vocab, d, Need::Optional));
    out
}

/// The vectors a config implies: `(name, len, need)`.
pub fn expected_vectors(c: &LlamaConfig) -> Vec<(String, usize, Need)> {
    let (d, q, kv) = (c.d_model, c.heads * c.head_dim, c.kv_heads * c.head_dim);
    let mut out = Vec::new();
    for i in 0..c.layers {
        out.push((format!("blk.{i}.attn_norm.weight"), d, Need::Required));
        out.push((format!("blk.{i}.ffn_norm.weight"), d, Need::Required));
        out.push((format!("blk.{i}.attn_q.bias"), q, Need::Optional));
        out.push((format!("blk.{i}.attn_k.bias"), kv, Need::Optional));
        out.push((format!("blk.{i}.attn_v.bias"), kv, Need::Optional));
    }
    out.push(("output_norm.weight".to_string(), d, Need::Required));
    out
}

/// A short description of a matrix's representation: the distinct `pattern values` of S's tiles in
/// order, joined by ` | ` (`empty` when S has none), then ` + rank R` and U's and V's value types.
pub fn representation(m: &CMatrix) -> String {
    let mut s_parts: Vec<String> = Vec::new();
    let mut u_parts: Vec<String> = Vec::new();
    for t in m.tiles() {
        let part = format!("{} {}", t.pattern().name(), t.values().value_type().name());
        let list = if t.cols().0 < m.cols() { &mut s_parts } else { &mut u_parts };
        if !list.contains(&part) {
            list.push(part);
        }
    }
    let mut out = if s_parts.is_empty() { "empty".to_string() } else { s_parts.join(" | ") };
    if let Some(v) = m.v() {
        let mut types: Vec<&str> = u_parts.iter().map(|p| p.rsplit(' ').next().unwrap_or("")).collect();
        for t in v.tiles() {
            let name = t.values().value_type().name();
            if !types.contains(&name) {
                types.push(name);
            }
        }
        out.push_str(&format!(" + rank {} {}", m.rank(), types.join("/")));
    }
    out
}

/// Kept entries of S over `rows × cols` (1 for an empty matrix).
pub fn density(m: &CMatrix) -> f64 {
    let all = m.rows() as f64 * m.cols() as f64;
    if all == 0.0 {
        1.0
    } else {
        m.s_kept() as f64 / all
    }
}

/// The `compression.json` entry of a matrix.
pub fn layer_info(name: &str, m: &CMatrix) -> LayerInfo {
    LayerInfo {
        name: name.to_string(),
        representation: representation(m),
        density: density(m),
        rank: m.rank(),
        bytes: m.bytes(),
    }
}

/// Largest file accepted in a folder (the model file is read whole).
const MAX_FILE_BYTES: u64 = 1 << 36;
/// Largest `config.json` / `compression.json` accepted (both are a few kilobytes).
const MAX_JSON_BYTES: u64 = 16 << 20;

fn read_file(dir: &Path, name: &str) -> Result<Vec<u8>, String> {
    let path = dir.join(name);
    let len = std::fs::metadata(&path).map_err(|e| format!("{name}: {e}"))?.len();
    let max = if name.ends_with(".json") { MAX_JSON_BYTES } else { MAX_FILE_BYTES };
    if len > max {
        return Err(format!("{name}: {len} bytes is more than the {max} accepted"));
    }
    std::fs::read(&path).map_err(|e| format!("{name}: {e}"))
}

/// Opens and checks a folder. Never panics on bad files; every error names the file, and for
/// tensors the tensor (and tile) at fault.
pub fn open(dir: &Path) -> Result<CompressedModel, String> {
    open_with(|name| read_file(dir, name))
}

/// [`open`] over files that `read` returns by name (one of [`CONFIG_FILE`], [`TOKENIZER_FILE`],
/// [`MODEL_FILE`], [`COMPRESSION_FILE`]; each asked for once, in that order, after the ones before
/// it passed their checks), so the checks can run on bytes that are not in a folder (`fuzz/`).
pub fn open_with(mut read: impl FnMut(&str) -> Result<Vec<u8>, String>) -> Result<CompressedModel, String> {
    let config: LlamaConfig =
        serde_json::from_slice(&read(CONFIG_FILE)?).map_err(|e| format!("{CONFIG_FILE}: {e}"))?;
    config.validate().map_err(|e| format!("{CONFIG_FILE}: {e}"))?;
    let tokenizer_metadata = read_tokenizer(&read(TOKENIZER_FILE)?)?;
    let bytes = read(MODEL_FILE)?;
    let content_hash = {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(&bytes))[..16].to_string()
    };
    let st = SafeTensors::deserialize(&bytes).map_err(|e| format!("{MODEL_FILE}: {e}"))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| format!("{MODEL_FILE}: {e}"))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let (matrices, vectors) = read_tensors(&config, &st, &meta).map_err(|e| format!("{MODEL_FILE}: {e}"))?;
    let compression: CompressionJson =
        serde_json::from_slice(&read(COMPRESSION_FILE)?).map_err(|e| format!("{COMPRESSION_FILE}: {e}"))?;
    check_compression(&config, &compression, &matrices).map_err(|e| format!("{COMPRESSION_FILE}: {e}"))?;
    Ok(CompressedModel {
        config,
        tokenizer_metadata,
        matrices,
        vectors,
        layers: compression.layers,
        content_hash,
    })
}

/// The `tokenizer.*` metadata of a tensor-less GGUF.
fn read_tokenizer(bytes: &[u8]) -> Result<HashMap<String, Value>, String> {
    let content = super::gguf::read_content(bytes).map_err(|e| format!("{TOKENIZER_FILE}: {e}"))?;
    if let Some(name) = content.tensor_infos.keys().next() {
        return Err(format!("{TOKENIZER_FILE}: holds tensor {name}; it must hold metadata only"));
    }
    if let Some(key) = content.metadata.keys().find(|k| !k.starts_with("tokenizer.")) {
        return Err(format!("{TOKENIZER_FILE}: metadata {key} is not a tokenizer.* key"));
    }
    Ok(content.metadata)
}

type Tensors = (HashMap<String, CMatrix>, HashMap<String, Vec<f32>>);

/// Every expected tensor, present with the config's shape, and nothing else.
fn read_tensors(
    c: &LlamaConfig,
    st: &SafeTensors,
    meta: &HashMap<String, String>,
) -> Result<Tensors, String> {
    let mut used: BTreeSet<String> = BTreeSet::new();
    let mut matrices = HashMap::new();
    for (name, rows, cols, need) in expected_matrices(c) {
        let Some(json) = meta.get(&name) else {
            if need == Need::Required {
                return Err(format!("{name}: missing (no entry in the metadata)"));
            }
            continue;
        };
        let m = layout::read_matrix(&name, json, (rows, cols), st, &mut used)?;
        matrices.insert(name, m);
    }
    if let Some(key) = meta.keys().find(|k| !matrices.contains_key(*k)) {
        return Err(format!("metadata entry {key} is not a matrix of this model"));
    }
    let mut vectors = HashMap::new();
    for (name, len, need) in expected_vectors(c) {
        match st.tensor(&name) {
            Ok(view) => {
                used.insert(name.clone());
                vectors.insert(name.clone(), layout::read_vector(&name, &view, len)?);
            }
            Err(_) if need == Need::Optional => {}
            Err(_) => return Err(format!("{name}: missing")),
        }
    }
    if let Some(extra) = st.names().into_iter().find(|n| !used.contains(*n)) {
        return Err(format!("{extra}: not a tensor of this model"));
    }
    Ok((matrices, vectors))
}

/// `compression.json` lists each matrix once, in file order, as it is.
fn check_compression(
    c: &LlamaConfig,
    j: &CompressionJson,
    matrices: &HashMap<String, CMatrix>,
) -> Result<(), String> {
    let names: Vec<String> =
        expected_matrices(c).into_iter().map(|e| e.0).filter(|n| matrices.contains_key(n)).collect();
    if j.layers.len() != names.len() {
        return Err(format!("lists {} layers, model.safetensors has {}", j.layers.len(), names.len()));
    }
    let (mut total, mut dense, mut kept, mut all) = (0usize, 0usize, 0f64, 0f64);
    for (info, name) in j.layers.iter().zip(&names) {
        if &info.name != name {
            return Err(format!("layer {} listed where {name} belongs", info.name));
        }
        let m = &matrices[name];
        let want = layer_info(name, m);
        let close = (info.density - want.density).abs() <= 1e-9;
        if info.representation != want.representation
            || info.rank != want.rank
            || info.bytes != want.bytes
            || !close
        {
            return Err(format!("{name}: listed as {info:?}, the tensors say {want:?}"));
        }
        let overflow = || format!("{name}: byte totals overflow");
        total = total.checked_add(m.bytes()).ok_or_else(overflow)?;
        let dense_m = m.rows().checked_mul(m.cols()).and_then(|n| n.checked_mul(4)).ok_or_else(overflow)?;
        dense = dense.checked_add(dense_m).ok_or_else(overflow)?;
        kept += m.s_kept() as f64;
        all += (m.rows() * m.cols()) as f64;
    }
    let density = if all == 0.0 { 1.0 } else { kept / all };
    if j.total_bytes != total || j.dense_f32_bytes != dense || (j.density - density).abs() > 1e-9 {
        return Err(format!(
            "totals {} bytes, {} dense f32 bytes, density {} differ from the tensors' {total}, {dense}, {density}",
            j.total_bytes, j.dense_f32_bytes, j.density
        ));
    }
    Ok(())
}

/// The dtype name used in error messages.
pub(crate) fn dtype_name(d: Dtype) -> String {
    format!("{d:?}")
}
