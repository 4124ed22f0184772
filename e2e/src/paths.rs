//! Where the binaries, the wasm filters and Envoy are.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn from_env(var: &str, default: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(value) if !value.is_empty() => PathBuf::from(value),
        _ => workspace_root().join(default),
    }
}

/// `TOLLGATE_BIN_DIR`, default `target/debug`.
pub fn bin_dir() -> PathBuf {
    from_env("TOLLGATE_BIN_DIR", "target/debug")
}

/// `TOLLGATE_WASM_DIR`, default `target/wasm32-wasip1/wasm`.
pub fn wasm_dir() -> PathBuf {
    from_env("TOLLGATE_WASM_DIR", "target/wasm32-wasip1/wasm")
}

/// `ENVOY_BIN`, default `.venv/bin/envoy`.
pub fn envoy_bin() -> PathBuf {
    let path = from_env("ENVOY_BIN", ".venv/bin/envoy");
    require(&path, "Envoy");
    path
}

/// A Tollgate binary from [`bin_dir`]; panics with a hint when it has not been built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    require(&path, name);
    path
}

/// A filter module from [`wasm_dir`], by crate file name (`tollgate_key_auth`); panics with a hint
/// when it has not been built.
pub fn wasm_module(name: &str) -> PathBuf {
    let path = wasm_dir().join(format!("{name}.wasm"));
    require(&path, &format!("{name}.wasm"));
    path
}

fn require(path: &Path, what: &str) {
    assert!(
        path.is_file(),
        "{what} not found at {}: run `make test` (it builds the binaries and the wasm filters and \
         installs Envoy), or point TOLLGATE_BIN_DIR / TOLLGATE_WASM_DIR / ENVOY_BIN at them",
        path.display()
    );
}

/// Renders an Envoy config template (relative to the workspace root, like `envoy/quickstart.yaml`,
/// or absolute) into `dir` with `scripts/render-envoy.sh`, the same way `make run` does: the given
/// data-plane token, the wasm filters from [`wasm_dir`], default ports. Returns the rendered file.
pub fn render_envoy_template(template: &Path, dir: &Path, dataplane_token: &str) -> PathBuf {
    let root = workspace_root();
    let template = root.join(template);
    let name = template.file_name().expect("template has a file name");
    let out = dir.join(name);
    let output = Command::new("bash")
        .arg(root.join("scripts/render-envoy.sh"))
        .arg(&template)
        .arg(&out)
        .env("DATAPLANE_TOKEN", dataplane_token)
        .env("TOLLGATE_WASM_DIR", wasm_dir())
        .output()
        .expect("run scripts/render-envoy.sh");
    assert!(
        output.status.success(),
        "rendering {} failed: {}",
        template.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    out
}
