//! Generates the Raft transport stubs, real and simulated, from
//! proto/parley/raft/v1/transport.proto without needing protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../proto/parley/raft/v1/transport.proto";
    println!("cargo:rerun-if-changed={proto}");

    let descriptors = protox::compile([proto], ["../proto"])?;
    let descriptor_path =
        std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("raft_transport.bin");
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&descriptors),
    )?;

    tonic_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        .compile_protos(&[proto], &["../proto"])?;
    Ok(())
}
