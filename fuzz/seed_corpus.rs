//! Seed corpora for the cargo-fuzz targets in `fuzz/` (run by `scripts/fuzz.sh`):
//! `seed_corpus OUT_DIR [SMOLLM2_GGUF]` writes `OUT_DIR/<target>/…` (built with the targets, so it
//! needs no other build of the server).
//! Seeds are small valid inputs of each format, made by the same code the tests use (tiny GGUF
//! models, random ranker configs, `slate compress`), the demo ranker's config, the SmolLM2 chat
//! template and metadata (its vocabulary cut to the first tokens, no tensors) when the GGUF is at hand,
//! the request bodies of docs/API.md, small models of every tabular format (some committed under
//! `tabular_seeds/`, made by its make.py) and Open Inference Protocol requests. The input layouts are the targets' own (see each target).

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::GgmlDType;
use prost::Message;
use slate::proto::inference as oip_pb;
use slate::proto::slate::v1 as pb;
use slate::ranking::{Fusion, RankerModel};
use slate::slm::gguf::GgufFile;
use slate::tabular::{soft, TabularModel};
use slate_tools::testkit::{self, TinySpec};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Between the files of a `compressed` input (fuzz_targets/compressed.rs).
const SEPARATOR: &[u8] = b"%%slate-fuzz-file%%";

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("create seed folder");
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

fn tiny_spec(layers: usize, dtype: GgmlDType) -> TinySpec {
    TinySpec { layers, d_model: 32, heads: 2, kv_heads: 1, ffn: 32, context_length: 64, dtype, seed: 3 }
}

/// Tiny models (the test kit's writer), and the tokenizer metadata alone.
fn gguf_seeds(dir: &Path, tmp: &Path) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for (i, (layers, dtype)) in
        [(1, GgmlDType::Q4_1), (2, GgmlDType::Q8_0), (1, GgmlDType::F32)].into_iter().enumerate()
    {
        let path = tmp.join(format!("tiny-{i}.gguf"));
        testkit::write_tiny_gguf(&path, &tiny_spec(layers, dtype));
        write(dir, &format!("tiny-{i}.gguf"), &std::fs::read(&path).expect("read tiny gguf"));
        paths.push(path);
    }
    let md = slate::slm::tokenizer::tiny_tokenizer_metadata();
    write(dir, "tokenizer-only.gguf", &gguf_bytes(&md));
    paths
}

fn gguf_bytes(md: &[(String, Value)]) -> Vec<u8> {
    let refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut out, &refs, &[]).expect("write gguf");
    out.into_inner()
}

/// SmolLM2's metadata with its vocabulary cut to the first `keep` tokens (and the merges among
/// them), no tensors; and its chat template.
fn smollm2_seeds(gguf: &Path, out: &Path, keep: usize) -> Option<String> {
    let file = GgufFile::open(gguf).ok()?;
    let md = file.metadata();
    let strings = |key: &str| -> Vec<String> {
        md.get(key)
            .and_then(|v| v.to_vec().ok())
            .map(|a| a.iter().filter_map(|v| v.to_string().ok().cloned()).collect())
            .unwrap_or_default()
    };
    let tokens: Vec<String> = strings("tokenizer.ggml.tokens").into_iter().take(keep).collect();
    let kept: HashSet<&str> = tokens.iter().map(String::as_str).collect();
    let merges: Vec<String> = strings("tokenizer.ggml.merges")
        .into_iter()
        .filter(|m| {
            m.split_once(' ').is_some_and(|(a, b)| {
                kept.contains(a) && kept.contains(b) && kept.contains(&*format!("{a}{b}"))
            })
        })
        .collect();
    let mut small: Vec<(String, Value)> = Vec::new();
    let mut keys: Vec<&String> = md.keys().collect();
    keys.sort();
    for k in keys {
        let v = match k.as_str() {
            "tokenizer.ggml.tokens" => {
                Value::Array(tokens.iter().map(|t| Value::String(t.clone())).collect())
            }
            "tokenizer.ggml.merges" => {
                Value::Array(merges.iter().map(|t| Value::String(t.clone())).collect())
            }
            "tokenizer.ggml.token_type" => match md[k].to_vec() {
                Ok(a) => Value::Array(a.iter().take(keep).cloned().collect()),
                Err(_) => continue,
            },
            _ => md[k].clone(),
        };
        small.push((k.clone(), v));
    }
    write(&out.join("gguf"), "smollm2-metadata.gguf", &gguf_bytes(&small));
    md.get("tokenizer.chat_template").and_then(|v| v.to_string().ok()).cloned()
}

