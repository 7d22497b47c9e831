//! Compiles the gRPC API for the daemon and its clients. The verifier alone (without the
//! `daemon` feature) has no gRPC, so it needs neither protoc nor the code generator.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "daemon")]
    compile_protos()?;
    Ok(())
}

#[cfg(feature = "daemon")]
fn compile_protos() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // Malformed request bodies are INVALID_ARGUMENT, not tonic-prost's INTERNAL.
        .codec_path("crate::server::codec::ApiCodec")
        .file_descriptor_set_path(out_dir.join("actseal_descriptor.bin"))
        .compile_protos(&["proto/actseal/v1/actseal.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
