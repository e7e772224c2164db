//! The Open Inference Protocol (KServe v2) over HTTP/JSON for tree models: server and model
//! metadata, health, and `POST /v2/models/{name}/infer`. Errors are the protocol's `{"error": "…"}`
//! bodies (400 for a bad request). Inputs: one tensor `input`, FP32 or FP64, shape `[N, F]`, its data
//! flat or nested row by row, `null` for a missing value (JSON has no NaN), or binary (the binary
//! tensor extension, as Triton's clients send it by default). Outputs: `score` (`[N]`, or `[N, K]`
//! for K classes) and `margin` (`[N]` or `[N, K]`), all unless some are asked for, as JSON or binary.

use super::layer::RequestCtx;
use super::AppState;
use crate::error::Error;
use crate::tabular::{Outputs, TabularModel};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{json, Value};
use std::fmt;
use std::sync::Arc;

/// An error as the protocol writes it: `{"error": "message"}`; a bad request is 400.
pub struct OipError(pub Error);

impl From<Error> for OipError {
    fn from(e: Error) -> Self {
        OipError(e)
    }
}

impl IntoResponse for OipError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            Error::InvalidArgument(_) | Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            e => e.http_status(),
        };
        let body = json!({"error": self.0.to_string()}).to_string();
        // The error's own response keeps its metrics code label and headers (retry-after).
        let mut resp = self.0.into_response();
        *resp.status_mut() = status;
        *resp.body_mut() = axum::body::Body::from(body);
        resp
    }
}

/// The binary tensor extension's header: the JSON part's length, binary tensor data after it.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

type Parameters = serde_json::Map<String, Value>;

/// `GET /v2`: server metadata.
pub async fn server_metadata() -> Json<Value> {
    Json(json!({"name": "slate", "version": env!("CARGO_PKG_VERSION"), "extensions": []}))
}

/// `GET /v2/health/live`.
pub async fn live(state: State<Arc<AppState>>) -> Response {
    super::health::live(state).await
}

/// `GET /v2/health/ready`.
pub async fn ready(state: State<Arc<AppState>>) -> Response {
    super::health::ready(state).await.into_response()
}

/// `GET /v2/models/{name}/ready`: 200 when the model is loaded, else 503 (404 when not configured).
pub async fn model_ready(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, OipError> {
    match state.registry.kind_and_ready(&name) {
        None => Err(Error::NotFound(format!("no model named '{name}'")).into()),
        Some((_, true)) => Ok(StatusCode::OK.into_response()),
        Some((_, false)) => Ok(StatusCode::SERVICE_UNAVAILABLE.into_response()),
    }
}

/// `GET /v2/models/{name}`: model metadata (tree models; other kinds have their own APIs).
pub async fn model_metadata(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, OipError> {
    let model = tabular(&state, &name)?;
    let mut parameters = model.describe();
    parameters.insert("content_hash".into(), model.version.clone().into());
    Ok(Json(json!({
        "name": name,
        "versions": ["1"],
        "platform": format!("slate_{}_{}", model.kind().as_str(), model.format),
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, model.num_features()]}],
        "outputs": [
            {"name": "score", "datatype": "FP32", "shape": output_shape(&model, "score", -1)},
            {"name": "margin", "datatype": "FP32", "shape": output_shape(&model, "margin", -1)},
            {"name": "contributions", "datatype": "FP32", "shape": output_shape(&model, "contributions", -1)},
        ],
        "parameters": parameters,
    })))
}

/// The shape of output `name` for `n` rows (`-1` in metadata): `[n]` for one value per row, `[n, K]`
/// for K; contributions are `[n, F + 1]`, or `[n, K, F + 1]` for K groups.
fn output_shape(model: &TabularModel, name: &str, n: i64) -> Value {
    let width = |w: usize| if w == 1 { json!([n]) } else { json!([n, w]) };
    match name {
        "score" => width(model.score_width()),
        "margin" => width(model.num_groups()),
        _ => {
            let (g, f1) = (model.num_groups(), model.num_features() + 1);
            if g == 1 {
                json!([n, f1])
            } else {
                json!([n, g, f1])
            }
        }
    }
}