fn ranker_seeds(dir: &Path, tmp: &Path) {
    write(dir, "demo-config.json", include_bytes!("../models/demo-ranker/config.json"));
    for (i, fusion) in [Fusion::AppendCross, Fusion::Concat, Fusion::AppendCross].into_iter().enumerate() {
        let cfg = testkit::small_config(fusion, i as u64 + 11);
        let folder = tmp.join(format!("ranker-{i}"));
        RankerModel::random(&cfg, i as u64).save(&folder).expect("save ranker");
        let mut seed = std::fs::read(folder.join("config.json")).expect("config");
        seed.push(0);
        seed.extend(std::fs::read(folder.join("model.safetensors")).expect("weights"));
        write(dir, &format!("small-{i}"), &seed);
    }
}

const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + \
    message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Templates that use what the server's bounded filters and Python methods provide.
const TEMPLATES: &[&str] = &[
    CHATML,
    "{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}{{ m.content.strip() | indent(2) }}\
     {% elif loop.index0 % 2 == 0 %}[INST] {{ m['content'] | trim }} [/INST]{% else %}{{ m.content ~ eos_token }}\
     {% endif %}{% endfor %}",
    "{% set ns = namespace(sys='') %}{% for m in messages %}{% if m.role == 'system' %}{% set ns.sys = m.content %}\
     {% endif %}{% endfor %}{{ ns.sys | tojson(indent=2) }}{% for m in messages | batch(2) %}{{ m | length }}\
     {% endfor %}{{ messages | slice(2) | list | length }}{{ '%5s|%-3d' | format('ab', 7) }}\
     {{ messages[0].content.replace('a', 'bb').upper().startswith('B') }}{{ {'k': 1}.items() | list }}",
    "{% macro m(n) %}{% if n > 0 %}{{ n }}{{ m(n - 1) }}{% endif %}{% endmacro %}{{ m(5) }}\
     {% for i in range(3) %}{{ i }}{% if i == 1 %}{% break %}{% endif %}{% endfor %}\
     {% if messages[0].role != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}",
];

fn chat_seeds(dir: &Path, smollm2_template: Option<&str>) {
    let conversation = "\0system\nYou are helpful.\0user\nHello, 12 worlds!\0assistant\nHi.\0user\nAnd you?";
    for (i, t) in TEMPLATES.iter().copied().chain(smollm2_template).enumerate() {
        write(dir, &format!("template-{i}"), format!("{t}{conversation}").as_bytes());
    }
    write(dir, "no-generation-prompt", format!("!{CHATML}\0user\nHi").as_bytes());
}

