//! Generates the agent–coordinator gRPC types from src/wire/link.proto
//! (needs protoc: Debian's protobuf-compiler, installed by scripts/setup.sh).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=src/wire/link.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Its Debug is written by hand in src/wire/mod.rs: it redacts.
        .skip_debug(["prewarm.link.v1.RegistryCredential"])
        .compile_protos(&["src/wire/link.proto"], &["src/wire"])?;
    Ok(())
}
