//! The CUDA device probe on a real GPU (feature `cuda`): GPU 0's name, memory, compute capability,
//! driver and the CUDA libraries the backends will load. Without a usable GPU each test reports itself
//! SKIPPED (or fails under `SLATE_REQUIRE_GPU=1`, as the GPU machine's `run.sh` runs it). The probe's
//! answers without a GPU are tested in `backend::device` and tests/e2e_device.rs.
#![cfg(feature = "cuda")]

mod common;

use slate::backend::device::{probe, ProbeError};

#[test]
fn gpu_probe_names_the_gpu_and_its_memory() {
    let Some(gpu) = common::gpu::require_gpu("gpu_probe_names_the_gpu_and_its_memory") else { return };
    // Shown with --nocapture (run.sh passes it): the device line of the GPU run's report.
    eprintln!("probed: {gpu}");
    assert_eq!(gpu.ordinal, 0);
    assert!(!gpu.name.trim().is_empty(), "{gpu}");
    assert!(gpu.total_bytes >= 1 << 30, "{gpu}");
    assert!(gpu.free_bytes > 0 && gpu.free_bytes <= gpu.total_bytes, "{gpu}");
    // CUDA 13 supports compute capability 7.5 (Turing) and newer.
    assert!(gpu.compute_capability >= (7, 5), "{gpu}");
    // The feature is built against the CUDA 13.0 API (cudarc's `cuda-13000`).
    assert!(
        gpu.driver_version >= (13, 0),
        "the driver supports CUDA {:?}; the build needs 13.0: {gpu}",
        gpu.driver_version
    );
    let missing: Vec<_> = gpu.libraries.iter().filter(|(_, found)| !found).map(|(lib, _)| *lib).collect();
    assert!(
        missing.is_empty(),
        "{missing:?} not loadable (the CUDA toolkit's lib64 or PyTorch's nvidia/*/lib belongs on \
         LD_LIBRARY_PATH; run.sh adds them): {gpu}"
    );
}

#[test]
fn gpu_probe_refuses_a_gpu_past_the_last() {
    if common::gpu::require_gpu("gpu_probe_refuses_a_gpu_past_the_last").is_none() {
        return;
    }
    match probe(4096) {
        Err(ProbeError::NoSuchDevice { ordinal: 4096, count }) => assert!(count >= 1, "GPU 0 was found"),
        other => panic!("GPU 4096: {other:?}"),
    }
}
