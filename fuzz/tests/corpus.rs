//! Replays every committed corpus and regression input through the fuzz targets' checks, on
//! stable and without libFuzzer, so that `make test` re-checks them cheaply on every run
//! (`cargo test --manifest-path fuzz/Cargo.toml --no-default-features`).

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use tollgate_fuzz::{TARGETS, seeds};

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> =
        entries.map(|e| e.expect("readable directory entry").path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

/// Unoptimized code needs far more stack than the fuzzed (optimized) build: JSON nested to
/// serde_json's depth limit of 128 overflows a test thread's 2 MiB in a debug build, while the
/// optimized targets replay every input within 1 MiB. The replay gets a roomy stack.
#[test]
fn every_corpus_and_regression_input_passes_its_target() {
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(replay_all)
        .expect("replay thread")
        .join()
        .expect("replay passed");
}

fn replay_all() {
    let mut failures = Vec::new();
    let mut total = 0;
    for (name, check) in TARGETS {
        let corpus = inputs(&fuzz_dir().join("corpus").join(name));
        assert!(!corpus.is_empty(), "target {name} has no committed corpus");
        let regressions = inputs(&fuzz_dir().join("regressions").join(name));
        for file in corpus.iter().chain(&regressions) {
            let data = fs::read(file).expect("readable corpus file");
            total += 1;
            if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
                failures.push(file.display().to_string());
            }
        }
    }
    assert!(failures.is_empty(), "inputs that fail their target: {failures:#?}");
    println!("replayed {total} inputs through {} targets", TARGETS.len());
}

#[test]
fn every_fuzz_target_is_checked_here() {
    let mut files: Vec<String> = inputs(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
        .collect();
    files.sort();
    let mut listed: Vec<String> = TARGETS.iter().map(|(n, _)| (*n).to_owned()).collect();
    listed.sort();
    assert_eq!(files, listed, "fuzz_targets/ and TARGETS differ");
    let manifest = fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("Cargo.toml");
    for name in &listed {
        assert!(manifest.contains(&format!("name = \"{name}\"")), "{name} is not a [[bin]] in Cargo.toml");
    }
}

/// The fenced JSON blocks of a Markdown file.
fn json_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match &mut current {
            None if line.trim_start().starts_with("```json") => current = Some(String::new()),
            Some(block) if line.trim_start().starts_with("```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    blocks
}

/// The Envoy configs of the repository (`envoy/`, `examples/*/`).
fn yaml_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.join("envoy"), root.join("examples")];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The `value: |` block scalars of a YAML file (where the filters' JSON configs live).
fn yaml_block_scalars(yaml: &str) -> Vec<String> {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let lines: Vec<&str> = yaml.lines().collect();
    let mut blocks = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !line.trim_end().ends_with("value: |") {
            continue;
        }
        let mut block = String::new();
        for next in &lines[i + 1..] {
            if !next.trim().is_empty() && indent(next) <= indent(line) {
                break;
            }
            block.push_str(next.trim_start());
            block.push('\n');
        }
        blocks.push(block);
    }
    blocks
}

/// Writes the seeds of every corpus (`corpus/<target>/seed-<name>`): the generated ones, and
/// for the configuration targets every example config and every JSON block of the docs that
/// the filter accepts. Run after changing a seed:
/// `cargo test --manifest-path fuzz/Cargo.toml --no-default-features -- --ignored write_seeds`.
#[test]
#[ignore]
fn write_seeds() {
    let root = fuzz_dir().join("..");
    let mut all = seeds::generated();
    let configs: [(&str, &str, fn(&[u8]) -> bool); 5] = [
        ("config_key_auth", "key-auth", |d| tollgate_core::key_auth::config::Config::from_json(d).is_ok()),
        ("config_rate_limit", "rate-limit", |d| {
            tollgate_core::rate_limit::config::Config::from_json(d).is_ok()
        }),
        ("config_jwt_auth", "jwt-auth", |d| tollgate_core::jwt::config::Config::from_json(d).is_ok()),
        ("config_transform", "transform", |d| tollgate_core::transform::config::Config::from_json(d).is_ok()),
        ("config_request_signing", "request-signing", |d| {
            tollgate_core::signature::config::Config::from_json(d).is_ok()
        }),
    ];
    let mut sources: Vec<(String, String)> = Vec::new();
    for (_, filter, _) in &configs {
        let example = root.join("filters").join(filter).join("config.example.json");
        if let Ok(text) = fs::read_to_string(&example) {
            sources.push((format!("{filter}-example"), text));
        }
    }
    let mut docs = inputs(&root.join("docs"));
    docs.push(root.join("README.md"));
    for doc in docs.iter().filter(|p| p.extension().is_some_and(|e| e == "md")) {
        let stem = doc.file_stem().and_then(|s| s.to_str()).unwrap_or("doc").to_ascii_lowercase();
        for (i, block) in json_blocks(&fs::read_to_string(doc).expect("readable doc")).into_iter().enumerate()
        {
            sources.push((format!("{stem}-{i}"), block));
        }
    }
    for yaml in yaml_files(&root) {
        let stem = yaml.strip_prefix(&root).unwrap_or(&yaml).display().to_string().replace(['/', '.'], "-");
        for (i, block) in
            yaml_block_scalars(&fs::read_to_string(&yaml).expect("readable yaml")).into_iter().enumerate()
        {
            sources.push((format!("{stem}-{i}"), block));
        }
    }
    for (name, text) in sources {
        for (target, _, accepts) in &configs {
            if accepts(text.as_bytes()) {
                all.push((target, name.clone(), text.clone().into_bytes()));
            }
        }
    }
    for (target, name, bytes) in all {
        let dir = fuzz_dir().join("corpus").join(target);
        fs::create_dir_all(&dir).expect("corpus directory");
        fs::write(dir.join(format!("seed-{name}")), bytes).expect("seed written");
    }
}
