//! A model's `device` key through the real binary: `cuda` refuses the start with the reason (built
//! without the `cuda` feature, no usable GPU, or — on a usable GPU — no CUDA backend for the kind
//! yet), never serving on the CPU instead; `auto` falls back to the CPU, logs why and serves, and
//! `/v1/models` shows the device. The same tests run with and without `--features cuda`, on machines
//! with and without a GPU: what they expect follows the build and the real probe. Also the
//! GPU-test helper's skip and `SLATE_REQUIRE_GPU=1` behavior.

mod common;

use common::gpu::gpu_or_skip;
use slate::backend::device::{probe, GpuInfo, ProbeError};
use std::time::Duration;

const DEMO: &str = "models/demo-ranker";

fn model(name: &str, kind: &str, path: &str, device: &str) -> String {
    format!("[[models]]\nname = \"{name}\"\nkind = \"{kind}\"\npath = \"{path}\"\ndevice = \"{device}\"\n")
}

/// The real probe of GPU `n`; under `SLATE_REQUIRE_GPU=1` (the GPU machine's run) GPU 0 must be usable,
/// so these tests check the placement on a real GPU there.
fn probed(n: u32) -> Result<GpuInfo, ProbeError> {
    if common::gpu::gpu_required() {
        common::gpu::require_gpu("e2e_device")
            .expect("require_gpu panics when SLATE_REQUIRE_GPU=1 and there is none");
    }
    probe(n)
}

/// What a start with `device = "cuda:N"` must say for GPU `n`, from the build and the real probe.
fn expected_refusal(n: u32, kind: &str) -> String {
    match probed(n) {
        Err(ProbeError::NoFeature) => "this slate binary was built without the `cuda` feature".into(),
        Err(e) => format!("no usable CUDA GPU: {e}"),
        Ok(_) => format!("CUDA backend for {kind} not implemented yet"),
    }
}

#[test]
fn cuda_refuses_the_start_naming_the_model_and_why() {
    // Models are placed before any file is read, so any existing path does for the SLM.
    for (name, kind, path, device, n) in [
        ("rk", "ranker", DEMO, "cuda", 0),
        ("rk", "ranker", DEMO, "cuda:0", 0),
        ("lm", "slm", DEMO, "cuda:7", 7),
    ] {
        let out = common::run_to_exit(&model(name, kind, path, device));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{device}: {stderr}");
        let want = format!("model '{name}': device = \"cuda:{n}\"");
        assert!(stderr.contains(&want), "wants {want:?}: {stderr}");
        let why = expected_refusal(n, kind);
        assert!(stderr.contains(&why), "wants {why:?}: {stderr}");
        // Refused before a listener opened.
        assert!(!String::from_utf8_lossy(&out.stdout).contains("listening on"), "{stderr}");
    }
}

#[test]
fn a_bad_device_value_exits_naming_the_key_and_model() {
    let out = common::run_to_exit(&model("rk", "ranker", DEMO, "gpu"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("models[0].device: model 'rk': \"gpu\" is not a device"), "{stderr}");
}

#[tokio::test]
async fn auto_falls_back_to_the_cpu_logs_why_and_serves() {
    let config = model("auto-ranker", "ranker", DEMO, "auto") + &model("cpu-ranker", "ranker", DEMO, "cpu");
    let slate = common::Slate::start(&config);
    slate.wait_ready(Duration::from_secs(120)).await;
    let (_, list) = slate.get_json("/v1/models").await;
    let models = list["data"].as_array().expect("a model list");
    let why = models[0]["device_fallback"].as_str().unwrap_or_else(|| panic!("no device_fallback: {list}"));
    let expected = match probed(0) {
        Err(ProbeError::NoFeature) => {
            "no usable CUDA GPU: this slate binary was built without the `cuda` feature".into()
        }
        Err(e) => format!("no usable CUDA GPU: {e}"),
        Ok(_) => "CUDA backend for ranker not implemented yet".into(),
    };
    assert!(why.starts_with(&expected), "{why}");
    assert_eq!((models[0]["id"].as_str(), models[0]["device"].as_str()), (Some("auto-ranker"), Some("cpu")));
    assert_eq!((models[1]["id"].as_str(), models[1]["device"].as_str()), (Some("cpu-ranker"), Some("cpu")));
    assert!(models[1].get("device_fallback").is_none(), "{list}");
    let logs = slate.logs();
    let logged = logs.lines().any(|l| {
        l.contains("device = \"auto\" falls back to the CPU: ") && l.contains("model=\"auto-ranker\"")
    });
    assert!(logged, "{logs}");
    for name in ["auto-ranker", "cpu-ranker"] {
        let (status, body) =
            slate.post_json("/v1/rank", &serde_json::from_str(&common::rank_body(name)).unwrap()).await;
        assert_eq!(status, 200, "{name}: {body}");
    }
}

fn fake_gpu() -> GpuInfo {
    GpuInfo {
        ordinal: 0,
        name: "test GPU".into(),
        compute_capability: (9, 0),
        total_bytes: 1 << 30,
        free_bytes: 1 << 29,
        driver_version: (13, 0),
        libraries: vec![],
    }
}

#[test]
fn gpu_tests_skip_loudly_or_fail_when_a_gpu_is_required() {
    let mut log = Vec::new();
    let got = gpu_or_skip("t1", Err(ProbeError::NoFeature), false, &mut log);
    assert!(got.is_none());
    let line = String::from_utf8(log).unwrap();
    assert!(line.starts_with("SKIPPED: t1 needs a CUDA GPU: this slate binary was built without"), "{line}");
    assert!(line.contains("SLATE_REQUIRE_GPU=1"), "{line}");

    let mut log = Vec::new();
    assert_eq!(gpu_or_skip("t2", Ok(fake_gpu()), true, &mut log), Some(fake_gpu()));
    assert!(log.is_empty(), "nothing said when the GPU is there");

    let required = std::panic::catch_unwind(|| {
        gpu_or_skip("t3", Err(ProbeError::NoSuchDevice { ordinal: 0, count: 0 }), true, &mut Vec::new())
    });
    let panic = required.expect_err("SLATE_REQUIRE_GPU=1 turns a missing GPU into a failure");
    let msg = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("t3 needs a CUDA GPU and SLATE_REQUIRE_GPU=1 requires one: there is no GPU 0"),
        "{msg}"
    );
}
