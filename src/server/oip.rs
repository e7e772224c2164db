//! The Open Inference Protocol (KServe v2) over HTTP/JSON for tree models: server and model
//! metadata, health, and `POST /v2/models/{name}/infer`. Errors are the protocol's `{"error": "…"}`
//! bodies (400 for a bad request). Inputs: one tensor `input`, FP32 or FP64, shape `[N, F]`, its data
//! flat or nested row by row, `null` for a missing value (JSON has no NaN), or binary (the binary
//! tensor extension, as Triton's clients send it by default). Outputs: `score` (`[N]`, or `[N, K]`
//! for K classes) and `margin` (`[N]` or `[N, K]`), all unless some are asked for, as JSON or binary.

use super::inference as core;
use super::layer::RequestCtx;
use super::AppState;
use crate::error::Error;
use crate::tabular::Outputs;
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
    let model = Arc::clone(core::tabular(&state, &name)?.model());
    let mut parameters = model.describe();
    parameters.insert("content_hash".into(), model.version.clone().into());
    let meta = core::ModelMeta::of(&model);
    let tensors = |ts: &[core::TensorMeta]| -> Vec<Value> {
        ts.iter().map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape})).collect()
    };
    Ok(Json(json!({
        "name": name,
        "versions": [core::VERSION],
        "platform": meta.platform,
        "inputs": tensors(&meta.inputs),
        "outputs": tensors(&meta.outputs),
        "parameters": parameters,
    })))
}

/// `POST /v2/repository/index`: every configured model with its state (`READY`, `LOADING`,
/// `UNAVAILABLE`) and why it is not ready; only the ready ones when the body says `{"ready": true}`.
pub async fn repository_index(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<Value>, OipError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct IndexRequest {
        #[serde(default)]
        ready: bool,
    }
    let ready = if body.iter().all(u8::is_ascii_whitespace) {
        false
    } else {
        serde_json::from_slice::<IndexRequest>(&body)
            .map_err(|e| Error::BadRequest(format!("malformed repository index request: {e}")))?
            .ready
    };
    Ok(Json(json!(core::repository_index(&state, ready))))
}

/// The JSON part of an infer request body ([`parse_body`]), checked by [`check_request`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferRequest {
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
    let (mut req, binary) = parse_body(&headers, &body)?;
    let params = request_params(req.parameters.as_ref())?;
    // The headers win over the request's parameters.
    let timeout = super::http::timeout_from_header(&headers)?.or(params.timeout);
    let batcher = core::tabular(&state, &name)?;
    let priority = match super::http::header_priority(&headers) {
        Some(p) => Some(p),
        None => batcher.class_of_level(params.priority)?,
    };
    let model = Arc::clone(batcher.model());
    let Checked { rows, n, wanted, compute } =
        check_request(&mut req, binary, model.num_features(), core::max_rows(&state, &name))?;
    drop(body);
    let p = batcher.predict(rows, compute, timeout, priority).await?;
    let mut outputs = Vec::new();
    let mut binary = Vec::new();
    for (out, as_binary) in wanted {
        let data = core::output_data(&p, out);
        let mut tensor =
            json!({"name": out, "datatype": "FP32", "shape": core::output_shape(&model, out, n as i64)});
        if as_binary {
            tensor["parameters"] = json!({"binary_data_size": data.len() * 4});
            binary.extend(data.iter().flat_map(|v| v.to_le_bytes()));
        } else {
            tensor["data"] = json!(data);
        }
        outputs.push(tensor);
    }
    let mut resp = json!({"model_name": name, "model_version": core::VERSION, "outputs": outputs});
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

/// An infer request body as `infer` reads it, before the model is looked up: with the binary tensor
/// extension's `Inference-Header-Content-Length` in `headers`, its first that many bytes are the JSON
/// and the rest the binary tensor data (returned), else all of it is JSON. Errors are bad requests.
pub fn parse_body<'a>(headers: &HeaderMap, body: &'a [u8]) -> Result<(InferRequest, &'a [u8]), Error> {
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
    Ok((req, &body[json_len..]))
}

