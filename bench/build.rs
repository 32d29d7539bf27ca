//! Generates gRPC clients, without protoc, for the gateway's client API
//! (parley.v1), the node API (parley.node.v1, whose Status call reports
//! shard leaders) and the part of etcd's v3 API the bench calls
//! (bench/proto/etcd.proto). The bench compiles its own clients so it links
//! none of the gateway or node code it measures.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=../proto/parley/core/v1/shard.proto");
    compile(
        &[
            "../proto/parley/v1/parley.proto",
            "../proto/parley/node/v1/node.proto",
        ],
        "../proto",
        &out_dir.join("parley_descriptor.bin"),
    )?;
    compile(
        &["proto/etcd.proto"],
        "proto",
        &out_dir.join("etcd_descriptor.bin"),
    )
}

fn compile(
    protos: &[&str],
    include: &str,
    descriptor_path: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, [include])?;
    std::fs::write(descriptor_path, prost::Message::encode_to_vec(&descriptors))?;
    tonic_build::configure()
        .build_server(false)
        .file_descriptor_set_path(descriptor_path)
        .skip_protoc_run()
        .compile_protos(protos, &[include])?;
    Ok(())
}
