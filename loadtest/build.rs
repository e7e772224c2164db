//! Compiles the server's protos (`../proto/slate/v1/*.proto`) with protox (pure Rust, no system
//! `protoc`) into gRPC clients only: the load generator never serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["../proto/slate/v1/ranking.proto", "../proto/slate/v1/generation.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["../proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(false).compile_fds(fds)?;
    Ok(())
}
