//! A pre-scan of a GGUF header that allocates nothing the file does not pay for, run before candle's
//! reader (`gguf_file::Content::read`) builds its maps: every count and length is checked against the
//! bytes that remain, the total of metadata values is bounded (each becomes a 32-byte `Value` in
//! candle, so a byte-per-element array would otherwise cost 32× its size), nesting is bounded,
//! `general.alignment` must be a nonzero power of two (candle divides by it), and every tensor's
//! type, rank, element count and offset are checked. Errors name the key or tensor at fault.

use std::collections::HashSet;

/// Metadata values (array elements included) accepted in one file. A 256k-token vocabulary with
/// scores, types and merges is about 1M; candle holds each as a 32-byte `Value`.
pub const MAX_METADATA_VALUES: u64 = 1 << 22;
/// Array nesting accepted in metadata (real files nest none).
const MAX_DEPTH: usize = 4;
/// Dimensions of one tensor (ggml's `GGML_MAX_DIMS`).
const MAX_DIMS: u64 = 4;
/// Alignment when `general.alignment` is absent (GGUF's default).
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// What the pre-scan found wrong, naming the key or tensor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("the header ends early: {what} needs {need} bytes at offset {at}, the file has {len}")]
    Truncated { what: String, need: u64, at: u64, len: u64 },
    #[error("bad magic {0:#010x} (expected \"GGUF\")")]
    Magic(u32),
    #[error("unsupported GGUF version {0} (1, 2 and 3 are read)")]
    Version(u32),
    #[error("{field} = {count} cannot fit: at least {need} bytes needed, {remaining} remain")]
    Count { field: &'static str, count: u64, need: u64, remaining: u64 },
    #[error("{what}: length {len} is more than the {remaining} bytes that remain")]
    Length { what: String, len: u64, remaining: u64 },
    #[error("{key}: unknown metadata value type {ty}")]
    ValueType { key: String, ty: u32 },
    #[error("{key}: arrays nested more than {MAX_DEPTH} deep")]
    Depth { key: String },
    #[error("{key}: the metadata holds more than {MAX_METADATA_VALUES} values")]
    TooManyValues { key: String },
    #[error("{0}: duplicate metadata key")]
    DuplicateKey(String),
    #[error("tensor {0}: duplicate tensor name")]
    DuplicateTensor(String),
    #[error("general.alignment = {0} must be a nonzero power of two")]
    Alignment(u64),
    #[error("general.alignment must be a 32-bit integer, found value type {0}")]
    AlignmentType(u32),
    #[error("tensor {name}: {n_dims} dimensions (at most {MAX_DIMS})")]
    Dims { name: String, n_dims: u64 },
    #[error("tensor {name}: shape {dims:?} has too many elements")]
    Elements { name: String, dims: Vec<u64> },
    #[error("tensor {name}: unknown ggml type {ty}")]
    TensorType { name: String, ty: u32 },
    #[error("tensor {name}: offset {offset} is not a multiple of general.alignment {alignment}")]
    Misaligned { name: String, offset: u64, alignment: u64 },
    #[error("tensor {name}: offset {offset} lies past the end of the file (data starts at {data}, the file has {len} bytes; truncated?)")]
    PastEnd { name: String, offset: u64, data: u64, len: u64 },
    #[error("tensor data would start at {data}, past the end of the file ({len} bytes)")]
    DataPastEnd { data: u64, len: u64 },
}

/// What the pre-scan learned: the alignment and where tensor data starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub alignment: u64,
    pub tensor_data_offset: u64,
    pub tensor_count: u64,
}

/// GGUF metadata value types.
const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

/// The ggml type ids candle reads (`GgmlDType::from_u32`).
fn known_ggml_type(ty: u32) -> bool {
    matches!(ty, 0..=3 | 6..=15 | 30)
}

struct Reader<'a> {
    data: &'a [u8],
    pos: u64,
    /// Length prefixes: 4 bytes in GGUF v1, 8 after.
    wide: bool,
    values: u64,
}

