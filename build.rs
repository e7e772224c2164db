//! Compiles `proto/slate/v1/*.proto` and Triton's `proto/inference/*.proto` (the Open Inference
//! Protocol's `inference.GRPCInferenceService`) with protox (pure Rust, no system `protoc`), and writes
//! the descriptor set of both, used by gRPC server reflection.
use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let slate = ["proto/slate/v1/ranking.proto", "proto/slate/v1/generation.proto"];
    let inference = ["proto/inference/grpc_service.proto", "proto/inference/model_config.proto"];
    for p in slate.iter().chain(&inference) {
        println!("cargo:rerun-if-changed={p}");
    }
    let slate_fds = protox::compile(slate, ["proto"])?;
    // Triton's files import each other by bare name.
    let inference_fds = protox::compile(["grpc_service.proto"], ["proto/inference"])?;
    let mut all = slate_fds.clone();
    all.file.extend(inference_fds.file.iter().cloned());
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("slate_descriptor.bin"), all.encode_to_vec())?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(slate_fds)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        // The RPCs Slate does not serve answer UNIMPLEMENTED.
        .generate_default_stubs(true)
        // Triton's comments are Sphinx markup, not rustdoc.
        .disable_comments(["."])
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        .compile_fds(inference_fds)?;
    Ok(())
}