/// The request bodies of docs/API.md and a few more; the first byte picks the route (http_json.rs).
fn http_seeds(dir: &Path) {
    let cfg = slate::ranking::RankerConfig::from_json(include_str!("../models/demo-ranker/config.json"))
        .expect("demo config");
    let mut rank = testkit::random_request(&cfg, 5, 12, 4);
    rank.model = "demo-ranker".into();
    let bodies: Vec<(u8, String)> = vec![
        (
            0,
            r#"{"model": "demo-ranker", "member_id": 42,
  "history": [{"item_id": 50, "action": "like", "timestamp_ms": 893286638000}],
  "candidates": [{"item_id": 174}, {"item_id": 1}], "request_time_ms": 893290000000, "top_k": 1}"#
                .into(),
        ),
        (0, serde_json::to_string(&rank).expect("rank request json")),
        (
            0,
            r#"{"model":"m","member_id":1,"member_sparse":{"gender":1,"age":30},"member_dense":[0.5,1,2,3],
  "history":[{"item_id":7,"action":"click","timestamp_ms":1,"dense":[1,2]}],
  "candidates":[{"item_id":3,"dense":[0,1,2]}],"tasks":["like"],"mode":"per_candidate","priority":"batch"}"#
                .into(),
        ),
        (1, r#"{"model": "smollm2-135m", "prompt": "Once upon a time", "max_tokens": 32, "stream": true}"#.into()),
        (
            1,
            r#"{"model":"m","prompt":[1,2,3],"logprobs":2,"temperature":0.7,"top_p":0.9,"top_k":40,"seed":1,
  "stop":["\n","END"],"frequency_penalty":0.5,"presence_penalty":-0.5,"n":1,"user":"u","ignore_eos":true}"#
                .into(),
        ),
        (
            2,
            r#"{"model": "smollm2-135m", "messages": [{"role": "user", "content": "Name three colors."}],
  "max_tokens": 32, "temperature": 0}"#
                .into(),
        ),
        (
            2,
            r#"{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"<|im_start|>hi"}],
  "max_completion_tokens":8,"logprobs":true,"top_logprobs":3,"stop":"x","stream_options":{"include_usage":true},"priority":"interactive"}"#
                .into(),
        ),
        (3, r#"{"model": "smollm2-135m", "prompt": "hello world"}"#.into()),
        (3, r#"{"model": "smollm2-135m", "messages": [{"role": "user", "content": "hello"}]}"#.into()),
        (4, r#"{"model": "smollm2-135m", "prompt": "Is the sky blue? Answer:", "labels": [" yes", " no"]}"#.into()),
        (
            4,
            r#"{"model":"m","messages":[{"role":"user","content":"Sentiment of 'great'?"}],"labels":[" positive"," negative"],"priority":"batch"}"#
                .into(),
        ),
    ];
    for (i, (route, body)) in bodies.into_iter().enumerate() {
        let mut seed = vec![route];
        seed.extend(body.into_bytes());
        write(dir, &format!("body-{i}"), &seed);
    }
}

/// Encoded gRPC messages; the first byte picks the message (grpc_decode.rs).
fn grpc_seeds(dir: &Path) {
    let cfg = slate::ranking::RankerConfig::from_json(include_str!("../models/demo-ranker/config.json"))
        .expect("demo config");
    let mut rank = testkit::random_request(&cfg, 6, 12, 4);
    rank.model = "demo-ranker".into();
    let sampling = pb::SamplingParams {
        temperature: Some(0.7),
        top_p: Some(0.9),
        top_k: 40,
        max_tokens: 16,
        stop: vec!["\n".into()],
        logprobs: true,
        top_logprobs: 2,
        ..Default::default()
    };
    let chat = vec![
        pb::ChatMessage { role: "system".into(), content: "Be brief.".into() },
        pb::ChatMessage { role: "user".into(), content: "Hello".into() },
    ];
    let messages: Vec<(u8, Vec<u8>)> = vec![
        (0, pb::RankRequest::from(rank).encode_to_vec()),
        (
            1,
            pb::GenerateRequest {
                model: "m".into(),
                prompt: "Once upon a time".into(),
                sampling: Some(sampling.clone()),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            1,
            pb::GenerateRequest {
                model: "m".into(),
                messages: chat.clone(),
                sampling: Some(sampling),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            2,
            pb::ScoreRequest {
                model: "m".into(),
                messages: chat,
                labels: vec![" yes".into(), " no".into()],
                ..Default::default()
            }
            .encode_to_vec(),
        ),
    ];
    for (i, (which, msg)) in messages.into_iter().enumerate() {
        let mut seed = vec![which];
        seed.extend(msg);
        write(dir, &format!("message-{i}"), &seed);
    }
}

/// Small valid models of every tabular format (each must load): the committed seeds of
/// `tabular_seeds/` (trained by its make.py: XGBoost UBJSON and JSON, LightGBM text, a FAST-style
/// additive model), the demo soft-tree model, and models written here (XGBoost JSON stumps with a
/// categorical split and `NaN`, slate_additive with categories and a pair, soft trees of several
/// shapes).
fn tabular_seeds(dir: &Path) {
    let mut models: Vec<(String, Vec<u8>)> = [
        ("xgb-logistic.ubj", &include_bytes!("tabular_seeds/xgb-logistic.ubj")[..]),
        ("xgb-multiclass.ubj", include_bytes!("tabular_seeds/xgb-multiclass.ubj")),
        ("xgb-categorical.ubj", include_bytes!("tabular_seeds/xgb-categorical.ubj")),
        ("xgb-dart.json", include_bytes!("tabular_seeds/xgb-dart.json")),
        ("xgb-poisson-forest.json", include_bytes!("tabular_seeds/xgb-poisson-forest.json")),
        ("xgb-multitarget.json", include_bytes!("tabular_seeds/xgb-multitarget.json")),
        ("lgb-binary.txt", include_bytes!("tabular_seeds/lgb-binary.txt")),
        ("lgb-multiclass.txt", include_bytes!("tabular_seeds/lgb-multiclass.txt")),
        ("lgb-forest.txt", include_bytes!("tabular_seeds/lgb-forest.txt")),
        ("lgb-zero-missing.txt", include_bytes!("tabular_seeds/lgb-zero-missing.txt")),
        ("lgb-categorical.txt", include_bytes!("tabular_seeds/lgb-categorical.txt")),
        ("additive-fast.json", include_bytes!("tabular_seeds/additive-fast.json")),
        ("ads-ctr-soft.safetensors", include_bytes!("../models/ads-ctr-soft.safetensors")),
    ]
    .into_iter()
    .map(|(name, bytes)| (name.to_string(), bytes.to_vec()))
    .collect();
    // XGBoost JSON as older versions write it: `NaN` for a categorical split's condition, booleans
    // for default_left, hessian sums for TreeSHAP.
    let xgb = r#"{"learner": {"gradient_booster": {"name": "gbtree", "model": {"tree_info": [0, 0], "trees": [
        {"left_children": [1, -1, -1], "right_children": [2, -1, -1], "split_indices": [0, 0, 0],
         "split_conditions": [0.5, -1.0, 1.0], "default_left": [true, false, false], "split_type": [0, 0, 0],
         "sum_hessian": [4.0, 1.5, 2.5]},
        {"left_children": [1, -1, 3, -1, -1], "right_children": [2, -1, 4, -1, -1], "split_indices": [1, 0, 2, 0, 0],
         "split_conditions": [NaN, 0.25, 1.5, -0.5, 0.75], "default_left": [0, 0, 1, 0, 0], "split_type": [1, 0, 0, 0, 0],
         "sum_hessian": [4.0, 1.0, 3.0, 2.0, 1.0],
         "categories_nodes": [0], "categories_segments": [0], "categories_sizes": [2], "categories": [1, 40]}]}},
      "learner_model_param": {"base_score": "[5E-1]", "num_class": "0", "num_feature": "3", "num_target": "1"},
      "objective": {"name": "binary:logistic"}}, "version": [2, 1, 4]}"#;
    models.push(("xgb-categorical-nan.json".into(), xgb.as_bytes().to_vec()));
    let additive = r#"{"format": "slate_additive", "version": 1, "num_features": 3, "link": "mlogit",
      "feature_names": ["a", "b", "c"], "intercept": [0.25, -0.5, 0.1], "terms": [
        {"name": "a", "features": [0], "bins": [{"edges": [1.0, 2.0]}],
         "scores": [-9, 1, 0, 2, 0, 0, 3, 0, 0, 100, 0, 0, 0, 0, 1]},
        {"name": "b", "features": [2], "bins": [{"categories": [5, 3]}],
         "scores": [0.5, 0, 0, 10, 1, 0, 20, 0, 1, 30, 1, 1]},
        {"name": "a & b", "features": [0, 1], "bins": [{"edges": [0.0]}, {"categories": [7]}],
         "scores": [0, 0, 0, 0, 0, 0, 0, 0, 0, 0.2, 0, 0, 0.4, 0, 0, 0, 0, 0, 0.6, 0, 0, 0.8, 0, 0,
                    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]}]}"#;
    models.push(("additive-mlogit.json".into(), additive.as_bytes().to_vec()));
    for (i, (trees, depth, selected, groups, features)) in
        [(2, 1, 1, 1, 1), (3, 3, 4, 3, 6), (4, 2, 2, 2, 9)].into_iter().enumerate()
    {
        let (tensors, mut meta) = soft::random_model(trees, depth, selected, groups, features, i as u64);
        if groups == 2 {
            meta.insert("link".into(), "identity".into());
        }
        models.push((format!("soft-{i}.safetensors"), soft::encode(&tensors, meta).expect("soft trees")));
    }
    for (name, bytes) in models {
        if let Err(e) = TabularModel::from_bytes(&bytes) {
            panic!("seed {name} does not load: {e}");
        }
        write(dir, &name, &bytes);
    }
    // The findings of docs/RELIABILITY.md ("Fuzzing"), kept as seeds: an additive model whose rows
    // need 2^30 slots (refused at load), and an XGBoost model of 65,536 classes over 2^20 features
    // (its contributions refused).
    let groups = vec!["0"; 1024].join(",");
    let additive = format!(
        r#"{{"format": "slate_additive", "version": 1, "num_features": 1048576, "link": "identity",
          "intercept": [{groups}], "terms": []}}"#
    );
    write(dir, "finding-additive-slots.json", additive.as_bytes());
    let xgb = r#"{"learner": {"gradient_booster": {"name": "gbtree", "model": {"tree_info": [0], "trees": [
        {"left_children": [1, -1, -1], "right_children": [2, -1, -1], "split_indices": [0, 0, 0],
         "split_conditions": [0.5, 1.0, -1.0], "default_left": [1, 0, 0], "sum_hessian": [2.0, 1.0, 1.0]}]}},
      "learner_model_param": {"base_score": "5E-1", "num_class": "65536", "num_feature": "1048576"},
      "objective": {"name": "multi:softprob"}}}"#;
    write(dir, "finding-xgb-contributions.json", xgb.as_bytes());
}

