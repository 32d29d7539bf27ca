//! Generates the node API stubs, real and simulated, from
//! proto/parley/node/v1/node.proto without needing protoc. Core messages
//! map to the types parley-core already generated.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../proto/parley/node/v1/node.proto";
    println!("cargo:rerun-if-changed={proto}");
    println!("cargo:rerun-if-changed=../proto/parley/core/v1/shard.proto");

    let descriptors = protox::compile([proto], ["../proto"])?;
    let descriptor_path = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("node_api.bin");
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&descriptors),
    )?;

    tonic_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        .extern_path(".parley.core.v1", "::parley_core::proto")
        // The commit feed's buffers go to every subscriber without a copy.
        .bytes([".parley.node.v1.CommittedEntry"])
        .compile_protos(&[proto], &["../proto"])?;
    Ok(())
}
