//! Tests of config parsing and validation: every error names the file and the key.

use super::*;

fn err(text: &str) -> String {
    Config::parse(text, "cfg.toml").unwrap_err().0
}

#[test]
fn the_default_config_file_is_valid() {
    // Run from the crate root (cargo test's working directory), where its model paths resolve.
    let c = Config::load(Path::new("config/default.toml")).unwrap();
    let kinds: Vec<_> = c.models.iter().map(|m| (m.name.as_str(), m.kind)).collect();
    assert_eq!(
        kinds,
        [
            ("demo-ranker", ModelKind::Ranker),
            ("smollm2-135m", ModelKind::Slm),
            ("ads-ctr", ModelKind::Trees),
            ("ads-ctr-ebm", ModelKind::Additive),
            ("ads-ctr-soft", ModelKind::SoftTrees),
        ]
    );
}

#[test]
fn the_reference_ranker_config_file_is_valid() {
    // Its model folder is made by `slate bench ranker --write-model`; point it at a temporary one.
    let text = std::fs::read_to_string("config/reference-ranker.toml").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = text.replace("models/reference-ranker", &dir.path().display().to_string());
    assert_ne!(text, std::fs::read_to_string("config/reference-ranker.toml").unwrap());
    let c = Config::parse(&text, "reference-ranker.toml").unwrap();
    assert_eq!(c.models.len(), 1);
    assert_eq!((c.models[0].name.as_str(), c.models[0].kind), ("reference-ranker", ModelKind::Ranker));
    // Its [models.ranker] table belongs to that model: the wait bounds tuned for the load tests.
    assert_eq!(c.models[0].ranker.max_queue_delay_ms, 40.0);
    assert_eq!(c.models[0].ranker.overload_queue_delay_ms, 18.0);
}

#[test]
fn the_ads_ctr_config_file_is_valid() {
    // The OIP load test's server (scripts/loadtest-oip.sh): the demo ads model alone.
    let c = Config::load(Path::new("config/ads-ctr.toml")).unwrap();
    let kinds: Vec<_> = c.models.iter().map(|m| (m.name.as_str(), m.kind)).collect();
    assert_eq!(kinds, [("ads-ctr", ModelKind::Trees)]);
}

#[test]
fn slm_settings_are_checked() {
    let model = |slm: &str| {
        format!("[[models]]\nname = \"m\"\nkind = \"slm\"\npath = \"Cargo.toml\"\nslm = {{ {slm} }}\n")
    };
    assert!(Config::parse(&model(""), "cfg.toml").is_ok());
    assert!(err(&model("max_step_tokens = 0")).contains("models[0].slm.max_step_tokens: must be > 0"));
    assert!(err(&model("max_running_sequences = 32, max_step_tokens = 16")).contains("max_step_tokens"));
    assert!(err(&model("kv_bytes = 5")).contains("kv_bytes"));
    assert!(err(&model("max_label_tokens = 0")).contains("models[0].slm.max_label_tokens: must be > 0"));
    // 0 is allowed: no separate bound on label tokens beside decodes.
    assert!(Config::parse(&model("score_tokens_per_shared_step = 0"), "cfg.toml").is_ok());
}

#[test]
fn trees_settings_are_checked() {
    let model = |trees: &str| {
        format!("[[models]]\nname = \"t\"\nkind = \"trees\"\npath = \"Cargo.toml\"\ntrees = {{ {trees} }}\n")
    };
    assert!(Config::parse(&model("promote_after_ms = 20, max_queue_delay_us = 500"), "cfg.toml").is_ok());
    assert!(err(&model("promote_after_ms = 0")).contains("models[0].trees.promote_after_ms: must be > 0"));
    assert!(err(&model("max_batch_rows = 0")).contains("models[0].trees.max_batch_rows: must be > 0"));
    assert!(
        err(&model("max_queue_delay_us = 2000000")).contains("models[0].trees.max_queue_delay_us: at most")
    );
}

#[test]
fn empty_config_is_valid_with_defaults() {
    let c = Config::parse("", "cfg.toml").unwrap();
    assert_eq!(c.server.shutdown_grace_s, 30.0);
    assert!(c.models.is_empty());
    assert!(c.auth.exempt_health_and_metrics);
}

#[test]
fn unknown_key_is_named() {
    let e = err("[server]\nhttp_adr = \"127.0.0.1:1\"\n");
    assert!(e.starts_with("cfg.toml: "), "{e}");
    assert!(e.contains("http_adr"), "{e}");
}

