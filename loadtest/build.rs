//! Compiles the server's protos (`../proto/slate/v1/*.proto`, and Triton's `../proto/inference` for the
//! Open Inference Protocol's `ModelInfer`) with protox (pure Rust, no system `protoc`) into gRPC clients
//! only: the load generator never serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["../proto/slate/v1/ranking.proto", "../proto/slate/v1/generation.proto"];
    let inference = ["../proto/inference/grpc_service.proto", "../proto/inference/model_config.proto"];
    for p in protos.iter().chain(&inference) {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["../proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(false).compile_fds(fds)?;
    // Triton's files import each other by bare name; their comments are Sphinx markup, not rustdoc.
    let inference_fds = protox::compile(["grpc_service.proto"], ["../proto/inference"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .disable_comments(["."])
        .compile_fds(inference_fds)?;
    Ok(())
}
