//! How a [`CMatrix`] lies in `model.safetensors`: a JSON entry per matrix in the header's
//! `__metadata__` (shape, rank, tiles) and per tile the tensors `NAME.t{i}.values`, `.scales`, `.mask`
//! (V's tiles under `NAME.v.t{i}.*`). Reading checks dtypes and sizes against the metadata before
//! copying anything, then lets `Tile::new` / `CMatrix::new` check the contents.

use super::dtype_name;
use crate::kernels::cpu::compressed::{mask_words, CMatrix, Pattern, Tile, ValueType, Values};
use half::f16;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Most tiles a matrix may have (the overlap check is quadratic in it).
const MAX_TILES: usize = 4096;

/// A matrix's metadata entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MatrixMeta {
    pub rows: usize,
    pub cols: usize,
    pub rank: usize,
    pub tiles: Vec<TileMeta>,
    /// V's tiles (`rank × cols`); empty when `rank == 0`.
    #[serde(default)]
    pub v_tiles: Vec<TileMeta>,
}

/// One tile's metadata entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TileMeta {
    pub row0: usize,
    pub rows: usize,
    pub col0: usize,
    pub cols: usize,
    /// `dense`, `nm` or `unstructured`.
    pub pattern: String,
    /// N:M only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub m: Option<usize>,
    /// `int8`, `int4` or `f16`.
    pub values: String,
}

impl TileMeta {
    fn of(t: &Tile) -> TileMeta {
        let ((row0, rows), (col0, cols)) = (t.rows(), t.cols());
        let (pattern, n, m) = match t.pattern() {
            Pattern::Dense => ("dense", None, None),
            Pattern::NM { n, m } => ("nm", Some(n), Some(m)),
            Pattern::Unstructured => ("unstructured", None, None),
        };
        let values = t.values().value_type().name().to_string();
        TileMeta { row0, rows, col0, cols, pattern: pattern.into(), n, m, values }
    }

    fn pattern(&self) -> Result<Pattern, String> {
        match (self.pattern.as_str(), self.n, self.m) {
            ("dense", None, None) => Ok(Pattern::Dense),
            ("unstructured", None, None) => Ok(Pattern::Unstructured),
            ("nm", Some(n), Some(m)) => Ok(Pattern::NM { n, m }),
            (p, n, m) => {
                Err(format!("pattern {p:?} with n {n:?}, m {m:?} (dense, unstructured, or nm with n and m)"))
            }
        }
    }
}

/// A tensor ready to serialize.
pub(crate) struct OwnedTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// A matrix's metadata JSON and tensors.
pub(crate) fn encode_matrix(name: &str, m: &CMatrix, out: &mut Vec<OwnedTensor>) -> String {
    let v_tiles = m.v().map_or(Vec::new(), |v| v.tiles().iter().map(TileMeta::of).collect());
    let meta = MatrixMeta {
        rows: m.rows(),
        cols: m.cols(),
        rank: m.rank(),
        tiles: m.tiles().iter().map(TileMeta::of).collect(),
        v_tiles,
    };
    encode_tiles(name, m.tiles(), out);
    if let Some(v) = m.v() {
        encode_tiles(&format!("{name}.v"), v.tiles(), out);
    }
    serde_json::to_string(&meta).expect("metadata serializes")
}

fn encode_tiles(prefix: &str, tiles: &[Tile], out: &mut Vec<OwnedTensor>) {
    for (i, t) in tiles.iter().enumerate() {
        let mut push = |what: &str, dtype, data: Vec<u8>, shape: Vec<usize>| {
            out.push(OwnedTensor { name: format!("{prefix}.t{i}.{what}"), dtype, shape, data })
        };
        match t.values() {
            Values::I8 { q, scale } => {
                push("values", Dtype::I8, q.iter().map(|&x| x as u8).collect(), vec![q.len()]);
                push(
                    "scales",
                    Dtype::F32,
                    scale.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    vec![scale.len()],
                );
            }
            Values::I4 { q, mul, scale } => {
                push("values", Dtype::U8, q.clone(), vec![q.len()]);
                push("muls", Dtype::U8, mul.clone(), vec![mul.len()]);
                push(
                    "scales",
                    Dtype::F32,
                    scale.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    vec![scale.len()],
                );
            }
            Values::F16 { v } => {
                push("values", Dtype::F16, v.iter().flat_map(|x| x.to_le_bytes()).collect(), vec![v.len()]);
            }
        }
        if t.pattern() != Pattern::Dense {
            let words = mask_words(t.cols().1);
            let data = t.mask().iter().flat_map(|x| x.to_le_bytes()).collect();
            push("mask", Dtype::U64, data, vec![t.rows().1, words]);
        }
    }
}

