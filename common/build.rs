//! Generates the gRPC types of `proto/` into `OUT_DIR`, with a descriptor set
//! for server reflection.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "../proto/baton/v1/types.proto",
    "../proto/baton/v1/dag.proto",
    "../proto/baton/v1/run.proto",
    "../proto/baton/v1/worker.proto",
    "../proto/baton/v1/pool.proto",
    "../proto/baton/v1/cluster.proto",
    "../proto/baton/v1/schedule.proto",
    "../proto/baton/store/v1/records.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=../proto");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        // The worker's RPC is named `Connect`, which would clash with the
        // generated `connect` constructor; clients are built from a channel.
        .build_transport(false)
        // prost's messages, each decoded from one slice (`pb::codec`).
        .codec_path("crate::pb::codec::ContiguousCodec")
        .file_descriptor_set_path(out_dir.join("baton_descriptor.bin"))
        .compile_protos(PROTOS, &["../proto"])?;
    Ok(())
}
