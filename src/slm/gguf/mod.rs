//! Reading GGUF files: metadata and tensor bytes, with every problem reported as a clear message
//! (truncated file, unknown or unsupported tensor type, tensor outside the file) instead of a panic.
//! [`header::prescan`] checks every count, length and offset of the header against the file's bytes
//! first; then candle (`gguf_file::Content`) parses it; tensor bytes are sliced out of the file here.

pub mod header;

use crate::kernels::cpu::quant::WeightType;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use std::collections::HashMap;
use std::path::Path;

/// An opened GGUF file: parsed header plus the whole file's bytes.
pub struct GgufFile {
    content: Content,
    data: Vec<u8>,
}

/// Reads and checks the header of a whole GGUF file held in `data`: the pre-scan, then candle's parse.
/// Errors start with "not a readable GGUF file".
pub fn read_content(data: &[u8]) -> Result<Content, String> {
    let header = header::prescan(data).map_err(|e| format!("not a readable GGUF file: {e}"))?;
    let content = Content::read(&mut std::io::Cursor::new(data))
        .map_err(|e| format!("not a readable GGUF file: {e}"))?;
    if content.tensor_infos.len() as u64 != header.tensor_count
        || (header.tensor_count > 0 && content.tensor_data_offset != header.tensor_data_offset)
    {
        return Err("not a readable GGUF file: the header's pre-scan and candle disagree".into());
    }
    Ok(content)
}

/// GGML type id as stored in GGUF.
fn ggml_id(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, String> {
        let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::from_bytes(data).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn from_bytes(data: Vec<u8>) -> Result<Self, String> {
        let content = read_content(&data)?;
        Ok(GgufFile { content, data })
    }

    /// First 16 hex digits of the file's SHA-256 (the model version shown in /v1/models).
    pub fn content_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(&self.data))[..16].to_string()
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// The layers the tensors describe: `n` when the `blk.*` tensors are numbered exactly `0..n`.
    ///
    /// # Errors
    /// A message naming a `blk.*` tensor whose number is not a plain integer or leaves a gap.
    pub fn block_tensor_layers(&self) -> Result<usize, String> {
        let mut seen = std::collections::BTreeSet::new();
        for name in self.content.tensor_infos.keys() {
            let Some(rest) = name.strip_prefix("blk.") else { continue };
            let num = rest.split('.').next().unwrap_or("");
            let i: usize = num
                .parse()
                .ok()
                .filter(|_| !num.starts_with('+') && (num == "0" || !num.starts_with('0')))
                .ok_or_else(|| format!("tensor {name}: '{num}' is not a layer number"))?;
            seen.insert(i);
        }
        match seen.last() {
            Some(&last) if last + 1 != seen.len() => {
                let gap = (0..).zip(&seen).find(|(i, n)| i != *n).map_or(last, |(i, _)| i);
                Err(format!("blk.{gap}.* tensors are missing but blk.{last}.* are present"))
            }
            _ => Ok(seen.len()),
        }
    }

    pub fn md_str(&self, key: &str) -> Result<&str, String> {
        match self.content.metadata.get(key) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(format!("metadata {key} is not a string")),
            None => Err(format!("metadata {key} is missing")),
        }
    }

    /// An integer metadata value of any integer type.
    pub fn md_usize(&self, key: &str) -> Result<Option<usize>, String> {
        let v = match self.content.metadata.get(key) {
            None => return Ok(None),
            Some(v) => v,
        };
        let n: i128 = match v {
            Value::U8(x) => (*x).into(),
            Value::I8(x) => (*x).into(),
            Value::U16(x) => (*x).into(),
            Value::I16(x) => (*x).into(),
            Value::U32(x) => (*x).into(),
            Value::I32(x) => (*x).into(),
            Value::U64(x) => (*x).into(),
            Value::I64(x) => (*x).into(),
            _ => return Err(format!("metadata {key} is not an integer")),
        };
        usize::try_from(n).map(Some).map_err(|_| format!("metadata {key} = {n} is out of range"))
    }

    pub fn md_f32(&self, key: &str) -> Result<Option<f32>, String> {
        match self.content.metadata.get(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(*x)),
            Some(Value::F64(x)) => Ok(Some(*x as f32)),
            Some(_) => Err(format!("metadata {key} is not a float")),
        }
    }

    /// Type, dimensions (outermost first: `[rows, cols]` for a matrix) and raw bytes of a tensor.
    pub fn tensor(&self, name: &str) -> Result<(WeightType, Vec<usize>, &[u8]), String> {
        let info = self.content.tensor_infos.get(name).ok_or_else(|| format!("tensor {name} is missing"))?;
        let id = ggml_id(info.ggml_dtype);
        let ty = WeightType::from_ggml_id(id).ok_or_else(|| {
            format!(
                "tensor {name} has type {:?} (ggml id {id}); supported: F32, F16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K",
                info.ggml_dtype
            )
        })?;
        let dims = info.shape.dims().to_vec();
        let cols = *dims.last().unwrap_or(&1);
        let rows = dims
            .iter()
            .rev()
            .skip(1)
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| format!("tensor {name}: shape {dims:?} overflows"))?;
        let row_bytes = ty.row_bytes(cols).ok_or_else(|| {
            format!("tensor {name}: {cols} columns is not a multiple of {}'s block", ty.name())
        })?;
        let size =
            rows.checked_mul(row_bytes).ok_or_else(|| format!("tensor {name}: shape {dims:?} overflows"))?;
        let start = self
            .content
            .tensor_data_offset
            .checked_add(info.offset)
            .and_then(|s| usize::try_from(s).ok())
            .ok_or_else(|| format!("tensor {name}: offset overflows"))?;
        let end = start.checked_add(size).ok_or_else(|| format!("tensor {name}: offset overflows"))?;
        if end > self.data.len() {
            return Err(format!(
                "tensor {name} needs bytes {start}..{end} but the file has {} (truncated?)",
                self.data.len()
            ));
        }
        Ok((ty, dims, &self.data[start..end]))
    }
}