/// Reads and checks matrix `name` (expected `rows × cols`), marking its tensors in `used`.
pub(crate) fn read_matrix(
    name: &str,
    json: &str,
    (rows, cols): (usize, usize),
    st: &SafeTensors,
    used: &mut BTreeSet<String>,
) -> Result<CMatrix, String> {
    let meta: MatrixMeta = serde_json::from_str(json).map_err(|e| format!("{name}: metadata: {e}"))?;
    if (meta.rows, meta.cols) != (rows, cols) {
        return Err(format!("{name}: shape {}×{}, the config needs {rows}×{cols}", meta.rows, meta.cols));
    }
    if meta.rank > rows.min(cols) {
        return Err(format!("{name}: rank {} is larger than the layer ({rows}×{cols})", meta.rank));
    }
    if meta.tiles.len() > MAX_TILES || meta.v_tiles.len() > MAX_TILES {
        return Err(format!("{name}: more than {MAX_TILES} tiles"));
    }
    let v = match (meta.rank, meta.v_tiles.is_empty()) {
        (0, true) => None,
        (0, false) => return Err(format!("{name}: V tiles given for rank 0")),
        (r, _) => {
            let prefix = format!("{name}.v");
            let tiles = read_tiles(&prefix, &meta.v_tiles, (r, cols), st, used)?;
            Some(CMatrix::new(r, cols, None, tiles).map_err(|e| format!("{prefix}: {e}"))?)
        }
    };
    let tiles = read_tiles(name, &meta.tiles, (rows, cols + meta.rank), st, used)?;
    CMatrix::new(rows, cols, v, tiles).map_err(|e| format!("{name}: {e}"))
}

fn read_tiles(
    prefix: &str,
    metas: &[TileMeta],
    (rows, width): (usize, usize),
    st: &SafeTensors,
    used: &mut BTreeSet<String>,
) -> Result<Vec<Tile>, String> {
    let mut tiles = Vec::with_capacity(metas.len());
    for (i, tm) in metas.iter().enumerate() {
        let at = format!("{prefix} tile {i}");
        // Bounds first, so no size derived from the metadata exceeds the matrix's.
        let inside = tm.row0.checked_add(tm.rows).is_some_and(|e| e <= rows)
            && tm.col0.checked_add(tm.cols).is_some_and(|e| e <= width);
        if !inside {
            return Err(format!(
                "{at} at ({}, {}) of {}×{} lies outside {rows}×{width}",
                tm.row0, tm.col0, tm.rows, tm.cols
            ));
        }
        tiles.push(read_tile(&format!("{prefix}.t{i}"), tm, st, used).map_err(|e| format!("{at}: {e}"))?);
    }
    Ok(tiles)
}

/// A tensor of the tile, with its dtype and element count checked (None: absent).
fn tensor<'a>(
    st: &SafeTensors<'a>,
    name: &str,
    dtype: Dtype,
    used: &mut BTreeSet<String>,
) -> Result<Option<TensorView<'a>>, String> {
    let Ok(view) = st.tensor(name) else { return Ok(None) };
    used.insert(name.to_string());
    if view.dtype() != dtype {
        return Err(format!("{name} is {}, expected {}", dtype_name(view.dtype()), dtype_name(dtype)));
    }
    let elems = view.shape().iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let size = elems.and_then(|e| e.checked_mul(dtype.bitsize() / 8));
    if size != Some(view.data().len()) {
        return Err(format!(
            "{name}: shape {:?} does not match its {} bytes",
            view.shape(),
            view.data().len()
        ));
    }
    Ok(Some(view))
}

fn need<'a>(v: Option<TensorView<'a>>, name: &str) -> Result<TensorView<'a>, String> {
    v.ok_or_else(|| format!("{name} is missing"))
}

