//! Compute kernels: the building blocks backends run on. Only `cpu` exists today: f32 GEMM through the
//! `gemm` crate, quantized matmuls, fused attention, layer norm and activation passes, with runtime
//! AVX2/FMA dispatch and scalar fallbacks. The seam model code calls is `backend/`; `backend::cpu` holds
//! the model layouts built on these kernels, so model code never touches SIMD, `unsafe` or a layout.

pub mod cpu;
