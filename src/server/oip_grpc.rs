//! The Open Inference Protocol over gRPC: Triton's `inference.GRPCInferenceService`
//! (`proto/inference/grpc_service.proto`), as `tritonclient.grpc` speaks it, over the same core as the
//! HTTP side (`inference.rs`). Served: ServerLive, ServerReady, ModelReady, ServerMetadata,
//! ModelMetadata, ModelInfer and RepositoryIndex; every other RPC answers UNIMPLEMENTED. The input
//! `input` ([N, F], FP32 or FP64) comes in `contents` or `raw_input_contents`; the outputs asked for
//! (`score` and `margin` when none are named) go back in `raw_output_contents`, little-endian FP32.

use super::grpc::{ctx_of, grpc_timeout, metadata_priority};
use super::inference as core;
use super::AppState;
use crate::error::Error;
use crate::proto::inference as pb;
use bytes::Bytes;
use pb::grpc_inference_service_server::GrpcInferenceService;
use pb::model_infer_request::InferInputTensor;
use pb::model_infer_response::InferOutputTensor;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub use pb::grpc_inference_service_server::GrpcInferenceServiceServer;

/// `inference.GRPCInferenceService` over the shared core.
pub struct InferenceService {
    pub state: Arc<AppState>,
}

/// The request's `priority` and `timeout` parameters (int64 or uint64, ≥ 0, or absent), as
/// tritonclient sends them.
pub fn request_params(
    params: &std::collections::HashMap<String, pb::InferParameter>,
) -> Result<core::RequestParams, Error> {
    use pb::infer_parameter::ParameterChoice;
    let int = |key: &str| -> Result<Option<i128>, Error> {
        match params.get(key).and_then(|p| p.parameter_choice.as_ref()) {
            None => Ok(None),
            Some(ParameterChoice::Int64Param(v)) => Ok(Some(i128::from(*v))),
            Some(ParameterChoice::Uint64Param(v)) => Ok(Some(i128::from(*v))),
            Some(_) => {
                Err(Error::invalid(&format!("parameters.{key}"), "expected an int64 or uint64 parameter"))
            }
        }
    };
    core::RequestParams::from_values(int("priority")?, int("timeout")?)
}

/// A model version the request names: none, or the one version every model has.
pub fn check_version(name: &str, version: &str) -> Result<(), Error> {
    if version.is_empty() || version == core::VERSION {
        Ok(())
    } else {
        Err(Error::NotFound(format!(
            "model '{name}' has no version '{version}': Slate serves version {} only",
            core::VERSION
        )))
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: self.state.registry.faulted().is_empty() }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse { ready: self.state.health.readiness().is_ready() }))
    }

    /// Ready when configured, loaded and of this version; an unknown model is not ready (as the
    /// HTTP side's 404 reads to a client).
    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let req = request.into_inner();
        let ready = check_version(&req.name, &req.version).is_ok()
            && self.state.registry.kind_and_ready(&req.name).is_some_and(|(_, ready)| ready);
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "slate".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let req = request.into_inner();
        let batcher = core::tabular(&self.state, &req.name)?;
        check_version(&req.name, &req.version)?;
        let meta = core::ModelMeta::of(batcher.model());
        let tensors = |ts: Vec<core::TensorMeta>| {
            ts.into_iter()
                .map(|t| pb::model_metadata_response::TensorMetadata {
                    name: t.name.into(),
                    datatype: t.datatype.into(),
                    shape: t.shape,
                })
                .collect()
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: req.name,
            versions: vec![core::VERSION.into()],
            platform: meta.platform,
            inputs: tensors(meta.inputs),
            outputs: tensors(meta.outputs),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let header_timeout = grpc_timeout(request.metadata())?;
        let header_priority = metadata_priority(request.metadata()).map(str::to_string);
        let ctx = ctx_of(&request);
        let req = request.into_inner();
        ctx.set_model(&req.model_name, self.state.is_configured(&req.model_name));
        let batcher = core::tabular(&self.state, &req.model_name)?;
        check_version(&req.model_name, &req.model_version)?;
        let model = Arc::clone(batcher.model());
        let (rows, n) = check_input(req.inputs, req.raw_input_contents, model.num_features(), {
            core::max_rows(&self.state, &req.model_name)
        })?;
        let names = requested_outputs(&req.outputs)?;
        // The metadata wins over the request's parameters.
        let params = request_params(&req.parameters)?;
        let timeout = header_timeout.or(params.timeout);
        let priority = match header_priority.as_deref() {
            Some(p) => Some(p),
            None => batcher.class_of_level(params.priority)?,
        };
        let p = batcher.predict(rows, core::outputs_of(&names), timeout, priority).await?;
        let mut outputs = Vec::with_capacity(names.len());
        let mut raw = Vec::with_capacity(names.len());
        for name in names {
            let data = core::output_data(&p, name);
            let mut bytes = Vec::with_capacity(data.len() * 4);
            bytes.extend(data.iter().flat_map(|v| v.to_le_bytes()));
            raw.push(Bytes::from(bytes));
            outputs.push(InferOutputTensor {
                name: name.into(),
                datatype: "FP32".into(),
                shape: core::output_shape(&model, name, n as i64),
                ..Default::default()
            });
        }
        Ok(Response::new(pb::ModelInferResponse {
            model_name: req.model_name,
            model_version: core::VERSION.into(),
            id: req.id,
            parameters: Default::default(),
            outputs,
            raw_output_contents: raw,
        }))
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let req = request.into_inner();
        let models = core::repository_index(&self.state, req.ready)
            .into_iter()
            .map(|e| pb::repository_index_response::ModelIndex {
                name: e.name,
                version: e.version.into(),
                state: e.state.into(),
                reason: e.reason,
            })
            .collect();
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }
}

