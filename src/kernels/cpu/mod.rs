//! CPU kernels (f32). Every SIMD kernel has a scalar reference beside it and a test comparing the two on
//! random ragged sizes; dispatch happens at run time (`simd::has_avx2_fma`), so one binary runs anywhere.

pub mod activation;
pub mod attention;
pub mod compressed;
pub mod gemm;
pub mod int8;
pub mod linear;
pub mod norm;
pub mod quant;
pub mod simd;

pub use attention::{attend_head, HeadAttention};
pub use gemm::{matmul, Par};
pub use linear::{linear, Epilogue, PackedLinear};
