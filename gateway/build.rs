//! Generates the client API stubs, real and simulated, from
//! proto/parley/v1/parley.proto without needing protoc, and writes the
//! descriptor set the reflection service serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../proto/parley/v1/parley.proto";
    println!("cargo:rerun-if-changed={proto}");

    let descriptors = protox::compile([proto], ["../proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("parley_v1_descriptor.bin");
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&descriptors),
    )?;

    // A message body is shared, not copied, by every device it fans out to.
    let shared_bytes = [".parley.v1.Message.body"];
    tonic_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        .bytes(shared_bytes)
        .compile_protos(&[proto], &["../proto"])?;

    // madsim-tonic-build 0.6 has no codec option, so the real stubs are
    // generated again, over its output, with the small-buffer codec.
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        .codec_path("crate::codec::SmallBufferCodec")
        .bytes(shared_bytes[0])
        .compile_protos(&[proto], &["../proto"])?;
    Ok(())
}
