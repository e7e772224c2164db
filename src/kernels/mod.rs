//! Compute kernels behind the backend seam. Only `cpu` exists today: f32 GEMM through the `gemm` crate
//! plus fused attention, layer norm and activation passes with runtime AVX2/FMA dispatch and scalar
//! fallbacks. Model code (src/ranking/) calls these and never touches SIMD or `unsafe` itself.

pub mod cpu;