fn tabular(state: &AppState, name: &str) -> Result<Arc<TabularModel>, Error> {
    match state.registry.kind_and_ready(name) {
        Some((kind, _)) if !kind.is_tabular() => Err(Error::NotFound(format!(
            "model '{name}' is a {} model: the Open Inference Protocol serves tabular models",
            kind.as_str()
        ))),
        _ => state.registry.tabular(name),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Parameters>,
    inputs: Vec<InputTensor>,
    #[serde(default)]
    outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputTensor {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Parameters>,
    #[serde(default)]
    data: Option<Values>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Parameters>,
}

/// A tensor's `data`: numbers, flat or nested (at most 4 deep), `null` for missing, as f32.
struct Values(Vec<f32>);

impl<'de> Deserialize<'de> for Values {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut out = Vec::new();
        d.deserialize_any(Flatten { out: &mut out, depth: 0 })?;
        Ok(Values(out))
    }
}

struct Flatten<'a> {
    out: &'a mut Vec<f32>,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("numbers or null, in lists at most 4 deep")
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.out.push(v as f32);
        Ok(())
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.out.push(v as f32);
        Ok(())
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.out.push(v as f32);
        Ok(())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.out.push(f32::NAN);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth == 4 {
            return Err(serde::de::Error::custom("lists nested more than 4 deep"));
        }
        while seq.next_element_seed(Flatten { out: &mut *self.out, depth: self.depth + 1 })?.is_some() {}
        Ok(())
    }
}

/// `POST /v2/models/{name}/infer`, with the binary tensor extension: when the
/// `Inference-Header-Content-Length` header is set, the body is that many bytes of JSON followed by
/// the tensors whose `parameters.binary_data_size` is given, in order, little-endian; outputs asked
/// for with `parameters.binary_data` (or all, with the request's `binary_data_output`) come back the
/// same way.
pub async fn infer(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Arc<RequestCtx>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OipError> {
    ctx.set_model(&name, state.is_configured(&name));
    let json_len = match headers.get(HEADER_LENGTH) {
        None => body.len(),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n <= body.len())
            .ok_or_else(|| Error::BadRequest(format!("{HEADER_LENGTH}: not a length within the body")))?,
    };
    let req: InferRequest = serde_json::from_slice(&body[..json_len])
        .map_err(|e| Error::BadRequest(format!("malformed inference request: {e}")))?;
    let model = tabular(&state, &name)?;
    let max_rows = state.config.models.iter().find(|m| m.name == name).map_or(0, |m| m.trees.max_rows);
    let (rows, n) = check_input(req.inputs, &body[json_len..], model.num_features(), max_rows)?;
    drop(body);
    let binary_default = flag(req.parameters.as_ref(), "binary_data_output")?;
    let wanted = wanted_outputs(req.outputs.as_deref(), binary_default)?;
    let compute = wanted.1;
    let (model, p) = tokio::task::spawn_blocking(move || {
        let p = model.predict(&rows, compute);
        (model, p)
    })
    .await
    .map_err(|e| Error::Internal(format!("the inference task failed: {e}")))?;
    let p = p.map_err(|e| Error::invalid("outputs", e))?;
    let mut outputs = Vec::new();
    let mut binary = Vec::new();
    for (out, as_binary) in wanted.0 {
        let data = match out {
            "score" => p.score.as_deref(),
            "margin" => p.margin.as_deref(),
            _ => p.contributions.as_deref(),
        }
        .unwrap_or_default();
        let mut tensor =
            json!({"name": out, "datatype": "FP32", "shape": output_shape(&model, out, n as i64)});
        if as_binary {
            tensor["parameters"] = json!({"binary_data_size": data.len() * 4});
            binary.extend(data.iter().flat_map(|v| v.to_le_bytes()));
        } else {
            tensor["data"] = json!(data);
        }
        outputs.push(tensor);
    }
    let mut resp = json!({"model_name": name, "model_version": "1", "outputs": outputs});
    if let Some(id) = req.id {
        resp["id"] = id.into();
    }
    if binary.is_empty() {
        return Ok(Json(resp).into_response());
    }
    let mut bytes = serde_json::to_vec(&resp).map_err(|e| Error::Internal(e.to_string()))?;
    let json_len = bytes.len();
    bytes.extend_from_slice(&binary);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (HEADER_LENGTH.parse().expect("a header name"), json_len.to_string()),
        ],
        bytes,
    )
        .into_response())
}

/// A boolean parameter, false when absent.
fn flag(params: Option<&Parameters>, key: &str) -> Result<bool, Error> {
    match params.and_then(|p| p.get(key)) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(Error::invalid(&format!("parameters.{key}"), format!("{v}: expected true or false"))),
    }
}

