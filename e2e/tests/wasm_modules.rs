//! Every filter module imports only the proxy-wasm ABI and the WASI subset that proxy-wasm hosts
//! provide, so it loads in Envoy and stays portable to other hosts. A module built for the wrong
//! target (for example with wasm-bindgen imports) fails here instead of at Envoy's load time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use tollgate_e2e::{wasm_dir, workspace_root};
use wasmparser::{Parser, Payload, TypeRef};

/// WASI preview 1 functions proxy-wasm hosts implement.
const WASI_SUBSET: &[&str] = &[
    "args_get",
    "args_sizes_get",
    "clock_time_get",
    "environ_get",
    "environ_sizes_get",
    "fd_close",
    "fd_fdstat_get",
    "fd_prestat_dir_name",
    "fd_prestat_get",
    "fd_read",
    "fd_seek",
    "fd_write",
    "poll_oneoff",
    "proc_exit",
    "random_get",
    "sched_yield",
];

/// The module file of each crate under `filters/`, the bundle of them all (`tollgate.wasm`) and the
/// test-only probe (`e2e/probe`),
/// which calls every host function `EnvoyHost` wraps.
fn filter_modules() -> Vec<(String, std::path::PathBuf)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(workspace_root().join("filters")).unwrap() {
        let dir = entry.unwrap().path();
        if dir.join("Cargo.toml").exists() {
            let name = dir.file_name().unwrap().to_string_lossy().replace('-', "_");
            out.push((name.clone(), wasm_dir().join(format!("tollgate_{name}.wasm"))));
        }
    }
    out.sort();
    out.push(("bundle".to_owned(), wasm_dir().join("tollgate.wasm")));
    out.push(("host_probe".to_owned(), wasm_dir().join("tollgate_host_probe.wasm")));
    out
}

#[test]
fn every_filter_imports_only_the_proxy_wasm_abi_and_the_wasi_subset() {
    let modules = filter_modules();
    assert!(!modules.is_empty());
    for (name, path) in modules {
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (run `make test`, which builds the filters)", path.display())
        });
        let mut abi_exported = false;
        for payload in Parser::new(0).parse_all(&bytes) {
            match payload.unwrap_or_else(|e| panic!("{name}: not a wasm module: {e}")) {
                Payload::ImportSection(imports) => {
                    for import in imports {
                        let import = import.unwrap();
                        assert!(
                            matches!(import.ty, TypeRef::Func(_)),
                            "{name} imports a non-function {import:?}"
                        );
                        let ok = match import.module {
                            "env" => import.name.starts_with("proxy_"),
                            "wasi_snapshot_preview1" => WASI_SUBSET.contains(&import.name),
                            _ => false,
                        };
                        assert!(
                            ok,
                            "{name} imports {}.{}, which proxy-wasm hosts do not provide",
                            import.module, import.name
                        );
                    }
                }
                Payload::ExportSection(exports) => {
                    for export in exports {
                        abi_exported |= export.unwrap().name.starts_with("proxy_abi_version_");
                    }
                }
                _ => {}
            }
        }
        assert!(abi_exported, "{name} does not export a proxy-wasm ABI version");
    }
}