/// The one input tensor `input`: its rows, from `contents` (`fp32_contents` for FP32,
/// `fp64_contents` for FP64) or from the one `raw_input_contents` entry, checked against the model's
/// features and the row limit before any of its data is converted (`ModelInfer` runs it on the
/// decoded request's `inputs` and `raw_input_contents`). Errors name the field.
pub fn check_input(
    inputs: Vec<InferInputTensor>,
    raw: Vec<Bytes>,
    features: usize,
    max_rows: usize,
) -> Result<(Vec<f32>, usize), Error> {
    let input = core::the_input(inputs)?;
    let tensor = core::Tensor::check(&input.name, &input.datatype, &input.shape, features, max_rows)?;
    let contents = input.contents.unwrap_or_default();
    let other_contents = !contents.bool_contents.is_empty()
        || !contents.int_contents.is_empty()
        || !contents.int64_contents.is_empty()
        || !contents.uint_contents.is_empty()
        || !contents.uint64_contents.is_empty()
        || !contents.bytes_contents.is_empty();
    let (own, other_float) = if tensor.width == 4 {
        (!contents.fp32_contents.is_empty(), !contents.fp64_contents.is_empty())
    } else {
        (!contents.fp64_contents.is_empty(), !contents.fp32_contents.is_empty())
    };
    if other_contents || other_float {
        let want = if tensor.width == 4 { "fp32_contents" } else { "fp64_contents" };
        return Err(Error::invalid(
            "inputs[0].contents",
            format!("{} data goes in {want}, and no other field", tensor.datatype()),
        ));
    }
    let rows = match (raw.len(), own) {
        (0, true) if tensor.width == 4 => {
            tensor.rows_from_values(contents.fp32_contents, "inputs[0].contents")?
        }
        (0, true) => {
            tensor.check_count(contents.fp64_contents.len(), "inputs[0].contents")?;
            contents.fp64_contents.iter().map(|&v| v as f32).collect()
        }
        (0, false) => {
            return Err(Error::invalid("inputs[0]", "no data: send contents or raw_input_contents"))
        }
        (1, false) => tensor.rows_from_raw(&raw[0], "raw_input_contents[0]")?,
        (1, true) => return Err(Error::invalid("inputs[0]", "both contents and raw_input_contents")),
        (k, _) => {
            return Err(Error::invalid(
                "raw_input_contents",
                format!("{k} entries for 1 input: send one entry per input"),
            ))
        }
    };
    Ok((rows, tensor.rows))
}

