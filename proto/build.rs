//! Compiles proto/*.proto with protox (pure Rust), so no system `protoc` is needed.

fn main() {
    let files = [
        "proto/mesh/v1/local_api.proto",
        "proto/mesh/v1/gossip.proto",
        "proto/mesh/v1/peer.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"]).unwrap_or_else(|e| panic!("invalid .proto: {e}"));
    prost_build::Config::new()
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("prost code generation failed: {e}"));
}