/// The one input tensor `input`: its rows (from `data`, or little-endian from `binary` when its
/// `binary_data_size` is set), checked against the model's features and the row limit.
fn check_input(
    inputs: Vec<InputTensor>,
    binary: &[u8],
    features: usize,
    max_rows: usize,
) -> Result<(Vec<f32>, usize), Error> {
    let mut inputs = inputs.into_iter();
    let (Some(input), None) = (inputs.next(), inputs.next()) else {
        return Err(Error::invalid("inputs", "expected exactly one input tensor, named 'input'"));
    };
    if input.name != "input" {
        return Err(Error::invalid(
            "inputs[0].name",
            format!("unknown input '{}': the input is 'input'", input.name),
        ));
    }
    let width = match input.datatype.as_str() {
        "FP32" => 4,
        "FP64" => 8,
        other => return Err(Error::invalid("inputs[0].datatype", format!("{other}: expected FP32 or FP64"))),
    };
    let (n, f) = match input.shape[..] {
        [n, f] if n >= 0 && f >= 0 => (n as usize, f as usize),
        _ => {
            return Err(Error::invalid(
                "inputs[0].shape",
                format!("{:?}: expected [rows, features]", input.shape),
            ))
        }
    };
    if f != features {
        return Err(Error::invalid("inputs[0].shape", format!("{f} features: the model takes {features}")));
    }
    if n == 0 || n > max_rows {
        return Err(Error::invalid("inputs[0].shape", format!("{n} rows: expected 1..={max_rows}")));
    }
    let values = n * f;
    let binary_size = input.parameters.as_ref().and_then(|p| p.get("binary_data_size"));
    let data = match (binary_size, input.data) {
        (Some(size), None) => {
            let size = size.as_u64().ok_or_else(|| {
                Error::invalid("inputs[0].parameters.binary_data_size", format!("{size}: not a byte count"))
            })?;
            if size != binary.len() as u64 || size != (values * width) as u64 {
                return Err(Error::invalid(
                    "inputs[0].parameters.binary_data_size",
                    format!(
                        "{size} bytes, with {} binary bytes after the JSON; shape [{n}, {f}] of {} takes {}",
                        binary.len(),
                        input.datatype,
                        values * width
                    ),
                ));
            }
            if width == 4 {
                binary.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
            } else {
                binary
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                    .collect()
            }
        }
        (None, Some(data)) => {
            if !binary.is_empty() {
                return Err(Error::invalid(
                    "inputs[0]",
                    "binary data after the JSON but no binary_data_size",
                ));
            }
            data.0
        }
        (Some(_), Some(_)) => return Err(Error::invalid("inputs[0]", "both data and binary_data_size")),
        (None, None) => return Err(Error::invalid("inputs[0].data", "missing")),
    };
    if data.len() != values {
        return Err(Error::invalid(
            "inputs[0].data",
            format!("{} values for shape [{n}, {f}] ({values} expected)", data.len()),
        ));
    }
    Ok((data, n))
}