/// The outputs named (all but contributions when none are), in order; an unknown one is an error
/// naming it.
pub fn requested_outputs(
    outputs: &[pb::model_infer_request::InferRequestedOutputTensor],
) -> Result<Vec<&'static str>, Error> {
    if outputs.is_empty() {
        return Ok(core::DEFAULT_OUTPUTS.to_vec());
    }
    outputs.iter().enumerate().map(|(i, o)| core::output_name(&format!("outputs[{i}]"), &o.name)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(datatype: &str, shape: Vec<i64>, contents: Option<pb::InferTensorContents>) -> InferInputTensor {
        InferInputTensor {
            name: "input".into(),
            datatype: datatype.into(),
            shape,
            parameters: Default::default(),
            contents,
        }
    }

    #[test]
    fn rows_come_from_contents_or_raw_bytes() {
        let c = pb::InferTensorContents { fp64_contents: vec![0.1, -7.0], ..Default::default() };
        let (rows, n) = check_input(vec![input("FP64", vec![1, 2], Some(c))], vec![], 2, 3).unwrap();
        assert_eq!((rows, n), (vec![0.1f64 as f32, -7.0], 1));
        let c = pb::InferTensorContents { fp32_contents: vec![1.5, f32::NAN], ..Default::default() };
        let (rows, _) = check_input(vec![input("FP32", vec![1, 2], Some(c))], vec![], 2, 3).unwrap();
        assert_eq!(rows[0], 1.5);
        assert!(rows[1].is_nan());
        let raw: Vec<u8> = [2.0f32, 3.0, 4.0, 5.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let (rows, n) =
            check_input(vec![input("FP32", vec![2, 2], None)], vec![Bytes::from(raw)], 2, 3).unwrap();
        assert_eq!((rows, n), (vec![2.0, 3.0, 4.0, 5.0], 2));
    }

    #[test]
    fn bad_inputs_name_the_field() {
        let e = |inputs: Vec<InferInputTensor>, raw: Vec<Bytes>| {
            check_input(inputs, raw, 2, 3).unwrap_err().to_string()
        };
        let fp64 = |v: Vec<f64>| Some(pb::InferTensorContents { fp64_contents: v, ..Default::default() });
        assert_eq!(
            e(vec![input("FP32", vec![1, 2], fp64(vec![1.0, 2.0]))], vec![]),
            "inputs[0].contents: FP32 data goes in fp32_contents, and no other field"
        );
        assert_eq!(
            e(vec![input("FP64", vec![1, 2], fp64(vec![1.0]))], vec![]),
            "inputs[0].contents: 1 values for shape [1, 2] (2 expected)"
        );
        assert_eq!(
            e(vec![input("FP32", vec![1, 2], None)], vec![Bytes::from_static(&[0; 7])]),
            "raw_input_contents[0]: 7 bytes: shape [1, 2] of FP32 takes 8"
        );
        assert!(e(vec![input("FP32", vec![1, 2], None)], vec![]).starts_with("inputs[0]: no data"));
        assert!(e(vec![], vec![]).starts_with("inputs: expected exactly one"));
        assert_eq!(
            e(vec![input("FP32", vec![9, 2], None)], vec![]),
            "inputs[0].shape: 9 rows: expected 1..=3"
        );
        let two = vec![Bytes::from_static(&[0; 8]), Bytes::from_static(&[0; 8])];
        assert!(e(vec![input("FP32", vec![1, 2], None)], two).starts_with("raw_input_contents: 2 entries"));
    }

    #[test]
    fn outputs_default_to_score_and_margin() {
        assert_eq!(requested_outputs(&[]).unwrap(), ["score", "margin"]);
        let one = |name: &str| pb::model_infer_request::InferRequestedOutputTensor {
            name: name.into(),
            parameters: Default::default(),
        };
        assert_eq!(
            requested_outputs(&[one("margin"), one("contributions")]).unwrap(),
            ["margin", "contributions"]
        );
        let e = requested_outputs(&[one("margin"), one("prob")]).unwrap_err().to_string();
        assert!(e.starts_with("outputs[1].name: unknown output 'prob'"), "{e}");
    }
}
