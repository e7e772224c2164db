//! The CUDA side of the backend seam (feature `cuda`), on `cudarc` with dynamic loading: libcuda,
//! cuBLAS, cuBLASLt and NVRTC are found at run time, so building needs no CUDA toolkit and a binary
//! built with the feature still starts (and serves on the CPU) where no GPU is.
//!
//! Today this is the device probe only: which GPU `device = "cuda:N"` names, and whether it can be
//! used. The ranker and SLM backends on CUDA (issue #18: cuBLAS(Lt) GEMMs, NVRTC kernels, device K/V)
//! are not written yet; `backend::device` refuses `cuda` for them and lets `auto` fall back to the CPU.

use super::device::{GpuInfo, ProbeError};
use cudarc::driver::{result, sys, CudaContext, DriverError};

/// Probes GPU `ordinal`: the driver library loads, the device exists, and a context can be made on
/// it (retaining and releasing the primary context, as a backend would).
///
/// cudarc's dynamic loading panics when a library or one of its symbols is missing (it loads each
/// function on first call), so the driver library is looked for first and the rest runs under
/// `catch_unwind`: a probe answers, it never takes the process down.
pub fn probe(ordinal: u32) -> Result<GpuInfo, ProbeError> {
    // SAFETY: `is_culib_present` opens libcuda with dlopen and closes it again; the library's
    // initializers run as they would on any later CUDA call. No CUDA state is touched.
    if !unsafe { sys::is_culib_present() } {
        let names: std::collections::HashSet<_> =
            cudarc::get_lib_name_candidates("cuda").into_iter().collect();
        return Err(ProbeError::NoDriver(format!(
            "libcuda.so.1 (or one of the {} other names cudarc tries) cannot be opened; is the NVIDIA \
             driver installed and its library on the loader's path?",
            names.len().saturating_sub(1)
        )));
    }
    std::panic::catch_unwind(|| probe_loaded(ordinal)).unwrap_or_else(|panic| {
        Err(ProbeError::Driver(format!("cudarc panicked: {}", crate::error::panic_message(&*panic))))
    })
}

fn probe_loaded(ordinal: u32) -> Result<GpuInfo, ProbeError> {
    let driver = |e: DriverError| ProbeError::Driver(e.to_string());
    result::init().map_err(driver)?;
    let count = result::device::get_count().map_err(driver)?;
    // Checked before any call takes the ordinal as a C int.
    if i64::from(ordinal) >= i64::from(count) {
        return Err(ProbeError::NoSuchDevice { ordinal, count: count.max(0) as u32 });
    }
    let ctx = CudaContext::new(ordinal as usize).map_err(driver)?;
    let name = ctx.name().map_err(driver)?;
    let compute_capability = ctx.compute_capability().map_err(driver)?;
    let (free_bytes, total_bytes) = ctx.mem_get_info().map_err(driver)?;
    let mut version = 0;
    // SAFETY: cuDriverGetVersion writes one int through the pointer, which is valid for the call.
    unsafe { sys::cuDriverGetVersion(&mut version) }.result().map_err(driver)?;
    Ok(GpuInfo {
        ordinal,
        name,
        compute_capability,
        total_bytes,
        free_bytes,
        driver_version: (version / 1000, version % 1000 / 10),
        libraries: libraries(),
    })
}

/// Whether each CUDA library the backends will use can be loaded (they come with the CUDA toolkit,
/// or PyTorch's `nvidia-*` wheels, not with the driver).
fn libraries() -> Vec<(&'static str, bool)> {
    // SAFETY: each `is_culib_present` dlopens the library and closes it again (its initializers run,
    // as on first use); no other state is touched.
    unsafe {
        vec![
            ("cublas", cudarc::cublas::sys::is_culib_present()),
            ("cublasLt", cudarc::cublaslt::sys::is_culib_present()),
            ("nvrtc", cudarc::nvrtc::sys::is_culib_present()),
        ]
    }
}
