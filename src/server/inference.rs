//! The Open Inference Protocol core both front ends share (`oip.rs` over HTTP/JSON, `oip_grpc.rs` over
//! gRPC): model lookup, model metadata, the repository index, checking the input tensor and choosing
//! the outputs; the model's batcher (`tabular::batcher`) runs it. Errors name the field as the protocol's
//! request spells it (`inputs[0].shape`).

use super::AppState;
use crate::error::Error;
use crate::registry::ModelState;
use crate::tabular::batcher::Batcher;
use crate::tabular::{Outputs, Prediction, TabularModel};

/// The one input tensor's name.
pub const INPUT: &str = "input";
/// The outputs, in the order metadata lists them.
pub const OUTPUTS: [&str; 3] = ["score", "margin", "contributions"];
/// What a request that names no output gets.
pub const DEFAULT_OUTPUTS: [&str; 2] = ["score", "margin"];
/// The one version every model has (Slate serves one version of a name).
pub const VERSION: &str = "1";

/// The tabular model `name`, behind its batcher (which runs it off the async runtime): NOT_FOUND for
/// a model of another kind or none, UNAVAILABLE while loading.
pub fn tabular(state: &AppState, name: &str) -> Result<Batcher, Error> {
    match state.registry.kind_and_ready(name) {
        Some((kind, _)) if !kind.is_tabular() => Err(Error::NotFound(format!(
            "model '{name}' is a {} model: the Open Inference Protocol serves tabular models",
            kind.as_str()
        ))),
        _ => state.registry.tabular(name),
    }
}

/// Triton's request parameters `priority` (a level: 0 = the default class, 1 = the highest) and
/// `timeout` (microseconds; 0 = none), as the HTTP and gRPC front ends read them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestParams {
    pub priority: u64,
    pub timeout: Option<std::time::Duration>,
}

impl RequestParams {
    /// From the parameters' integer values (`None` = absent); a negative value is an error naming
    /// the parameter.
    pub fn from_values(priority: Option<i128>, timeout: Option<i128>) -> Result<RequestParams, Error> {
        let non_negative = |key: &str, v: Option<i128>| -> Result<u64, Error> {
            v.map_or(Ok(0), |v| {
                u64::try_from(v)
                    .map_err(|_| Error::invalid(&format!("parameters.{key}"), format!("{v}: must be ≥ 0")))
            })
        };
        let us = non_negative("timeout", timeout)?;
        Ok(RequestParams {
            priority: non_negative("priority", priority)?,
            timeout: (us > 0).then(|| std::time::Duration::from_micros(us)),
        })
    }
}

/// `models[].trees.max_rows` of model `name` (0 when it is not configured: every request refused).
pub fn max_rows(state: &AppState, name: &str) -> usize {
    state.config.models.iter().find(|m| m.name == name).map_or(0, |m| m.trees.max_rows)
}

/// A tensor's name, datatype and shape as metadata gives them (`-1` for any number of rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMeta {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
}

/// Model metadata, for both protocols.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelMeta {
    pub platform: String,
    pub inputs: Vec<TensorMeta>,
    pub outputs: Vec<TensorMeta>,
}

impl ModelMeta {
    pub fn of(model: &TabularModel) -> ModelMeta {
        let features = i64::try_from(model.num_features()).unwrap_or(i64::MAX);
        ModelMeta {
            platform: format!("slate_{}_{}", model.kind().as_str(), model.format),
            inputs: vec![TensorMeta { name: INPUT, datatype: "FP32", shape: vec![-1, features] }],
            outputs: OUTPUTS
                .iter()
                .map(|&name| TensorMeta { name, datatype: "FP32", shape: output_shape(model, name, -1) })
                .collect(),
        }
    }
}

/// The shape of output `name` for `n` rows (`-1` in metadata): `[n]` for one value per row, `[n, K]`
/// for K; contributions are `[n, F + 1]`, or `[n, K, F + 1]` for K groups.
pub fn output_shape(model: &TabularModel, name: &str, n: i64) -> Vec<i64> {
    let dim = |w: usize| i64::try_from(w).unwrap_or(i64::MAX);
    let width = |w: usize| if w == 1 { vec![n] } else { vec![n, dim(w)] };
    match name {
        "score" => width(model.score_width()),
        "margin" => width(model.num_groups()),
        _ => {
            let (g, f1) = (model.num_groups(), dim(model.num_features().saturating_add(1)));
            if g == 1 {
                vec![n, f1]
            } else {
                vec![n, dim(g), f1]
            }
        }
    }
}

