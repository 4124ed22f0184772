//! Compiles `proto/` with protox (pure Rust, no system protoc). Messages always; the tonic
//! service stubs only with the `grpc` feature, so the wasm filters get plain prost types.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let file = root.join("tollgate/keys/v1/keys.proto");
    println!("cargo:rerun-if-changed={}", root.display());

    let fds = protox::compile([&file], [&root])?;
    let grpc = env::var_os("CARGO_FEATURE_GRPC").is_some();
    let out = PathBuf::from(env::var("OUT_DIR")?);
    if grpc {
        use prost::Message as _;
        std::fs::write(out.join("tollgate_descriptor.bin"), fds.encode_to_vec())?;
    }
    tonic_prost_build::configure().build_server(grpc).build_client(grpc).compile_fds(fds)?;
    Ok(())
}