fn read_tile(p: &str, tm: &TileMeta, st: &SafeTensors, used: &mut BTreeSet<String>) -> Result<Tile, String> {
    let pattern = tm.pattern()?;
    let vt = ValueType::parse(&tm.values)
        .ok_or_else(|| format!("value type {:?} (int8, int4, f16)", tm.values))?;
    let (mask_name, values_name, scales_name) =
        (format!("{p}.mask"), format!("{p}.values"), format!("{p}.scales"));
    let mask_view = tensor(st, &mask_name, Dtype::U64, used)?;
    let (mask, kept) = match (pattern, mask_view) {
        (Pattern::Dense, None) => (Vec::new(), tm.rows.checked_mul(tm.cols).ok_or("tile size overflows")?),
        (Pattern::Dense, Some(_)) => return Err(format!("{mask_name}: a dense tile has no mask")),
        (_, view) => {
            let view = need(view, &mask_name)?;
            let words = mask_words(tm.cols);
            if view.shape() != [tm.rows, words] {
                return Err(format!(
                    "{mask_name}: shape {:?}, expected [{}, {words}]",
                    view.shape(),
                    tm.rows
                ));
            }
            let mask: Vec<u64> = view
                .data()
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect();
            // Bits past the last column are not counted here: `Tile::new` reports them by name.
            let tail = if tm.cols.is_multiple_of(64) { u64::MAX } else { (1u64 << (tm.cols % 64)) - 1 };
            let kept = mask
                .iter()
                .enumerate()
                .map(|(i, w)| if i % words == words - 1 { (w & tail).count_ones() } else { w.count_ones() } as usize)
                .sum();
            (mask, kept)
        }
    };
    let values_dtype = match vt {
        ValueType::I8 => Dtype::I8,
        ValueType::I4 => Dtype::U8,
        ValueType::F16 => Dtype::F16,
    };
    let values = need(tensor(st, &values_name, values_dtype, used)?, &values_name)?;
    if values.shape().len() != 1 {
        return Err(format!("{values_name}: shape {:?} is not one-dimensional", values.shape()));
    }
    let codes = values.shape()[0];
    // int4 packs two codes a byte (a row's odd last code padded), so only an upper bound is known here.
    let fits = match vt {
        ValueType::I4 => codes >= kept.div_ceil(2) && codes <= kept.div_ceil(2).saturating_add(tm.rows),
        _ => codes == kept,
    };
    if !fits {
        return Err(format!("{values_name}: {codes} elements for {kept} kept entries"));
    }
    let scales = tensor(st, &scales_name, Dtype::F32, used)?;
    let data = values.data();
    let values = match vt {
        ValueType::I8 => {
            let s = need(scales, &scales_name)?;
            Values::I8 { q: data.iter().map(|&b| b as i8).collect(), scale: f32s(s.data()) }
        }
        ValueType::I4 => {
            let s = need(scales, &scales_name)?;
            let muls_name = format!("{p}.muls");
            let muls = need(tensor(st, &muls_name, Dtype::U8, used)?, &muls_name)?;
            if muls.shape().len() != 1 {
                return Err(format!("{muls_name}: shape {:?} is not one-dimensional", muls.shape()));
            }
            Values::I4 { q: data.to_vec(), mul: muls.data().to_vec(), scale: f32s(s.data()) }
        }
        ValueType::F16 if scales.is_some() => {
            return Err(format!("{scales_name}: f16 values have no scales"))
        }
        ValueType::F16 => Values::F16 { v: f16s(data) },
    };
    Tile::new((tm.row0, tm.rows), (tm.col0, tm.cols), pattern, mask, values)
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect()
}

fn f16s(b: &[u8]) -> Vec<f16> {
    b.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect()
}

/// Reads an F32 vector of `len` finite values.
pub(crate) fn read_vector(name: &str, view: &TensorView, len: usize) -> Result<Vec<f32>, String> {
    if view.dtype() != Dtype::F32 || view.shape() != [len] {
        return Err(format!("{name}: {} {:?}, expected F32 [{len}]", dtype_name(view.dtype()), view.shape()));
    }
    if view.data().len() != 4 * len {
        return Err(format!("{name}: {} bytes, expected {}", view.data().len(), 4 * len));
    }
    let v: Vec<f32> =
        view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4"))).collect();
    match v.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(format!("{name}: value {i} is not finite")),
        None => Ok(v),
    }
}
