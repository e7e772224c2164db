//! Benchmarks: `bench ranker` (the ranker against the GEMM peak and ONNX Runtime), `bench slm` (the
//! SLM engine beside llama.cpp), `bench trees` (tree models beside xgboost) and `bench soft-trees` (the
//! soft-tree pass against a plain GEMM of its shape). Results and how to
//! read them: docs/BENCHMARKS.md.

pub mod ranker;
pub mod slm;
pub mod soft_trees;
pub mod trees;

use slate::kernels::cpu::simd::{has_avx2_fma, has_avx512, has_avx512_vnni};

/// The instruction sets Slate's kernels use on this machine (after `SLATE_SIMD`), for the benches'
/// headers: the f32 kernels (ranker) and the quantized integer dot products (SLM).
pub fn kernel_isa() -> String {
    let f32_path = if has_avx512() {
        "AVX-512"
    } else if has_avx2_fma() {
        "AVX2+FMA"
    } else {
        "scalar"
    };
    let int_path = if has_avx512_vnni() {
        "AVX-512 VNNI"
    } else if has_avx2_fma() {
        "AVX2"
    } else {
        "scalar"
    };
    use slate::kernels::cpu::compressed::Arith;
    let compressed = match Arith::best() {
        Arith::IntSimd => "exact integers AVX-512 VNNI",
        Arith::IntAvx2 => "exact integers AVX2 (int8 and int4 matrices with a masked tile; the others f32)",
        Arith::IntScalar => "exact integers scalar",
        Arith::F32 => "f32",
    };
    format!("kernels: f32 {f32_path}, quantized dot products {int_path}, compressed matrices {compressed}")
}
