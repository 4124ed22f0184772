//! Compiles the vendored rate-limit service protos (`proto/`, trimmed copies of Envoy's) with
//! protox: pure Rust, no system protoc. The well-known `google/protobuf` types come with protox.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("proto");
    let file = root.join("envoy/service/ratelimit/v3/rls.proto");
    println!("cargo:rerun-if-changed={}", root.display());

    let fds = protox::compile([&file], [&root])?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    Ok(())
}
