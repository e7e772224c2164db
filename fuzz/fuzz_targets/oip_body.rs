//! Open Inference Protocol infer requests against small tabular models: the HTTP body of
//! `POST /v2/models/{name}/infer` (`oip::parse_body` with or without the binary tensor extension's
//! `Inference-Header-Content-Length`, then `oip::check_request`: the input tensor's name, datatype,
//! shape, feature count, row limit and data, `binary_data_output`, the outputs asked for) and the gRPC
//! `ModelInferRequest` (prost decoding, `oip_grpc::check_version`, `check_input` over `contents` or
//! `raw_input_contents`, `requested_outputs`). A request that passes runs on the model, and each
//! output must have the length of the shape the response gives it.
//!
//! The first byte `b` picks the model (`b / 3 % 3`: a binary XGBoost model with training covers, a
//! 3-class one, a soft-tree model that refuses contributions) and the route (`b % 3`: HTTP JSON;
//! HTTP with the header, its value the bytes up to the first NUL and the body after it; gRPC).
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use slate::proto::inference as pb;
use slate::server::inference::{output_data, output_shape};
use slate::server::oip::{check_request, parse_body, HEADER_LENGTH};
use slate::server::oip_grpc::{check_input, check_version, requested_outputs};
use slate::tabular::{soft, Outputs, TabularModel};
use std::sync::LazyLock;

/// The models' row limit (`models[].trees.max_rows`; small, so a run stays fast).
const MAX_ROWS: usize = 64;

/// An XGBoost JSON model of `groups` output groups (a multi-class one from 2) over 3 features: two
/// trees per group, each node with its hessian sum.
fn xgboost(groups: usize) -> TabularModel {
    let tree = |f: usize, t: f32, leaf: f32| {
        serde_json::json!({
            "left_children": [1, 3, -1, -1, -1], "right_children": [2, 4, -1, -1, -1],
            "split_indices": [f, (f + 1) % 3, 0, 0, 0], "split_conditions": [t, 0.25, leaf, -leaf, 0.5 * leaf],
            "default_left": [1, 0, 0, 0, 0], "split_type": [0, 0, 0, 0, 0],
            "sum_hessian": [10.0, 6.0, 4.0, 2.5, 3.5]
        })
    };
    let trees: Vec<_> = (0..2 * groups).map(|i| tree(i % 3, 0.5 - i as f32, 0.75 + i as f32)).collect();
    let tree_info: Vec<usize> = (0..2 * groups).map(|i| i % groups).collect();
    let (objective, num_class) =
        if groups == 1 { ("binary:logistic", 0) } else { ("multi:softprob", groups) };
    let json = serde_json::json!({"learner": {
        "gradient_booster": {"name": "gbtree", "model": {"tree_info": tree_info, "trees": trees}},
        "learner_model_param": {"base_score": "5E-1", "num_class": num_class.to_string(), "num_feature": "3", "num_target": "1"},
        "objective": {"name": objective}
    }});
    TabularModel::from_bytes(json.to_string().as_bytes()).expect("the XGBoost model loads")
}

static MODELS: LazyLock<[TabularModel; 3]> = LazyLock::new(|| {
    let (tensors, meta) = soft::random_model(3, 2, 3, 1, 5, 19);
    let soft = soft::encode(&tensors, meta).expect("encode the soft-tree model");
    [xgboost(1), xgboost(3), TabularModel::from_bytes(&soft).expect("the soft-tree model loads")]
});

/// What the server does with checked rows: predict, then each output as the response carries it.
fn run(model: &TabularModel, rows: &[f32], n: usize, names: &[&'static str], compute: Outputs) {
    assert_eq!(rows.len(), n * model.num_features(), "checked rows fill the shape");
    let Ok(p) = model.predict(rows, compute) else {
        assert!(compute.contributions, "{} refused margins or scores", model.format);
        return;
    };
    for &name in names {
        let data = output_data(&p, name);
        let shape = output_shape(model, name, n as i64);
        assert_eq!(data.len() as i64, shape.iter().product::<i64>(), "{name} of {n} rows");
        let _ =
            serde_json::json!({"name": name, "datatype": "FP32", "shape": shape, "data": data}).to_string();
    }
}

fn http(model: &TabularModel, header: Option<&[u8]>, body: &[u8]) {
    let mut headers = HeaderMap::new();
    if let Some(h) = header {
        let Ok(v) = HeaderValue::from_bytes(h) else { return };
        headers.insert(HEADER_LENGTH, v);
    }
    let Ok((mut req, binary)) = parse_body(&headers, body) else { return };
    let Ok(c) = check_request(&mut req, binary, model.num_features(), MAX_ROWS) else { return };
    let names: Vec<&'static str> = c.wanted.iter().map(|&(name, _)| name).collect();
    run(model, &c.rows, c.n, &names, c.compute);
}

fn grpc(model: &TabularModel, msg: &[u8]) {
    let Ok(req) = pb::ModelInferRequest::decode(msg) else { return };
    if check_version(&req.model_name, &req.model_version).is_err() {
        return;
    }
    let Ok((rows, n)) = check_input(req.inputs, req.raw_input_contents, model.num_features(), MAX_ROWS)
    else {
        return;
    };
    let Ok(names) = requested_outputs(&req.outputs) else { return };
    run(model, &rows, n, &names, slate::server::inference::outputs_of(&names));
}

fuzz_target!(|data: &[u8]| {
    let Some((&b, rest)) = data.split_first() else { return };
    let model = &MODELS[usize::from(b / 3 % 3)];
    match b % 3 {
        0 => http(model, None, rest),
        1 => {
            let (header, body) = match rest.iter().position(|&c| c == 0) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            http(model, Some(header), body);
        }
        _ => grpc(model, rest),
    }
});