#[test]
fn unknown_top_level_section_is_named() {
    let e = err("[sever]\n");
    assert!(e.contains("sever"), "{e}");
}

#[test]
fn wrong_type_is_named() {
    let e = err("[limits]\nmax_candidates = \"many\"\n");
    assert!(e.contains("max_candidates"), "{e}");
}

#[test]
fn bad_address_is_named() {
    let e = err("[server]\nhttp_addr = \"not an address\"\n");
    assert!(e.contains("http_addr"), "{e}");
}

#[test]
fn missing_model_path_is_named() {
    let e = err("[[models]]\nname = \"x\"\nkind = \"ranker\"\npath = \"models/definitely-missing\"\n");
    assert_eq!(e, "cfg.toml: models[0].path: no such file 'models/definitely-missing'");
}

#[test]
fn unknown_kind_is_named() {
    let e = err("[[models]]\nname = \"x\"\nkind = \"forest\"\npath = \".\"\n");
    assert!(e.contains("kind") || e.contains("forest"), "{e}");
    assert!(e.contains("forest"), "{e}");
}

#[test]
fn missing_model_field_is_named() {
    let e = err("[[models]]\nname = \"x\"\npath = \".\"\n");
    assert!(e.contains("kind"), "{e}");
}

#[test]
fn duplicate_model_name_is_named() {
    let e = err(
        "[[models]]\nname = \"x\"\nkind = \"ranker\"\npath = \".\"\n[[models]]\nname = \"x\"\nkind = \"ranker\"\npath = \".\"\n",
    );
    assert_eq!(e, "cfg.toml: models[1].name: duplicate model name 'x'");
}

#[test]
fn zero_limit_is_named() {
    let e = err("[limits]\nmax_candidates = 0\n");
    assert_eq!(e, "cfg.toml: limits.max_candidates: must be > 0");
    let e = err("[limits]\nmax_blocking_threads = 0\n");
    assert_eq!(e, "cfg.toml: limits.max_blocking_threads: must be > 0");
}

#[test]
fn negative_grace_is_named() {
    let e = err("[server]\nshutdown_grace_s = -1.0\n");
    assert!(e.contains("server.shutdown_grace_s"), "{e}");
}

#[test]
fn slm_quantize_takes_none_or_int8() {
    let slm = |v: &str| {
        format!("[[models]]\nname = \"m\"\nkind = \"slm\"\npath = \"Cargo.toml\"\nslm = {{ quantize = \"{v}\" }}\n")
    };
    assert_eq!(Config::parse(&slm("int8"), "c.toml").unwrap().models[0].slm.quantize, SlmQuantize::Int8);
    assert_eq!(Config::parse(&slm("none"), "c.toml").unwrap().models[0].slm.quantize, SlmQuantize::None);
    let e = err(&slm("int4"));
    assert!(e.contains("unknown variant `int4`") && e.contains("quantize"), "{e}");
}

#[test]
fn slm_kv_cache_dtype_takes_f32_or_f16() {
    let slm = |v: &str| {
        format!(
            "[[models]]\nname = \"m\"\nkind = \"slm\"\npath = \"Cargo.toml\"\nslm = {{ kv_cache_dtype = \"{v}\" }}\n"
        )
    };
    let dtype = |v: &str| Config::parse(&slm(v), "c.toml").unwrap().models[0].slm.kv_cache_dtype;
    assert_eq!(dtype("f16"), KvDtype::F16);
    assert_eq!(dtype("f32"), KvDtype::F32);
    // f32 unless configured (the exactness tests rely on it).
    assert_eq!(SlmSettings::default().kv_cache_dtype, KvDtype::F32);
    for bad in ["bf16", "F16", "fp16", "int8"] {
        let e = err(&slm(bad));
        assert!(e.contains(&format!("unknown variant `{bad}`")) && e.contains("kv_cache_dtype"), "{e}");
    }
}

#[test]
fn compute_nice_out_of_range_is_named() {
    for bad in ["-1", "20"] {
        let e = err(&format!("[server]\ncompute_nice = {bad}\n"));
        assert!(e.contains("server.compute_nice: must be in 0..=19"), "{e}");
    }
}

#[test]
fn io_threads_default_to_a_quarter_of_the_cores() {
    let auto = Config::parse("", "c.toml").unwrap().server;
    assert_eq!(auto.io_threads, 0);
    assert_eq!(auto.io_threads_for(1), 1);
    assert_eq!(auto.io_threads_for(2), 1);
    assert_eq!(auto.io_threads_for(16), 4);
    let set = Config::parse("[server]\nio_threads = 3\n", "c.toml").unwrap().server;
    assert_eq!(set.io_threads_for(16), 3);
    let e = err("[server]\nio_threads = 5000\n");
    assert!(e.contains("server.io_threads: must be in 0..=1024"), "{e}");
}