impl<'a> Reader<'a> {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }

    fn remaining(&self) -> u64 {
        self.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<&'a [u8], HeaderError> {
        if n > self.remaining() {
            return Err(HeaderError::Truncated { what: what(), need: n, at: self.pos, len: self.len() });
        }
        // pos + n ≤ len, which fits in usize: the data is in memory.
        let (start, end) = (self.pos as usize, (self.pos + n) as usize);
        self.pos += n;
        let data: &'a [u8] = self.data;
        Ok(&data[start..end])
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32, HeaderError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64, HeaderError> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// A length prefix (u32 in v1, u64 after).
    fn length(&mut self, what: impl FnOnce() -> String) -> Result<u64, HeaderError> {
        if self.wide {
            self.u64(what)
        } else {
            self.u32(what).map(u64::from)
        }
    }

    fn prefix_bytes(&self) -> u64 {
        if self.wide {
            8
        } else {
            4
        }
    }

    /// A length-prefixed string, its length checked against the bytes that remain.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<&'a [u8], HeaderError> {
        let len = self.length(what)?;
        if len > self.remaining() {
            return Err(HeaderError::Length { what: what(), len, remaining: self.remaining() });
        }
        self.take(len, what)
    }

    fn count_value(&mut self, key: &str) -> Result<(), HeaderError> {
        self.values += 1;
        if self.values > MAX_METADATA_VALUES {
            return Err(HeaderError::TooManyValues { key: key.to_string() });
        }
        Ok(())
    }

    /// Smallest encoding of one value of type `ty` (for bounding an array's length).
    fn min_size(&self, ty: u32) -> u64 {
        match ty {
            T_U8 | T_I8 | T_BOOL => 1,
            T_U16 | T_I16 => 2,
            T_U32 | T_I32 | T_F32 => 4,
            T_U64 | T_I64 | T_F64 => 8,
            T_STRING => self.prefix_bytes(),
            _ => 4 + self.prefix_bytes(), // array: element type + length
        }
    }

    /// Skips one value of type `ty` of key `key`; returns its integer value when it is a scalar
    /// integer (for `general.alignment`).
    fn value(&mut self, key: &str, ty: u32, depth: usize) -> Result<Option<i128>, HeaderError> {
        self.count_value(key)?;
        let what = || format!("{key} (value)");
        let int = match ty {
            T_U8 => Some(self.take(1, what)?[0].into()),
            T_I8 => Some((self.take(1, what)?[0] as i8).into()),
            T_U16 => Some(u16::from_le_bytes(self.take(2, what)?.try_into().expect("2")).into()),
            T_I16 => Some(i16::from_le_bytes(self.take(2, what)?.try_into().expect("2")).into()),
            T_U32 => Some(self.u32(what)?.into()),
            T_I32 => Some((self.u32(what)? as i32).into()),
            T_U64 => Some(self.u64(what)?.into()),
            T_I64 => Some((self.u64(what)? as i64).into()),
            T_F32 | T_BOOL => {
                self.take(if ty == T_BOOL { 1 } else { 4 }, what)?;
                None
            }
            T_F64 => {
                self.take(8, what)?;
                None
            }
            T_STRING => {
                self.string(&what)?;
                None
            }
            T_ARRAY => {
                if depth >= MAX_DEPTH {
                    return Err(HeaderError::Depth { key: key.to_string() });
                }
                let elem = self.u32(|| format!("{key} (array type)"))?;
                if !(T_U8..=T_F64).contains(&elem) {
                    return Err(HeaderError::ValueType { key: key.to_string(), ty: elem });
                }
                let len = self.length(|| format!("{key} (array length)"))?;
                let need = len.saturating_mul(self.min_size(elem));
                if need > self.remaining() {
                    return Err(HeaderError::Length {
                        what: format!("{key} (array of {len})"),
                        len: need,
                        remaining: self.remaining(),
                    });
                }
                if len > MAX_METADATA_VALUES {
                    return Err(HeaderError::TooManyValues { key: key.to_string() });
                }
                for _ in 0..len {
                    self.value(key, elem, depth + 1)?;
                }
                None
            }
            other => return Err(HeaderError::ValueType { key: key.to_string(), ty: other }),
        };
        Ok(int)
    }
}