/// A request checked against its model, ready for the batcher: the rows (`n × features`), the
/// outputs to send back in order (each with whether it goes as binary data) and what to compute.
#[derive(Debug)]
pub struct Checked {
    pub rows: Vec<f32>,
    pub n: usize,
    pub wanted: Vec<(&'static str, bool)>,
    pub compute: Outputs,
}

/// Checks a parsed request (its input tensor taken out) against a model of `features` features and
/// the row limit, as `infer` does before the model runs: the one input tensor (from `data`, or from
/// `binary`, the bytes after the JSON), `parameters.binary_data_output` and the outputs asked for.
/// Errors name the field.
pub fn check_request(
    req: &mut InferRequest,
    binary: &[u8],
    features: usize,
    max_rows: usize,
) -> Result<Checked, Error> {
    let (rows, n) = check_input(std::mem::take(&mut req.inputs), binary, features, max_rows)?;
    let binary_default = flag(req.parameters.as_ref(), "binary_data_output")?;
    let (wanted, compute) = wanted_outputs(req.outputs.as_deref(), binary_default)?;
    Ok(Checked { rows, n, wanted, compute })
}

/// The request's `priority` and `timeout` parameters (non-negative integers, or absent).
pub fn request_params(params: Option<&Parameters>) -> Result<core::RequestParams, Error> {
    let int = |key: &str| -> Result<Option<i128>, Error> {
        match params.and_then(|p| p.get(key)) {
            None => Ok(None),
            Some(Value::Number(n)) => {
                n.as_u64().map(i128::from).or_else(|| n.as_i64().map(i128::from)).map(Some).ok_or_else(|| {
                    Error::invalid(&format!("parameters.{key}"), format!("{n}: expected an integer"))
                })
            }
            Some(v) => Err(Error::invalid(&format!("parameters.{key}"), format!("{v}: expected an integer"))),
        }
    };
    core::RequestParams::from_values(int("priority")?, int("timeout")?)
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
    let input = core::the_input(inputs)?;
    let tensor = core::Tensor::check(&input.name, &input.datatype, &input.shape, features, max_rows)?;
    let binary_size = input.parameters.as_ref().and_then(|p| p.get("binary_data_size"));
    let rows = match (binary_size, input.data) {
        (Some(size), None) => {
            let field = "inputs[0].parameters.binary_data_size";
            let size =
                size.as_u64().ok_or_else(|| Error::invalid(field, format!("{size}: not a byte count")))?;
            if size != binary.len() as u64 {
                return Err(Error::invalid(
                    field,
                    format!("{size} bytes, with {} binary bytes after the JSON", binary.len()),
                ));
            }
            tensor.rows_from_raw(binary, field)?
        }
        (None, Some(data)) => {
            if !binary.is_empty() {
                return Err(Error::invalid(
                    "inputs[0]",
                    "binary data after the JSON but no binary_data_size",
                ));
            }
            tensor.rows_from_values(data.0, "inputs[0].data")?
        }
        (Some(_), Some(_)) => return Err(Error::invalid("inputs[0]", "both data and binary_data_size")),
        (None, None) => return Err(Error::invalid("inputs[0].data", "missing")),
    };
    Ok((rows, tensor.rows))
}

/// The outputs asked for, in order, each with whether it goes back as binary data, and what to
/// compute. `binary_default` is the request's `binary_data_output`.
type Wanted = (Vec<(&'static str, bool)>, Outputs);

fn wanted_outputs(req: Option<&[RequestedOutput]>, binary_default: bool) -> Result<Wanted, Error> {
    let names: Vec<(&'static str, bool)> = match req {
        None | Some([]) => core::DEFAULT_OUTPUTS.iter().map(|&o| (o, binary_default)).collect(),
        Some(list) => {
            list.iter()
                .enumerate()
                .map(|(i, o)| {
                    let field = format!("outputs[{i}]");
                    let name = core::output_name(&field, &o.name)?;
                    let binary = match o.parameters.as_ref().and_then(|p| p.get("binary_data")) {
                        None => binary_default,
                        Some(_) => flag(o.parameters.as_ref(), "binary_data")
                            .map_err(|e| Error::invalid(&field, e))?,
                    };
                    Ok((name, binary))
                })
                .collect::<Result<_, Error>>()?
        }
    };
    let just: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
    Ok((names, core::outputs_of(&just)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> InferRequest {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn triton_priority_and_timeout_parameters() {
        let params = |text: &str| request_params(request(text).parameters.as_ref());
        let none = r#"{"inputs":[]}"#;
        assert_eq!(params(none).unwrap(), core::RequestParams::default());
        let p = params(r#"{"inputs":[],"parameters":{"priority":2,"timeout":1500}}"#).unwrap();
        assert_eq!((p.priority, p.timeout), (2, Some(std::time::Duration::from_micros(1500))));
        assert_eq!(params(r#"{"inputs":[],"parameters":{"timeout":0}}"#).unwrap().timeout, None, "0: none");
        let e = |text: &str| params(text).unwrap_err().to_string();
        assert!(e(r#"{"inputs":[],"parameters":{"priority":-1}}"#)
            .starts_with("parameters.priority: -1: must be ≥ 0"));
        assert!(
            e(r#"{"inputs":[],"parameters":{"timeout":"soon"}}"#).starts_with("parameters.timeout: \"soon\"")
        );
        assert!(e(r#"{"inputs":[],"parameters":{"priority":1.5}}"#).starts_with("parameters.priority: 1.5"));
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