#[test]
fn priorities_are_validated() {
    let e = err("[priorities]\nclasses = [\"feed\", \"feed\"]\n");
    assert!(e.contains("priorities.classes[1]"), "{e}");
    let e = err("[priorities]\nclasses = [\"feed\"]\ndefault = \"ads\"\n");
    assert!(e.contains("priorities.default"), "{e}");
}

#[test]
fn ranker_settings_are_validated() {
    let e =
        err("[[models]]\nname = \"x\"\nkind = \"ranker\"\npath = \".\"\nranker = { max_step_tokens = 0 }\n");
    assert_eq!(e, "cfg.toml: models[0].ranker.max_step_tokens: must be > 0");
    let e =
        err("[[models]]\nname = \"x\"\nkind = \"ranker\"\npath = \".\"\nranker = { max_wait_ms = -1.0 }\n");
    assert!(e.contains("models[0].ranker.max_wait_ms"), "{e}");
    let e = err(
        "[[models]]\nname = \"x\"\nkind = \"ranker\"\npath = \".\"\nranker = { max_queue_delay_ms = -1.0 }\n",
    );
    assert!(e.contains("models[0].ranker.max_queue_delay_ms: must be a finite number ≥ 0"), "{e}");
    let ranker =
        |t: &str| format!("[[models]]\nname = \"x\"\nkind = \"ranker\"\npath = \".\"\nranker = {{ {t} }}\n");
    for bad in ["overload_queue_delay_ms = 30.0", "max_queue_delay_ms = 0.0, overload_queue_delay_ms = 5.0"] {
        let e = err(&ranker(bad));
        assert!(e.contains("models[0].ranker.overload_queue_delay_ms: must be ≤ max_queue_delay_ms"), "{e}");
    }
    let e = err(&ranker("overload_after_ms = -5.0"));
    assert!(e.contains("models[0].ranker.overload_after_ms: must be a finite number ≥ 0"), "{e}");
    let ok = Config::parse(&ranker("max_queue_delay_ms = 40.0, overload_queue_delay_ms = 18.0"), "c.toml");
    assert_eq!(ok.unwrap().models[0].ranker.overload_queue_delay_ms, 18.0);
}

#[test]
fn kind_settings_unknown_key_is_named() {
    let e = err("[[models]]\nname = \"x\"\nkind = \"ranker\"\npath = \".\"\nranker = { wokers = 2 }\n");
    assert!(e.contains("wokers"), "{e}");
}

#[test]
fn connection_limits_are_checked_and_named() {
    let e = err("[limits]\nbody_read_timeout_s = 0.0\n");
    assert!(e.starts_with("cfg.toml: limits.body_read_timeout_s: must be a number of seconds > 0"), "{e}");
    let e = err("[limits]\nidle_timeout_s = inf\n");
    assert!(e.contains("limits.idle_timeout_s"), "{e}");
    let e = err("[limits]\nmax_connections = 0\n");
    assert_eq!(e, "cfg.toml: limits.max_connections: must be > 0");
    let e = err("[limits]\nmax_body_bytes = 100\nmax_buffered_body_bytes = 99\n");
    assert!(e.contains("limits.max_buffered_body_bytes: 99 is below limits.max_body_bytes = 100"), "{e}");
    let e = err("[limits.route_max_body_bytes]\nrnak = 10\n");
    assert!(e.starts_with("cfg.toml: limits.route_max_body_bytes.rnak: unknown route; one of rank,"), "{e}");
    let e = err("[limits.route_max_body_bytes]\nrank = 0\n");
    assert_eq!(e, "cfg.toml: limits.route_max_body_bytes.rank: must be > 0");
    let small = Config::parse("[limits]\nmax_body_bytes = 100\n", "cfg.toml").unwrap();
    assert_eq!(small.limits.body_limit("rank"), 100, "max_body_bytes caps the route limits");
    let other = Config::parse("[limits.route_max_body_bytes]\nscore = 5000\n", "cfg.toml").unwrap();
    assert_eq!(other.limits.body_limit("score"), 5000);
    assert_eq!(other.limits.body_limit("rank"), 1 << 20, "routes not named keep their defaults");
    // 0 turns keep-alive pings and the gRPC timeout off.
    let cfg =
        Config::parse("[limits]\nkeepalive_interval_s = 0.0\ngrpc_timeout_s = 0\n", "cfg.toml").unwrap();
    assert_eq!(cfg.limits.body_limit("rank"), 1 << 20);
    assert_eq!(cfg.limits.body_limit("completions"), cfg.limits.max_body_bytes);
}