/// The values of output `name` (one of [`OUTPUTS`]) in a prediction; empty when not computed.
pub fn output_data<'a>(p: &'a Prediction, name: &str) -> &'a [f32] {
    match name {
        "score" => p.score.as_deref(),
        "margin" => p.margin.as_deref(),
        _ => p.contributions.as_deref(),
    }
    .unwrap_or_default()
}

/// Output `name` as a request names it at `field`: one of [`OUTPUTS`], else an error naming them.
pub fn output_name(field: &str, name: &str) -> Result<&'static str, Error> {
    OUTPUTS.iter().find(|&&o| o == name).copied().ok_or_else(|| {
        Error::invalid(
            &format!("{field}.name"),
            format!("unknown output '{name}': the outputs are score, margin and contributions"),
        )
    })
}

/// What to compute for the outputs named.
pub fn outputs_of(names: &[&str]) -> Outputs {
    let has = |n: &str| names.contains(&n);
    Outputs { score: has("score"), margin: has("margin"), contributions: has("contributions") }
}

/// The one input tensor of a request's `inputs`.
pub fn the_input<T>(inputs: Vec<T>) -> Result<T, Error> {
    let mut inputs = inputs.into_iter();
    match (inputs.next(), inputs.next()) {
        (Some(input), None) => Ok(input),
        _ => Err(Error::invalid("inputs", "expected exactly one input tensor, named 'input'")),
    }
}

/// The input tensor's header, checked against the model: `rows × features` values of `width` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tensor {
    pub rows: usize,
    pub features: usize,
    /// 4 for FP32, 8 for FP64.
    pub width: usize,
}

impl Tensor {
    /// Checks the one input tensor's name, datatype and shape against a model of `features`
    /// features and the row limit, before any of its data is read.
    pub fn check(
        name: &str,
        datatype: &str,
        shape: &[i64],
        features: usize,
        max_rows: usize,
    ) -> Result<Tensor, Error> {
        if name != INPUT {
            return Err(Error::invalid(
                "inputs[0].name",
                format!("unknown input '{name}': the input is 'input'"),
            ));
        }
        let width = match datatype {
            "FP32" => 4,
            "FP64" => 8,
            other => {
                return Err(Error::invalid("inputs[0].datatype", format!("{other}: expected FP32 or FP64")))
            }
        };
        let (n, f) = match *shape {
            [n, f] if n >= 0 && f >= 0 => (n as u64, f as u64),
            _ => {
                return Err(Error::invalid(
                    "inputs[0].shape",
                    format!("{shape:?}: expected [rows, features]"),
                ))
            }
        };
        if f != features as u64 {
            return Err(Error::invalid(
                "inputs[0].shape",
                format!("{f} features: the model takes {features}"),
            ));
        }
        if n == 0 || n > max_rows as u64 {
            return Err(Error::invalid("inputs[0].shape", format!("{n} rows: expected 1..={max_rows}")));
        }
        let tensor = Tensor { rows: n as usize, features, width };
        // Both bounded above; checked so a huge `max_rows` cannot wrap.
        tensor.bytes().ok_or_else(|| Error::invalid("inputs[0].shape", format!("[{n}, {f}]: too large")))?;
        Ok(tensor)
    }

    /// Values in the tensor.
    pub fn values(&self) -> usize {
        self.rows * self.features
    }

    /// Bytes of its raw (little-endian) form, None if that overflows.
    pub fn bytes(&self) -> Option<usize> {
        self.rows.checked_mul(self.features)?.checked_mul(self.width)
    }

    /// The rows from little-endian bytes of the datatype, sent at `field`.
    pub fn rows_from_raw(&self, raw: &[u8], field: &str) -> Result<Vec<f32>, Error> {
        let want = self.bytes().unwrap_or(usize::MAX);
        if raw.len() != want {
            let (n, f, datatype) = (self.rows, self.features, self.datatype());
            return Err(Error::invalid(
                field,
                format!("{} bytes: shape [{n}, {f}] of {datatype} takes {want}", raw.len()),
            ));
        }
        Ok(if self.width == 4 {
            raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        } else {
            raw.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).collect()
        })
    }

    /// The rows from values already decoded (JSON `data`, gRPC `contents`), sent at `field`.
    pub fn rows_from_values(&self, data: Vec<f32>, field: &str) -> Result<Vec<f32>, Error> {
        self.check_count(data.len(), field)?;
        Ok(data)
    }

    /// Whether `len` values, sent at `field`, fill the shape.
    pub fn check_count(&self, len: usize, field: &str) -> Result<(), Error> {
        if len != self.values() {
            let (n, f) = (self.rows, self.features);
            return Err(Error::invalid(
                field,
                format!("{len} values for shape [{n}, {f}] ({} expected)", self.values()),
            ));
        }
        Ok(())
    }

    pub fn datatype(&self) -> &'static str {
        if self.width == 4 {
            "FP32"
        } else {
            "FP64"
        }
    }
}