/// Walks the header of `data` (a whole GGUF file) and checks it; see the module docs.
pub fn prescan(data: &[u8]) -> Result<Header, HeaderError> {
    let mut r = Reader { data, pos: 0, wide: true, values: 0 };
    let magic = r.u32(|| "magic".into())?;
    if magic != 0x4655_4747 {
        return Err(HeaderError::Magic(magic));
    }
    let version = r.u32(|| "version".into())?;
    r.wide = match version {
        1 => false,
        2 | 3 => true,
        v => return Err(HeaderError::Version(v)),
    };
    let tensor_count = r.length(|| "tensor_count".into())?;
    let kv_count = r.length(|| "metadata_kv_count".into())?;
    let prefix = r.prefix_bytes();
    // Smallest entries: a key, a type and one byte; a name, n_dims, a type and an offset.
    let (min_kv, min_tensor) = (prefix + 4 + 1, prefix + 4 + 4 + 8);
    for (field, count, min) in
        [("metadata_kv_count", kv_count, min_kv), ("tensor_count", tensor_count, min_tensor)]
    {
        let need = count.saturating_mul(min);
        if need > r.remaining() {
            return Err(HeaderError::Count { field, count, need, remaining: r.remaining() });
        }
    }
    let mut keys: HashSet<&[u8]> = HashSet::new();
    let mut alignment = DEFAULT_ALIGNMENT;
    for i in 0..kv_count {
        let key_bytes = r.string(&|| format!("metadata key #{i}"))?;
        let key = String::from_utf8_lossy(key_bytes).into_owned();
        if !keys.insert(key_bytes) {
            return Err(HeaderError::DuplicateKey(key));
        }
        let ty = r.u32(|| format!("{key} (type)"))?;
        let int = r.value(&key, ty, 0)?;
        if key == "general.alignment" {
            // candle honours only these types (and falls back to 32 for others): so do we, loudly.
            if !matches!(ty, T_U8 | T_I8 | T_U16 | T_I16 | T_U32 | T_I32) {
                return Err(HeaderError::AlignmentType(ty));
            }
            let a = int.expect("an integer type");
            let a = u64::try_from(a).map_err(|_| HeaderError::Alignment(0))?;
            if a == 0 || !a.is_power_of_two() {
                return Err(HeaderError::Alignment(a));
            }
            alignment = a;
        }
    }
    let mut names: HashSet<&[u8]> = HashSet::new();
    let mut offsets: Vec<(String, u64)> = Vec::new();
    for i in 0..tensor_count {
        let name_bytes = r.string(&|| format!("tensor name #{i}"))?;
        let name = String::from_utf8_lossy(name_bytes).into_owned();
        if !names.insert(name_bytes) {
            return Err(HeaderError::DuplicateTensor(name));
        }
        let n_dims = u64::from(r.u32(|| format!("tensor {name} (n_dims)"))?);
        if n_dims > MAX_DIMS {
            return Err(HeaderError::Dims { name, n_dims });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.length(|| format!("tensor {name} (dimension)"))?);
        }
        let elems = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        if elems.is_none_or(|e| e > i64::MAX as u64) {
            return Err(HeaderError::Elements { name, dims });
        }
        let ty = r.u32(|| format!("tensor {name} (type)"))?;
        if !known_ggml_type(ty) {
            return Err(HeaderError::TensorType { name, ty });
        }
        let offset = r.u64(|| format!("tensor {name} (offset)"))?;
        if !offset.is_multiple_of(alignment) {
            return Err(HeaderError::Misaligned { name, offset, alignment });
        }
        offsets.push((name, offset));
    }
    let len = r.len();
    // pos ≤ len and alignment ≤ 2^31: no overflow.
    let data = r.pos.div_ceil(alignment) * alignment;
    if tensor_count > 0 && data > len {
        return Err(HeaderError::DataPastEnd { data, len });
    }
    for (name, offset) in offsets {
        if offset > len.saturating_sub(data) {
            return Err(HeaderError::PastEnd { name, offset, data, len });
        }
    }
    Ok(Header { alignment, tensor_data_offset: data, tensor_count })
}

#[cfg(test)]
#[path = "header_tests.rs"]
mod tests;
