//! Slate: an online inference server for feed ranking and small language models.
//! Follow a request top-down: `server/` (front ends) → `registry` → a model family's scheduler
//! (`ranking::scheduler`, `slm::scheduler`; what they share is in `serving`) → the model
//! (`ranking::model`, `slm::model`) → `backend` (the compute seam; `backend::cpu` runs on `kernels`).
//! See docs/ARCHITECTURE.md.

pub mod backend;
pub mod cli;
pub mod compute;
pub mod config;
pub mod error;
pub mod kernels;
pub mod metrics;
pub mod ranking;
pub mod registry;
pub mod server;
pub mod serving;
pub mod slm;
pub mod tabular;
pub mod telemetry;

pub use error::{Error, Result};

/// Generated protobuf and gRPC code for `proto/slate/v1` and Triton's `proto/inference`.
pub mod proto {
    pub mod slate {
        pub mod v1 {
            tonic::include_proto!("slate.v1");
        }
    }
    /// The Open Inference Protocol's gRPC API, as Triton defines it (`inference.GRPCInferenceService`).
    /// Its doc comments are Triton's proto comments, which write placeholders as `<model>`.
    #[allow(clippy::all, clippy::pedantic, rustdoc::invalid_html_tags)]
    pub mod inference {
        tonic::include_proto!("inference");
    }
    /// Encoded `FileDescriptorSet` of our protos and Triton's, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/slate_descriptor.bin"));
}