/// OIP infer requests; the first byte picks the model and the route (oip_body.rs): `model * 3 +
/// route`, model 0 (binary trees, 3 features), 1 (3-class trees, 3 features), 2 (soft trees, 5
/// features); route 0 HTTP JSON, 1 HTTP with `Inference-Header-Content-Length` (its value, NUL,
/// the body), 2 a gRPC `ModelInferRequest`.
fn oip_seeds(dir: &Path) {
    let mut seeds: Vec<(u8, Vec<u8>)> = [
        (0, r#"{"id": "r1", "inputs": [{"name": "input", "shape": [2, 3], "datatype": "FP32",
            "data": [[0.5, 1.0, null], [2.0, null, 0.0]]}], "outputs": [{"name": "score"}]}"#),
        (0, r#"{"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP64", "data": [0.1, -7, 1e300]}],
            "outputs": [{"name": "margin"}, {"name": "contributions"}, {"name": "score"}]}"#),
        (3, r#"{"inputs": [{"name": "input", "shape": [3, 3], "datatype": "FP32",
            "data": [[[1, 2, 3]], [[4, 5, 6]], [[null, null, null]]]}],
            "parameters": {"binary_data_output": false}, "outputs": [{"name": "contributions"}]}"#),
        (6, r#"{"inputs": [{"name": "input", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}]}"#),
        (6, r#"{"inputs": [{"name": "input", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}],
            "outputs": [{"name": "contributions"}]}"#),
    ]
    .into_iter()
    .map(|(b, json)| (b, json.as_bytes().to_vec()))
    .collect();
    // The binary tensor extension: JSON, then the input's little-endian values.
    let binary = |b: u8, datatype: &str, values: &[f64], features: usize, outputs: &str| {
        let raw: Vec<u8> = if datatype == "FP32" {
            values.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect()
        } else {
            values.iter().flat_map(|v| v.to_le_bytes()).collect()
        };
        let json = format!(
            r#"{{"inputs": [{{"name": "input", "shape": [{}, {features}], "datatype": "{datatype}",
                "parameters": {{"binary_data_size": {}}}}}], {outputs}}}"#,
            values.len() / features,
            raw.len()
        );
        let mut seed = json.len().to_string().into_bytes();
        seed.push(0);
        seed.extend(json.into_bytes());
        seed.extend(raw);
        (b, seed)
    };
    seeds.push(binary(
        1,
        "FP32",
        &[0.5, f64::NAN, 2.0, -1.0, 0.0, 3.0],
        3,
        r#""parameters": {"binary_data_output": true}, "outputs": [{"name": "score"}, {"name": "margin", "parameters": {"binary_data": false}}]"#,
    ));
    seeds.push(binary(
        4,
        "FP64",
        &[1.0, 2.0, 3.0],
        3,
        r#""outputs": [{"name": "contributions", "parameters": {"binary_data": true}}]"#,
    ));
    seeds.push(binary(7, "FP32", &[0.0; 10], 5, r#""outputs": []"#));
    // gRPC: contents of the datatype's own field, or one raw_input_contents entry.
    use oip_pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
    let input =
        |datatype: &str, shape: Vec<i64>, contents: Option<oip_pb::InferTensorContents>| InferInputTensor {
            name: "input".into(),
            datatype: datatype.into(),
            shape,
            contents,
            ..Default::default()
        };
    let output = |name: &str| InferRequestedOutputTensor { name: name.into(), ..Default::default() };
    let requests = [
        (
            2,
            oip_pb::ModelInferRequest {
                model_name: "my-trees".into(),
                id: "r1".into(),
                inputs: vec![input(
                    "FP32",
                    vec![2, 3],
                    Some(oip_pb::InferTensorContents {
                        fp32_contents: vec![0.5, 1.0, f32::NAN, 2.0, 0.0, -3.0],
                        ..Default::default()
                    }),
                )],
                outputs: vec![output("score"), output("contributions")],
                ..Default::default()
            },
        ),
        (
            5,
            oip_pb::ModelInferRequest {
                model_name: "m".into(),
                model_version: "1".into(),
                inputs: vec![input(
                    "FP64",
                    vec![1, 3],
                    Some(oip_pb::InferTensorContents {
                        fp64_contents: vec![0.1, -7.0, 2.5],
                        ..Default::default()
                    }),
                )],
                ..Default::default()
            },
        ),
        (
            8,
            oip_pb::ModelInferRequest {
                model_name: "m".into(),
                inputs: vec![input("FP32", vec![2, 5], None)],
                outputs: vec![output("margin")],
                raw_input_contents: vec![(0..10)
                    .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
                    .collect::<Vec<u8>>()
                    .into()],
                ..Default::default()
            },
        ),
    ];
    for (b, req) in requests {
        seeds.push((b, req.encode_to_vec()));
    }
    for (i, (b, body)) in seeds.into_iter().enumerate() {
        let mut seed = vec![b];
        seed.extend(body);
        write(dir, &format!("request-{i}"), &seed);
    }
}

/// Compressed folders made by `slate compress` from the tiny models, joined into one input each.
fn compressed_seeds(dir: &Path, tmp: &Path, models: &[PathBuf]) {
    let plans: [&[&str]; 3] = [
        &["--method", "none", "--values", "int8"],
        &["--method", "magnitude", "--pattern", "2:4", "--values", "int4", "--rank", "2"],
        &["--method", "magnitude", "--sparsity", "0.5", "--values", "f16", "--ffsplit-heavy", "0.25"],
    ];
    for (i, plan) in plans.iter().enumerate() {
        let out = tmp.join(format!("compressed-{i}"));
        let args = slate_tools::compress::CompressArgs {
            model: models[i % models.len()].clone(),
            method: plan[1].into(),
            pattern: plan.windows(2).find(|w| w[0] == "--pattern").map(|w| w[1].to_string()),
            sparsity: plan.windows(2).find(|w| w[0] == "--sparsity").map(|w| w[1].parse().expect("sparsity")),
            rank: plan.windows(2).find(|w| w[0] == "--rank").map_or(0, |w| w[1].parse().expect("rank")),
            ffsplit_heavy: plan
                .windows(2)
                .find(|w| w[0] == "--ffsplit-heavy")
                .map(|w| w[1].parse().expect("heavy")),
            values: plan.windows(2).find(|w| w[0] == "--values").map_or("int8".into(), |w| w[1].to_string()),
            factor_values: "int8".into(),
            out: out.clone(),
        };
        if let Err(e) = slate_tools::compress::run(&args) {
            eprintln!("seed_corpus: compress {plan:?}: {e:#} (seed skipped)");
            continue;
        }
        let mut seed = Vec::new();
        for (j, name) in
            ["config.json", "tokenizer.gguf", "model.safetensors", "compression.json"].iter().enumerate()
        {
            if j > 0 {
                seed.extend_from_slice(SEPARATOR);
            }
            seed.extend(std::fs::read(out.join(name)).expect("compressed file"));
        }
        write(dir, &format!("folder-{i}"), &seed);
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().expect("usage: seed_corpus OUT_DIR [SMOLLM2_GGUF]"));
    let smollm2 = args.next().map(PathBuf::from);
    let tmp = std::env::temp_dir().join(format!("slate-fuzz-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp folder");
    let models = gguf_seeds(&out.join("gguf"), &tmp);
    let template = smollm2.as_deref().and_then(|p| smollm2_seeds(p, &out, 1024));
    ranker_seeds(&out.join("ranker_config"), &tmp);
    chat_seeds(&out.join("chat_template"), template.as_deref());
    http_seeds(&out.join("http_json"));
    grpc_seeds(&out.join("grpc_decode"));
    compressed_seeds(&out.join("compressed"), &tmp, &models);
    tabular_seeds(&out.join("tabular_model"));
    oip_seeds(&out.join("oip_body"));
    let _ = std::fs::remove_dir_all(&tmp);
}
