//! The Open Inference Protocol (KServe v2) over HTTP/JSON for tree models: server and model
//! metadata, health, and `POST /v2/models/{name}/infer`. Errors are the protocol's `{"error": "…"}`
//! bodies (400 for a bad request). Inputs: one tensor `input`, FP32 or FP64, shape `[N, F]`, its data
//! flat or nested row by row, `null` for a missing value (JSON has no NaN). Outputs: `score`
//! (`[N]`, or `[N, K]` for K classes) and `margin` (`[N]` or `[N, K]`), all unless some are asked for.

use super::layer::RequestCtx;
use super::AppState;
use crate::config::ModelKind;
use crate::error::Error;
use crate::tabular::{Outputs, TreesModel};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::de::{DeserializeSeed, IgnoredAny, SeqAccess, Visitor};
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
        (status, Json(json!({"error": self.0.to_string()}))).into_response()
    }
}

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
    let model = trees(&state, &name)?;
    let f = &model.forest;
    let shape = |width: usize| if width == 1 { json!([-1]) } else { json!([-1, width]) };
    Ok(Json(json!({
        "name": name,
        "versions": ["1"],
        "platform": format!("slate_trees_{}", model.format),
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, f.num_features]}],
        "outputs": [
            {"name": "score", "datatype": "FP32", "shape": shape(f.score_width())},
            {"name": "margin", "datatype": "FP32", "shape": shape(f.num_groups)},
        ],
        "parameters": {
            "content_hash": model.version,
            "trees": f.trees.len(),
            "max_depth": f.max_depth,
        },
    })))
}

fn trees(state: &AppState, name: &str) -> Result<Arc<TreesModel>, Error> {
    match state.registry.kind_and_ready(name) {
        Some((ModelKind::Trees, _)) | None => state.registry.trees(name),
        Some((kind, _)) => Err(Error::NotFound(format!(
            "model '{name}' is a {} model: the Open Inference Protocol serves tree models",
            kind.as_str()
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    parameters: Option<IgnoredAny>,
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
    #[allow(dead_code)]
    parameters: Option<IgnoredAny>,
    data: Values,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    parameters: Option<IgnoredAny>,
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

/// `POST /v2/models/{name}/infer`.
pub async fn infer(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Arc<RequestCtx>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, OipError> {
    ctx.set_model(&name, state.is_configured(&name));
    let req: InferRequest = serde_json::from_slice(&body)
        .map_err(|e| Error::BadRequest(format!("malformed inference request: {e}")))?;
    drop(body);
    let model = trees(&state, &name)?;
    let max_rows = state.config.models.iter().find(|m| m.name == name).map_or(0, |m| m.trees.max_rows);
    let (rows, n) = check_input(req.inputs, model.forest.num_features, max_rows)?;
    let wanted = wanted_outputs(req.outputs.as_deref())?;
    let answer = tokio::task::spawn_blocking(move || {
        let p = model.predict(&rows, wanted.1);
        (model, p)
    })
    .await
    .map_err(|e| Error::Internal(format!("the inference task failed: {e}")))?;
    let (model, p) = answer;
    let f = &model.forest;
    let shape = |width: usize| if width == 1 { json!([n]) } else { json!([n, width]) };
    let mut outputs = Vec::new();
    for out in wanted.0 {
        let (data, width) = match out {
            "score" => (p.score.as_deref().unwrap_or_default(), f.score_width()),
            _ => (p.margin.as_deref().unwrap_or_default(), f.num_groups),
        };
        outputs.push(json!({"name": out, "datatype": "FP32", "shape": shape(width), "data": data}));
    }
    let mut resp = json!({"model_name": name, "model_version": "1", "outputs": outputs});
    if let Some(id) = req.id {
        resp["id"] = id.into();
    }
    Ok(Json(resp).into_response())
}

/// The one input tensor `input`: its rows, checked against the model's features and the row limit.
fn check_input(
    inputs: Vec<InputTensor>,
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
    if !matches!(input.datatype.as_str(), "FP32" | "FP64") {
        return Err(Error::invalid(
            "inputs[0].datatype",
            format!("{}: expected FP32 or FP64", input.datatype),
        ));
    }
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
    let data = input.data.0;
    if data.len() != n * f {
        return Err(Error::invalid(
            "inputs[0].data",
            format!("{} values for shape [{n}, {f}] ({} expected)", data.len(), n * f),
        ));
    }
    Ok((data, n))
}

/// The outputs asked for, in order, and what to compute.
fn wanted_outputs(req: Option<&[RequestedOutput]>) -> Result<(Vec<&'static str>, Outputs), Error> {
    let names: Vec<&'static str> = match req {
        None | Some([]) => vec!["score", "margin"],
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, o)| match o.name.as_str() {
                "score" => Ok("score"),
                "margin" => Ok("margin"),
                "contributions" => {
                    Err(Error::invalid(&format!("outputs[{i}].name"), "contributions are not served yet"))
                }
                other => Err(Error::invalid(
                    &format!("outputs[{i}].name"),
                    format!("unknown output '{other}': the outputs are score and margin"),
                )),
            })
            .collect::<Result<_, _>>()?,
    };
    let outputs = Outputs { score: names.contains(&"score"), margin: names.contains(&"margin") };
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
        let (rows, n) = check_input(r.inputs, 2, 10).unwrap();
        assert_eq!(n, 2);
        assert_eq!(rows[..2], [1.0, 2.5]);
        assert!(rows[2].is_nan());
        assert_eq!(rows[3], -3.0);
        let flat = request(r#"{"inputs":[{"name":"input","shape":[1,2],"datatype":"FP64","data":[0.1,7]}]}"#);
        assert_eq!(check_input(flat.inputs, 2, 10).unwrap().0, vec![0.1f64 as f32, 7.0]);
    }

    #[test]
    fn bad_inputs_name_the_field() {
        let err = |text: &str| {
            let r = request(text);
            check_input(r.inputs, 2, 3).unwrap_err().to_string()
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
        let (names, o) = wanted_outputs(None).unwrap();
        assert_eq!((names, o), (vec!["score", "margin"], Outputs { score: true, margin: true }));
        let only = [RequestedOutput { name: "margin".into(), parameters: None }];
        assert_eq!(wanted_outputs(Some(&only)).unwrap().1, Outputs { score: false, margin: true });
        let bad = [RequestedOutput { name: "prob".into(), parameters: None }];
        let e = wanted_outputs(Some(&bad)).unwrap_err().to_string();
        assert!(e.starts_with("outputs[0].name: unknown output 'prob'"), "{e}");
    }
}