/// The outputs asked for, in order, each with whether it goes back as binary data, and what to
/// compute. `binary_default` is the request's `binary_data_output`.
type Wanted = (Vec<(&'static str, bool)>, Outputs);

fn wanted_outputs(req: Option<&[RequestedOutput]>, binary_default: bool) -> Result<Wanted, Error> {
    let names: Vec<(&'static str, bool)> = match req {
        None | Some([]) => vec![("score", binary_default), ("margin", binary_default)],
        Some(list) => {
            list.iter()
                .enumerate()
                .map(|(i, o)| {
                    let field = format!("outputs[{i}]");
                    let name = match o.name.as_str() {
                        "score" => "score",
                        "margin" => "margin",
                        "contributions" => "contributions",
                        other => {
                            return Err(Error::invalid(
                                &format!("{field}.name"),
                                format!(
                                "unknown output '{other}': the outputs are score, margin and contributions"
                            ),
                            ))
                        }
                    };
                    let binary = match o.parameters.as_ref().and_then(|p| p.get("binary_data")) {
                        None => binary_default,
                        Some(_) => flag(o.parameters.as_ref(), "binary_data")
                            .map_err(|e| Error::invalid(&field, e))?,
                    };
                    Ok((name, binary))
                })
                .collect::<Result<_, _>>()?
        }
    };
    let has = |n: &str| names.iter().any(|(m, _)| *m == n);
    let outputs = Outputs { score: has("score"), margin: has("margin"), contributions: has("contributions") };
    Ok((names, outputs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> InferRequest {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn data_may_be_flat_or_nested_with_nulls_for_missing() {
        let r = request(
            r#"{"inputs":[{"name":"input","shape":[2,2],"datatype":"FP32","data":[[1,2.5],[null,-3]]}]}"#,
        );
        let (rows, n) = check_input(r.inputs, &[], 2, 10).unwrap();
        assert_eq!(n, 2);
        assert_eq!(rows[..2], [1.0, 2.5]);
        assert!(rows[2].is_nan());
        assert_eq!(rows[3], -3.0);
        let flat = request(r#"{"inputs":[{"name":"input","shape":[1,2],"datatype":"FP64","data":[0.1,7]}]}"#);
        assert_eq!(check_input(flat.inputs, &[], 2, 10).unwrap().0, vec![0.1f64 as f32, 7.0]);
        let bin = request(
            r#"{"inputs":[{"name":"input","shape":[1,2],"datatype":"FP64","parameters":{"binary_data_size":16}}]}"#,
        );
        let bytes: Vec<u8> = [0.1f64, -7.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(check_input(bin.inputs, &bytes, 2, 10).unwrap().0, vec![0.1f64 as f32, -7.0]);
        let short = request(
            r#"{"inputs":[{"name":"input","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#,
        );
        let e = check_input(short.inputs, &bytes, 2, 10).unwrap_err().to_string();
        assert!(e.starts_with("inputs[0].parameters.binary_data_size: 8 bytes, with 16 binary bytes"), "{e}");
    }

    #[test]
    fn bad_inputs_name_the_field() {
        let err = |text: &str| {
            let r = request(text);
            check_input(r.inputs, &[], 2, 3).unwrap_err().to_string()
        };
        let e = err(r#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#);
        assert!(e.starts_with("inputs[0].name: unknown input 'x'"), "{e}");
        let e = err(r#"{"inputs":[{"name":"input","shape":[1,2],"datatype":"INT8","data":[1,2]}]}"#);
        assert!(e.starts_with("inputs[0].datatype: INT8"), "{e}");
        let e = err(r#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#);
        assert_eq!(e, "inputs[0].shape: 3 features: the model takes 2");
        let e =
            err(r#"{"inputs":[{"name":"input","shape":[4,2],"datatype":"FP32","data":[1,2,3,4,5,6,7,8]}]}"#);
        assert_eq!(e, "inputs[0].shape: 4 rows: expected 1..=3");
        let e = err(r#"{"inputs":[{"name":"input","shape":[2,2],"datatype":"FP32","data":[1,2,3]}]}"#);
        assert_eq!(e, "inputs[0].data: 3 values for shape [2, 2] (4 expected)");
        let e = err(r#"{"inputs":[]}"#);
        assert!(e.starts_with("inputs: expected exactly one"), "{e}");
        assert!(serde_json::from_str::<InferRequest>(
            r#"{"inputs":[{"name":"input","shape":[1,1],"datatype":"FP32","data":[[[[[1]]]]]}]}"#
        )
        .is_err());
        assert!(serde_json::from_str::<InferRequest>(
            r#"{"inputs":[{"name":"input","shape":[1,1],"datatype":"FP32","data":["a"]}]}"#
        )
        .is_err());
    }

    #[test]
    fn outputs_default_to_all_and_unknown_ones_are_named() {
        let (names, o) = wanted_outputs(None, true).unwrap();
        assert_eq!(
            (names, o),
            (
                vec![("score", true), ("margin", true)],
                Outputs { score: true, margin: true, contributions: false }
            )
        );
        let params = serde_json::from_str(r#"{"binary_data": true}"#).unwrap();
        let only = [RequestedOutput { name: "margin".into(), parameters: Some(params) }];
        let (names, o) = wanted_outputs(Some(&only), false).unwrap();
        assert_eq!(
            (names, o),
            (vec![("margin", true)], Outputs { score: false, margin: true, contributions: false })
        );
        let bad = [RequestedOutput { name: "prob".into(), parameters: None }];
        let e = wanted_outputs(Some(&bad), false).unwrap_err().to_string();
        assert!(e.starts_with("outputs[0].name: unknown output 'prob'"), "{e}");
    }
}