#[test]
fn auth_keys_never_reach_debug_output() {
    let cfg = Config::parse("[auth]\napi_keys = [\"sekret-1\", \"sekret-2\"]\nrequired = true\n", "cfg.toml")
        .unwrap();
    let shown = format!("{cfg:?}");
    assert!(!shown.contains("sekret"), "{shown}");
    assert!(shown.contains("[2 redacted]") && shown.contains("required: true"), "{shown}");
}

#[test]
fn tls_files_are_a_table() {
    let cfg =
        Config::parse("[server.tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n", "cfg.toml").unwrap();
    let tls = cfg.server.tls.unwrap();
    assert_eq!(tls.cert_file, std::path::PathBuf::from("c.pem"));
    assert!(tls.client_ca_file.is_none());
    let e = err("[server.tls]\ncert_file = \"c.pem\"\n");
    assert!(e.contains("key_file"), "{e}");
}

#[test]
fn device_takes_cpu_cuda_cuda_n_or_auto() {
    use crate::backend::device::DeviceSpec;
    let model = |kind: &str, device: &str| {
        format!("[[models]]\nname = \"m1\"\nkind = \"{kind}\"\npath = \"Cargo.toml\"\n{device}\n")
    };
    let device =
        |kind: &str, line: &str| Config::parse(&model(kind, line), "c.toml").unwrap().models[0].device();
    for kind in ["ranker", "slm"] {
        assert_eq!(device(kind, ""), Ok(DeviceSpec::Cpu), "left out: the CPU");
        for (text, spec) in [
            ("cpu", DeviceSpec::Cpu),
            ("cuda", DeviceSpec::Cuda(0)),
            ("cuda:0", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
            ("auto", DeviceSpec::Auto),
        ] {
            assert_eq!(device(kind, &format!("device = \"{text}\"")), Ok(spec), "{kind} {text}");
        }
    }
    // Errors name the key, the model and the value.
    for (bad, says) in [
        ("gpu", "\"gpu\" is not a device: expected \"cpu\", \"cuda\", \"cuda:N\""),
        ("cuda:x", "N in \"cuda:N\" must be a GPU index (0, 1, …), got \"x\""),
        ("cuda:-1", "got \"-1\""),
        ("cuda:", "got \"\""),
        ("CUDA", "\"CUDA\" is not a device"),
        ("cpu:0", "\"cpu:0\" is not a device"),
        ("cuda:4294967296", "GPU index 4294967296 is out of range"),
    ] {
        let e = err(&model("slm", &format!("device = \"{bad}\"")));
        assert!(e.starts_with("cfg.toml: models[0].device: model 'm1': "), "{e}");
        assert!(e.contains(says), "{bad}: {e}");
    }
    let e = err(&model("ranker", "device = 0"));
    assert!(e.contains("device"), "{e}");
    // The tabular kinds run on the CPU only.
    for kind in ["trees", "additive", "soft_trees"] {
        assert_eq!(device(kind, "device = \"cpu\""), Ok(DeviceSpec::Cpu));
        for spec in ["cuda", "auto"] {
            let e = err(&model(kind, &format!("device = \"{spec}\"")));
            assert_eq!(
                e,
                format!(
                    "cfg.toml: models[0].device: model 'm1': {kind} models run on the CPU only; set \
                     device = \"cpu\" or leave it out"
                )
            );
        }
    }
}

#[test]
fn the_default_configs_commented_device_keys_belong_to_their_models() {
    use crate::backend::device::DeviceSpec;
    let text = std::fs::read_to_string("config/default.toml").unwrap();
    assert_eq!(text.matches("\n# device = \"cpu\"\n").count(), 2, "the ranker's and the SLM's");
    let c =
        Config::parse(&text.replace("\n# device = \"cpu\"\n", "\ndevice = \"auto\"\n"), "d.toml").unwrap();
    let devices: Vec<_> = c.models.iter().map(|m| (m.name.as_str(), m.device().unwrap())).collect();
    assert_eq!(devices[..2], [("demo-ranker", DeviceSpec::Auto), ("smollm2-135m", DeviceSpec::Auto)]);
    assert!(devices[2..].iter().all(|(_, d)| *d == DeviceSpec::Cpu), "{devices:?}");
}
