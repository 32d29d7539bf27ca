//! Compiles `proto/parley/core/v1/shard.proto` into Rust types with protox
//! and prost-build, so building the crate needs no `protoc` binary.

const PROTO_ROOT: &str = "../proto";
const SHARD_PROTO: &str = "../proto/parley/core/v1/shard.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={SHARD_PROTO}");

    let descriptors = protox::compile([SHARD_PROTO], [PROTO_ROOT])?;
    prost_build::Config::new().compile_fds(descriptors)?;

    Ok(())
}
