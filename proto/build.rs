//! Compiles `proto/routemq/v1/*.proto` with a vendored `protoc`, so building RouteMQ needs no
//! system protobuf compiler. Set `PROTOC` to use another one.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/routemq/v1/cluster.proto",
        "proto/routemq/v1/routing.proto",
        "proto/routemq/v1/handoff.proto",
        "proto/routemq/v1/stats.proto",
    ];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let mut prost_config = prost_build::Config::new();
    match std::env::var_os("PROTOC") {
        Some(protoc) => prost_config.protoc_executable(protoc),
        None => prost_config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?),
    };
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("routemq_v1_descriptor.bin"))
        .compile_with_config(prost_config, &protos, &["proto"])?;
    Ok(())
}
