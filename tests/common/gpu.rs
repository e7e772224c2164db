//! Tests that need a CUDA GPU: [`require_gpu`] gives them one or skips them, loudly. A skip is never
//! silent — it writes `SKIPPED: <test> needs a CUDA GPU: <why>` past the test harness's output
//! capture — and with `SLATE_REQUIRE_GPU=1` (the GPU machine's `run.sh` sets it) a missing GPU fails
//! the test instead, so a GPU run cannot pass by skipping.
//!
//! ```ignore
//! let Some(gpu) = common::gpu::require_gpu("my_test") else { return };
//! ```

use slate::backend::device::{self, GpuInfo, ProbeError};
use std::io::Write;

/// The variable that turns a missing GPU into a failure.
pub const REQUIRE_GPU: &str = "SLATE_REQUIRE_GPU";

/// GPU 0 when it is usable; otherwise `None` after the SKIPPED line (or a panic under
/// `SLATE_REQUIRE_GPU=1`). `test` names the test in that line.
pub fn require_gpu(test: &str) -> Option<GpuInfo> {
    gpu_or_skip(test, device::probe(0), gpu_required(), &mut std::io::stderr())
}

/// Whether `SLATE_REQUIRE_GPU=1`: a run on a GPU machine, where every GPU check must find one.
pub fn gpu_required() -> bool {
    std::env::var(REQUIRE_GPU).is_ok_and(|v| v == "1")
}

/// [`require_gpu`] over a probe's answer: the GPU, or the SKIPPED line on `log` and `None`, or a
/// panic when `required`.
pub fn gpu_or_skip(
    test: &str,
    probed: Result<GpuInfo, ProbeError>,
    required: bool,
    log: &mut dyn Write,
) -> Option<GpuInfo> {
    match probed {
        Ok(gpu) => Some(gpu),
        Err(why) if required => panic!("{test} needs a CUDA GPU and {REQUIRE_GPU}=1 requires one: {why}"),
        Err(why) => {
            // Straight to the stream: libtest captures print!/eprint! of passing tests, not this.
            let _ = writeln!(
                log,
                "SKIPPED: {test} needs a CUDA GPU: {why} (set {REQUIRE_GPU}=1 to fail instead)"
            );
            None
        }
    }
}