/// One model of the repository index.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IndexEntry {
    pub name: String,
    pub version: &'static str,
    /// `READY`, `LOADING` or `UNAVAILABLE`.
    pub state: &'static str,
    /// Why it is not ready (empty when it is, or still loading).
    pub reason: String,
}

/// Every configured model with its state, in config order; only the ready ones when `ready_only`.
pub fn repository_index(state: &AppState, ready_only: bool) -> Vec<IndexEntry> {
    state
        .registry
        .list()
        .into_iter()
        .map(|m| {
            let (s, reason) = match m.status {
                ModelState::Ready => ("READY", String::new()),
                ModelState::Loading => ("LOADING", String::new()),
                ModelState::Failed(why) => ("UNAVAILABLE", why),
            };
            IndexEntry { name: m.name, version: VERSION, state: s, reason }
        })
        .filter(|e| !ready_only || e.state == "READY")
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tensor_header_is_checked_before_its_data() {
        let t = Tensor::check("input", "FP64", &[3, 2], 2, 3).unwrap();
        assert_eq!(t, Tensor { rows: 3, features: 2, width: 8 });
        assert_eq!(t.bytes(), Some(48));
        let e =
            |name, dt, shape: &[i64], max| Tensor::check(name, dt, shape, 2, max).unwrap_err().to_string();
        assert!(e("x", "FP32", &[1, 2], 3).starts_with("inputs[0].name: unknown input 'x'"));
        assert!(e("input", "INT8", &[1, 2], 3).starts_with("inputs[0].datatype: INT8"));
        assert_eq!(e("input", "FP32", &[1, 3], 3), "inputs[0].shape: 3 features: the model takes 2");
        assert_eq!(e("input", "FP32", &[4, 2], 3), "inputs[0].shape: 4 rows: expected 1..=3");
        assert_eq!(e("input", "FP32", &[0, 2], 3), "inputs[0].shape: 0 rows: expected 1..=3");
        assert!(e("input", "FP32", &[2], 3).starts_with("inputs[0].shape: [2]: expected [rows, features]"));
        assert!(e("input", "FP32", &[-1, 2], 3).starts_with("inputs[0].shape: [-1, 2]"));
        let huge = Tensor::check("input", "FP64", &[i64::MAX, 2], 2, usize::MAX).unwrap_err().to_string();
        assert!(huge.ends_with("too large"), "{huge}");
    }

    #[test]
    fn raw_bytes_and_values_must_fill_the_shape() {
        let t = Tensor::check("input", "FP64", &[1, 2], 2, 3).unwrap();
        let raw: Vec<u8> = [0.1f64, -7.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(t.rows_from_raw(&raw, "raw").unwrap(), vec![0.1f64 as f32, -7.0]);
        let e = t.rows_from_raw(&raw[..15], "raw_input_contents[0]").unwrap_err().to_string();
        assert_eq!(e, "raw_input_contents[0]: 15 bytes: shape [1, 2] of FP64 takes 16");
        let t = Tensor::check("input", "FP32", &[1, 2], 2, 3).unwrap();
        assert_eq!(
            t.rows_from_raw(&raw[..8], "raw").unwrap(),
            vec![
                f32::from_le_bytes(raw[..4].try_into().unwrap()),
                f32::from_le_bytes(raw[4..8].try_into().unwrap())
            ]
        );
        let e = t.rows_from_values(vec![1.0], "inputs[0].data").unwrap_err().to_string();
        assert_eq!(e, "inputs[0].data: 1 values for shape [1, 2] (2 expected)");
    }

    #[test]
    fn outputs_are_named() {
        assert_eq!(output_name("outputs[0]", "margin").unwrap(), "margin");
        let e = output_name("outputs[1]", "prob").unwrap_err().to_string();
        assert!(e.starts_with("outputs[1].name: unknown output 'prob'"), "{e}");
        assert_eq!(outputs_of(&DEFAULT_OUTPUTS), Outputs { score: true, margin: true, contributions: false });
    }
}
