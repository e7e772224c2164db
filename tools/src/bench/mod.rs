//! Benchmarks: `bench ranker` (the ranker against the GEMM peak and ONNX Runtime) and `bench slm` (the
//! SLM engine beside llama.cpp). Results and how to read them: docs/BENCHMARKS.md.

pub mod ranker;
pub mod slm;
